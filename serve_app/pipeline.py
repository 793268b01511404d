"""One OCR request end to end: fan pages out, keep memory bounded, return them in order.

The pipeline knows nothing about Ray: it drives three async stages (preprocess, recognize,
postprocess) given as a :class:`Stages` object. In the Serve app the stages call deployment
handles; in unit tests they are local functions over the fake engine.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serve_app.core.document import PageFailure, PageResult
from serve_app.core.prompts import Task
from serve_app.core.tiling import PreparedImage
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import OverloadedError, as_ocr_error


@dataclass(frozen=True)
class OCROptions:
    """What one request asks for (already validated by the ingress)."""

    task: Task = Task.DOCUMENT
    mode: str = "gundam"
    max_crops: int | None = None
    locate_text: str | None = None
    prompt_text: str | None = None  # a free-form instruction instead of the task's prompt
    pages: str | None = None
    dpi: int = 144
    include_regions: bool = True
    include_figures: bool = False
    include_annotated: bool = False
    max_tokens: int | None = None
    temperature: float | None = None

    @property
    def needs_page_image(self) -> bool:
        return self.include_figures or self.include_annotated


@dataclass(frozen=True)
class DocumentInfo:
    """The input as the preprocess stage sees it."""

    kind: str  # "pdf" | "image"
    page_count: int
    selected: Sequence[int]  # 0-based indices, in output order


@dataclass(frozen=True, eq=False)
class PreparedPage:
    """A page ready for the engine, plus its pixels when postprocessing needs them."""

    number: int
    image: PreparedImage
    pixels: np.ndarray | None  # oriented RGB page, HxWx3 uint8
    seconds: float


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

    async def prepare(
        self, source: object, index: int, number: int, options: OCROptions
    ) -> PreparedPage: ...

    async def recognize(
        self, page: PreparedPage, options: OCROptions, request_id: str
    ) -> PageGeneration: ...

    async def postprocess(
        self, page: PreparedPage, generation: PageGeneration, options: OCROptions
    ) -> PageResult: ...


class OCRPipeline:
    """Runs requests through the stages with at most ``pages_in_flight`` pages at a time."""

    def __init__(self, stages: Stages, pages_in_flight: int) -> None:
        self._stages = stages
        self._window = pages_in_flight

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
        first = None
        if info.kind == "image":
            first = await self._stages.prepare(source, 0, 1, options)
        return info, self._pages(source, info, options, request_id, first)

    async def _pages(
        self,
        source: object,
        info: DocumentInfo,
        options: OCROptions,
        request_id: str,
        first: PreparedPage | None,
    ) -> AsyncIterator[PageReport]:
        todo = iter(info.selected)
        window: deque[asyncio.Task[PageReport]] = deque()
        # Set by the first page that finds the service full: the whole request fails at once.
        shed: asyncio.Future[OverloadedError] = asyncio.get_running_loop().create_future()

        def schedule() -> None:
            for index in todo:
                number = index + 1
                page_id = f"{request_id}-p{number}"
                prepared = first if index == 0 else None
                coro = self._page(source, index, number, options, page_id, shed, prepared)
                window.append(asyncio.ensure_future(coro))
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
            for task in window:
                task.cancel()

    async def _page(
        self,
        source: object,
        index: int,
        number: int,
        options: OCROptions,
        request_id: str,
        shed: asyncio.Future[OverloadedError],
        prepared: PreparedPage | None = None,
    ) -> PageReport:
        timings: dict[str, float] = {}
        try:
            page = prepared or await self._stages.prepare(source, index, number, options)
            timings["preprocess_s"] = page.seconds
            start = time.perf_counter()
            generation = await self._stages.recognize(page, options, request_id)
            timings["engine_s"] = time.perf_counter() - start
            start = time.perf_counter()
            result = await self._stages.postprocess(page, generation, options)
            timings["postprocess_s"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - isolation point: a page never goes missing
            error = as_ocr_error(exc)
            if isinstance(error, OverloadedError) and not shed.done():
                shed.set_result(error)  # a full queue is the service's state, not this page's
            failure = PageFailure(number, error.code, error.message)
            return PageReport(number, failure, timings=timings)
        return PageReport(
            number,
            result,
            generation=generation,
            mode=page.image.mode.name.value,
            grid=page.image.grid,
            timings=timings,
        )
