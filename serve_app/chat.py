"""``/v1/chat/completions``: the OpenAI chat shape on top of the OCR pipeline.

Only the last user turn counts (DeepSeek-OCR is single-turn). Its image comes from an
``image_url`` part (a data URL) or a PDF from a ``file`` part (``file_data`` as base64 or a data
URL); its text selects the prompt, unless the extra body field ``task`` does. The answer's
content is the page markdown (pages joined with the page-split marker). Streaming sends one
chunk per finished page.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.config import PreprocessConfig
from serve_app.core.prompts import parse_task
from serve_app.errors import InvalidInputError
from serve_app.http import decode_file_field
from serve_app.pipeline import OCROptions


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


def last_user_content(request: ChatRequest) -> tuple[bytes, str]:
    """The file bytes and the text of the last user message.

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
    data: bytes | None = None
    texts: list[str] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:"):
                raise InvalidInputError(
                    "image_url must be a data: URL (remote URLs are not fetched)"
                )
            data = decode_file_field(url)
        elif kind == "file":
            file_data = (part.get("file") or {}).get("file_data")
            if not isinstance(file_data, str):
                raise InvalidInputError("file parts need 'file_data' (base64 or a data URL)")
            data = decode_file_field(file_data)
        else:
            raise InvalidInputError(f"unsupported content part type {kind!r}")
    if data is None:
        raise InvalidInputError("the last user message has no image_url or file part")
    return data, "\n".join(t for t in texts if t.strip()).strip()


def chat_options(request: ChatRequest, text: str, preprocess: PreprocessConfig) -> OCROptions:
    """OCR options for a chat request: ``task`` wins; otherwise the user text is the prompt."""
    try:
        task = parse_task(request.task) if request.task else parse_task("document")
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    return OCROptions(
        task=task,
        prompt_text=text if (text and not request.task) else None,
        mode=request.mode or preprocess.default_mode,
        pages=request.pages,
        dpi=preprocess.default_dpi,
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
