"""The work of the preprocess, engine and postprocess stages, free of Ray.

The Serve deployments in ``deployments/`` wrap these classes one to one; :class:`LocalStages`
wires them together in-process for tests and tools.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from serve_app.config import EngineConfig, PostprocessConfig, PreprocessConfig
from serve_app.core.document import PageResult, postprocess_page
from serve_app.core.images import decode_image, open_image, to_model_rgb
from serve_app.core.modes import Mode, ModelFamily, get_mode
from serve_app.core.pdf import looks_like_pdf, open_pdf
from serve_app.core.prompts import build_prompt, custom_prompt
from serve_app.core.tiling import PreparedImage, prepare_image
from serve_app.engine.protocol import GenerateRequest, OCREngine
from serve_app.engine.recognize import PageGeneration, recognize
from serve_app.errors import InvalidInputError, InvalidPageRangeError
from serve_app.pipeline import DocumentInfo, OCROptions, PreparedPage


class Preprocessor:
    """Decodes images and PDFs and makes the engine's views of each page."""

    def __init__(self, config: PreprocessConfig, family: ModelFamily) -> None:
        self._config = config
        self._family = family

    def inspect(self, source: bytes, options: OCROptions, max_pages: int) -> DocumentInfo:
        """Validate the input and the page selection before any page is processed.

        Raises:
            ClientError: For undecodable, encrypted, empty or over-limit input, bad options.
        """
        self.mode(options)
        if options.dpi > self._config.max_dpi:
            raise InvalidInputError(f"dpi {options.dpi} is above the limit {self._config.max_dpi}")
        if looks_like_pdf(source):
            with open_pdf(source) as doc:
                return DocumentInfo("pdf", doc.page_count, doc.select(options.pages, max_pages))
        open_image(source, max_pixels=self._config.max_image_pixels)  # the pipeline decodes next
        if options.pages not in (None, "", "1"):
            raise InvalidPageRangeError(f"an image has one page; got pages={options.pages!r}")
        return DocumentInfo("image", 1, [0])

    def mode(self, options: OCROptions) -> Mode:
        """The mode the options name, for this model family.

        Raises:
            InvalidInputError: For an unknown mode or a bad ``max_crops``.
        """
        try:
            return get_mode(options.mode, family=self._family, max_crops=options.max_crops)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None

    def prepare(self, source: bytes, index: int, number: int, options: OCROptions) -> PreparedPage:
        """Render or decode one page and tile it for the engine."""
        start = time.perf_counter()
        if looks_like_pdf(source):
            with open_pdf(source) as doc:
                image = doc.render(index, options.dpi, max_pixels=self._config.max_page_pixels)
        else:
            image = decode_image(source, max_pixels=self._config.max_image_pixels)
        rgb = to_model_rgb(image)
        prepared = prepare_image(rgb, self.mode(options))
        pixels = np.asarray(rgb) if options.needs_page_image else None
        return PreparedPage(number, prepared, pixels, time.perf_counter() - start)


class Recognizer:
    """Runs pages through an engine with the configured retry policy."""

    def __init__(self, engine: OCREngine, config: EngineConfig) -> None:
        self.engine = engine
        self._config = config

    async def recognize(
        self, image: PreparedImage, options: OCROptions, request_id: str
    ) -> PageGeneration:
        try:
            if options.prompt_text:
                prompt = custom_prompt(options.prompt_text)
            else:
                prompt = build_prompt(options.task, options.locate_text)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        request = GenerateRequest(
            request_id=request_id,
            prompt=prompt,
            image=image,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
        )
        return await recognize(self.engine, request, self._config.retry)


class Postprocessor:
    """Turns model output into markdown, regions, figure crops and annotated pages."""

    def __init__(self, config: PostprocessConfig) -> None:
        self._config = config

    def page(
        self,
        number: int,
        size: tuple[int, int],
        pixels: np.ndarray | None,
        text: str,
        options: OCROptions,
    ) -> PageResult:
        image = Image.fromarray(pixels) if pixels is not None else None
        return postprocess_page(
            text,
            page_number=number,
            size=size,
            image=image,
            labels_are_text=options.task.labels_are_text,
            with_figures=options.include_figures and image is not None,
            with_annotated=options.include_annotated and image is not None,
        )


class LocalStages:
    """All stages in this process: implements :class:`serve_app.pipeline.Stages`."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        recognizer: Recognizer,
        postprocessor: Postprocessor,
        max_pages: int,
    ) -> None:
        self._pre, self._rec, self._post = preprocessor, recognizer, postprocessor
        self._max_pages = max_pages

    async def inspect(self, source: object, options: OCROptions) -> DocumentInfo:
        assert isinstance(source, bytes)
        return self._pre.inspect(source, options, self._max_pages)

    async def prepare(
        self, source: object, index: int, number: int, options: OCROptions
    ) -> PreparedPage:
        assert isinstance(source, bytes)
        return self._pre.prepare(source, index, number, options)

    async def recognize(
        self, page: PreparedPage, options: OCROptions, request_id: str
    ) -> PageGeneration:
        return await self._rec.recognize(page.image, options, request_id)

    async def postprocess(
        self, page: PreparedPage, generation: PageGeneration, options: OCROptions
    ) -> PageResult:
        size = (page.image.width, page.image.height)
        return self._post.page(page.number, size, page.pixels, generation.text, options)
