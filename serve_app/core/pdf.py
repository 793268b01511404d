"""PDF input: open with typed errors, select pages, render one page at a time.

Pages are rendered lazily, so a long document costs the memory of one page image at a time.
Rendering follows the official script: ``dpi / 72`` zoom, no alpha channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from PIL import Image

from serve_app.errors import (
    CorruptDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageTooLargeError,
    InvalidPageRangeError,
    TooManyPagesError,
)

if TYPE_CHECKING:
    import pymupdf

DEFAULT_DPI = 144
MIN_DPI = 36
MAX_DPI = 600
DEFAULT_MAX_PAGE_PIXELS = 40_000_000
PDF_MAGIC = b"%PDF-"

_RANGE_RE = re.compile(r"^\s*(\d+)?\s*(-)?\s*(\d+)?\s*$")


def looks_like_pdf(data: bytes) -> bool:
    """Whether ``data`` starts like a PDF (the header may follow up to 1 KiB of junk)."""
    return PDF_MAGIC in data[:1024]


def page_spans(spec: str | None) -> list[tuple[int, int | None]]:
    """The 1-based ``(first, last)`` spans of a selection such as ``"1-3,7"``, ``"5-"`` or
    ``"-2"``; ``last`` is ``None`` for an open end. ``None`` or ``""`` is every page: ``[]``.

    Checks everything that does not need the document (the request's door does this).

    >>> page_spans("1-3,7,9-")
    [(1, 3), (7, 7), (9, None)]

    Raises:
        InvalidPageRangeError: For malformed parts, reversed ranges or page 0.
    """
    if spec is None or not spec.strip():
        return []
    spans: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        match = _RANGE_RE.match(part)
        if not match or not (match[1] or match[3]) or (match[1] and match[3] and not match[2]):
            raise InvalidPageRangeError(
                f"invalid page selection {part.strip()!r} in {spec!r}; use e.g. '1-3,7' or '5-'"
            )
        first = int(match[1]) if match[1] else 1
        last = first if not match[2] else (int(match[3]) if match[3] else None)
        if first < 1 or (last is not None and last < first):
            raise InvalidPageRangeError(f"invalid page range {part.strip()!r}: pages count from 1")
        spans.append((first, last))
    return spans


def page_spec(numbers: Iterable[int]) -> str:
    """A selection of the 1-based page ``numbers``, in the form :func:`page_spans` reads.

    >>> page_spec([9, 1, 2, 3, 7, 10, 2])
    '1-3,7,9-10'
    """
    parts: list[str] = []
    ordered = sorted(set(numbers))
    start = 0
    for i, number in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != number + 1:
            first = ordered[start]
            parts.append(str(first) if first == number else f"{first}-{number}")
            start = i + 1
    return ",".join(parts)


def parse_page_ranges(spec: str | None, page_count: int) -> list[int]:
    """0-based page indices for a 1-based selection (see :func:`page_spans`).

    ``None`` or an empty string selects every page. Indices come back sorted and unique.

    Raises:
        InvalidPageRangeError: For malformed parts, reversed ranges, page 0, or pages past the
            end of the document.
    """
    spans = page_spans(spec)
    if not spans:
        return list(range(page_count))
    selected: set[int] = set()
    for first, last in spans:
        end = page_count if last is None else last
        if end > page_count or first > page_count:
            raise InvalidPageRangeError(
                f"page {max(first, end)} requested but the document has {page_count} page(s)"
            )
        selected.update(range(first - 1, end))
    return sorted(selected)


class PdfDocument:
    """An open PDF. Use as a context manager; not safe to share between threads."""

    def __init__(self, doc: pymupdf.Document) -> None:
        self._doc = doc

    @property
    def page_count(self) -> int:
        return int(self._doc.page_count)

    def select(self, spec: str | None, max_pages: int) -> list[int]:
        """Page indices for ``spec`` (see :func:`parse_page_ranges`), at most ``max_pages``.

        Raises:
            InvalidPageRangeError: For a bad selection.
            TooManyPagesError: If more than ``max_pages`` pages are selected.
        """
        indices = parse_page_ranges(spec, self.page_count)
        if len(indices) > max_pages:
            raise TooManyPagesError(
                f"{len(indices)} pages selected; at most {max_pages} per request "
                "(select fewer with 'pages', e.g. '1-50')"
            )
        return indices

    def render(
        self, index: int, dpi: int = DEFAULT_DPI, *, max_pixels: int = DEFAULT_MAX_PAGE_PIXELS
    ) -> Image.Image:
        """Render page ``index`` (0-based) to an RGB image at ``dpi``.

        Raises:
            ImageTooLargeError: If the page at ``dpi`` would exceed ``max_pixels``.
            CorruptDocumentError: If MuPDF cannot render the page.
        """
        try:
            page = self._doc.load_page(index)
            zoom = dpi / 72
            width, height = page.rect.width * zoom, page.rect.height * zoom
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"page {index + 1} at {dpi} dpi is {width:.0f}x{height:.0f} pixels; "
                    f"the limit is {max_pixels} (lower 'dpi')"
                )
            pix = page.get_pixmap(matrix=load_mupdf().Matrix(zoom, zoom), alpha=False)
        except (RuntimeError, ValueError) as exc:
            raise CorruptDocumentError(f"page {index + 1} cannot be rendered: {exc}") from None
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)

    def close(self) -> None:
        self._doc.close()

    def __enter__(self) -> PdfDocument:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_pdf(data: bytes) -> PdfDocument:
    """Open PDF bytes.

    Raises:
        CorruptDocumentError: If MuPDF cannot parse the bytes as a PDF.
        EncryptedDocumentError: If the PDF needs a password.
        EmptyDocumentError: If it has no pages.
    """
    pymupdf = load_mupdf()
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
        raise CorruptDocumentError(f"the PDF cannot be read: {exc}") from None
    if doc.needs_pass:
        doc.close()
        raise EncryptedDocumentError("the PDF is encrypted; send a copy without a password")
    if doc.page_count == 0:
        doc.close()
        raise EmptyDocumentError("the PDF has no pages")
    return PdfDocument(doc)


def load_mupdf() -> Any:
    """PyMuPDF, imported on first use: its import is ~3 s of CPU (PyMuPDF 2 loads its layout
    models too), which every process importing this module would pay otherwise, those that
    never open a PDF included (engine and ingress replicas, the batch's engine actors)."""
    import pymupdf

    return pymupdf
