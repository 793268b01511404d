"""Metrics in the service's terms, trace settings from the environment, trace ids in logs."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from deployments.telemetry import TraceIdFilter
from serve_app.api.routes import route_label
from serve_app.core.document import PageFailure
from serve_app.documents.messages import PageReport
from serve_app.documents.run import page_sample
from serve_app.engine.recognize import PageGeneration
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import (
    ALL_METRICS,
    COMPLETION_TOKENS,
    PAGES,
    PAGES_IN_FLIGHT,
    RESPONSES,
    RETRIES,
    MemoryRecorder,
    ServiceMetrics,
)


def generation(truncated: bool = False, attempts: int = 1) -> PageGeneration:
    return PageGeneration("text", "length" if truncated else "stop", truncated, attempts,
                          prompt_tokens=100, completion_tokens=7, token_ids=(), logprobs=None)  # fmt: skip


def test_pages_are_counted_by_outcome_with_tokens_and_retries() -> None:
    recorder = MemoryRecorder()
    metrics = ServiceMetrics(recorder)
    timings = {"preprocess_s": 0.1, "engine_s": 0.5, "postprocess_s": 0.01}
    result: object = object()
    reports = [
        (PageReport(1, result, generation(), mode="base", timings=timings), ""),  # type: ignore[arg-type]
        (PageReport(2, result, generation(True, 3), mode="base"), ""),  # type: ignore[arg-type]
        (PageReport(3, PageFailure(3, "timeout", "slow")), ""),
        (PageReport(4, result, generation(), mode="page"), "rapidocr"),  # type: ignore[arg-type]
    ]
    for report, model in reports:
        metrics.page(page_sample(report, model, mode="gundam"))

    assert recorder.total(PAGES, model="rapidocr", outcome="ok", mode="page") == 1
    assert recorder.total(COMPLETION_TOKENS, model="rapidocr") == 7
    assert recorder.total(PAGES, model="", outcome="ok", mode="base") == 1
    assert recorder.total(PAGES, outcome="truncated") == 1
    assert recorder.total(PAGES, outcome="failed", mode="gundam", code="timeout") == 1
    assert recorder.total(COMPLETION_TOKENS, mode="base") == 14
    assert recorder.total(RETRIES) == 2
    stages = {dict(tags)["stage"]: v for (name, tags), v in recorder.observed.items()}
    assert stages == {"preprocess": [0.1], "engine": [0.5], "postprocess": [0.01]}
    assert all(dict(tags)["model"] == "" for (name, tags) in recorder.observed)


def test_answers_keep_route_labels_bounded_and_pages_in_flight_settle() -> None:
    recorder = MemoryRecorder()
    metrics = ServiceMetrics(recorder)
    metrics.response(route_label("/v1/ocr"), 429, "rate_limited", 0.001)
    metrics.response(route_label("/wp-admin/../etc"), 404, "client_error", 0.001)
    assert recorder.total(RESPONSES, route="/v1/ocr", status="429", code="rate_limited") == 1
    assert recorder.total(RESPONSES, route="other") == 1
    metrics.pages_in_flight(+1)
    metrics.pages_in_flight(+1)
    assert recorder.total(PAGES_IN_FLIGHT) == 2
    metrics.pages_in_flight(-2)
    assert recorder.total(PAGES_IN_FLIGHT) == 0


def test_every_metric_has_prometheus_series_under_rays_prefix() -> None:
    names = [series for metric in ALL_METRICS for series in metric.series]
    assert len(names) == len(set(names))
    assert all(name.startswith("ray_ocr_") for name in names)


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
          "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "http://c:4317"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/x"}, "http://t:9/x"),
    ],
)  # fmt: skip
def test_otlp_endpoint_follows_the_standard_variables(
    env: dict[str, str], endpoint: str | None
) -> None:
    assert tracing.otlp_traces_endpoint(env) == endpoint


def test_log_lines_inside_a_span_carry_its_trace_id() -> None:
    logger = logging.getLogger("test.telemetry")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(TraceIdFilter())
    try:
        logger.warning("outside")
        with TracerProvider().get_tracer("t").start_as_current_span("s") as span:
            logger.warning("page %s failed", 3)
            trace_id = f"{span.get_span_context().trace_id:032x}"
            assert tracing.current_trace_id() == trace_id
            assert tracing.current_carrier()["traceparent"].split("-")[1] == trace_id
    finally:
        logger.removeHandler(handler)
    assert records[0].getMessage() == "outside"
    assert records[1].getMessage() == f"page 3 failed trace_id={trace_id}"
    assert records[1].trace_id == trace_id  # type: ignore[attr-defined]
