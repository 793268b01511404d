"""One document's pages through the stages: bounded fan-out, pages back in order, a failed
page in place, engine faults handled by :mod:`serve_app.documents.faults`.

The pipeline knows nothing about Ray: it drives the stages given as a
:class:`~serve_app.documents.stages.Stages` object (deployment handles in Serve, in-process
stages in tests and tools).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from functools import partial
from typing import Any, Generic

from serve_app.core.document import PageFailure, PageResult
from serve_app.documents.faults import EngineFaults, FaultPolicy
from serve_app.documents.messages import DocumentInfo, OCROptions, PageReport, PageTask
from serve_app.documents.quarantine import Quarantine
from serve_app.documents.stages import PageT, SourceT, Stages
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import (
    OverloadedError,
    PageDataLostError,
    PageQuarantinedError,
    as_ocr_error,
)
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import ServiceMetrics

logger = logging.getLogger("ray.serve")


class OCRPipeline(Generic[SourceT, PageT]):
    """Runs documents through the stages with at most ``pages_in_flight`` pages at a time."""

    def __init__(
        self,
        stages: Stages[SourceT, PageT],
        pages_in_flight: int,
        metrics: ServiceMetrics | None = None,
        faults: FaultPolicy | None = None,
        batch: bool = False,
    ) -> None:
        """``batch``: a job runner's runs. ``pages_in_flight`` is then shared: the pages of
        all its runs together, so a runner's load on the stages is bounded however many jobs
        it works on. Their pages yield to requests' pages where pages wait for a turn, and
        each page is a trace of its own linked to the run's span (instead of every page in
        the run's trace, as a request's are)."""
        self._stages = stages
        self._window = pages_in_flight
        self._batch = batch
        self._shared = asyncio.Semaphore(pages_in_flight) if batch else None
        self._metrics = metrics or ServiceMetrics()
        self._faults = EngineFaults(faults)

    async def run(
        self, source: SourceT, options: OCROptions, request_id: str, upload_id: str = ""
    ) -> tuple[DocumentInfo, AsyncGenerator[PageReport, None]]:
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
            task = PageTask(request_id, 0, "image", options, trace, self._batch)
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
    ) -> AsyncGenerator[PageReport, None]:
        todo = iter(info.selected)
        window: deque[asyncio.Task[PageReport]] = deque()
        # Set by the first page that finds the service full: the whole request fails at once.
        shed: asyncio.Future[OverloadedError] = asyncio.get_running_loop().create_future()

        def schedule() -> None:
            for index in todo:
                task = PageTask(request_id, index, info.kind, options, trace, self._batch)
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
            # Wait for them to unwind, so that once this iterator is closed no page of it is
            # still at a stage (an engine's work for it was aborted).
            await asyncio.gather(*window, return_exceptions=True)

    async def _page(
        self,
        source: SourceT,
        task: PageTask,
        shed: asyncio.Future[OverloadedError],
        prepared: PageT | None = None,
        upload_id: str = "",
    ) -> PageReport:
        if self._shared is None:
            return await self._page_report(source, task, shed, prepared, upload_id)
        attributes = {"ocr.request_id": task.request_id, "ocr.page": task.number}
        async with self._shared:
            with tracing.linked_root("ocr.page", task.trace, attributes) as carrier:
                task = dataclasses.replace(task, trace=carrier)
                return await self._page_report(source, task, shed, prepared, upload_id)

    async def _page_report(
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
            if self._faults.quarantined(key):
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
        """Prepare, recognize and postprocess one page (``timings`` per stage). A page whose
        prepared data was lost is prepared again, up to ``data_retries`` times, and sent to an
        engine again only if the engine had not read it yet."""
        page = prepared or await self._stages.prepare(source, task)
        timings["preprocess_s"] = page.header.seconds
        generation: PageGeneration | None = None
        preparations_left = self._faults.policy.data_retries
        while True:
            try:
                if generation is None:
                    start = time.perf_counter()
                    generation = await self._faults.recognize(
                        partial(self._stages.recognize, page, task), task, key, died
                    )
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
                page = await self._stages.prepare(source, task)
                timings["preprocess_s"] += page.header.seconds
