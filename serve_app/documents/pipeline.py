"""One document's pages through the stages: bounded fan-out, pages back in order, per-page
errors, engine crashes retried or quarantined.

The pipeline knows nothing about Ray: it drives the stages given as a
:class:`~serve_app.documents.stages.Stages` object (deployment handles in Serve, in-process
stages in tests and tools).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic

from serve_app.core.document import PageFailure, PageResult
from serve_app.documents.messages import DocumentInfo, OCROptions, PageReport, PageTask
from serve_app.documents.quarantine import Quarantine
from serve_app.documents.stages import PageT, SourceT, Stages
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import (
    EngineCrashedError,
    OverloadedError,
    PageDataLostError,
    PageQuarantinedError,
    as_ocr_error,
)
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import ServiceMetrics

logger = logging.getLogger("ray.serve")


@dataclass
class FaultPolicy:
    """What happens to a page whose engine died: sent again up to ``retries`` times (after
    ``backoff_s``, longer each time); once it was in flight on ``quarantine_after`` distinct
    replicas that died it is quarantined (not sent again while ``quarantine`` holds it). A
    page whose prepared data was lost is prepared again, up to ``data_retries`` times."""

    retries: int = 3
    quarantine_after: int = 2
    backoff_s: float = 0.5
    data_retries: int = 2  # preparations again of a page whose data left the object store
    quarantine: Quarantine = field(default_factory=lambda: Quarantine(ttl_s=3600.0))


class OCRPipeline(Generic[SourceT, PageT]):
    """Runs documents through the stages with at most ``pages_in_flight`` pages at a time."""

    def __init__(
        self,
        stages: Stages[SourceT, PageT],
        pages_in_flight: int,
        metrics: ServiceMetrics | None = None,
        faults: FaultPolicy | None = None,
    ) -> None:
        self._stages = stages
        self._window = pages_in_flight
        self._metrics = metrics or ServiceMetrics()
        self._faults = faults or FaultPolicy()

    async def run(
        self, source: SourceT, options: OCROptions, request_id: str, upload_id: str = ""
    ) -> tuple[DocumentInfo, AsyncIterator[PageReport]]:
        """Inspect the input (client errors raise here, before any page work), then return
        an iterator over the page reports in page order. A failed page is reported in place,
        except when a stage refuses it for lack of capacity: then the iterator raises
        :class:`OverloadedError` at once and the pages in flight are cancelled.

        A single image is also decoded and tiled here: the inspection only read its header,
        and a body that does not decode is the whole request's error (4xx), not a page's."""
        info = await self._stages.inspect(source, options)
        trace = tracing.current_carrier()
        first = None
        if info.kind == "image":
            task = PageTask(request_id, 0, "image", options, trace)
            first = await self._stages.prepare(source, task)
        pages = self._pages(source, info, options, request_id, trace, first, upload_id)
        return info, pages

    async def _pages(
        self,
        source: SourceT,
        info: DocumentInfo,
        options: OCROptions,
        request_id: str,
        trace: dict[str, str],
        first: PageT | None,
        upload_id: str,
    ) -> AsyncIterator[PageReport]:
        todo = iter(info.selected)
        window: deque[asyncio.Task[PageReport]] = deque()
        # Set by the first page that finds the service full: the whole request fails at once.
        shed: asyncio.Future[OverloadedError] = asyncio.get_running_loop().create_future()

        def schedule() -> None:
            for index in todo:
                task = PageTask(request_id, index, info.kind, options, trace)
                prepared = first if index == 0 else None
                page = self._page(source, task, shed, prepared, upload_id)
                window.append(asyncio.ensure_future(page))
                if len(window) >= self._window:
                    return

        schedule()
        try:
            while window:
                watched: set[asyncio.Future[Any]] = {window[0], shed}
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if shed.done():
                    raise shed.result()
                report = window.popleft().result()
                schedule()
                yield report
        finally:
            for pending in window:
                pending.cancel()

    async def _page(
        self,
        source: SourceT,
        task: PageTask,
        shed: asyncio.Future[OverloadedError],
        prepared: PageT | None = None,
        upload_id: str = "",
    ) -> PageReport:
        """One page's report; whatever fails becomes its failure, in place (a full stage
        also sets ``shed``: the service's state, not this page's)."""
        timings: dict[str, float] = {}
        died: list[str] = []
        key = Quarantine.key(upload_id, task.index) if upload_id else None
        self._metrics.pages_in_flight(+1)
        try:
            if key is not None and key in self._faults.quarantine:
                raise PageQuarantinedError(
                    f"page {task.number} crashed engines before; it is not sent to one again yet"
                )
            page, generation, result = await self._through_stages(
                source, task, prepared, key, died, timings
            )
        except Exception as exc:  # noqa: BLE001 - isolation point: a page never goes missing
            error = as_ocr_error(exc)
            if error is not exc and error.code == "internal_error":
                logger.error("page %s failed unexpectedly", task.page_id, exc_info=exc)
            if isinstance(error, OverloadedError) and not shed.done():
                shed.set_result(error)
            failure = PageFailure(task.number, error.code, error.message)
            return PageReport(task.number, failure, timings=timings, engine_crashes=len(died))
        finally:
            self._metrics.pages_in_flight(-1)
        return PageReport(
            task.number,
            result,
            generation=generation,
            mode=page.header.mode,
            grid=page.header.grid,
            timings=timings,
            engine_crashes=len(died),
        )

    async def _through_stages(
        self,
        source: SourceT,
        task: PageTask,
        prepared: PageT | None,
        key: str | None,
        died: list[str],
        timings: dict[str, float],
    ) -> tuple[PageT, PageGeneration, PageResult]:
        """Prepare, recognize and postprocess one page (``timings`` per stage); a page whose
        prepared data was lost is prepared again, up to ``data_retries`` times."""
        preparations_left = self._faults.data_retries
        while True:
            page = prepared or await self._stages.prepare(source, task)
            timings["preprocess_s"] = page.header.seconds
            try:
                start = time.perf_counter()
                generation = await self._recognize(page, task, key, died)
                timings["engine_s"] = time.perf_counter() - start
                start = time.perf_counter()
                result = await self._stages.postprocess(page, generation, task)
                timings["postprocess_s"] = time.perf_counter() - start
                return page, generation, result
            except PageDataLostError:
                if not preparations_left:
                    raise
                preparations_left -= 1
                logger.warning("page %s: its prepared data was lost; preparing it again",
                               task.page_id)  # fmt: skip
                prepared = None

    async def _recognize(
        self, page: PageT, task: PageTask, key: str | None, died: list[str]
    ) -> PageGeneration:
        """The engine stage, sent again when the engine working on the page died (``died``
        collects the replicas); quarantined once enough distinct replicas died with it."""
        policy = self._faults
        while True:
            try:
                return await self._stages.recognize(page, task)
            except EngineCrashedError as crash:
                died.append(crash.replica or f"unnamed-{len(died)}")
                if len(set(died)) >= policy.quarantine_after:
                    if key is not None:
                        policy.quarantine.add(key)
                    replicas = ", ".join(died)
                    logger.error("page %s quarantined: the engine replicas %s died with it",
                                 task.page_id, replicas)  # fmt: skip
                    raise PageQuarantinedError(
                        f"page {task.number} was being read by {len(set(died))} engine "
                        "replicas that died; it is not sent to an engine again"
                    ) from None
                if len(died) > policy.retries:
                    raise
                logger.warning("page %s: engine replica %s died; sending it again (%d of %d)",
                               task.page_id, died[-1], len(died), policy.retries)  # fmt: skip
                await asyncio.sleep(policy.backoff_s * len(died))
