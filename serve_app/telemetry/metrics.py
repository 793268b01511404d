"""The service's metrics: what is counted, with which tags, under which Prometheus names.

Recorded where every page report and every answer passes (the document run and the access
log, at the ingress), through a :class:`Recorder`: Ray's metrics API in the Serve replicas
(``deployments/telemetry.py``; they appear on Ray's Prometheus endpoint of every node,
prefixed ``ray_``), memory in tests, nothing by default. vLLM's own engine metrics are
exported by the engine replicas (``ray_vllm_*``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

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

JOBS = Metric(
    "ocr_jobs",
    "gauge",
    "Jobs queued and running (state), as the store counts them; every runner replica reports "
    "the same value: take the max.",
    ("state",),
)
JOB_OLDEST_QUEUED_SECONDS = Metric(
    "ocr_job_oldest_queued_seconds", "gauge", "How long the oldest queued job has waited."
)
JOB_PAGES = Metric(
    "ocr_job_pages", "counter", "Pages of jobs stored, by outcome (ok, failed).", ("outcome",)
)
JOBS_ENDED = Metric(
    "ocr_jobs_ended",
    "counter",
    "Jobs a runner ended, by state (succeeded, partial, failed; cancelled ones end at the API).",
    ("state",),
)
WEBHOOK_DELIVERIES = Metric(
    "ocr_webhook_deliveries",
    "counter",
    "Webhook attempts by outcome (delivered, retry: to be tried again, failed: given up).",
    ("outcome",),
)

ALL_METRICS = (
    PAGES, STAGE_SECONDS, REQUEST_SECONDS, PROMPT_TOKENS, COMPLETION_TOKENS, RETRIES,
    ENGINE_CRASHES, RESPONSES, PAGES_IN_FLIGHT, JOBS, JOB_OLDEST_QUEUED_SECONDS, JOB_PAGES,
    JOBS_ENDED, WEBHOOK_DELIVERIES,
)  # fmt: skip

STAGES = {"preprocess_s": "preprocess", "engine_s": "engine", "postprocess_s": "postprocess"}


@dataclass(frozen=True)
class PageSample:
    """One answered page, as the metrics count it.

    Attributes:
        outcome: ``ok``, ``truncated`` (ran into ``max_tokens``) or ``failed`` (with ``code``).
        stage_seconds: Seconds by stage key (``preprocess_s``, ``engine_s``, ``postprocess_s``).
        tokens: Prompt and completion tokens and retries, for a page that was generated.
    """

    model: str
    mode: str
    outcome: Literal["ok", "truncated", "failed"]
    code: str = ""
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    engine_crashes: int = 0
    tokens: tuple[int, int, int] | None = None  # prompt, completion, retries


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
    """The service's measurements, in its own terms (ingress and job runner replicas)."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self._recorder = recorder or NullRecorder()
        self._in_flight = 0

    def page(self, sample: PageSample) -> None:
        """One answered page: outcome, stage seconds, tokens, retries."""
        record = self._recorder.record
        model, mode = sample.model, sample.mode
        tags = {"model": model, "outcome": sample.outcome, "mode": mode, "code": sample.code}
        record(PAGES, 1, tags)
        if sample.engine_crashes:
            record(ENGINE_CRASHES, sample.engine_crashes, {})
        for key, stage in STAGES.items():
            if key in sample.stage_seconds:
                record(STAGE_SECONDS, sample.stage_seconds[key], {"model": model, "stage": stage})
        if sample.tokens is not None:
            prompt, completion, retries = sample.tokens
            tags = {"model": model, "mode": mode}
            record(PROMPT_TOKENS, prompt, tags)
            record(COMPLETION_TOKENS, completion, tags)
            if retries:
                record(RETRIES, retries, tags)

    def response(self, route: str, status: int, code: str, seconds: float) -> None:
        """One HTTP answer (every route, refusals included); ``route`` a bounded set of
        values (the API's routes, ``other``)."""
        tags = {"route": route, "status": str(status), "code": code}
        self._recorder.record(RESPONSES, 1, tags)
        self._recorder.record(REQUEST_SECONDS, seconds, {"route": route})

    def jobs(self, queued: int, running: int, oldest_queued_s: float) -> None:
        """The store's queue, as a runner replica saw it."""
        self._recorder.record(JOBS, queued, {"state": "queued"})
        self._recorder.record(JOBS, running, {"state": "running"})
        self._recorder.record(JOB_OLDEST_QUEUED_SECONDS, oldest_queued_s, {})

    def job_page(self, failed: bool) -> None:
        self._recorder.record(JOB_PAGES, 1, {"outcome": "failed" if failed else "ok"})

    def job_ended(self, state: str) -> None:
        self._recorder.record(JOBS_ENDED, 1, {"state": state})

    def webhook(self, outcome: str) -> None:
        self._recorder.record(WEBHOOK_DELIVERIES, 1, {"outcome": outcome})

    def pages_in_flight(self, change: int) -> None:
        self._in_flight += change
        self._recorder.record(PAGES_IN_FLIGHT, self._in_flight, {})
