"""A generated document set with known ground truth, for the quality harness and end-to-end tests.

Pages are drawn with PyMuPDF's base-14 fonts (no system fonts needed) and the truth comes from
PyMuPDF's own text extraction: each word's box in points, scaled to the pixels of the page as
rendered at ``dpi`` (``dpi / 72`` zoom, as the service renders PDFs), and the tight box of the
pixels each word darkened. Lines are the words' (block, line) groups, in drawing order, which is
reading order: a left column is drawn before the right one, a table row by row. Nothing here
reads files or the network; the same arguments always give the same bytes.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import numpy.typing as npt
import pymupdf
from PIL import Image

from serve_app.testing.synthetic import encode

DEFAULT_DPI = 144
INK_LEVEL = 128  # a pixel darker than this (0..255 grey) is ink
Box = tuple[float, float, float, float]

# The transpose that turns an upright page into the pixels a camera stores with this EXIF
# orientation: the inverse of what ``PIL.ImageOps.exif_transpose`` applies when reading.
_STORED_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class TrueWord:
    """A word as drawn, in pixels ``(x1, y1, x2, y2)`` of the oriented page.

    ``box`` is PyMuPDF's: the font's full height (ascender to descender) by the advance width,
    the box a line detector aims for. ``ink`` is the tight box of the pixels darker than
    :data:`INK_LEVEL` inside ``box`` (pixel edges: a pixel in column ``c`` spans ``c..c+1``):
    where the word was actually drawn.
    """

    text: str
    box: Box
    ink: Box


@dataclass(frozen=True)
class TrueLine:
    """A line of words; its box is the union of its words' boxes."""

    text: str
    box: Box
    words: tuple[TrueWord, ...]


@dataclass(frozen=True)
class TruePage:
    """What a page holds: its size in pixels (after EXIF orientation) and its lines."""

    width: int
    height: int
    lines: tuple[TrueLine, ...]

    @property
    def text(self) -> str:
        """The lines in reading order, one per line."""
        return "\n".join(line.text for line in self.lines)

    @property
    def words(self) -> tuple[TrueWord, ...]:
        return tuple(w for line in self.lines for w in line.words)


@dataclass(frozen=True)
class Case:
    """One upload of the set: its bytes, the form fields to send with it, and each page's truth."""

    name: str
    data: bytes
    filename: str
    content_type: str
    pages: tuple[TruePage, ...]
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DrawnLine:
    """A line to draw: left edge and baseline in points, a base-14 font name and a size in pt."""

    text: str
    x: float
    y: float
    font: str = "helv"
    size: float = 14.0


@dataclass(frozen=True)
class PageSpec:
    """A page to draw, in points: its lines and ruling segments ``(x1, y1, x2, y2)``."""

    width: float
    height: float
    lines: tuple[DrawnLine, ...]
    rules: tuple[Box, ...] = ()


def stacked_lines(
    lines: Sequence[tuple[str, str, float]],
    *,
    margin: float = 36.0,
    leading: float = 1.5,
    top: float | None = None,
    x: float | None = None,
) -> tuple[DrawnLine, ...]:
    """``(text, font, size)`` lines set one under the other from ``top`` (default ``margin``),
    each ``leading`` times its size below the previous one."""
    out, y = [], margin if top is None else top
    for text, font, size in lines:
        y += size * leading
        out.append(DrawnLine(text, margin if x is None else x, y, font, size))
    return tuple(out)


def text_page(
    lines: Sequence[str], *, font: str = "helv", size: float = 16.0, margin: float = 36.0
) -> PageSpec:
    """A page just large enough for ``lines`` in one font and size, with ``margin`` around."""
    drawn = stacked_lines([(t, font, size) for t in lines], margin=margin)
    width = max(pymupdf.get_text_length(t, fontname=font, fontsize=size) for t in lines)
    return PageSpec(2 * margin + width, drawn[-1].y + size * 0.5 + margin, drawn)


def pdf_bytes(specs: Sequence[PageSpec]) -> bytes:
    """A PDF with one page per spec (no random document id, so the bytes are reproducible)."""
    doc = pymupdf.open()
    for spec in specs:
        page = doc.new_page(width=spec.width, height=spec.height)
        for x1, y1, x2, y2 in spec.rules:
            page.draw_line((x1, y1), (x2, y2), color=(0, 0, 0), width=1)
        for line in spec.lines:
            page.insert_text((line.x, line.y), line.text, fontname=line.font, fontsize=line.size)
    data: bytes = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def render_pdf(data: bytes, dpi: int = DEFAULT_DPI) -> list[tuple[Image.Image, TruePage]]:
    """Each page of a PDF as an RGB image at ``dpi`` with its truth from PyMuPDF's words."""
    zoom = dpi / 72
    out = []
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        for page in doc:
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
            out.append((image, _page_truth(page, zoom, image)))
    return out


