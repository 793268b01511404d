"""Text lines found in page pixels, put in reading order and written as DeepSeek-OCR output.

An engine that detects and recognises text lines (:mod:`serve_app.engine.rapid`) answers in
the model's grounding grammar, so everything downstream (regions, markdown, annotated pages,
the layout PDF) works unchanged. Pure: no Ray, vLLM or FastAPI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.core.grounding import Box, box_to_999, grounded_lines, strip_markup
from serve_app.core.prompts import Task

# A gutter narrower than this share of the page width does not separate columns.
MIN_GUTTER = 0.02
# More side-by-side groups than this are a table's columns (read row by row), not text columns.
MAX_TEXT_COLUMNS = 2
# A line continues the paragraph above it when the gap between them is below this share of
# its height, their heights differ by at most HEIGHT_RATIO, and their left edges by at most
# a line height (an indented line starts a paragraph).
PARAGRAPH_GAP = 0.8
HEIGHT_RATIO = 1.25


@dataclass(frozen=True)
class TextLine:
    """One recognised line: its pixel box ``(x1, y1, x2, y2)`` on the oriented page."""

    box: tuple[float, float, float, float]
    text: str
    score: float = 1.0

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def from_quads(
    quads: Sequence[Sequence[Sequence[float]]], texts: Sequence[str], scores: Sequence[float]
) -> list[TextLine]:
    """Lines from detector quadrilaterals (four ``(x, y)`` corners each): their bounding boxes."""
    lines = []
    for quad, text, score in zip(quads, texts, scores, strict=True):
        xs, ys = [float(p[0]) for p in quad], [float(p[1]) for p in quad]
        lines.append(TextLine((min(xs), min(ys), max(xs), max(ys)), text, float(score)))
    return lines


def reading_order(lines: Sequence[TextLine], page_width: int) -> list[TextLine]:
    """``lines`` as a reader takes them: a full-width block before what is below it, text
    columns left before right, and anything else (rows of a table, a line's pieces) top to
    bottom, left to right.

    >>> left = [TextLine((10, y, 90, y + 8), f"L{y}") for y in (0, 10)]
    >>> right = [TextLine((110, y, 190, y + 8), f"R{y}") for y in (0, 10)]
    >>> [line.text for line in reading_order(right + left, 200)]
    ['L0', 'L10', 'R0', 'R10']
    """
    return _order(list(lines), max(1.0, MIN_GUTTER * page_width))


def _order(lines: list[TextLine], gutter: float) -> list[TextLine]:
    if len(lines) <= 1:
        return lines
    columns = _split(lines, axis=0, min_gap=gutter)
    if 1 < len(columns) <= MAX_TEXT_COLUMNS and all(len(c) > 1 for c in columns):
        return [line for column in columns for line in _order(column, gutter)]
    bands = _split(lines, axis=1, min_gap=0.0)
    if len(bands) == 1:
        return _rows(lines)
    regions = _join_columned(bands, gutter)
    if len(regions) == 1:  # every band shares a gutter, yet the page as a whole has none
        regions = bands
    return [line for region in regions for line in _order(region, gutter)]


def _join_columned(bands: list[list[TextLine]], gutter: float) -> list[list[TextLine]]:
    """Consecutive bands split by the same gutter into two columns become one region, so its
    columns are read one after the other (a band per line of aligned columns otherwise)."""
    regions: list[list[TextLine]] = []
    previous: tuple[float, float] | None = None
    for band in bands:
        current = _gutter(band, gutter)
        if current and previous and current[0] < previous[1] and previous[0] < current[1]:
            regions[-1].extend(band)
            current = (max(current[0], previous[0]), min(current[1], previous[1]))
        else:
            regions.append(list(band))
        previous = current
    return regions


def _gutter(band: list[TextLine], gutter: float) -> tuple[float, float] | None:
    """The x-interval between a band's two columns, if it has exactly two."""
    columns = _split(band, axis=0, min_gap=gutter)
    if len(columns) != MAX_TEXT_COLUMNS:
        return None
    return max(line.box[2] for line in columns[0]), min(line.box[0] for line in columns[1])


def _split(lines: list[TextLine], axis: int, min_gap: float) -> list[list[TextLine]]:
    """Groups of ``lines`` separated by gaps wider than ``min_gap`` along ``axis`` (0: x, 1: y)
    that no line crosses, in increasing coordinate."""
    ordered = sorted(lines, key=lambda line: line.box[axis])
    groups: list[list[TextLine]] = [[ordered[0]]]
    reach = ordered[0].box[axis + 2]
    for line in ordered[1:]:
        if line.box[axis] - reach > min_gap:
            groups.append([])
        groups[-1].append(line)
        reach = max(reach, line.box[axis + 2])
    return groups


def _rows(lines: list[TextLine]) -> list[TextLine]:
    """Top to bottom; lines whose vertical centres lie within half a line are one row."""
    ordered = sorted(lines, key=lambda line: (line.box[1] + line.box[3]) / 2)
    rows: list[list[TextLine]] = []
    for line in ordered:
        centre = (line.box[1] + line.box[3]) / 2
        if rows:
            last = rows[-1][-1]
            if abs(centre - (last.box[1] + last.box[3]) / 2) <= max(line.height, last.height) / 2:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda line: line.box[0])]


