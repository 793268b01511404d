"""The work of the preprocess, engine and postprocess stages, free of Ray.

The Serve deployments in ``deployments/`` wrap these classes one to one; :class:`LocalStages`
wires them together in-process for tests and tools.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image

from serve_app.config import EngineConfig, PostprocessConfig, PreprocessConfig
from serve_app.core.document import PageResult, postprocess_page
from serve_app.core.images import decode_image, open_image, to_model_rgb
from serve_app.core.pdf import looks_like_pdf, open_pdf
from serve_app.core.tiling import EngineImage, PageImage, prepare_image
from serve_app.engine.protocol import GenerateRequest, OCREngine
from serve_app.engine.recognize import PageGeneration, recognize
from serve_app.errors import InvalidPageRangeError
from serve_app.messages import (
    DocumentInfo,
    OCROptions,
    PageHeader,
    PageTask,
    PreparedPage,
    page_header,
)
from serve_app.telemetry import tracing


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

    def prepare(
        self, source: bytes, task: PageTask
    ) -> tuple[PageHeader, EngineImage, np.ndarray | None]:
        """Render or decode one page, orient it and make what the request's engine reads:
        DeepSeek's views in the request's mode, or the page's pixels."""
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
            if options.reads == "page":
                prepared = PageImage(np.asarray(rgb))
                pixels = prepared.pixels if options.needs_page_image else None
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
        return header, prepared, pixels


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
        self, header: PageHeader, pixels: np.ndarray | None, text: str, task: PageTask
    ) -> PageResult:
        options = task.options
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
            )
            tracing.set_attributes(span, {
                "ocr.regions": len(result.grounded.regions),
                "ocr.figures": len(result.figures),
                "ocr.parse_problems": len(result.grounded.problems),
            })  # fmt: skip
        return result


class LocalStages:
    """All stages in this process: implements :class:`serve_app.pipeline.Stages`.

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

    async def inspect(self, source: object, options: OCROptions) -> DocumentInfo:
        assert isinstance(source, bytes)
        return self._pre.inspect(source, options, self._max_pages)

    async def prepare(self, source: object, task: PageTask) -> PreparedPage:
        assert isinstance(source, bytes)
        return PreparedPage(*self._pre.prepare(source, task))

    async def recognize(self, page: PreparedPage, task: PageTask) -> PageGeneration:
        assert isinstance(page.image, EngineImage)
        rec = self._rec if isinstance(self._rec, Recognizer) else self._rec[task.options.model]
        return await rec.recognize(page.image, task)

    async def postprocess(
        self, page: PreparedPage, generation: PageGeneration, task: PageTask
    ) -> PageResult:
        assert page.pixels is None or isinstance(page.pixels, np.ndarray)
        return self._post.page(page.header, page.pixels, generation.text, task)
