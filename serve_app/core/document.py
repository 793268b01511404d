"""Per-page postprocessing and whole-document outputs: markdown, layout PDF, ZIP bundle.

A document is a sequence of page outcomes, each either a :class:`PageResult` or a
:class:`PageFailure`; every output here accounts for every page, failed ones included.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from serve_app.core.annotate import annotate, crop_figures, encode_jpeg
from serve_app.core.grounding import Box, Grounded, parse_grounded
from serve_app.core.markdown import (
    PAGE_SPLIT,
    error_page_markdown,
    figure_boxes,
    figure_name,
    join_pages,
    page_markdown,
)
from serve_app.core.pdf import load_mupdf

FIGURE_JPEG_QUALITY = 90
LAYOUT_JPEG_QUALITY = 95
PAGE_JPEG_QUALITY = 85  # the page itself, for a viewer to draw boxes on


@dataclass(frozen=True)
class Figure:
    """A figure region cropped out of its page."""

    name: str
    box: Box
    pixel_box: Box
    jpeg: bytes


@dataclass(frozen=True)
class PageResult:
    """A page the model read, with everything derived from its output."""

    number: int
    width: int
    height: int
    raw_text: str
    grounded: Grounded
    markdown: str
    figures: tuple[Figure, ...] = ()
    annotated_jpeg: bytes | None = None
    page_jpeg: bytes | None = None


@dataclass(frozen=True)
class PageFailure:
    """A page that produced no result, and why."""

    number: int
    code: str
    message: str


PageOutcome = PageResult | PageFailure


def postprocess_page(
    raw_text: str,
    *,
    page_number: int,
    size: tuple[int, int],
    image: Image.Image | None = None,
    labels_are_text: bool = False,
    with_figures: bool = False,
    with_annotated: bool = False,
    with_page_image: bool = False,
) -> PageResult:
    """Parse one page's model output and derive its markdown, figure crops and annotation.

    Args:
        raw_text: The model's output for the page, grounding markup included.
        page_number: 1-based page number (names figure files).
        size: ``(width, height)`` of the oriented image the model saw.
        image: That image; needed only for figure crops and the annotated page.
        labels_are_text: See :func:`serve_app.core.markdown.page_markdown`.
        with_figures: Crop figure regions (requires ``image``).
        with_annotated: Draw the regions onto a copy of the page (requires ``image``).
        with_page_image: Keep the page itself as a JPEG (requires ``image``).

    Raises:
        ValueError: If crops or annotation are asked for without the image, or the image size
            differs from ``size``.
    """
    if (with_figures or with_annotated or with_page_image) and image is None:
        raise ValueError("figure crops, annotated pages and the page's JPEG need the page image")
    if image is not None and image.size != size:
        raise ValueError(f"image is {image.size}, but size says {size}")
    grounded = parse_grounded(raw_text)
    width, height = size
    figures: tuple[Figure, ...] = ()
    if with_figures and image is not None:
        boxes = figure_boxes(grounded, labels_are_text=labels_are_text)
        figures = tuple(
            Figure(
                name=figure_name(page_number, k),
                box=box,
                pixel_box=box.to_pixels(width, height),
                jpeg=encode_jpeg(crop, FIGURE_JPEG_QUALITY),
            )
            for k, (box, crop) in enumerate(zip(boxes, crop_figures(image, boxes), strict=True))
        )
    annotated = None
    if with_annotated and image is not None:
        annotated = encode_jpeg(annotate(image, grounded), LAYOUT_JPEG_QUALITY)
    page_jpeg = None
    if with_page_image and image is not None:
        page_jpeg = encode_jpeg(image, PAGE_JPEG_QUALITY)
    return PageResult(
        number=page_number,
        width=width,
        height=height,
        raw_text=raw_text,
        grounded=grounded,
        markdown=page_markdown(grounded, page_number=page_number, labels_are_text=labels_are_text),
        figures=figures,
        annotated_jpeg=annotated,
        page_jpeg=page_jpeg,
    )


def document_markdown(pages: Sequence[PageOutcome]) -> str:
    """All pages' markdown in order, failed pages as an HTML comment naming the failure."""
    return join_pages(
        [
            p.markdown if isinstance(p, PageResult) else error_page_markdown(p.number, p.message)
            for p in pages
        ]
    )


def document_raw_text(pages: Sequence[PageOutcome]) -> str:
    """All pages' raw model output (grounding markup kept), joined with the page marker."""
    return join_pages(
        [
            p.raw_text if isinstance(p, PageResult) else error_page_markdown(p.number, p.message)
            for p in pages
        ]
    )


def layout_pdf(pages: Sequence[PageResult], *, dpi: float = 72) -> bytes:
    """A PDF with one page per annotated page image, sized so ``dpi`` pixels make an inch.

    Pages without an annotated image are skipped.
    """
    doc = load_mupdf().open()
    try:
        for page in pages:
            if page.annotated_jpeg is None:
                continue
            scale = 72 / dpi
            pdf_page = doc.new_page(width=page.width * scale, height=page.height * scale)
            pdf_page.insert_image(pdf_page.rect, stream=page.annotated_jpeg)
        data: bytes = doc.tobytes(garbage=3, deflate=True) if doc.page_count else b""
    finally:
        doc.close()
    return data


def bundle_zip(
    pages: Sequence[PageOutcome],
    *,
    dpi: float = 72,
    extra_files: Mapping[str, bytes] | None = None,
) -> bytes:
    """A ZIP of the document's outputs.

    Contents: ``result.md`` (markdown), ``result_det.md`` (raw output with grounding tags),
    ``images/`` (figure crops, named as linked from the markdown), ``annotated/page_N.jpg``
    and ``layout.pdf`` when pages were annotated, plus ``extra_files``.
    """
    results = [p for p in pages if isinstance(p, PageResult)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("result.md", document_markdown(pages))
        zf.writestr("result_det.md", document_raw_text(pages))
        for page in results:
            for figure in page.figures:
                zf.writestr(figure.name, figure.jpeg, compress_type=zipfile.ZIP_STORED)
            if page.annotated_jpeg is not None:
                zf.writestr(
                    f"annotated/page_{page.number}.jpg",
                    page.annotated_jpeg,
                    compress_type=zipfile.ZIP_STORED,
                )
        layout = layout_pdf(results, dpi=dpi)
        if layout:
            zf.writestr("layout.pdf", layout)
        for name, data in (extra_files or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


__all__ = [
    "PAGE_SPLIT",
    "Figure",
    "PageFailure",
    "PageOutcome",
    "PageResult",
    "bundle_zip",
    "document_markdown",
    "document_raw_text",
    "layout_pdf",
    "postprocess_page",
]
