"""HTTP ingress: FastAPI routes on Ray Serve; the work happens in the other deployments."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from serve_app.admission import Admission, AdmissionMiddleware
from serve_app.chat import ChatRequest, chat_options, chunk, completion, last_user_content
from serve_app.config import IngressConfig, PreprocessConfig
from serve_app.core.document import PageResult, bundle_zip, document_markdown
from serve_app.core.markdown import PAGE_SPLIT
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import (
    EngineTimeoutError,
    InvalidInputError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    as_ocr_error,
)
from serve_app.http import error_response, ocr_request_body_schema, read_ocr_request
from serve_app.pipeline import DocumentInfo, OCROptions, OCRPipeline, PageReport, PreparedPage
from serve_app.responses import document_json, page_json, summary_json

PAGE_BREAK = f"\n\n{PAGE_SPLIT}\n\n"

api = FastAPI(
    title="DeepSeek-OCR",
    summary="Images and PDFs to markdown, text and layout boxes.",
    version="0.1.0",
)


api.add_middleware(AdmissionMiddleware, paths=frozenset({"/v1/ocr", "/v1/chat/completions"}))


@api.exception_handler(Exception)
async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(as_ocr_error(exc))


@api.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(InvalidInputError(str(exc.errors())))


class HandleStages:
    """The pipeline's stages as calls to the other deployments."""

    def __init__(
        self,
        pre: DeploymentHandle,
        engine: DeploymentHandle,
        post: DeploymentHandle,
        max_pages: int,
    ) -> None:
        self._pre, self._engine, self._post = pre, engine, post
        self._max_pages = max_pages

    async def inspect(self, source: object, options: OCROptions) -> DocumentInfo:
        return await _overload_safe(self._pre.inspect.remote(source, options, self._max_pages))

    async def prepare(
        self, source: object, index: int, number: int, options: OCROptions
    ) -> PreparedPage:
        return await _overload_safe(self._pre.prepare.remote(source, index, number, options))

    async def recognize(
        self, page: PreparedPage, options: OCROptions, request_id: str
    ) -> PageGeneration:
        return await _overload_safe(self._engine.recognize.remote(page.image, options, request_id))

    async def postprocess(
        self, page: PreparedPage, generation: PageGeneration, options: OCROptions
    ) -> PageResult:
        size = (page.image.width, page.image.height)
        call = self._post.page.remote(page.number, size, page.pixels, generation.text, options)
        return await _overload_safe(call)


async def _overload_safe(response: Any) -> Any:
    """Await a handle call. A full queue downstream becomes a 503 with Retry-After; if the
    caller is cancelled (deadline, client gone) the downstream request is cancelled too, which
    aborts its engine work (Serve does not do that for an awaited response on its own)."""
    try:
        return await response
    except BackPressureError:
        raise OverloadedError("the service is at capacity; retry shortly") from None
    except asyncio.CancelledError:
        response.cancel()
        raise


