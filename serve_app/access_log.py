"""One log line, one root span and the answer's metrics per request, when its response has
been sent (streams included).

An ASGI middleware takes the request's id from its ``X-Request-ID`` header (the client's, or
the one Ray Serve's proxy adds and returns), or makes one and returns it in that header, and
logs at the end: id, method, route,
status, outcome, pages, per-stage seconds and total seconds. Route handlers add what they know
with :func:`note` (pages, stage timings, the outcome). Unexpected exceptions are logged with
their traceback by :func:`log_unexpected`. No Ray imports: Serve's logger is looked up by name.

The request's root span (a W3C ``traceparent`` from the client is its parent) is current while
the route runs, so every page's stage spans join it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry.trace import Span, SpanKind

from serve_app.core.document import PageFailure
from serve_app.pipeline import PageReport
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import ServiceMetrics

logger = logging.getLogger("ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NOT_ID = re.compile(r"[^A-Za-z0-9._:-]")
STAGES = ("preprocess_s", "engine_s", "postprocess_s")
TRACE_HEADERS = ("traceparent", "tracestate")


def request_record(scope_state: MutableMapping[str, Any]) -> dict[str, Any]:
    """The record the middleware logs for this request (``request.state`` of Starlette)."""
    record: dict[str, Any] = scope_state.setdefault("access_log", {})
    return record


def note(scope_state: MutableMapping[str, Any], **fields: Any) -> None:
    """Add fields to the request's log line (``pages=3``, ``outcome="partial"``)."""
    request_record(scope_state).update(fields)


def add_stage_seconds(scope_state: MutableMapping[str, Any], timings: dict[str, float]) -> None:
    """Add one page's stage timings to the request's totals."""
    record = request_record(scope_state)
    for stage in STAGES:
        if stage in timings:
            record[stage] = record.get(stage, 0.0) + timings[stage]


def request_id_of(scope_state: MutableMapping[str, Any]) -> str:
    return str(request_record(scope_state).get("request_id", "-"))


def log_unexpected(scope_state: MutableMapping[str, Any], exc: BaseException) -> None:
    """Log an exception nobody expected, with its traceback and the request id."""
    logger.error(
        "request %s failed unexpectedly: %s: %s",
        request_id_of(scope_state),
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def format_line(record: dict[str, Any]) -> str:
    """``request_id=... method=POST route=/v1/ocr status=200 outcome=ok pages=3 ...``.

    >>> format_line({"request_id": "r1", "method": "GET", "route": "/ready", "status": 503,
    ...              "outcome": "not_ready", "seconds": 0.0123})
    'request_id=r1 method=GET route=/ready status=503 outcome=not_ready seconds=0.012'
    """
    keys = ("request_id", "method", "route", "status", "model", "outcome", "pages",
            "pages_failed")  # fmt: skip
    parts = [f"{k}={record[k]}" for k in keys if record.get(k) is not None]
    parts += [f"{stage}={record[stage]:.3f}" for stage in STAGES if stage in record]
    parts.append(f"seconds={record.get('seconds', 0.0):.3f}")
    if record.get("trace_id"):
        parts.append(f"trace_id={record['trace_id']}")
    return " ".join(parts)


class AccessLogMiddleware:
    """Pure ASGI middleware (so streamed bodies are timed to their last byte)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics or ServiceMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id")
        # Only characters that keep the log line parseable; the id is never empty.
        request_id = _NOT_ID.sub("", (given or b"").decode("latin-1"))[:128]
        request_id = request_id or uuid.uuid4().hex[:16]
        record = request_record(state)
        record.update(request_id=request_id, method=scope.get("method"), route=scope.get("path"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                added = []
                if given is None:  # whoever sent or added the header also returns it
                    added.append((b"x-request-id", request_id.encode()))
                if traceresponse := tracing.current_traceresponse():
                    added.append((b"traceresponse", traceresponse.encode()))
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        parent = {k: headers[k.encode()].decode("latin-1") for k in TRACE_HEADERS
                  if k.encode() in headers}  # fmt: skip
        name = f"{scope.get('method')} {scope.get('path')}"
        with tracing.span(name, parent, kind=SpanKind.SERVER) as span:
            record["trace_id"] = tracing.current_trace_id()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                record["seconds"] = time.perf_counter() - start
                record.setdefault("status", 500)
                record.setdefault("outcome", _outcome(int(record["status"])))
                logger.info("%s", format_line(record))
                self._finish(span, record)

    def _finish(self, span: Span, record: dict[str, Any]) -> None:
        status = int(record["status"])
        self.metrics.response(str(record["route"]), status, str(record["outcome"]),
                              record["seconds"])  # fmt: skip
        tracing.set_attributes(span, {
            "http.request.method": record.get("method"),
            "url.path": record.get("route"),
            "http.response.status_code": status,
            "ocr.request_id": record.get("request_id"),
            "ocr.document_kind": record.get("kind"),
            "ocr.pages": record.get("pages"),
            "ocr.pages_failed": record.get("pages_failed"),
            "ocr.outcome": record.get("outcome"),
        })  # fmt: skip
        if status >= 400:
            tracing.mark_error(span, str(record["outcome"]), f"HTTP {status}")


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


async def logged_pages(
    pages: AsyncIterator[PageReport],
    scope_state: MutableMapping[str, Any],
    metrics: ServiceMetrics,
    mode: str,
    model: str = "",
) -> AsyncIterator[PageReport]:
    """Pass page reports through, counting pages, failures and stage seconds for the log, and
    each page in the metrics."""
    record = request_record(scope_state)
    record.setdefault("pages", 0)
    record.setdefault("pages_failed", 0)
    async for report in pages:
        record["pages"] += 1
        if isinstance(report.outcome, PageFailure):
            record["pages_failed"] += 1
        add_stage_seconds(scope_state, report.timings)
        metrics.page(report, mode, model)
        yield report
    record["outcome"] = "partial" if record["pages_failed"] else "ok"