def render(specs: Sequence[PageSpec], dpi: int = DEFAULT_DPI) -> list[tuple[Image.Image, TruePage]]:
    """Draw and render ``specs``; checks that PyMuPDF reads back exactly the lines drawn.

    Raises:
        ValueError: If the extracted lines differ from the drawn ones (lines drawn too close
            together are merged by PyMuPDF, for instance), so the truth would be wrong.
    """
    pages = render_pdf(pdf_bytes(specs), dpi)
    for number, (spec, (_, truth)) in enumerate(zip(specs, pages, strict=True), start=1):
        drawn = [" ".join(line.text.split()) for line in spec.lines]
        read = [line.text for line in truth.lines]
        if drawn != read:
            raise ValueError(f"page {number}: drew {drawn!r} but PyMuPDF reads {read!r}")
    return pages


def text_page_png(
    lines: Sequence[str], *, font: str = "helv", size: float = 16.0, dpi: int = DEFAULT_DPI
) -> Case:
    """A PNG case of ``lines`` laid out by :func:`text_page`."""
    return png_case("text_page", text_page(lines, font=font, size=size), dpi=dpi)


def png_case(name: str, spec: PageSpec, *, dpi: int = DEFAULT_DPI) -> Case:
    """One page rendered at ``dpi``, sent as a PNG."""
    ((image, truth),) = render([spec], dpi)
    return Case(name, _png(image), f"{name}.png", "image/png", (truth,))


def exif_jpeg_case(
    name: str, spec: PageSpec, *, orientation: int = 6, dpi: int = DEFAULT_DPI
) -> Case:
    """One page stored turned as a camera would store it, with the EXIF ``orientation``
    (3, 6 or 8) that turns it upright again; the truth is in the upright page's pixels."""
    if orientation not in _STORED_TRANSPOSE:
        raise ValueError(f"orientation must be one of {sorted(_STORED_TRANSPOSE)}")
    ((image, truth),) = render([spec], dpi)
    stored = image.transpose(_STORED_TRANSPOSE[orientation])
    data = encode(stored, "JPEG", exif_orientation=orientation)
    return Case(name, data, f"{name}.jpg", "image/jpeg", (truth,))


def pdf_cases(name: str, specs: Sequence[PageSpec], dpis: Sequence[int]) -> list[Case]:
    """The same PDF once per dpi, with the ``dpi`` form field and the truth at that dpi."""
    render(specs)  # checks the truth once
    data = pdf_bytes(specs)
    return [
        Case(
            f"{name}_{dpi}dpi",
            data,
            f"{name}.pdf",
            "application/pdf",
            tuple(truth for _, truth in render_pdf(data, dpi)),
            {"dpi": str(dpi)},
        )
        for dpi in dpis
    ]


def document_set() -> list[Case]:
    """The quality harness's documents, 8 pages in all: ``fonts``, ``two_columns``, ``table``
    (truth lines are the cells' texts, row by row), ``rotated_scan`` (EXIF orientation 6) and
    a two-page PDF at 100 and 200 dpi (``pdf_100dpi``, ``pdf_200dpi``)."""
    return list(_document_set())


@functools.cache
def _document_set() -> tuple[Case, ...]:
    return (
        png_case("fonts", _fonts_page()),
        png_case("two_columns", _two_columns_page()),
        png_case("table", _table_page()),
        exif_jpeg_case("rotated_scan", _letter_page(), orientation=6),
        *pdf_cases("pdf", _pdf_pages(), (100, 200)),
    )


def _page_truth(page: pymupdf.Page, zoom: float, image: Image.Image) -> TruePage:
    gray = np.asarray(image.convert("L"))
    # words: (x0, y0, x1, y1, text, block, line, word), in content-stream order.
    words = page.get_text("words", sort=False)
    lines = []
    for _, group in groupby(words, key=lambda w: (w[5], w[6])):
        drawn = [
            (w[4], (_px(w[0], zoom), _px(w[1], zoom), _px(w[2], zoom), _px(w[3], zoom)))
            for w in group
        ]
        spans = _ink_spans([box for _, box in drawn])
        found = [
            TrueWord(text, box, _ink(gray, box, *span))
            for (text, box), span in zip(drawn, spans, strict=True)
        ]
        box = (
            min(w.box[0] for w in found),
            min(w.box[1] for w in found),
            max(w.box[2] for w in found),
            max(w.box[3] for w in found),
        )
        lines.append(TrueLine(" ".join(w.text for w in found), box, tuple(found)))
    return TruePage(image.width, image.height, tuple(lines))


def _px(points: float, zoom: float) -> float:
    return round(points * zoom, 2)