@serve.deployment
@serve.ingress(api)
class OCRIngress:
    def __init__(
        self,
        config: IngressConfig,
        preprocess_config: PreprocessConfig,
        preprocess: DeploymentHandle,
        engine: DeploymentHandle,
        postprocess: DeploymentHandle,
    ) -> None:
        self._config = config
        self._preprocess_config = preprocess_config
        self._engine = engine
        self._app_name = serve.get_replica_context().app_name
        # serve.status() blocks on the controller: one thread, so stuck probes cannot pile up.
        self._status_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-status")
        stages = HandleStages(preprocess, engine, postprocess, config.max_pages)
        self._pipeline = OCRPipeline(stages, config.pages_in_flight)
        self._was_running = False
        admission = Admission(config.max_working_requests, config.max_waiting_requests)
        AdmissionMiddleware.install(admission)

    def _deadline(self, request: Request) -> float:
        """Event-loop time by which the request must finish (counted from its arrival)."""
        arrived = getattr(request.state, "arrived", None)
        start = arrived if arrived is not None else asyncio.get_running_loop().time()
        return float(start + self._config.request_timeout_s)

    def _timeout_error(self) -> EngineTimeoutError:
        return EngineTimeoutError(
            f"the request did not finish within {self._config.request_timeout_s:.0f} s"
        )

    async def _start(
        self, source: object, options: OCROptions, request_id: str, deadline: float
    ) -> tuple[DocumentInfo, AsyncIterator[PageReport]]:
        """Inspect the input (and decode a single image) within the request deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._pipeline.run(source, options, request_id)
        except TimeoutError:
            raise self._timeout_error() from None

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        """The ingress process is alive."""
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> dict[str, bool]:
        """Every engine replica the application was deployed with has loaded (503 until then).

        Serve reports the application RUNNING once each deployment has its target replicas,
        and an engine replica counts only when its constructor (the engine start) finished;
        so this is the application's status, plus an engine replica answering within 2 s.
        Once this replica has seen the application RUNNING it stays ready while an engine
        answers: replicas that autoscaling adds, or an in-place config update rolling the
        engines, do not take it out of a load balancer.
        """
        if not self._was_running:
            if not await self._application_running():
                raise NotReadyError("the application is still deploying (engines loading)")
            self._was_running = True
        try:
            if await asyncio.wait_for(self._engine.ready.remote(), timeout=2.0):
                return {"ready": True}
        except TimeoutError:
            pass
        raise NotReadyError("the engine is still loading")

    async def _application_running(self) -> bool:
        """Serve's status of this ingress's application is RUNNING (False if unknown in 2 s)."""
        loop = asyncio.get_running_loop()
        try:
            status = await asyncio.wait_for(
                loop.run_in_executor(self._status_pool, serve.status), timeout=2.0
            )
        except (TimeoutError, ray.exceptions.RayError):
            return False
        app = status.applications.get(self._app_name)
        return app is not None and app.status == ApplicationStatus.RUNNING

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        model = {"id": self._config.model_name, "object": "model", "owned_by": "deepseek-ai"}
        return {"object": "list", "data": [model]}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI-compatible: the last user turn's image (``image_url`` data URL) or PDF
        (``file`` part) is OCR'd; its text is the prompt unless the extra field ``task`` is set.
        Extra fields: ``mode``, ``task``, ``pages``. The answer is the page markdown."""
        try:
            chat = ChatRequest.model_validate(json.loads(await request.body()))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise InvalidInputError(f"invalid chat request: {exc}") from None
        data, text = last_user_content(chat)
        if len(data) > self._config.max_upload_bytes:
            raise PayloadTooLargeError(
                f"the file is {len(data)} bytes; the limit is {self._config.max_upload_bytes}"
            )
        options = chat_options(chat, text, self._preprocess_config)
        request_id = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        model = self._config.model_name
        deadline = self._deadline(request)
        info, pages = await self._start(ray.put(data), options, request_id, deadline)
        if chat.stream:
            stream = self._chat_stream(request_id, model, pages, deadline)
            return StreamingResponse(stream, media_type="text/event-stream")
        reports = await self._collect(pages, deadline)
        summary = summary_json(request_id, model, info, reports)
        truncated = summary["pages_truncated"] or summary["pages_failed"]
        finish: Literal["stop", "length"] = "length" if truncated else "stop"
        content = document_markdown([r.outcome for r in reports])
        return JSONResponse(completion(request_id, model, content, finish, summary["usage"]))

    async def _chat_stream(
        self, request_id: str, model: str, pages: AsyncIterator[PageReport], deadline: float
    ) -> AsyncIterator[str]:
        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        yield event(chunk(request_id, model, {"role": "assistant", "content": ""}))
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        finish = "stop"
        first = True
        try:
            async with asyncio.timeout_at(deadline):
                async for report in pages:
                    text = document_markdown([report.outcome])
                    yield event(
                        chunk(request_id, model, {"content": ("" if first else PAGE_BREAK) + text})
                    )
                    first = False
                    if report.generation is None or report.generation.truncated:
                        finish = "length"
                    if report.generation is not None:
                        usage["prompt_tokens"] += report.generation.prompt_tokens
                        usage["completion_tokens"] += report.generation.completion_tokens
        except (TimeoutError, OverloadedError) as exc:
            error = self._timeout_error() if isinstance(exc, TimeoutError) else exc
            yield event(error.to_body())
            return
        yield event(chunk(request_id, model, {}, finish_reason=finish, usage=usage))
        yield "data: [DONE]\n\n"

    @api.post("/v1/ocr", openapi_extra={"requestBody": ocr_request_body_schema()})
    async def ocr(self, request: Request) -> Response:
        """OCR an image or PDF: multipart upload, JSON with base64 / data URL, or a raw body.

        Options (form fields, JSON fields or query parameters): task, mode, max_crops, text,
        pages, dpi, include_regions, include_figures, include_annotated, format (json|zip),
        stream (one JSON line per page), max_tokens, temperature.
        """
        data, params = await read_ocr_request(request, self._config)
        options = params.options(self._preprocess_config)
        request_id = f"ocr-{uuid.uuid4().hex[:16]}"
        deadline = self._deadline(request)
        info, pages = await self._start(ray.put(data), options, request_id, deadline)
        if params.stream:
            stream = self._stream(request_id, info, pages, options, deadline)
            return StreamingResponse(stream, media_type="application/x-ndjson")
        reports = await self._collect(pages, deadline)
        if params.format == "zip":
            return self._zip(request_id, info, reports, options)
        return JSONResponse(
            document_json(request_id, self._config.model_name, info, reports, options)
        )

    async def _collect(self, pages: AsyncIterator[PageReport], deadline: float) -> list[PageReport]:
        """Every page report, in order; a deadline or a full service fails the request."""
        try:
            async with asyncio.timeout_at(deadline):
                return [report async for report in pages]
        except TimeoutError:
            raise self._timeout_error() from None

    async def _stream(
        self,
        request_id: str,
        info: DocumentInfo,
        pages: AsyncIterator[PageReport],
        options: OCROptions,
        deadline: float,
    ) -> AsyncIterator[str]:
        reports: list[PageReport] = []
        try:
            async with asyncio.timeout_at(deadline):
                async for report in pages:
                    reports.append(report)
                    yield json.dumps(page_json(report, options)) + "\n"
        except (TimeoutError, OverloadedError) as exc:
            error = self._timeout_error() if isinstance(exc, TimeoutError) else exc
            yield json.dumps({"object": "error", **error.to_body()}) + "\n"
            return
        yield json.dumps(summary_json(request_id, self._config.model_name, info, reports)) + "\n"

    def _zip(
        self, request_id: str, info: DocumentInfo, reports: list[PageReport], options: OCROptions
    ) -> Response:
        summary = document_json(request_id, self._config.model_name, info, reports, options)
        for page in summary["pages"]:
            page.pop("figures", None)
            page.pop("annotated_image_base64", None)
        dpi = options.dpi if info.kind == "pdf" else 72
        data = bundle_zip(
            [r.outcome for r in reports],
            dpi=dpi,
            extra_files={"result.json": json.dumps(summary, indent=2).encode()},
        )
        headers = {"Content-Disposition": f'attachment; filename="{request_id}.zip"'}
        return Response(data, media_type="application/zip", headers=headers)
