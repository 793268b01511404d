"""HTTP request parsing and error responses for the ingress (FastAPI types, no Ray)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.config import IngressConfig
from serve_app.errors import InvalidInputError, OCRError, PayloadTooLargeError
from serve_app.resolve import RequestFields


class OCRParams(BaseModel):
    """Options of ``POST /v1/ocr`` (JSON fields, form fields or query parameters)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="The model to read with (see /v1/models)")
    task: str | None = Field(
        None, description="document (default), ocr, free, figure, describe, locate"
    )
    mode: str | None = Field(None, description="tiny, small, base, large, gundam")
    max_crops: int | None = Field(None, description="Gundam tile limit, 2..9")
    text: str | None = Field(None, description="What to find, for task=locate")
    pages: str | None = Field(None, description="PDF pages, e.g. '1-3,7' (1-based)")
    dpi: int | None = Field(None, ge=36, description="PDF render resolution")
    include_regions: bool = True
    include_figures: bool = False
    include_annotated: bool = False
    format: Literal["json", "zip"] = "json"
    stream: bool = Field(False, description="One JSON line per finished page (NDJSON)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)

    def fields(self) -> RequestFields:
        """The request's fields for :func:`serve_app.resolve.resolve_options`; a ZIP always
        carries figure crops and annotated pages."""
        return RequestFields(
            model=self.model,
            task=self.task,
            text=self.text,
            mode=self.mode,
            max_crops=self.max_crops,
            pages=self.pages,
            dpi=self.dpi,
            include_regions=self.include_regions,
            include_figures=self.include_figures or self.format == "zip",
            include_annotated=self.include_annotated or self.format == "zip",
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )


def ocr_request_body_schema() -> dict[str, Any]:
    """OpenAPI ``requestBody`` for ``/v1/ocr`` (the route reads the body itself, so FastAPI
    cannot derive it)."""
    options = OCRParams.model_json_schema()
    props = options["properties"]

    url = {"type": "string", "description": "http(s) URL of the image or PDF, instead of file"}

    def with_file(file_schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"file": file_schema, "url": url, **props}}

    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": with_file({"type": "string", "format": "binary"})},
            "application/json": {
                "schema": with_file(
                    {"type": "string", "description": "base64, or a data: URL with ;base64"}
                )
            },
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }


def decode_file_field(value: str) -> bytes:
    """Bytes of a base64 string or a ``data:...;base64,`` URL."""
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidInputError("a data URL must be base64-encoded ('data:<type>;base64,...')")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("'file' is not valid base64") from None


def check_upload_size(upload: Request | bytes, config: IngressConfig) -> None:
    """Refuse an upload past ``max_upload_bytes``: its bytes, or a request by its declared
    ``Content-Length`` before the body is read.

    Raises:
        PayloadTooLargeError: Naming the size and the limit.
    """
    if isinstance(upload, bytes):
        size = len(upload)
    else:
        length = upload.headers.get("content-length", "")
        size = int(length) if length.isdigit() else 0
    if size > config.max_upload_bytes:
        raise PayloadTooLargeError(
            f"upload is {size} bytes; the limit is {config.max_upload_bytes}"
        )


Fetch = Callable[[str], Awaitable[bytes]]


async def read_ocr_request(
    request: Request, config: IngressConfig, fetch: Fetch
) -> tuple[bytes, OCRParams]:
    """The input's bytes and the options from a JSON, multipart or raw-body request; an input
    named by ``url`` (a JSON or form field, or a query parameter) is fetched with ``fetch``.

    Raises:
        PayloadTooLargeError: Past ``max_upload_bytes``.
        InvalidInputError: For no file or URL, both, bad base64 or invalid options.
        ClientError: For a URL that may not or could not be fetched (see serve_app.fetch).
    """
    check_upload_size(request, config)
    fields: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    data = b""
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        upload = form.get("file")
        if isinstance(upload, str):
            raise InvalidInputError("'file' must be a file part", param="file")
        data = await upload.read() if upload is not None else b""
        fields.update({k: v for k, v in form.items() if k != "file" and isinstance(v, str)})
    elif content_type.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"the body is not valid JSON: {exc.msg}") from None
        if not isinstance(body, dict) or not isinstance(body.get("file", body.get("url")), str):
            raise InvalidInputError(
                "JSON requests need 'file' (base64 data or a data URL) or 'url'"
            )
        data = decode_file_field(body.pop("file")) if "file" in body else b""
        fields.update(body)
    else:
        data = await request.body()
    url = fields.pop("url", None)
    if url is not None and data:
        raise InvalidInputError("send a file or a 'url', not both", param="url")
    if url is not None:
        if not isinstance(url, str):
            raise InvalidInputError("'url' must be a string", param="url")
        data = await fetch(url)
    if not data:
        raise InvalidInputError("the request carries no file (send one, or a 'url')")
    check_upload_size(data, config)
    try:
        return data, OCRParams.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInputError(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def error_response(error: OCRError, details: dict[str, Any] | None = None) -> JSONResponse:
    """The OpenAI-style JSON error with its status and, when retryable, ``Retry-After``;
    ``details`` (the per-page answers) go beside ``error``."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
    body = {**(details or {}), **error.to_body()}
    return JSONResponse(body, status_code=error.status_code, headers=headers)
