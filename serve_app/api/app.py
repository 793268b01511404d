"""The HTTP API: FastAPI routes of a few lines each over an :class:`OCRService`.

Ray-free: the Serve ingress builds it per replica with handle-backed stages and Serve's
readiness; tests build it with in-process stages and drive it through ``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api import routes
from serve_app.api.access_log import AccessLogMiddleware, access_record, log_unexpected
from serve_app.api.admission import Admission, AdmissionMiddleware
from serve_app.api.auth import ApiKeys, AuthMiddleware
from serve_app.api.errors import error_response
from serve_app.api.jobs import JobParams, JobsService, ResultFormat
from serve_app.api.ocr import ocr_request_body_schema
from serve_app.api.service import OCRService
from serve_app.api.ui import add_ui_routes
from serve_app.api.uploads import BodyLimitMiddleware
from serve_app.errors import (
    ClientError,
    InvalidInputError,
    MethodNotAllowedError,
    OCRError,
    RouteNotFoundError,
    as_ocr_error,
)
from serve_app.jobs.model import JobState

# An ASGI application, as Serve's ingress hands it over (FastAPI is one).
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


def create_api(
    service: OCRService,
    admission: Admission,
    ready: Callable[[], Awaitable[None]],
    keys: ApiKeys | None = None,
    jobs: JobsService | None = None,
) -> FastAPI:
    """The app. ``ready`` raises :class:`~serve_app.errors.NotReadyError` until the engines
    have loaded; with ``keys`` every route but /health and /ready needs one of them; with
    ``jobs``, the ``/v1/jobs`` routes."""
    api = FastAPI(
        title="DeepSeek-OCR",
        summary="Images and PDFs to markdown, text and layout boxes.",
        version="0.1.0",
    )
    api.add_middleware(BodyLimitMiddleware, max_bytes=service.max_upload_bytes)
    api.add_middleware(AdmissionMiddleware, admission=admission)
    api.add_middleware(AuthMiddleware, keys=keys or ApiKeys(()))  # before any work is admitted
    # Outermost: it sees every answer, 429s included.
    api.add_middleware(AccessLogMiddleware, metrics=service.metrics)

    @api.exception_handler(OCRError)
    async def on_error(request: Request, exc: OCRError) -> JSONResponse:
        access_record(request.scope).outcome = exc.code
        return error_response(exc)

    @api.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = as_ocr_error(exc)  # an error of another deployment arrives wrapped
        if error is not exc and error.code == "internal_error":
            log_unexpected(access_record(request.scope), exc)
        return await on_error(request, error)

    @api.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await on_error(request, InvalidInputError(str(exc.errors())))

    @api.exception_handler(StarletteHTTPException)
    async def on_routing(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own 404 and 405, in the service's error shape."""
        path = access_record(request.scope).route
        if exc.status_code == 405:
            error: OCRError = MethodNotAllowedError(f"{request.method} is not allowed on {path}")
        elif exc.status_code == 404:
            error = RouteNotFoundError(f"no route {path}; the API is listed at /docs")
        else:
            error = ClientError(str(exc.detail))
        response = await on_error(request, error)
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})
        return response

    @api.get(routes.HEALTH.path)
    async def health() -> dict[str, str]:
        """The ingress process is alive."""
        return {"status": "ok"}

    @api.get(routes.READY.path)
    async def is_ready() -> dict[str, bool]:
        """200 once every engine replica the application was deployed with has loaded."""
        await ready()
        return {"ready": True}

    @api.get(routes.MODELS.path)
    async def models() -> dict[str, Any]:
        """The models served; requests name one as ``model`` (the first is the default)."""
        return {"object": "list", "data": service.models()}

    @api.post(routes.OCR.path, openapi_extra={"requestBody": ocr_request_body_schema()})
    async def ocr(request: Request) -> Response:
        """OCR an image or PDF: multipart upload, JSON with base64 / data URL, or a raw body.

        Options (form fields, JSON fields or query parameters): model, task, mode, max_crops, text,
        pages, dpi, include_regions, include_figures, include_annotated, include_page_image,
        format (json|zip),
        stream (one JSON line per page), max_tokens, temperature.
        """
        return await service.ocr(request)

    @api.post(routes.CHAT.path)
    async def chat_completions(request: Request) -> Response:
        """OpenAI-compatible: the last user turn's image (``image_url`` data URL) or PDF
        (``file`` part) is OCR'd; its text is the prompt unless the extra field ``task`` is set.
        Extra fields: ``mode``, ``task``, ``pages``. The answer is the page markdown."""
        return await service.chat(request)

    if jobs is not None:
        add_job_routes(api, jobs)
    add_ui_routes(api, {
        "api_keys": (keys or ApiKeys(())).enabled,
        "url_inputs": service.url_inputs,
        "jobs": jobs is not None,
        "max_upload_bytes": service.max_upload_bytes,
    })  # fmt: skip
    return api


def add_job_routes(api: FastAPI, jobs: JobsService) -> None:
    """``/v1/jobs`` and the routes of one job."""

    @api.post(
        routes.JOBS.path,
        status_code=202,
        openapi_extra={"requestBody": ocr_request_body_schema(JobParams)},
    )
    async def submit_job(request: Request) -> Response:
        """Submit a document as a job (the inputs and options of /v1/ocr, plus ``metadata``):
        202 with its id and URLs once the document is stored. An ``Idempotency-Key`` header
        returns the same job (200) for a repeated submit."""
        return await jobs.submit(request)

    @api.get(routes.JOBS.path)
    async def list_jobs(
        request: Request,
        status: JobState | None = None,
        limit: int = Query(20, ge=1, le=100),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """The caller's jobs, newest first."""
        return await jobs.listing(request, status, limit, offset)

    @api.get(routes.JOB.path)
    async def get_job(
        request: Request,
        job_id: str,
        wait: float | None = Query(
            None,
            ge=0,
            description="Long-poll: seconds to wait for a change (a page done, a new state)",
        ),  # fmt: skip
    ) -> dict[str, Any]:
        """The job: status (queued, running, succeeded, partial, failed, cancelled), pages
        total / done / failed, queue position, times, estimated seconds left. 410 once its
        results expired."""
        return await jobs.status(request, job_id, wait)

    @api.get(routes.JOB_EVENTS.path)
    async def job_events(
        request: Request, job_id: str, after: int | None = Query(None, ge=0)
    ) -> Response:
        """The pages done so far, then each page as it is done, then the job: one JSON line
        each, or server-sent events with ``Accept: text/event-stream`` (event ids count the
        pages; reconnect with ``Last-Event-ID``, or ``after`` for JSON lines)."""
        return await jobs.events(request, job_id, after)

    @api.get(routes.JOB_RESULT.path)
    async def job_result(request: Request, job_id: str, format: ResultFormat = "json") -> Response:
        """The document's result as /v1/ocr answers it (json, markdown or zip), with the pages
        done so far while the job runs."""
        return await jobs.result(request, job_id, format)

    @api.get(routes.JOB_PAGE.path)
    async def job_page(request: Request, job_id: str, number: int) -> dict[str, Any]:
        """One page of the job (1-based), as /v1/ocr answers it."""
        return await jobs.page(request, job_id, number)

    @api.post(routes.JOB_CANCEL.path)
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        """Stop the job: its engine work is aborted, the pages done are kept."""
        return await jobs.cancel(request, job_id)

    @api.delete(routes.JOB.path)
    async def delete_job(request: Request, job_id: str) -> dict[str, Any]:
        """Remove the job and everything stored for it."""
        return await jobs.delete(request, job_id)
