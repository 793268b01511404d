"""Files in requests: base64 fields and data URLs, and the upload size limit (checked on the
declared length, and counted as a body arrives)."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.config import IngressConfig
from serve_app.errors import InvalidInputError, PayloadTooLargeError


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


class BodyLimitMiddleware:
    """ASGI middleware: a request body is counted as it arrives and refused (413) once it
    passes ``max_bytes``, whether or not it declared a ``Content-Length`` (a chunked body
    would otherwise be read whole into memory before any check)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLargeError(
                        f"the request body passed {self.max_bytes} bytes, the upload limit"
                    )
            return message

        await self.app(scope, counted, send)
