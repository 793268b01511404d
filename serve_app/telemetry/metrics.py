"""The service's metrics: what is counted, with which tags, under which Prometheus names.

Recorded at the ingress, where every page report and every answer passes, through a
:class:`Recorder`: Ray's metrics API in the Serve replicas (``deployments/telemetry.py``; they
appear on Ray's Prometheus endpoint of every node, prefixed ``ray_``), memory in tests, nothing
by default. vLLM's own engine metrics are exported by the engine replicas (``ray_vllm_*``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from serve_app.core.document import PageFailure

if TYPE_CHECKING:
    from serve_app.pipeline import PageReport

Kind = Literal["counter", "histogram", "gauge"]
Tags = Mapping[str, str]

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def series(self) -> tuple[str, ...]:
        """The Prometheus series names Ray exports it under.

        >>> PAGES.series
        ('ray_ocr_pages_total',)
        """
        base = f"ray_{self.name}"
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


PAGES = Metric(
    "ocr_pages",
    "counter",
    "Pages answered, by model, outcome (ok, truncated: ran into max_tokens, failed), mode and "
    "error code.",
    ("model", "outcome", "mode", "code"),
)
STAGE_SECONDS = Metric(
    "ocr_stage_seconds",
    "histogram",
    "Seconds a page spent in a stage (preprocess, engine: queue and generation, postprocess).",
    ("model", "stage"),
    SECONDS_BUCKETS,
)
REQUEST_SECONDS = Metric(
    "ocr_request_seconds",
    "histogram",
    "Seconds from arrival to the last byte of the answer, by route.",
    ("route",),
    SECONDS_BUCKETS,
)
PROMPT_TOKENS = Metric(
    "ocr_prompt_tokens", "counter", "Prompt tokens (image tokens included) of answered pages.",
    ("model", "mode"),
)  # fmt: skip
COMPLETION_TOKENS = Metric(
    "ocr_completion_tokens",
    "counter",
    "Generated tokens of answered pages (characters for the rapidocr engine).",
    ("model", "mode"),
)
RETRIES = Metric(
    "ocr_page_retries",
    "counter",
    "Extra generations for pages that ran into max_tokens (the retry policy).",
    ("model", "mode"),
)
ENGINE_CRASHES = Metric(
    "ocr_engine_crashes",
    "counter",
    "Engine replicas that died with a page in flight, counted per page (the page was sent "
    'again, or quarantined: see ocr_pages_total{code="page_quarantined"}).',
)
RESPONSES = Metric(
    "ocr_responses",
    "counter",
    "HTTP answers by route, status and outcome (ok, partial, or the error code).",
    ("route", "status", "code"),
)
PAGES_IN_FLIGHT = Metric(
    "ocr_pages_in_flight",
    "gauge",
    "Pages sent to the stages and not yet answered, per ingress replica.",
)

ALL_METRICS = (
    PAGES, STAGE_SECONDS, REQUEST_SECONDS, PROMPT_TOKENS, COMPLETION_TOKENS, RETRIES,
    ENGINE_CRASHES, RESPONSES, PAGES_IN_FLIGHT,
)  # fmt: skip

# Tag values for routes are bounded: anything else is "other".
ROUTES = frozenset(
    {"/v1/ocr", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/docs", "/openapi.json"}
)
STAGES = {"preprocess_s": "preprocess", "engine_s": "engine", "postprocess_s": "postprocess"}


class Recorder(Protocol):
    """Where values go: adds to a counter, observes a histogram or sets a gauge."""

    def record(self, metric: Metric, value: float, tags: Tags) -> None: ...


class NullRecorder:
    def record(self, metric: Metric, value: float, tags: Tags) -> None:
        pass


class MemoryRecorder:
    """Keeps every value, for tests: counters and gauges by tags, histograms as lists."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.observed: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(
            list
        )

    def record(self, metric: Metric, value: float, tags: Tags) -> None:
        key = (metric.name, tuple(sorted(tags.items())))
        if metric.kind == "counter":
            self.values[key] += value
        elif metric.kind == "gauge":
            self.values[key] = value
        else:
            self.observed[key].append(value)

    def total(self, metric: Metric, **tags: str) -> float:
        """Sum over the series whose tags include ``tags``."""
        want = set(tags.items())
        return sum(
            v for (name, t), v in self.values.items() if name == metric.name and want <= set(t)
        )


class ServiceMetrics:
    """The ingress's measurements, in the service's own terms."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self._recorder = recorder or NullRecorder()
        self._in_flight = 0

    def page(self, report: PageReport, mode: str, model: str = "") -> None:
        """One answered page of ``model``: outcome, stage seconds, tokens, retries."""
        record = self._recorder.record
        if isinstance(report.outcome, PageFailure):
            outcome, code = "failed", report.outcome.code
        else:
            truncated = report.generation is not None and report.generation.truncated
            outcome, code = ("truncated" if truncated else "ok"), ""
        mode = report.mode or mode
        record(PAGES, 1, {"model": model, "outcome": outcome, "mode": mode, "code": code})
        if report.engine_crashes:
            record(ENGINE_CRASHES, report.engine_crashes, {})
        for key, stage in STAGES.items():
            if key in report.timings:
                record(STAGE_SECONDS, report.timings[key], {"model": model, "stage": stage})
        if (generation := report.generation) is not None:
            tags = {"model": model, "mode": mode}
            record(PROMPT_TOKENS, generation.prompt_tokens, tags)
            record(COMPLETION_TOKENS, generation.completion_tokens, tags)
            if generation.attempts > 1:
                record(RETRIES, generation.attempts - 1, tags)

    def response(self, route: str, status: int, code: str, seconds: float) -> None:
        """One HTTP answer (every route, refusals included)."""
        route = route if route in ROUTES else "other"
        tags = {"route": route, "status": str(status), "code": code}
        self._recorder.record(RESPONSES, 1, tags)
        self._recorder.record(REQUEST_SECONDS, seconds, {"route": route})

    def pages_in_flight(self, change: int) -> None:
        self._in_flight += change
        self._recorder.record(PAGES_IN_FLIGHT, self._in_flight, {})
