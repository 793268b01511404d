"""One OCR request end to end: fan pages out, keep memory bounded, return them in order.

The pipeline knows nothing about Ray: it drives three async stages (preprocess, recognize,
postprocess) given as a :class:`Stages` object. In the Serve app the stages call deployment
handles; in unit tests they are local functions over the fake engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.core.document import PageFailure, PageResult
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import OverloadedError, as_ocr_error
from serve_app.messages import DocumentInfo, OCROptions, PageTask, PreparedPage
from serve_app.telemetry import tracing
from serve_app.telemetry.metrics import ServiceMetrics

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class PageReport:
    """The outcome of one page: a result or a failure, never missing."""

    number: int
    outcome: PageResult | PageFailure
    generation: PageGeneration | None = None
    mode: str | None = None
    grid: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Stages(Protocol):
    """The three stages of the graph, as the pipeline calls them."""

    async def inspect(self, source: object, options: OCROptions) -> DocumentInfo: ...

    async def prepare(self, source: object, task: PageTask) -> PreparedPage: ...

    async def recognize(self, page: PreparedPage, task: PageTask) -> PageGeneration: ...

    async def postprocess(
        self, page: PreparedPage, generation: PageGeneration, task: PageTask
    ) -> PageResult: ...


class OCRPipeline:
    """Runs requests through the stages with at most ``pages_in_flight`` pages at a time."""

    def __init__(
        self, stages: Stages, pages_in_flight: int, metrics: ServiceMetrics | None = None
    ) -> None:
        self._stages = stages
        self._window = pages_in_flight
        self._metrics = metrics or ServiceMetrics()

    async def run(
        self, source: object, options: OCROptions, request_id: str
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
        return info, self._pages(source, info, options, request_id, trace, first)

    async def _pages(
        self,
        source: object,
        info: DocumentInfo,
        options: OCROptions,
        request_id: str,
        trace: dict[str, str],
        first: PreparedPage | None,
    ) -> AsyncIterator[PageReport]:
        todo = iter(info.selected)
        window: deque[asyncio.Task[PageReport]] = deque()
        # Set by the first page that finds the service full: the whole request fails at once.
        shed: asyncio.Future[OverloadedError] = asyncio.get_running_loop().create_future()

        def schedule() -> None:
            for index in todo:
                task = PageTask(request_id, index, info.kind, options, trace)
                prepared = first if index == 0 else None
                window.append(asyncio.ensure_future(self._page(source, task, shed, prepared)))
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
        source: object,
        task: PageTask,
        shed: asyncio.Future[OverloadedError],
        prepared: PreparedPage | None = None,
    ) -> PageReport:
        timings: dict[str, float] = {}
        self._metrics.pages_in_flight(+1)
        try:
            page = prepared or await self._stages.prepare(source, task)
            timings["preprocess_s"] = page.header.seconds
            start = time.perf_counter()
            generation = await self._stages.recognize(page, task)
            timings["engine_s"] = time.perf_counter() - start
            start = time.perf_counter()
            result = await self._stages.postprocess(page, generation, task)
            timings["postprocess_s"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - isolation point: a page never goes missing
            error = as_ocr_error(exc)
            if error is not exc and error.code == "internal_error":
                logger.error("page %s failed unexpectedly", task.page_id, exc_info=exc)
            if isinstance(error, OverloadedError) and not shed.done():
                shed.set_result(error)  # a full queue is the service's state, not this page's
            failure = PageFailure(task.number, error.code, error.message)
            return PageReport(task.number, failure, timings=timings)
        finally:
            self._metrics.pages_in_flight(-1)
        return PageReport(
            task.number,
            result,
            generation=generation,
            mode=page.header.mode,
            grid=page.header.grid,
            timings=timings,
        )