def _ink_spans(boxes: Sequence[Box]) -> list[tuple[float, float]]:
    """Where to look for the ink of each word of a line: glyphs overhang their advance box (a
    "j" to the left, a Times "f" to the right), so out to the middle of the space on each
    side, and a quarter of the word's height past the line's ends."""
    first, last = boxes[0], boxes[-1]
    lefts = [first[0] - (first[3] - first[1]) / 4]
    lefts += [(a[2] + b[0]) / 2 for a, b in zip(boxes, boxes[1:], strict=False)]
    rights = [*lefts[1:], last[2] + (last[3] - last[1]) / 4]
    return list(zip(lefts, rights, strict=True))


def _ink(gray: npt.NDArray[np.uint8], box: Box, left: float, right: float) -> Box:
    """The tight box of the ink between ``left`` and ``right`` within ``box``'s height
    (``box`` itself if there is none)."""
    x1, y1 = max(int(left), 0), max(int(box[1]), 0)
    ys, xs = np.nonzero(gray[y1 : math.ceil(box[3]), x1 : math.ceil(right)] < INK_LEVEL)
    if xs.size == 0:
        return box
    return (
        float(x1 + xs.min()),
        float(y1 + ys.min()),
        float(x1 + xs.max() + 1),
        float(y1 + ys.max() + 1),
    )


def _png(image: Image.Image) -> bytes:
    # Not synthetic.encode: it stores PNGs uncompressed (right for noise, 10x too big here).
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _fonts_page() -> PageSpec:
    lines = stacked_lines(
        [
            ("Helvetica 10 pt: invoice 2024-117 was paid on 3 March.", "helv", 10),
            ("Times 12 pt: the quick brown fox jumps over the lazy dog.", "tiro", 12),
            ("Courier 14 pt: SKU A-4471, qty 12, price 8.25", "cour", 14),
            ("Helvetica Bold 18 pt: Quarterly Report", "hebo", 18),
            ("Times Bold 22 pt: Summary of Results", "tibo", 22),
            ("Courier Bold 28: 42 units", "cobo", 28),
        ],
        leading=1.7,
    )
    return PageSpec(520, lines[-1].y + 40, lines)


def _two_columns_page() -> PageSpec:
    title = stacked_lines([("Field notes on river gauges", "hebo", 18)])
    left = [
        "The northern gauge was read at dawn",
        "on each of the twelve survey days.",
        "Water stood at 1.84 metres on the",
        "first morning and fell slowly after",
        "the dry spell began in the hills.",
        "Readings were logged by hand.",
    ]
    right = [
        "The southern gauge sits below the",
        "weir, where the current is strong.",
        "Its level rose to 2.31 metres after",
        "the storm of 14 June, then dropped",
        "back within three days of rain.",
        "Both logs were typed up later.",
    ]
    top = title[0].y + 10
    cols = stacked_lines([(t, "helv", 12) for t in left], top=top, x=36)
    cols += stacked_lines([(t, "tiro", 12) for t in right], top=top, x=300)
    return PageSpec(540, cols[-1].y + 36, title + cols)


def _table_page() -> PageSpec:
    rows = [
        ("Item", "Qty", "Unit", "Total"),
        ("Bolts M6", "120", "0.15", "18.00"),
        ("Washers", "300", "0.02", "6.00"),
        ("Brackets", "8", "2.40", "19.20"),
        ("Hinges", "14", "1.10", "15.40"),
    ]
    widths, height, left, top = (130.0, 70.0, 70.0, 80.0), 28.0, 36.0, 36.0
    edges = [left]
    for w in widths:
        edges.append(edges[-1] + w)
    bottom = top + height * len(rows)
    rules = [(left, top + i * height, edges[-1], top + i * height) for i in range(len(rows) + 1)]
    rules += [(x, top, x, bottom) for x in edges]
    lines = [
        DrawnLine(text, edges[col] + 7, top + row * height + 19, "hebo" if row == 0 else "helv", 13)
        for row, cells in enumerate(rows)
        for col, text in enumerate(cells)
    ]
    return PageSpec(edges[-1] + left, bottom + top, tuple(lines), tuple(rules))


def _letter_page() -> PageSpec:
    return text_page(
        [
            "Dear customer,",
            "your order 5512 left our depot today.",
            "It should arrive within 4 working days.",
            "Kind regards, the dispatch team",
        ],
        font="tiro",
        size=16,
    )


def _pdf_pages() -> list[PageSpec]:
    first = stacked_lines(
        [
            ("Annual meeting minutes", "hebo", 20),
            ("Page one lists who attended.", "helv", 15),
            ("Chair: R. Okafor, Secretary: L. Brandt", "helv", 15),
            ("Twenty-three members were present.", "tiro", 15),
        ]
    )
    second = stacked_lines(
        [
            ("Decisions", "hebo", 20),
            ("The 2025 budget of 48,300 was approved.", "helv", 15),
            ("The next meeting is on 9 October.", "tiro", 15),
        ]
    )
    return [PageSpec(420, first[-1].y + 36, first), PageSpec(420, second[-1].y + 36, second)]
