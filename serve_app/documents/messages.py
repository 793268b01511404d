"""The typed messages of a document run, and what crosses a deployment boundary.

A run sends a :class:`PageTask` per page; preprocess answers with a :class:`PreparedPage`: a
small :class:`PageHeader` plus the page's data (the engine's views and, when asked for, the
page pixels). In the Serve graph that data stays in Ray's object store and only a reference
travels through the ingress; in-process it is inline, so ``PreparedPage`` is generic in where
its data is held. Each page ends as a :class:`PageReport`. A field every stage needs (a trace
context, a deadline) is added to ``PageTask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import numpy as np

from serve_app.core.document import PageFailure, PageResult
from serve_app.core.modes import Mode, get_mode
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import EngineImage, PageImage
from serve_app.engine.recognize import PageGeneration


@dataclass(frozen=True)
class OCROptions:
    """What one request asks of every page, resolved at the door
    (:mod:`serve_app.documents.door`).

    Attributes:
        mode: The resolution mode (with its ``max_crops``).
        prompt: The engine's prompt, starting with the ``<image>`` placeholder.
        labels_are_text: Grounding labels hold recognised text, not layout classes.
        pages: A page selection whose syntax is valid (its range is checked on opening).
        return_tokens: Return each page's token ids and logprobs (tests, evaluation).
    """

    model: str = "deepseek-ocr"
    reads: Literal["views", "page"] = "views"
    mode: Mode = field(default_factory=lambda: get_mode("gundam"))
    task: Task | None = Task.DOCUMENT
    text: str | None = None
    prompt: str = field(default_factory=lambda: build_prompt(Task.DOCUMENT))
    labels_are_text: bool = False
    pages: str | None = None
    dpi: int = 144
    include_regions: bool = True
    include_figures: bool = False
    include_annotated: bool = False
    include_page_image: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    return_tokens: bool = False

    @property
    def needs_page_image(self) -> bool:
        return self.include_figures or self.include_annotated or self.include_page_image

    @property
    def mode_label(self) -> str:
        """The mode as responses, logs and metrics name it (``page`` for a page reader)."""
        return PAGE_MODE if self.reads == "page" else self.mode.name.value


PAGE_MODE = "page"

DocumentKind = Literal["pdf", "image"]


@dataclass(frozen=True)
class DocumentInfo:
    """The input as the preprocess stage sees it."""

    kind: DocumentKind
    page_count: int
    selected: list[int]  # 0-based indices, in output order


@dataclass(frozen=True)
class PageTask:
    """One page of one request, as every stage receives it."""

    request_id: str
    index: int  # 0-based, in the document
    kind: DocumentKind
    options: OCROptions
    # The request's trace context as W3C headers (empty when tracing is off).
    trace: dict[str, str] = field(default_factory=dict, compare=False)
    # A job's page: where pages wait for a turn, requests' pages go first.
    batch: bool = False

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def page_id(self) -> str:
        """Unique among the engine's requests: the request id and the page number."""
        return f"{self.request_id}-p{self.number}"


@dataclass(frozen=True)
class PageHeader:
    """What the ingress learns of a prepared page (a few hundred bytes)."""

    number: int
    width: int  # of the oriented page; grounding boxes are relative to it
    height: int
    mode: str
    grid: tuple[int, int]
    num_image_tokens: int
    seconds: float  # spent preparing it


# The oriented RGB page (``HxWx3`` uint8), or a page reader's PageImage that holds it.
PagePixels = np.ndarray | PageImage

ImageT = TypeVar("ImageT")  # an EngineImage, or where it is held (a Ray object reference)
PixelsT = TypeVar("PixelsT")  # PagePixels, or where they are held


@dataclass(frozen=True, eq=False)
class PreparedPage(Generic[ImageT, PixelsT]):
    """A prepared page: its header, and its data inline (:data:`LocalPage`) or held elsewhere.

    Attributes:
        image: What the engine reads (:class:`PreparedImage` views or a
            :class:`PageImage`), or where it is held.
        pixels: The oriented page, when postprocess needs it (figures, annotated pages); else
            ``None``. For a page reader, the same :class:`PageImage` as ``image``.
    """

    header: PageHeader
    image: ImageT
    pixels: PixelsT | None


LocalPage = PreparedPage[EngineImage, PagePixels]


@dataclass(frozen=True)
class PageReport:
    """The outcome of one page: a result or a failure, never missing."""

    number: int
    outcome: PageResult | PageFailure
    generation: PageGeneration | None = None
    mode: str | None = None
    grid: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    engine_crashes: int = 0  # engine replicas that died with this page in flight


def page_header(number: int, image: EngineImage, seconds: float) -> PageHeader:
    if isinstance(image, PageImage):
        return PageHeader(number, image.width, image.height, PAGE_MODE, (1, 1), 0, seconds)
    return PageHeader(
        number=number,
        width=image.width,
        height=image.height,
        mode=image.mode.name.value,
        grid=image.grid,
        num_image_tokens=image.num_image_tokens,
        seconds=seconds,
    )
