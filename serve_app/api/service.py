"""The work behind ``/v1/ocr``, ``/v1/chat/completions`` and ``/v1/models``, free of Ray.

:class:`OCRService` reads the request, resolves its options at the door, starts a document
run (:mod:`serve_app.documents.run`) and shapes the answer: JSON, NDJSON, ZIP, chat
completion or SSE.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.api.access_log import access_record
from serve_app.api.chat import chat_fields, chat_response, read_chat_request, sse_events
from serve_app.api.errors import error_response
from serve_app.api.ocr import OCRParams, ndjson_lines, read_ocr_request, zip_response
from serve_app.config import AppConfig
from serve_app.core.modes import mode_names
from serve_app.core.prompts import Task
from serve_app.documents.door import Door, Limits
from serve_app.documents.messages import OCROptions
from serve_app.documents.results import document_json
from serve_app.documents.run import Deadline, DocumentRun, DocumentRunner
from serve_app.documents.sources import Source
from serve_app.telemetry.metrics import ServiceMetrics


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


class OCRService:
    """The OCR, chat and models routes' work, running documents with ``runner``."""

    def __init__(self, config: AppConfig, runner: DocumentRunner[Any, Any]) -> None:
        self.door = Door(config)
        self._config = config.ingress
        self._runner = runner

    @property
    def metrics(self) -> ServiceMetrics:
        return self._runner.metrics

    @property
    def max_upload_bytes(self) -> int:
        return self._config.max_upload_bytes

    @property
    def url_inputs(self) -> bool:
        return self._config.url_fetch.enabled

    def models(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries, the default model first, each with the tasks it can do."""
        names = sorted(self.door.models, key=lambda name: name != self.door.default)
        return [model_card(self.door.models[name]) for name in names]

    async def ocr(self, request: Request) -> Response:
        source, params = await read_ocr_request(request, self._config, OCRParams)
        options = self.door.resolve(params.fields())
        run = await self._start(request, "ocr", source, options)
        if params.stream:
            return StreamingResponse(ndjson_lines(run), media_type="application/x-ndjson")
        reports = await run.collect()
        if failed := run.failure(reports):
            body = document_json(run.request_id, run.model, run.info, reports, options)
            return error_response(failed, details=body)
        if params.format == "zip":
            return await zip_response(run, reports)
        return JSONResponse(document_json(run.request_id, run.model, run.info, reports, options))

    async def chat(self, request: Request) -> Response:
        chat, source, text = await read_chat_request(request, self._config)
        options = self.door.resolve(chat_fields(chat, text))
        run = await self._start(request, "chatcmpl", source, options)
        if chat.stream:
            return StreamingResponse(sse_events(run), media_type="text/event-stream")
        reports = await run.collect()
        if failed := run.failure(reports):
            return error_response(failed)
        return JSONResponse(chat_response(run, reports))

    async def _start(
        self, request: Request, prefix: str, source: Source, options: OCROptions
    ) -> DocumentRun:
        """The request's document run, its deadline counted from arrival; the access log
        follows the run's tally."""
        record = access_record(request.scope)
        record.request_id = f"{prefix}-{record.request_id}"
        record.model = options.model
        deadline = Deadline.after(self._config.request_timeout_s, start=record.arrived)
        run = await self._runner.start(record.request_id, source, options, deadline)
        record.kind, record.run = run.info.kind, run.tally
        return run
