"""Each replica's telemetry: its tracer provider, trace ids on its log lines, Ray metrics."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.util import metrics as ray_metrics

from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import Metric, Tags

logger = logging.getLogger("ray.serve")


class RayRecorder:
    """Implements :class:`serve_app.telemetry.metrics.Recorder` with Ray's metrics API: the
    values appear on Ray's Prometheus endpoint of the node, as ``ray_<name>``, tagged with
    the Serve ``application`` (as Serve's own metrics are)."""

    def __init__(self, application: str) -> None:
        self._application = application
        self._instruments: dict[str, Any] = {}

    def record(self, metric: Metric, value: float, tags: Tags) -> None:
        instrument = self._instruments.get(metric.name) or self._create(metric)
        if metric.kind == "counter":
            if value > 0:  # Ray's Counter.inc raises on 0 (a page reader's prompt tokens)
                instrument.inc(value, tags=dict(tags))
        elif metric.kind == "histogram":
            instrument.observe(value, tags=dict(tags))
        else:
            instrument.set(value, tags=dict(tags))

    def _create(self, metric: Metric) -> Any:
        instrument: Any
        tags = (*metric.tags, "application")
        if metric.kind == "counter":
            instrument = ray_metrics.Counter(metric.name, metric.description, tags)
        elif metric.kind == "histogram":
            boundaries = list(metric.boundaries)
            instrument = ray_metrics.Histogram(metric.name, metric.description, boundaries, tags)
        else:
            instrument = ray_metrics.Gauge(metric.name, metric.description, tags)
        instrument.set_default_tags({"application": self._application})
        self._instruments[metric.name] = instrument
        return instrument


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id=...`` to lines logged inside a recorded span (also as the record's
    ``trace_id`` attribute, for JSON logs). Serve's own format already carries the request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = tracing.current_trace_id()
        if trace_id and not hasattr(record, "trace_id"):
            record.trace_id = trace_id
            if isinstance(record.msg, str) and "trace_id=" not in record.getMessage():
                record.msg = f"{record.msg} trace_id={trace_id}"
        return True


def setup_replica(component: str) -> None:
    """Tracing from the ``OTEL_*`` environment, and trace ids on this replica's log lines."""
    if tracing.configure_tracing(component):
        serve_logger = logging.getLogger("ray.serve")
        if not any(isinstance(f, TraceIdFilter) for f in serve_logger.filters):
            serve_logger.addFilter(TraceIdFilter())


@contextmanager
def serve_log_file_kept() -> Iterator[None]:
    """Keep this replica's Serve log file through code that calls ``logging.config.dictConfig``
    (vLLM does when it is imported): that closes every handler in the process, and Serve's
    buffering handler, its target gone, would then keep every later record in memory and
    write none to the replica's log file."""
    serve_logger = logging.getLogger("ray.serve")
    targets = {
        handler: handler.target
        for handler in serve_logger.handlers
        if isinstance(handler, logging.handlers.MemoryHandler) and handler.target is not None
    }
    try:
        yield
    finally:
        for handler, target in targets.items():
            if handler.target is None:
                handler.setTarget(target)  # a closed file handler reopens its file on write
