"""The stages of a document run (preprocess, engine, postprocess), free of Ray.

:class:`Stages` is what the pipeline calls. The Serve deployments in ``deployments/`` wrap
:class:`Preprocessor`, :class:`Recognizer` and :class:`Postprocessor` one to one and call
each other through handles; :class:`LocalStages` runs them in this process (tests, tools, an
in-process client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from serve_app.config import AppConfig, EngineConfig, PostprocessConfig, PreprocessConfig
from serve_app.core.document import PageResult, postprocess_page
from serve_app.core.images import decode_image, open_image, to_model_rgb
from serve_app.core.pdf import looks_like_pdf, open_pdf
from serve_app.core.tiling import EngineImage, PageImage, prepare_image
from serve_app.documents.messages import (
    DocumentInfo,
    LocalPage,
    OCROptions,
    PageHeader,
    PagePixels,
    PageTask,
    PreparedPage,
    page_header,
)
from serve_app.engine import make_engine
from serve_app.engine.protocol import GenerateRequest, OCREngine
from serve_app.engine.recognize import PageGeneration, recognize
from serve_app.errors import InvalidPageRangeError
from serve_app.telemetry import tracing

SourceT = TypeVar("SourceT")  # where the upload is held for preprocess (bytes, or a reference)
PageT = TypeVar("PageT", bound=PreparedPage[Any, Any])


class Stages(Protocol[SourceT, PageT]):
    """The stages as a document run calls them; ``SourceT`` and ``PageT`` are where the
    upload and a prepared page's data are held (inline in-process, Ray's object store in
    Serve)."""

    def store(self, data: bytes) -> SourceT:
        """Hold the upload where preprocess reads it, once for all its pages."""
        ...

    async def inspect(self, source: SourceT, options: OCROptions) -> DocumentInfo: ...

    async def prepare(self, source: SourceT, task: PageTask) -> PageT: ...

    async def recognize(self, page: PageT, task: PageTask) -> PageGeneration: ...

    async def postprocess(
        self, page: PageT, generation: PageGeneration, task: PageTask
    ) -> PageResult: ...


class Preprocessor:
    """Decodes images and PDFs and makes the engine's views of each page."""

    def __init__(self, config: PreprocessConfig) -> None:
        self._config = config
        self.documents_opened = 0
        self.pages_prepared = 0

    def inspect(self, source: bytes, options: OCROptions, max_pages: int) -> DocumentInfo:
        """Open the input and select its pages before any page is processed (the options
        were checked at the door).

        Raises:
            ClientError: For undecodable, encrypted, empty or over-limit input, or a page
                selection outside the document.
        """
        self.documents_opened += 1
        if looks_like_pdf(source):
            with open_pdf(source) as doc:
                return DocumentInfo("pdf", doc.page_count, doc.select(options.pages, max_pages))
        open_image(source, max_pixels=self._config.max_image_pixels)  # the pipeline decodes next
        if options.pages not in (None, "", "1"):
            raise InvalidPageRangeError(f"an image has one page; got pages={options.pages!r}")
        return DocumentInfo("image", 1, [0])

    def prepare(self, source: bytes, task: PageTask) -> LocalPage:
        """Render or decode one page, orient it and make what the request's engine reads:
        DeepSeek's views in the request's mode, or the page's pixels (then the same
        :class:`PageImage` is the postprocess's pixels, when it needs them)."""
        start = time.perf_counter()
        self.pages_prepared += 1
        options = task.options
        attributes = {"ocr.page": task.number, "ocr.document_kind": task.kind}
        with tracing.span("preprocess", task.trace, attributes) as span:
            if task.kind == "pdf":
                with open_pdf(source) as doc:
                    image = doc.render(
                        task.index, options.dpi, max_pixels=self._config.max_page_pixels
                    )
            else:
                image = decode_image(source, max_pixels=self._config.max_image_pixels)
            decoded = time.perf_counter()
            rgb = to_model_rgb(image)
            prepared: EngineImage
            pixels: PagePixels | None
            if options.reads == "page":
                prepared = PageImage(np.asarray(rgb))
                pixels = prepared if options.needs_page_image else None
            else:
                prepared = prepare_image(rgb, options.mode)
                pixels = np.asarray(rgb) if options.needs_page_image else None
            header = page_header(task.number, prepared, time.perf_counter() - start)
            tracing.set_attributes(span, {
                "ocr.render_s" if task.kind == "pdf" else "ocr.decode_s": decoded - start,
                "ocr.tile_s": time.perf_counter() - decoded,
                "ocr.mode": header.mode,
                "ocr.grid": f"{header.grid[0]}x{header.grid[1]}",
                "ocr.image_tokens": header.num_image_tokens,
                "ocr.width": header.width,
                "ocr.height": header.height,
            })  # fmt: skip
        return PreparedPage(header, prepared, pixels)


