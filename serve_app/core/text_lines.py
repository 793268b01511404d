"""Text lines found in page pixels, put in reading order and written as DeepSeek-OCR output.

An engine that detects and recognises text lines (:mod:`serve_app.engine.rapid`) answers in
the model's grounding grammar, so everything downstream (regions, markdown, annotated pages,
the layout PDF) works unchanged. Pure: no Ray, vLLM or FastAPI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.core.grounding import Box, box_to_999, grounded_lines, strip_markup
from serve_app.core.prompts import Task

# A gutter narrower than this share of the page width does not separate columns.
MIN_GUTTER = 0.008
# Side-by-side groups are a table's columns (read row by row), not text columns, when there
# are more than MAX_TEXT_COLUMNS, or one is narrower than MIN_COLUMN_WIDTH of their joint
# width (a table's key column, line numbers in the margin), or has no running text: lines of
# MIN_COLUMN_CHARS characters or more across most of its width (a table's cells are short).
MAX_TEXT_COLUMNS = 3
MIN_COLUMN_WIDTH = 0.2
MIN_COLUMN_CHARS = 20
# A gutter that full-width lines cross (a title, an abstract, a wide caption) still separates
# columns when those are under MAX_SPANNING of the lines and each side has MIN_COLUMN_LINES.
MAX_SPANNING = 0.5
MIN_COLUMN_LINES = 3
# A page's first or last row is its running header or footer (read first or last, not as part
# of a column) when a gap of MARGIN_GAP line heights separates it from the rest.
MARGIN_GAP = 1.0
# Paragraphs (see _continues): the gap between lines in line heights, their height ratio,
# the largest first-line or hanging indent in line heights, how far short of the paragraph's
# right edge a line ends its paragraph, and what starts a list item or a reference.
PARAGRAPH_GAP = 0.8
HEIGHT_RATIO = 1.25
INDENT = 3.0
SHORT_LINE = 2.0
LIST_MARKER = re.compile(r"\s*(\[\w+\]|\(?\w{1,3}[.)]|[•·◦▪‣*–-])\s")


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
    """``lines`` as a reader takes them: text columns one after the other, each read to its
    end before the next; a full-width line (a title, an abstract, a wide table or caption)
    between the column sections above and below it; anything else (rows of a table, a
    line's pieces, a number in the margin) top to bottom, left to right.

    >>> text = "a line of a column of running text"
    >>> left = [TextLine((10, y, 90, y + 8), f"L{y} {text}") for y in (0, 10)]
    >>> right = [TextLine((110, y, 190, y + 8), f"R{y} {text}") for y in (0, 10)]
    >>> [line.text[:3] for line in reading_order(right + left, 200)]
    ['L0 ', 'L10', 'R0 ', 'R10']
    """
    lines = list(lines)
    if len(lines) <= 2:
        return _rows(lines)
    height = float(np.median([line.height for line in lines]))
    bands = _split(lines, axis=1, min_gap=MARGIN_GAP * height)
    header = bands.pop(0) if len(bands) > 1 and _one_row(bands[0]) else []
    footer = bands.pop() if len(bands) > 1 and _one_row(bands[-1]) else []
    body = [line for band in bands for line in band]
    return _rows(header) + _order(body, max(1.0, MIN_GUTTER * page_width)) + _rows(footer)


def _one_row(lines: list[TextLine]) -> bool:
    return len(_rows_of(lines)) == 1


def _order(lines: list[TextLine], gutter: float) -> list[TextLine]:
    if len(lines) <= 1:
        return lines
    columns = _split(lines, axis=0, min_gap=gutter)
    if _text_columns(columns):
        return [line for column in columns for line in _order(column, gutter)]
    run = _spanned_gutter(lines, gutter)
    if run is not None:
        return _read_sections(lines, run, gutter)
    bands = _split(lines, axis=1, min_gap=0.0)
    if len(bands) > 1:
        return [line for band in bands for line in _order(band, gutter)]
    return _rows(lines)


def _text_columns(columns: list[list[TextLine]]) -> bool:
    """Side-by-side groups are text columns (read one after the other), not a table's (read
    row by row): at most :data:`MAX_TEXT_COLUMNS`, each wide and holding at least two lines
    of running text (long, and across most of the column; the rest may be a table's cells)."""
    if not 1 < len(columns) <= MAX_TEXT_COLUMNS:
        return False
    left = min(line.box[0] for column in columns for line in column)
    right = max(line.box[2] for column in columns for line in column)
    for column in columns:
        x1 = min(line.box[0] for line in column)
        x2 = max(line.box[2] for line in column)
        running = sum(
            len(line.text) >= MIN_COLUMN_CHARS and line.box[2] - line.box[0] >= 0.5 * (x2 - x1)
            for line in column
        )
        if x2 - x1 < MIN_COLUMN_WIDTH * (right - left) or running < 2:
            return False
    return True


def _spanned_gutter(lines: list[TextLine], gutter: float) -> tuple[float, float] | None:
    """The x-interval of a gutter between two text columns that few lines enter: the widest
    run of at least ``gutter`` px entered by the fewest lines, if those are under
    :data:`MAX_SPANNING` of all and both sides of it hold text columns. Lines that cross it
    whole are full-width (a title, a wide caption); one that only enters it (code running
    into the gutter) stays in its column."""
    x0 = int(min(line.box[0] for line in lines))
    x1 = int(max(line.box[2] for line in lines)) + 1
    cover = np.zeros(x1 - x0 + 1, dtype=np.int32)
    for line in lines:
        cover[int(line.box[0]) - x0] += 1
        cover[int(line.box[2]) - x0 + 1] -= 1
    cover = np.cumsum(cover)[:-1]
    width = int(math.ceil(gutter))
    for entering in range(int(MAX_SPANNING * len(lines)) + 1):
        runs = _runs(cover <= entering)
        runs = [(a, b) for a, b in runs if b - a >= width and a > 0 and b < len(cover)]
        for a, b in sorted(runs, key=lambda run: run[0] - run[1]):  # widest first
            run = (float(x0 + a), float(x0 + b))
            left, right, _ = _sides(lines, run)
            if (
                len(left) >= MIN_COLUMN_LINES
                and len(right) >= MIN_COLUMN_LINES
                and (_text_columns([left, right]))
            ):
                return run
    return None


def _sides(
    lines: list[TextLine], run: tuple[float, float]
) -> tuple[list[TextLine], list[TextLine], list[TextLine]]:
    """``lines`` left of the gutter ``run``, right of it, and across it whole."""
    left: list[TextLine] = []
    right: list[TextLine] = []
    across: list[TextLine] = []
    middle = (run[0] + run[1]) / 2
    for line in lines:
        if line.box[0] < run[0] and line.box[2] > run[1]:
            across.append(line)
        elif (line.box[0] + line.box[2]) / 2 < middle:
            left.append(line)
        else:
            right.append(line)
    return left, right, across


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of True in ``mask`` (end exclusive)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _read_sections(
    lines: list[TextLine], run: tuple[float, float], gutter: float
) -> list[TextLine]:
    """Lines across the gutter ``run`` cut the page into sections, read top to bottom; in
    each section the column left of the gutter is read before the one right of it."""
    left, right, across = _sides(lines, run)
    across.sort(key=lambda line: line.box[1])
    cuts = [(line.box[1] + line.box[3]) / 2 for line in across]

    def section(line: TextLine) -> int:
        centre = (line.box[1] + line.box[3]) / 2
        return sum(1 for cut in cuts if cut < centre)

    out: list[TextLine] = []
    for n in range(len(across) + 1):
        out += _order([line for line in left if section(line) == n], gutter)
        out += _order([line for line in right if section(line) == n], gutter)
        if n < len(across):
            out.append(across[n])
    return out


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
    """Top to bottom; lines whose vertical centres lie within half a line are one row, read
    left to right."""
    return [line for row in _rows_of(lines) for line in sorted(row, key=lambda item: item.box[0])]


def _rows_of(lines: list[TextLine]) -> list[list[TextLine]]:
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
    return rows


def paragraphs(lines: Sequence[TextLine]) -> list[TextLine]:
    """Lines in reading order joined into paragraphs: each continues the one above it (see
    :func:`_continues`); a paragraph's box is the union of its lines', its text theirs
    joined by spaces, its score their lowest.

    >>> first, second = TextLine((10, 0, 300, 20), "A long"), TextLine((10, 24, 200, 44), "line")
    >>> paragraphs([first, second])
    [TextLine(box=(10, 0, 300, 44), text='A long line', score=1.0)]
    """
    out: list[TextLine] = []
    block: list[TextLine] = []  # the current paragraph's lines
    for n, line in enumerate(lines):
        after = lines[n + 1] if n + 1 < len(lines) else None
        if block and _continues(block, line, after):
            top = out[-1]
            box = (min(top.box[0], line.box[0]), top.box[1],
                   max(top.box[2], line.box[2]), max(top.box[3], line.box[3]))  # fmt: skip
            out[-1] = TextLine(box, f"{top.text} {line.text}", min(top.score, line.score))
            block.append(line)
        else:
            out.append(line)
            block = [line]
    return out


def _continues(block: list[TextLine], line: TextLine, after: TextLine | None) -> bool:
    """Whether ``line`` continues the paragraph of ``block``: it sits close below the last
    line (a gap under :data:`PARAGRAPH_GAP` of its height, heights within
    :data:`HEIGHT_RATIO`) and starts where the paragraph's body does (within half a line).
    The body starts at the second line: left of the first by up to :data:`INDENT` line
    heights (an indented first line), or right of it (a hanging indent: a reference or a
    list item) when the first line starts with a list marker or the next line starts there
    too. A line after a short one (ending :data:`SHORT_LINE` heights before the paragraph's
    right edge) starts a new paragraph."""
    above = block[-1]
    low, high = sorted((above.height, line.height))
    gap = line.box[1] - above.box[3]
    if not (low > 0 and high <= HEIGHT_RATIO * low and -0.5 * low < gap < PARAGRAPH_GAP * low):
        return False
    tolerance = 0.5 * low
    if len(block) > 1:
        right = max(item.box[2] for item in block)
        return (
            abs(line.box[0] - block[1].box[0]) <= tolerance
            and above.box[2] >= right - SHORT_LINE * low
        )
    shift = line.box[0] - above.box[0]
    if abs(shift) <= tolerance or -INDENT * low <= shift < 0:
        return True
    if 0 < shift <= INDENT * low:
        return bool(LIST_MARKER.match(above.text)) or (
            after is not None and abs(after.box[0] - line.box[0]) <= tolerance
        )
    return False


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
