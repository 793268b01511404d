"""One log line, one root span and the answer's metrics per request, when its response has
been sent (streams included).

An ASGI middleware takes the request's id from its ``X-Request-ID`` header (the client's, or
the one Ray Serve's proxy adds and returns), or makes one and returns it in that header, and
logs at the end: id, method, route, status, outcome, pages, per-stage seconds and total
seconds. What the request learns on the way goes into its typed :class:`AccessRecord`
(:func:`access_record`): the admission time, the model, the document run's tally, an error's
code. Unexpected exceptions are logged with their traceback by :func:`log_unexpected`. No Ray
imports: Serve's logger is looked up by name.

The request's root span (a W3C ``traceparent`` from the client is its parent) is current while
the route runs, so every page's stage spans join it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from opentelemetry.trace import Span, SpanKind

from serve_app.api.routes import route_label
from serve_app.documents.run import Tally
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


@dataclass
class AccessRecord:
    """What a request's log line says, filled in on the way.

    Attributes:
        arrived: Event-loop time it was admitted (its deadline counts from it), if it was.
        outcome: Set by whoever answered with an error (its code); else the run's outcome,
            else one from the status.
        caller: The hash of the API key it carried (``sha256:<hex>``), with keys on.
        run: The tally of the document run it started, if any.
    """

    request_id: str
    method: str | None = None
    route: str = ""
    arrived: float | None = None
    status: int | None = None
    model: str | None = None
    kind: str | None = None
    outcome: str | None = None
    run: Tally | None = None
    caller: str | None = None
    job_id: str | None = None
    trace_id: str | None = None
    seconds: float = 0.0

    @property
    def final_outcome(self) -> str:
        if self.outcome is not None:
            return self.outcome
        if self.run is not None and self.run.outcome is not None:
            return self.run.outcome
        status = self.status or 500
        if status < 400:
            return "ok"
        return "client_error" if status < 500 else "server_error"


_STATE_KEY = "access_record"


def access_record(scope: MutableMapping[str, Any]) -> AccessRecord:
    """The request's record, kept in its ASGI scope's state (``request.scope`` in a route;
    made here for a request the middleware did not see, as in unit tests)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    record = state.get(_STATE_KEY)
    if not isinstance(record, AccessRecord):
        record = state[_STATE_KEY] = AccessRecord(request_id=uuid.uuid4().hex[:16])
    return record


def quote_path(path: str) -> str:
    """The request path as the log writes it: percent-encoded again, so a decoded ``%0A`` or
    space cannot end the line or forge a field.

    >>> quote_path("/v1/ocr"), quote_path("/x\n request_id=forged")
    ('/v1/ocr', '/x%0A%20request_id=forged')
    """
    return quote(path, safe="/:@!$&'()*+,;=-._~")


def log_unexpected(record: AccessRecord, exc: BaseException) -> None:
    """Log an exception nobody expected, with its traceback and the request id."""
    logger.error(
        "request %s failed unexpectedly: %s: %s",
        record.request_id,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def format_line(record: AccessRecord) -> str:
    """``request_id=... method=POST route=/v1/ocr status=200 outcome=ok pages=3 ...``.

    >>> format_line(AccessRecord("r1", "GET", "/ready", status=503, outcome="not_ready",
    ...                          seconds=0.0123))
    'request_id=r1 method=GET route=/ready status=503 outcome=not_ready seconds=0.012'
    """
    run = record.run
    fields = {
        "request_id": record.request_id,
        "method": record.method,
        "route": record.route,
        "status": record.status,
        "model": record.model,
        "job_id": record.job_id,
        "caller": record.caller[:19] if record.caller else None,
        "outcome": record.final_outcome,
        "pages": run.pages if run else None,
        "pages_failed": run.pages_failed if run else None,
    }
    parts = [f"{k}={v}" for k, v in fields.items() if v is not None]
    if run is not None:
        parts += [f"{stage}={run.stage_seconds[stage]:.3f}" for stage in STAGES
                  if stage in run.stage_seconds]  # fmt: skip
    parts.append(f"seconds={record.seconds:.3f}")
    if record.trace_id:
        parts.append(f"trace_id={record.trace_id}")
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
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id")
        # Only characters that keep the log line parseable; the id is never empty.
        request_id = _NOT_ID.sub("", (given or b"").decode("latin-1"))[:128]
        record = access_record(scope)
        record.request_id = request_id or record.request_id
        record.method, record.route = scope.get("method"), quote_path(str(scope.get("path")))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                added = []
                if given is None:  # whoever sent or added the header also returns it
                    added.append((b"x-request-id", record.request_id.encode()))
                if traceresponse := tracing.current_traceresponse():
                    added.append((b"traceresponse", traceresponse.encode()))
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        parent = {k: headers[k.encode()].decode("latin-1") for k in TRACE_HEADERS
                  if k.encode() in headers}  # fmt: skip
        name = f"{scope.get('method')} {scope.get('path')}"
        with tracing.span(name, parent, kind=SpanKind.SERVER) as span:
            record.trace_id = tracing.current_trace_id()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                record.seconds = time.perf_counter() - start
                if record.status is None:
                    record.status = 500
                logger.info("%s", format_line(record))
                self._finish(span, record)

    def _finish(self, span: Span, record: AccessRecord) -> None:
        status, outcome = record.status or 500, record.final_outcome
        self.metrics.response(route_label(record.route), status, outcome, record.seconds)
        tracing.set_attributes(span, {
            "http.request.method": record.method,
            "url.path": record.route,
            "http.response.status_code": status,
            "ocr.request_id": record.request_id,
            "ocr.document_kind": record.kind,
            "ocr.pages": record.run.pages if record.run else None,
            "ocr.pages_failed": record.run.pages_failed if record.run else None,
            "ocr.outcome": outcome,
        })  # fmt: skip
        if status >= 400:
            tracing.mark_error(span, outcome, f"HTTP {status}")