class Recognizer:
    """Runs pages through an engine with the configured retry policy."""

    def __init__(self, engine: OCREngine, config: EngineConfig) -> None:
        self.engine = engine
        self._config = config
        self.pages_recognized = 0

    async def recognize(self, image: EngineImage, task: PageTask) -> PageGeneration:
        """One page to completion; its token ids and logprobs only if the request asked."""
        self.pages_recognized += 1
        options = task.options
        tokens = 0 if isinstance(image, PageImage) else image.num_image_tokens
        attributes = {"ocr.page": task.number, "ocr.model": options.model,
                      "ocr.image_tokens": tokens}  # fmt: skip
        with tracing.span("engine", task.trace, attributes) as span:
            request = GenerateRequest(
                request_id=task.page_id,
                prompt=options.prompt,
                image=image,
                task=options.task,
                text=options.text,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                logprobs=options.return_tokens,
                trace_headers=tracing.current_carrier(),
                batch=task.batch,
            )
            generation = await recognize(self.engine, request, self._config.resolved_retry)
            tracing.set_attributes(span, {
                "ocr.prompt_tokens": generation.prompt_tokens,
                "ocr.completion_tokens": generation.completion_tokens,
                "ocr.finish_reason": generation.finish_reason,
                "ocr.truncated": generation.truncated,
                "ocr.attempts": generation.attempts,
                "ocr.queued_s": generation.queued_s,
            })  # fmt: skip
        if options.return_tokens:
            return generation
        return dataclasses.replace(generation, token_ids=(), logprobs=None)


class Postprocessor:
    """Turns model output into markdown, regions, figure crops and annotated pages."""

    def __init__(self, config: PostprocessConfig) -> None:
        self._config = config

    def page(
        self, header: PageHeader, pixels: PagePixels | None, text: str, task: PageTask
    ) -> PageResult:
        options = task.options
        if isinstance(pixels, PageImage):
            pixels = pixels.pixels
        with tracing.span("postprocess", task.trace, {"ocr.page": task.number}) as span:
            image = Image.fromarray(pixels) if pixels is not None else None
            result = postprocess_page(
                text,
                page_number=header.number,
                size=(header.width, header.height),
                image=image,
                labels_are_text=options.labels_are_text,
                with_figures=options.include_figures and image is not None,
                with_annotated=options.include_annotated and image is not None,
                with_page_image=options.include_page_image and image is not None,
            )
            tracing.set_attributes(span, {
                "ocr.regions": len(result.grounded.regions),
                "ocr.figures": len(result.figures),
                "ocr.parse_problems": len(result.grounded.problems),
            })  # fmt: skip
        return result


class LocalStages:
    """Every stage in this process: :class:`Stages` over bytes and inline page data.

    ``recognizer`` serves every model, or give one per model id."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        recognizer: Recognizer | Mapping[str, Recognizer],
        postprocessor: Postprocessor,
        max_pages: int,
    ) -> None:
        self._pre, self._post = preprocessor, postprocessor
        self._rec = recognizer
        self._max_pages = max_pages

    @classmethod
    async def started(cls, config: AppConfig) -> LocalStages:
        """The stages of ``config`` with an engine started per model (each engine's own
        start: seconds for the fake and rapidocr, a minute or more for vLLM on a CPU)."""
        recognizers = {}
        for name, engine_config in config.models.items():
            engine = make_engine(engine_config)
            await asyncio.wait_for(engine.start(), timeout=engine_config.start_timeout_s)
            recognizers[name] = Recognizer(engine, engine_config)
        return cls(
            Preprocessor(config.preprocess),
            recognizers,
            Postprocessor(config.postprocess),
            max_pages=config.ingress.max_pages,
        )

    async def shutdown(self) -> None:
        """Stop every engine (an engine of several models once)."""
        recognizers = [self._rec] if isinstance(self._rec, Recognizer) else self._rec.values()
        for engine in {id(r.engine): r.engine for r in recognizers}.values():
            await engine.shutdown()

    def store(self, data: bytes) -> bytes:
        return data

    async def inspect(self, source: bytes, options: OCROptions) -> DocumentInfo:
        return self._pre.inspect(source, options, self._max_pages)

    async def prepare(self, source: bytes, task: PageTask) -> LocalPage:
        return self._pre.prepare(source, task)

    async def recognize(self, page: LocalPage, task: PageTask) -> PageGeneration:
        rec = self._rec if isinstance(self._rec, Recognizer) else self._rec[task.options.model]
        return await rec.recognize(page.image, task)

    async def postprocess(
        self, page: LocalPage, generation: PageGeneration, task: PageTask
    ) -> PageResult:
        return self._post.page(page.header, page.pixels, generation.text, task)