def paragraphs(lines: Sequence[TextLine]) -> list[TextLine]:
    """Lines in reading order joined into paragraphs: each continues the one above it (see
    :data:`PARAGRAPH_GAP`); a paragraph's box is the union of its lines', its text theirs
    joined by spaces, its score their lowest.

    >>> first, second = TextLine((10, 0, 300, 20), "A long"), TextLine((10, 24, 200, 44), "line")
    >>> paragraphs([first, second])
    [TextLine(box=(10, 0, 300, 44), text='A long line', score=1.0)]
    """
    out: list[TextLine] = []
    last: TextLine | None = None  # the paragraph's last line
    for line in lines:
        if last is not None and _continues(last, line):
            top = out[-1]
            box = (min(top.box[0], line.box[0]), top.box[1],
                   max(top.box[2], line.box[2]), max(top.box[3], line.box[3]))  # fmt: skip
            out[-1] = TextLine(box, f"{top.text} {line.text}", min(top.score, line.score))
        else:
            out.append(line)
        last = line
    return out


def _continues(above: TextLine, line: TextLine) -> bool:
    low, high = sorted((above.height, line.height))
    gap = line.box[1] - above.box[3]
    return (
        low > 0
        and high <= HEIGHT_RATIO * low
        and -0.5 * low < gap < PARAGRAPH_GAP * low
        and abs(line.box[0] - above.box[0]) <= low
    )


def lines_output(
    lines: Sequence[TextLine],
    task: Task | None,
    width: int,
    height: int,
    phrase: str | None = None,
) -> str:
    """What DeepSeek-OCR would answer for ``task``, from lines already in reading order:

    - ``ocr``: a ``<|ref|>line<|/ref|><|det|>[[box]]<|/det|>`` per line (labels are text);
    - ``document``: a ``text`` block per paragraph (:func:`paragraphs`), its text below its
      box;
    - ``free``: the lines' text, one per line, no boxes;
    - ``locate``: the boxes of the lines containing ``phrase`` (case-insensitive).

    Raises:
        ValueError: For another task (the engine cannot do it).
    """

    def box(line: TextLine) -> Box:
        return box_to_999(*line.box, width, height)

    lines = [TextLine(line.box, strip_markup(line.text).strip(), line.score) for line in lines]

    if task is Task.OCR:
        return grounded_lines([(box(line), line.text) for line in lines])
    if task is Task.DOCUMENT:
        return "".join(
            f"{grounded_lines([(box(block), 'text')])}{block.text}\n\n"
            for block in paragraphs(lines)
        )
    if task is Task.FREE:
        return "".join(f"{line.text}\n" for line in lines)
    if task is Task.LOCATE and phrase:
        found = [box(line) for line in lines if phrase.casefold() in line.text.casefold()]
        if not found:
            return ""
        boxes = ", ".join(str(b.as_list()) for b in found)
        return f"<|ref|>{phrase}<|/ref|><|det|>[{boxes}]<|/det|>\n"
    raise ValueError(f"a text-line engine cannot do task {task}")
