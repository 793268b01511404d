"""A document run: the one way every entry point turns a document into page reports.

:class:`DocumentRunner` takes a source (bytes, or a URL it fetches), options resolved at the
door (:mod:`serve_app.documents.door`; the model is one of them) and an optional deadline,
and starts a :class:`DocumentRun`: the document's kind and page count, then its page reports
in page order, each counted in the run's :class:`Tally` and the metrics. ``/v1/ocr`` and chat
run documents this way over deployment handles; a job, a batch stage or an in-process client
does the same over any other :class:`~serve_app.documents.stages.Stages`. Nothing here reads
an HTTP request or shapes an HTTP answer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Generic

from serve_app.config import IngressConfig
from serve_app.core.document import PageFailure
from serve_app.documents.faults import FaultPolicy
from serve_app.documents.messages import DocumentInfo, OCROptions, PageReport
from serve_app.documents.pipeline import OCRPipeline
from serve_app.documents.quarantine import Quarantine, fingerprint
from serve_app.documents.results import document_failure
from serve_app.documents.sources import Source, Sources, fetch_policy
from serve_app.documents.stages import PageT, SourceT, Stages
from serve_app.errors import EngineTimeoutError, OCRError
from serve_app.telemetry.metrics import PageSample, ServiceMetrics


@dataclass(frozen=True)
class Deadline:
    """When a run must have finished, in event-loop time (``loop.time()``)."""

    at: float
    timeout_s: float

    @classmethod
    def after(cls, timeout_s: float, start: float | None = None) -> Deadline:
        """``timeout_s`` after ``start`` (default: now)."""
        begin = asyncio.get_running_loop().time() if start is None else start
        return cls(begin + timeout_s, timeout_s)

    def error(self) -> EngineTimeoutError:
        return EngineTimeoutError(f"the request did not finish within {self.timeout_s:.0f} s")


@dataclass
class Tally:
    """What a run has done so far: pages, failed pages, seconds per stage summed over pages,
    and its outcome once known (``ok``, ``partial`` or an error code)."""

    pages: int = 0
    pages_failed: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    outcome: str | None = None

    def add(self, report: PageReport) -> None:
        self.pages += 1
        self.pages_failed += isinstance(report.outcome, PageFailure)
        for stage, seconds in report.timings.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


def page_sample(report: PageReport, model: str, mode: str) -> PageSample:
    """``report`` as the metrics count it (``mode``: the request's, for a page without one)."""
    generation = report.generation
    if isinstance(report.outcome, PageFailure):
        return PageSample(model, report.mode or mode, "failed", report.outcome.code,
                          report.timings, report.engine_crashes)  # fmt: skip
    tokens = None
    if generation is not None:
        tokens = (generation.prompt_tokens, generation.completion_tokens, generation.attempts - 1)
    truncated = generation is not None and generation.truncated
    return PageSample(
        model,
        report.mode or mode,
        "truncated" if truncated else "ok",
        stage_seconds=report.timings,
        engine_crashes=report.engine_crashes,
        tokens=tokens,
    )


class DocumentRun:
    """One document in flight: its id, options, kind and page count, then its page reports.

    Attributes:
        request_id: The caller's id for it (its pages' engine ids add a unique part).
        info: The document's kind, page count and selected pages.
        tally: Pages and outcome so far, updated as :meth:`reports` yields.
    """

    def __init__(
        self,
        request_id: str,
        options: OCROptions,
        info: DocumentInfo,
        pages: AsyncGenerator[PageReport, None],
        deadline: Deadline | None,
        metrics: ServiceMetrics,
    ) -> None:
        self.request_id, self.options, self.info = request_id, options, info
        self.tally = Tally()
        self._pages, self._deadline, self._metrics = pages, deadline, metrics

    @property
    def model(self) -> str:
        return self.options.model

    async def reports(self) -> AsyncGenerator[PageReport, None]:
        """The page reports in page order (iterate once; close it, e.g. with
        ``contextlib.aclosing``, to stop early: the pages in flight are cancelled then).

        Raises:
            EngineTimeoutError: Past the deadline; the pages in flight are cancelled.
            OverloadedError: A stage's queue is full; the pages in flight are cancelled.
        """
        try:
            async with (
                asyncio.timeout_at(self._deadline.at if self._deadline else None),
                aclosing(self._pages) as pages,  # closing this iterator closes the pipeline's
            ):
                async for report in pages:
                    self.tally.add(report)
                    self._metrics.page(page_sample(report, self.model, self.options.mode_label))
                    yield report
        except TimeoutError:
            if self._deadline is None:
                raise
            error = self._deadline.error()
            self.tally.outcome = error.code
            raise error from None
        except OCRError as error:
            self.tally.outcome = error.code
            raise
        self.tally.outcome = "partial" if self.tally.pages_failed else "ok"

    async def collect(self) -> list[PageReport]:
        return [report async for report in self.reports()]

    def failure(self, reports: Sequence[PageReport]) -> OCRError | None:
        """The run's error when none of its pages succeeded (also its outcome), else None."""
        failed = document_failure(reports)
        if failed is not None:
            self.tally.outcome = failed.code
        return failed


class DocumentRunner(Generic[SourceT, PageT]):
    """Starts document runs over ``stages``, at most ``pages_in_flight`` pages of each at a
    time, engine crashes handled by ``faults``, URL sources read by ``sources``."""

    def __init__(
        self,
        stages: Stages[SourceT, PageT],
        *,
        pages_in_flight: int = 8,
        faults: FaultPolicy | None = None,
        sources: Sources | None = None,
        metrics: ServiceMetrics | None = None,
        batch: bool = False,
    ) -> None:
        """``batch``: a job's runs (see :class:`~serve_app.documents.pipeline.OCRPipeline`)."""
        self.metrics = metrics or ServiceMetrics()
        self._stages = stages
        self._sources = sources or Sources()
        self._pipeline = OCRPipeline(stages, pages_in_flight, self.metrics, faults, batch)

    @classmethod
    def from_config(
        cls,
        config: IngressConfig,
        stages: Stages[SourceT, PageT],
        metrics: ServiceMetrics | None = None,
        batch: bool = False,
    ) -> DocumentRunner[SourceT, PageT]:
        """A runner with the window, crash handling and URL fetching that ``config`` sets."""
        faults = FaultPolicy(
            retries=config.crash_retries,
            quarantine_after=config.quarantine_after_crashes,
            quarantine=Quarantine(config.quarantine_ttl_s),
        )
        return cls(
            stages,
            pages_in_flight=config.pages_in_flight,
            faults=faults,
            sources=Sources(fetch_policy(config)),
            metrics=metrics,
            batch=batch,
        )

    async def start(
        self,
        request_id: str,
        source: Source,
        options: OCROptions,
        deadline: Deadline | None = None,
    ) -> DocumentRun:
        """Read the source (fetching a URL), hold it for the stages and open the document,
        within ``deadline``. A single image is decoded here too.

        Raises:
            ClientError: For a URL that may not or could not be fetched, or a document that
                does not open (before any page work).
            EngineTimeoutError: Past the deadline.
        """
        try:
            async with asyncio.timeout_at(deadline.at if deadline else None):
                data = await self._sources.read(source)
                # Per model: a page that crashes one model's engine may suit another's.
                upload_id = f"{options.model}:{await _fingerprint(data)}"
                held = self._stages.store(data)
                # Engine request ids are the server's own: a client may reuse its id (a retry).
                engine_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
                info, pages = await self._pipeline.run(held, options, engine_id, upload_id)
        except TimeoutError:
            if deadline is None:
                raise
            raise deadline.error() from None
        return DocumentRun(request_id, options, info, pages, deadline, self.metrics)


async def _fingerprint(data: bytes) -> str:
    """The upload's digest, off the event loop when hashing takes a while."""
    return await asyncio.to_thread(fingerprint, data) if len(data) > 2**20 else fingerprint(data)
