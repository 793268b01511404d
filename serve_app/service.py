"""The work behind ``/v1/ocr`` and ``/v1/chat/completions``, free of Ray.

:class:`OCRService` reads the upload, resolves the options at the door, runs the pipeline over
any :class:`~serve_app.pipeline.Stages` (deployment handles in Serve, in-process stages in
tests) and shapes the answer: JSON, NDJSON, ZIP, chat completion or SSE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.access_log import logged_pages, note, request_id_of
from serve_app.chat import chat_fields, chat_response, read_chat_request, sse_events
from serve_app.config import AppConfig, IngressConfig
from serve_app.core.modes import mode_names
from serve_app.core.prompts import Task
from serve_app.errors import EngineTimeoutError, OCRError
from serve_app.fetch import FetchPolicy, UrlNotAllowedError, fetch_url
from serve_app.http import error_response, read_ocr_request
from serve_app.messages import DocumentInfo, OCROptions
from serve_app.pipeline import FaultPolicy, OCRPipeline, PageReport, Stages
from serve_app.quarantine import Quarantine, fingerprint
from serve_app.resolve import Door, Limits
from serve_app.responses import document_failure, document_json, ndjson_lines, zip_bundle
from serve_app.telemetry.metrics import ServiceMetrics


def fetch_policy(config: IngressConfig) -> FetchPolicy | None:
    """How URL inputs are fetched (``None``: they are refused)."""
    fetch = config.url_fetch
    if not fetch.enabled:
        return None
    return FetchPolicy(max_bytes=config.max_upload_bytes, **fetch.model_dump(exclude={"enabled"}))


def model_card(limits: Limits) -> dict[str, Any]:
    """One model as ``/v1/models`` lists it (OpenAI's fields, then ours)."""
    return {
        "id": limits.model,
        "object": "model",
        "created": 0,
        "owned_by": "deepseek-ocr-serve",
        "tasks": [task.value for task in Task if task in limits.tasks],
        "free_form_prompts": None in limits.tasks,
        "modes": mode_names(limits.family) if limits.reads == "views" else [],
    }


def deadline_error(timeout_s: float) -> EngineTimeoutError:
    return EngineTimeoutError(f"the request did not finish within {timeout_s:.0f} s")


@dataclass
class Run:
    """One request in flight: its id, document, page reports and deadline."""

    request_id: str
    model: str
    info: DocumentInfo
    options: OCROptions
    pages: AsyncIterator[PageReport]
    deadline: float
    timeout_s: float
    state: MutableMapping[str, Any]

    async def reports(self) -> AsyncIterator[PageReport]:
        """The page reports in order. Past the deadline :class:`EngineTimeoutError`; a full
        service :class:`~serve_app.errors.OverloadedError` (the log line records which)."""
        try:
            async with asyncio.timeout_at(self.deadline):
                async for report in self.pages:
                    yield report
        except TimeoutError:
            error = deadline_error(self.timeout_s)
            note(self.state, outcome=error.code)
            raise error from None
        except OCRError as error:
            note(self.state, outcome=error.code)
            raise

    async def collect(self) -> list[PageReport]:
        return [report async for report in self.reports()]

    def failure(self, reports: list[PageReport]) -> OCRError | None:
        """The request's error when none of its pages succeeded (the log line records it)."""
        failed = document_failure(reports)
        if failed is not None:
            note(self.state, outcome=failed.code)
        return failed


class OCRService:
    """The OCR and chat routes' work over the given stages."""

    def __init__(
        self,
        config: AppConfig,
        stages: Stages,
        store: Callable[[bytes], object] = lambda data: data,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        """``store`` keeps the upload where the stages read it (``ray.put`` in Serve)."""
        self._config = config.ingress
        self.door = Door(config)
        self.metrics = metrics or ServiceMetrics()
        ingress = config.ingress
        faults = FaultPolicy(
            retries=ingress.crash_retries,
            quarantine_after=ingress.quarantine_after_crashes,
            quarantine=Quarantine(ingress.quarantine_ttl_s),
        )
        self._pipeline = OCRPipeline(stages, ingress.pages_in_flight, self.metrics, faults)
        self._fetch_policy = fetch_policy(ingress)
        self._store = store

    def models(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries, the default model first, each with the tasks it can do."""
        names = sorted(self.door.models, key=lambda name: name != self.door.default)
        return [model_card(self.door.models[name]) for name in names]

    async def ocr(self, request: Request) -> Response:
        data, params = await read_ocr_request(request, self._config, self._fetch)
        options = self.door.resolve(params.fields())
        run = await self._start(request, "ocr", data, options)
        if params.stream:
            return StreamingResponse(ndjson_lines(run), media_type="application/x-ndjson")
        reports = await run.collect()
        if failed := run.failure(reports):
            body = document_json(run.request_id, run.model, run.info, reports, options)
            return error_response(failed, details=body)
        if params.format == "zip":
            # The layout PDF and ZIP take CPU seconds for long documents: off the event loop.
            return await asyncio.to_thread(zip_bundle, run, reports)
        return JSONResponse(document_json(run.request_id, run.model, run.info, reports, options))

    async def chat(self, request: Request) -> Response:
        chat, data, text = await read_chat_request(request, self._config, self._fetch)
        options = self.door.resolve(chat_fields(chat, text))
        run = await self._start(request, "chatcmpl", data, options)
        if chat.stream:
            return StreamingResponse(sse_events(run), media_type="text/event-stream")
        reports = await run.collect()
        if failed := run.failure(reports):
            return error_response(failed)
        return JSONResponse(chat_response(run, reports))

    async def _fetch(self, url: str) -> bytes:
        if self._fetch_policy is None:
            raise UrlNotAllowedError("this service does not fetch URLs; send the file", "url")
        return (await fetch_url(url, self._fetch_policy)).content

    async def _start(self, request: Request, prefix: str, data: bytes, options: OCROptions) -> Run:
        """Open the document (and decode a single image) within the request's deadline."""
        state = request.scope.setdefault("state", {})
        request_id = f"{prefix}-{request_id_of(state)}"
        note(state, request_id=request_id, model=options.model)
        loop = asyncio.get_running_loop()
        arrived = state.get("arrived", loop.time())  # set by admission, else now
        deadline = arrived + self._config.request_timeout_s
        upload = await asyncio.to_thread(fingerprint, data) if len(data) > 2**20 else (
            fingerprint(data)
        )  # fmt: skip
        upload_id = f"{options.model}:{upload}"  # a page that crashes one model may suit another
        try:
            async with asyncio.timeout_at(deadline):
                source = self._store(data)
                info, pages = await self._pipeline.run(source, options, request_id, upload_id)
        except TimeoutError:
            raise deadline_error(self._config.request_timeout_s) from None
        note(state, kind=info.kind)
        return Run(
            request_id=request_id,
            model=options.model,
            info=info,
            options=options,
            pages=logged_pages(pages, state, self.metrics, options.mode_label, options.model),
            deadline=deadline,
            timeout_s=self._config.request_timeout_s,
            state=state,
        )
