"""The service's error hierarchy.

Every error a request can end in is an :class:`OCRError`. Client errors (4xx) mean "change the
request"; server errors (5xx) mean "try again later or call an operator". Each class carries a
stable machine-readable ``code`` and its HTTP status on the class, and its ``__init__`` takes a
message (and the request field at fault, ``param``), which is all it pickles, so instances
cross Ray Serve deployment handles intact.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OCRError(Exception):
    """Base of every error the service reports to a client."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    error_type: ClassVar[str] = "server_error"
    retry_after_s: ClassVar[int | None] = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message, self.param)

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style JSON error body: ``{"error": {message, type, code, param}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
            }
        }


class ClientError(OCRError):
    """The request cannot be served as sent (HTTP 4xx)."""

    status_code = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class InvalidInputError(ClientError):
    """A field or the payload is malformed (bad base64, unknown mode, bad parameter)."""

    code = "invalid_input"


class InvalidPageRangeError(ClientError):
    """A ``pages`` selection such as ``1-3,7`` is malformed or outside the document."""

    code = "invalid_page_range"


class CorruptDocumentError(ClientError):
    """The bytes claim to be an image or PDF but cannot be decoded."""

    code = "corrupt_document"


class PayloadTooLargeError(ClientError):
    """The upload exceeds the configured byte limit."""

    status_code = 413
    code = "payload_too_large"


class TooManyPagesError(ClientError):
    """More pages were selected than one request may process."""

    status_code = 413
    code = "too_many_pages"


class ImageTooLargeError(ClientError):
    """The decoded image has more pixels than the configured limit."""

    status_code = 413
    code = "image_too_large"


class UnsupportedMediaTypeError(ClientError):
    """The input is neither a supported image format nor a PDF."""

    status_code = 415
    code = "unsupported_media_type"


class EncryptedDocumentError(ClientError):
    """The PDF needs a password."""

    status_code = 422
    code = "encrypted_document"


class EmptyDocumentError(ClientError):
    """The PDF has no pages."""

    status_code = 422
    code = "empty_document"


class RateLimitedError(ClientError):
    """Too many requests are queued; retry after ``retry_after_s`` seconds."""

    status_code = 429
    code = "rate_limited"
    retry_after_s = 2


class ServerError(OCRError):
    """The service failed to serve a valid request (HTTP 5xx)."""


class GenerationError(ServerError):
    """The engine failed while generating."""

    code = "generation_failed"


class EngineCrashedError(ServerError):
    """The engine working on the page died: its replica's process, or vLLM's engine core.

    ``replica`` names the engine replica that died (its Ray actor id), when known: a page is
    quarantined only after replicas it was alone on died with it (two by default).
    """

    status_code = 503
    code = "engine_crashed"
    retry_after_s = 10

    def __init__(self, message: str, param: str | None = None, replica: str | None = None):
        super().__init__(message, param)
        self.replica = replica

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message, self.param, self.replica)


class EngineUnavailableError(ServerError):
    """The engine replica could not take the page, which did not run there: its engine had
    already died (it is being replaced), or Ray could not reach it. Sent again, not counted as
    a crash of the page."""

    status_code = 503
    code = "engine_unavailable"
    retry_after_s = 10


class PageDataLostError(ServerError):
    """A prepared page's data (views or pixels) was gone from Ray's object store: its node
    died, or Ray's reference counting dropped it. The page is prepared again."""

    status_code = 503
    code = "page_data_lost"
    retry_after_s = 5


class ModelNotFoundError(ClientError):
    """The request names a model this service does not serve (OpenAI's 404 shape)."""

    status_code = 404
    code = "model_not_found"


class RouteNotFoundError(ClientError):
    """No route has this path (HTTP 404)."""

    status_code = 404
    code = "not_found"


class MethodNotAllowedError(ClientError):
    """The route exists but not for this HTTP method (HTTP 405)."""

    status_code = 405
    code = "method_not_allowed"


class JobNotFoundError(ClientError):
    """No such job, or not one the caller's key submitted (HTTP 404)."""

    status_code = 404
    code = "job_not_found"


class JobExpiredError(ClientError):
    """The job existed, but its results expired and were freed (HTTP 410)."""

    status_code = 410
    code = "job_expired"


class IdempotencyKeyReusedError(ClientError):
    """The ``Idempotency-Key`` was used before with a different request (HTTP 422, as the
    IETF idempotency-key draft says)."""

    status_code = 422
    code = "idempotency_key_reused"


class TooManyQueuedJobsError(ClientError):
    """The caller's key has as many queued jobs as it may (``jobs.max_queued_per_key``)."""

    status_code = 429
    code = "too_many_queued_jobs"
    retry_after_s = 30


class JobStoreUnavailableError(ServerError):
    """The job store (Redis, or its object storage) did not answer; nothing was changed."""

    status_code = 503
    code = "job_store_unavailable"
    retry_after_s = 5


class JobDataLostError(ServerError):
    """A stored page of the job is missing from object storage while the job still holds it:
    an operator must look (a bucket lifecycle rule, a deleted prefix)."""

    code = "job_data_lost"


class PageNotFoundError(ClientError):
    """The job has no such page: not selected, or not finished yet (HTTP 404)."""

    status_code = 404
    code = "page_not_found"


class TaskNotSupportedError(ClientError):
    """The chosen model cannot do the task asked of it; the message names models that can."""

    status_code = 422
    code = "task_not_supported"


class PageQuarantinedError(ClientError):
    """The page crashed engines twice; it is not sent to an engine again for a while."""

    status_code = 422
    code = "page_quarantined"


class OverloadedError(ServerError):
    """No engine capacity right now; retry after ``retry_after_s`` seconds."""

    status_code = 503
    code = "overloaded"
    retry_after_s = 5


class NotReadyError(ServerError):
    """The engine is still loading."""

    status_code = 503
    code = "not_ready"
    retry_after_s = 10


class EngineTimeoutError(ServerError):
    """The request did not finish within its deadline; its engine work was cancelled."""

    status_code = 504
    code = "timeout"


def as_ocr_error(exc: BaseException) -> OCRError:
    """The :class:`OCRError` behind ``exc``; anything else becomes a generic server error.

    Errors raised in another Ray Serve deployment arrive wrapped (Ray's task error keeps the
    original as ``cause``); the message of an unexpected error is not passed to clients.
    """
    for _ in range(5):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    if isinstance(exc, OCRError):
        return exc
    return ServerError(f"internal error ({type(exc).__name__})")


def error_class(code: str) -> type[OCRError]:
    """The error class with this ``code`` (:class:`ServerError` for an unknown code).

    >>> error_class("timeout").status_code
    504
    """
    pending: list[type[OCRError]] = [OCRError]
    while pending:
        kind = pending.pop()
        if kind.code == code and kind is not OCRError:
            return kind
        pending.extend(kind.__subclasses__())
    return ServerError
