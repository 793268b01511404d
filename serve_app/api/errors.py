"""The service's errors as HTTP answers: OpenAI's JSON shape, the error's status, and
``Retry-After`` when retrying helps."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from serve_app.errors import OCRError


def error_response(error: OCRError, details: dict[str, Any] | None = None) -> JSONResponse:
    """The JSON error with its status and, when retryable, ``Retry-After``; ``details`` (the
    per-page answers) go beside ``error``."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
    body = {**(details or {}), **error.to_body()}
    return JSONResponse(body, status_code=error.status_code, headers=headers)
