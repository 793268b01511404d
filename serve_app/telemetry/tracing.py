"""OpenTelemetry traces: one trace per request, a span per stage per page, in every replica.

Configured by the standard variables, read once per process by :func:`configure_tracing`:
``OTEL_TRACES_EXPORTER`` (``none`` by default here, ``console`` or ``otlp``),
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf`` by default, or ``grpc``),
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``) and
the ``OTEL_BSP_*`` batching settings. Off, no provider is installed: spans are OpenTelemetry's
non-recording ones and a page task carries an empty trace context.

The context crosses Serve hops as a W3C ``traceparent`` carrier inside the messages
(:class:`serve_app.documents.messages.PageTask`), and is handed to vLLM as its trace headers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

TRACER_NAME = "deepseek_ocr"
DEFAULT_SERVICE_NAME = "deepseek-ocr"
Carrier = Mapping[str, str]

logger = logging.getLogger("ray.serve")
_lock = threading.Lock()
_configured: bool | None = None


def exporter_setting(env: Mapping[str, str] = os.environ) -> str:
    """``none``, ``console`` or ``otlp`` (the first of a comma-separated list)."""
    value = env.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip().lower()
    return value or "none"


def otlp_protocol(env: Mapping[str, str] = os.environ) -> str:
    return env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )


def otlp_traces_endpoint(env: Mapping[str, str] = os.environ) -> str | None:
    """Where OTLP trace exports go, as vLLM's ``otlp_traces_endpoint`` wants it; ``None`` when
    traces are not exported over OTLP.

    >>> otlp_traces_endpoint({"OTEL_TRACES_EXPORTER": "otlp",
    ...                       "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    'http://collector:4318/v1/traces'
    >>> otlp_traces_endpoint({"OTEL_TRACES_EXPORTER": "none"}) is None
    True
    """
    if exporter_setting(env) != "otlp":
        return None
    if endpoint := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp_protocol(env) == "grpc":
        return base or "http://localhost:4317"
    return (base or "http://localhost:4318").rstrip("/") + "/v1/traces"


def configure_tracing(component: str) -> bool:
    """Install this process's tracer provider from the environment (once; later calls return
    the first answer). ``component`` (``ingress``, ``preprocess``, ...) becomes the resource
    attribute ``ocr.component``. Returns whether spans are exported.

    Raises:
        ValueError: For an exporter or protocol this service does not know.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        exporter_name = exporter_setting()
        if exporter_name == "none":
            _configured = False
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes: dict[str, Any] = {"ocr.component": component}
        if "OTEL_SERVICE_NAME" not in os.environ:
            attributes["service.name"] = DEFAULT_SERVICE_NAME
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter_name)))
        trace.set_tracer_provider(provider)
        logger.info(
            "Tracing on: exporter=%s endpoint=%s component=%s",
            exporter_name, otlp_traces_endpoint() or "-", component,
        )  # fmt: skip
        _configured = True
        return True


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: use none, console or otlp")
    protocol = otlp_protocol()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=otlp_traces_endpoint())
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=otlp_traces_endpoint())
    raise ValueError(f"OTLP protocol {protocol!r}: use http/protobuf or grpc")


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def current_carrier() -> dict[str, str]:
    """The current span's context as W3C headers (empty when nothing is recorded)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def current_trace_id() -> str | None:
    """The current trace's id in hex, or ``None`` outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid and context.trace_flags.sampled else None


def current_traceresponse() -> str | None:
    """The W3C ``traceresponse`` header for the current recorded span (a client can quote its
    trace id), or ``None``."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextmanager
def span(
    name: str,
    parent: Carrier | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span that is current inside the block, child of ``parent`` (W3C headers) if given,
    else of the current span. An exception marks it as an error and propagates."""
    context = extract(parent) if parent is not None else None
    with tracer().start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, record_exception=True
    ) as current:
        yield current


@contextmanager
def linked_root(
    name: str, link_to: Carrier, attributes: Mapping[str, Any] | None = None
) -> Iterator[dict[str, str]]:
    """A span that starts a trace of its own, linked to the span ``link_to`` carries (a long
    job's page gets its own trace instead of making the job's one trace huge); current
    inside the block, which gets its context as W3C headers."""
    linked = trace.get_current_span(extract(link_to)).get_span_context()
    links = [Link(linked)] if linked.is_valid else []
    with tracer().start_as_current_span(
        name, context=Context(), links=links, attributes=attributes, record_exception=True
    ):
        yield current_carrier()


def set_attributes(target: Span, attributes: Mapping[str, Any]) -> None:
    """Attributes, leaving out ``None`` values (OpenTelemetry refuses them)."""
    if target.is_recording():
        target.set_attributes({k: v for k, v in attributes.items() if v is not None})


def mark_error(target: Span, code: str, message: str) -> None:
    """An error that was handled (a failed page, a 4xx or 5xx answer)."""
    if target.is_recording():
        target.set_attribute("ocr.error_code", code)
        target.set_status(Status(StatusCode.ERROR, message))
