"""``/v1/chat/completions``: the OpenAI chat shape on top of the OCR pipeline.

Only the last user turn counts (DeepSeek-OCR is single-turn). Its image comes from an
``image_url`` part (a data URL or an http(s) URL) or a PDF from a ``file`` part (``file_data``
as base64 or a data URL, or ``file_url``); its text selects the prompt, unless the extra body
field ``task`` does. The answer's
content is the page markdown (pages joined with the page-split marker). Streaming sends one
chunk per finished page.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.api.uploads import check_upload_size, decode_file_field
from serve_app.config import IngressConfig
from serve_app.core.document import document_markdown
from serve_app.core.markdown import PAGE_SPLIT
from serve_app.documents.door import RequestFields
from serve_app.documents.messages import PageReport
from serve_app.documents.results import summary_json
from serve_app.documents.run import DocumentRun
from serve_app.documents.sources import Source, UrlSource
from serve_app.errors import InvalidInputError, OCRError

PAGE_BREAK = f"\n\n{PAGE_SPLIT}\n\n"


class ChatRequest(BaseModel):
    """The fields we read; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    mode: str | None = None
    task: str | None = None
    pages: str | None = None


async def read_chat_request(
    request: Request, config: IngressConfig
) -> tuple[ChatRequest, Source, str]:
    """The chat request, its document (bytes, or the http(s) URL to fetch it from) and the
    text of its last user turn.

    Raises:
        InvalidInputError: For a body that is not a chat request, or no image or file.
        PayloadTooLargeError: For a file past ``max_upload_bytes``.
    """
    check_upload_size(request, config)
    try:
        chat = ChatRequest.model_validate(json.loads(await request.body()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidInputError(f"invalid chat request: {exc}") from None
    source, text = last_user_content(chat)
    if isinstance(source, bytes):
        check_upload_size(source, config)
    return chat, source, text


def last_user_content(request: ChatRequest) -> tuple[Source, str]:
    """The document (bytes, or the URL to fetch it from) and the text of the last user message.

    Raises:
        InvalidInputError: If there is no user message or it carries no image or file.
    """
    users = [m for m in request.messages if m.get("role") == "user"]
    if not users:
        raise InvalidInputError("messages need a user turn with an image or a PDF")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise InvalidInputError("message content must be a string or a list of parts")
    data: Source | None = None
    texts: list[str] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not isinstance(url, str) or not url:
                raise InvalidInputError("image_url needs a 'url' (a data: or http(s) URL)")
            data = decode_file_field(url) if url.startswith("data:") else UrlSource(url)
        elif kind == "file":
            file = part.get("file") or {}
            file_data, file_url = file.get("file_data"), file.get("file_url")
            if isinstance(file_data, str):
                data = decode_file_field(file_data)
            elif isinstance(file_url, str):
                data = UrlSource(file_url)
            else:
                raise InvalidInputError(
                    "file parts need 'file_data' (base64 or a data URL) or 'file_url'"
                )
        else:
            raise InvalidInputError(f"unsupported content part type {kind!r}")
    if data is None:
        raise InvalidInputError("the last user message has no image_url or file part")
    return data, "\n".join(t for t in texts if t.strip()).strip()


def chat_fields(request: ChatRequest, text: str) -> RequestFields:
    """The request's fields: ``task`` wins; otherwise the user text is the prompt."""
    return RequestFields(
        model=request.model,
        task=request.task,
        prompt=text or None,
        mode=request.mode,
        pages=request.pages,
        include_regions=False,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=request.temperature,
    )


def completion(
    request_id: str,
    model: str,
    content: str,
    finish_reason: Literal["stop", "length"],
    usage: dict[str, int],
) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }


def chunk(
    request_id: str,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object."""
    out: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        out["usage"] = {
            **usage,
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        }
    return out


def finish_reason(summary: dict[str, Any]) -> Literal["stop", "length"]:
    """``length`` when a page was cut short or failed: the answer is not the whole document."""
    return "length" if summary["pages_truncated"] or summary["pages_failed"] else "stop"


def chat_response(run: DocumentRun, reports: Sequence[PageReport]) -> dict[str, Any]:
    """The ``chat.completion`` for a finished document: its markdown, pages joined."""
    summary = summary_json(run.request_id, run.model, run.info, reports)
    content = document_markdown([r.outcome for r in reports])
    return completion(run.request_id, run.model, content, finish_reason(summary), summary["usage"])


async def sse_events(run: DocumentRun) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, one chunk per finished page, a final chunk with the
    finish reason and usage, ``[DONE]``; or an error event (a deadline, a full service)."""

    def event(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    yield event(chunk(run.request_id, run.model, {"role": "assistant", "content": ""}))
    reports: list[PageReport] = []
    try:
        async for report in run.reports():
            text = document_markdown([report.outcome])
            delta = {"content": (PAGE_BREAK if reports else "") + text}
            reports.append(report)
            yield event(chunk(run.request_id, run.model, delta))
    except OCRError as error:
        yield event(error.to_body())
        return
    summary = summary_json(run.request_id, run.model, run.info, reports)
    finish = finish_reason(summary)
    yield event(chunk(run.request_id, run.model, {}, finish_reason=finish, usage=summary["usage"]))
    yield "data: [DONE]\n\n"
