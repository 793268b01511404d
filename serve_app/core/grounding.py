"""Parse DeepSeek-OCR's grounding markup into typed blocks, without ``eval``.

The model writes ``<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`` followed by
the block's content. Coordinates are integers in 0..999 relative to the oriented source image.

Real output breaks this grammar in many ways (see ``../shared/samples/model-outputs``):
coordinates outside 0..999 or reversed, stray characters inside a det, nested or unclosed
tags, dets that degenerate into repetition loops, markup stripped by a server that decoded
with ``skip_special_tokens=True``. The parser never raises on model output: what it cannot
read as markup stays text, broken boxes are dropped, and each repair is listed in
:attr:`Grounded.problems`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

COORD_MAX = 999
EOS_TEXT = "<｜end▁of▁sentence｜>"
REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"

_TAG_RE = re.compile(r"(<\|ref\|>|<\|/ref\|>|<\|det\|>|<\|/det\|>)")
_BOX_GROUP_RE = re.compile(r"\[([^\[\]]*)\]")
_INT_RE = re.compile(r"-?\d+")
_NOT_COORD_RE = re.compile(r"[-\d,\s]")
# A complete box list at the start of an unclosed det: "[[...], [...]]".
_BOX_LIST_PREFIX_RE = re.compile(r"^\s*\[\s*(?:\[[^\[\]]*\]\s*,?\s*)+\]")
# "label[[x1, y1, x2, y2]]" alone on a line: grounding markup whose special tokens were
# stripped by the decoder.
_STRIPPED_RE = re.compile(
    r"^(?P<label>[A-Za-z_][\w ]{0,40}?)(?P<boxes>\[\[[-\d,\s\[\]]+\]\])[ \t]*$", re.MULTILINE
)


@dataclass(frozen=True, order=True)
class Box:
    """An axis-aligned box ``(x1, y1, x2, y2)`` with ``x1 < x2`` and ``y1 < y2``."""

    x1: int
    y1: int
    x2: int
    y2: int

    def as_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]

    def to_pixels(self, width: int, height: int) -> Box:
        """Map a 0..999 box onto an image of ``width`` x ``height`` pixels.

        Uses ``floor(v * size / 999)``, the official scripts' ``int(v / 999 * size)`` in exact
        integer arithmetic (the float form can land one pixel short).
        """
        return Box(
            self.x1 * width // COORD_MAX,
            self.y1 * height // COORD_MAX,
            self.x2 * width // COORD_MAX,
            self.y2 * height // COORD_MAX,
        )


@dataclass(frozen=True)
class Block:
    """A run of output: an optional ref label, its boxes (0..999), and the text after it.

    ``label`` is ``None`` for text outside any ref (for example before the first one).
    """

    label: str | None
    boxes: tuple[Box, ...]
    text: str


@dataclass(frozen=True)
class Grounded:
    """The parsed output of one page."""

    blocks: tuple[Block, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def regions(self) -> tuple[Block, ...]:
        """The blocks that carry at least one valid box."""
        return tuple(b for b in self.blocks if b.boxes)


def parse_boxes(raw: str) -> tuple[tuple[Box, ...], list[str]]:
    """Read a det payload such as ``[[10, 20, 300, 400], [5, 5, 9, 9]]``.

    Lenient where the intent is clear (one stray character in a box, values outside 0..999
    are clamped); a box that is empty after clamping, or not four integers, is dropped.

    Returns:
        The valid boxes, and a note for each thing that was dropped or repaired.
    """
    problems: list[str] = []
    text = raw.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return (), [f"det is not a box list: {_preview(raw)}"]
    groups = _BOX_GROUP_RE.findall(text[1:-1])
    if not groups or _BOX_GROUP_RE.sub("", text[1:-1]).strip(", \n\t"):
        return (), [f"det is not a box list: {_preview(raw)}"]
    boxes: list[Box] = []
    for group in groups:
        values = [int(v) for v in _INT_RE.findall(group)]
        if len(values) != 4 or len(_NOT_COORD_RE.sub("", group)) > 1:
            problems.append(f"box is not four integers: [{_preview(group)}]")
            continue
        clamped = [min(max(v, 0), COORD_MAX) for v in values]
        if clamped != values:
            problems.append(f"box {values} clamped to 0..{COORD_MAX}")
        x1, y1, x2, y2 = clamped
        if x1 >= x2 or y1 >= y2:
            problems.append(f"box {values} is empty")
            continue
        boxes.append(Box(x1, y1, x2, y2))
    return tuple(boxes), problems


def parse_grounded(text: str) -> Grounded:
    """Split model output into blocks; never raises on any input string."""
    text = text.replace(EOS_TEXT, "")
    if REF_OPEN not in text and DET_OPEN not in text:
        text = _restore_stripped_markup(text)
    return _Parser().run(text)


def _restore_stripped_markup(text: str) -> str:
    return _STRIPPED_RE.sub(
        lambda m: f"{REF_OPEN}{m['label']}{REF_CLOSE}{DET_OPEN}{m['boxes']}{DET_CLOSE}", text
    )


def _preview(s: str, limit: int = 40) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class _Parser:
    """A small state machine over the four tags; text between tags goes where it belongs."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.problems: list[str] = []
        self.label: str | None = None
        self.boxes: tuple[Box, ...] = ()
        self.text: list[str] = []
        self.state = "text"  # text | ref | after_ref | det
        self.buffer: list[str] = []  # the label or det payload being read

    def run(self, text: str) -> Grounded:
        for piece in _TAG_RE.split(text):
            if piece in (REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE):
                self._tag(piece)
            elif piece:
                self._text(piece)
        self._finish()
        return Grounded(tuple(self.blocks), tuple(self.problems))

    def _flush_block(self) -> None:
        body = "".join(self.text)
        if self.label is not None or self.boxes or body:
            self.blocks.append(Block(self.label, self.boxes, body))
        self.label, self.boxes, self.text = None, (), []

    def _text(self, piece: str) -> None:
        if self.state in ("ref", "det"):
            self.buffer.append(piece)
        else:
            self.state = "text"
            self.text.append(piece)

    def _tag(self, tag: str) -> None:
        handler = {
            REF_OPEN: self._open_ref,
            REF_CLOSE: self._close_ref,
            DET_OPEN: self._open_det,
            DET_CLOSE: self._close_det,
        }[tag]
        handler()

    def _open_ref(self) -> None:
        if self.state == "ref":
            self.problems.append(f"nested ref: dropped label {_preview(''.join(self.buffer))!r}")
        elif self.state == "det":
            self._end_unclosed_det()
            self._flush_block()
        else:
            self._flush_block()
        self.buffer = []
        self.state = "ref"

    def _close_ref(self) -> None:
        if self.state != "ref":
            self.problems.append("closing ref without an opening one")
            return
        self.label = "".join(self.buffer).strip()
        self.buffer = []
        self.state = "after_ref"

    def _open_det(self) -> None:
        if self.state == "ref":
            self.problems.append("ref not closed before det")
            self.label = "".join(self.buffer).strip()
        elif self.state == "text":
            # A det with no ref before it starts an unlabelled region.
            self._flush_block()
        elif self.state == "det":
            self._end_unclosed_det()
            self._flush_block()
        self.buffer = []
        self.state = "det"

    def _close_det(self) -> None:
        if self.state != "det":
            self.problems.append("closing det without an opening one")
            return
        boxes, problems = parse_boxes("".join(self.buffer))
        self.boxes, self.buffer, self.state = boxes, [], "text"
        self.problems.extend(problems)

    def _end_unclosed_det(self) -> None:
        """A det cut short by the next tag or the end of output: keep a complete box list at
        its start; the rest stays text, except the first line of a broken box list."""
        payload = "".join(self.buffer)
        self.buffer, self.state = [], "text"
        prefix = _BOX_LIST_PREFIX_RE.match(payload)
        if prefix:
            self.problems.append("det not closed")
            self.boxes, problems = parse_boxes(prefix.group(0))
            self.problems.extend(problems)
            rest = payload[prefix.end() :]
        elif payload.lstrip().startswith("["):
            self.problems.append(f"unclosed det with broken boxes: {_preview(payload)}")
            _, newline, rest = payload.partition("\n")
            rest = newline + rest
        else:
            self.problems.append("unclosed det holding text")
            rest = payload
        self.text.append(rest)

    def _finish(self) -> None:
        if self.state == "ref":
            # An unclosed last ref: its first line is the label, the rest is content.
            label, _, rest = "".join(self.buffer).partition("\n")
            self.problems.append(f"ref not closed: {_preview(label)!r}")
            self.label = label.strip()
            self.text.append("\n" + rest if rest else "")
        elif self.state == "det":
            self._end_unclosed_det()
        self._flush_block()


def box_to_999(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box:
    """The 0..999 box whose pixel box (:meth:`Box.to_pixels`) contains the pixel box given:
    the grounding grammar for an engine that finds boxes in pixels.

    >>> box_to_999(100, 50, 300.5, 80, 1000, 500)
    Box(x1=99, y1=99, x2=301, y2=160)
    >>> box_to_999(100, 50, 300.5, 80, 1000, 500).to_pixels(1000, 500)
    Box(x1=99, y1=49, x2=301, y2=80)
    """

    def low(v: float, size: int) -> int:
        return min(max(math.floor(v) * COORD_MAX // size, 0), COORD_MAX - 1)

    def high(v: float, size: int) -> int:
        return min(max(-(-math.ceil(v) * COORD_MAX // size), 1), COORD_MAX)

    bx1, by1 = low(x1, width), low(y1, height)
    bx2, by2 = max(high(x2, width), bx1 + 1), max(high(y2, height), by1 + 1)
    return Box(bx1, by1, bx2, by2)


def grounded_lines(lines: list[tuple[Box, str]]) -> str:
    """Text lines with their 0..999 boxes in DeepSeek-OCR's grounding grammar, one per line:
    ``<|ref|>text<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>``. Markup inside a text is dropped.

    >>> grounded_lines([(Box(1, 2, 30, 40), "Total: 12")])
    '<|ref|>Total: 12<|/ref|><|det|>[[1, 2, 30, 40]]<|/det|>\\n'
    """
    out = []
    for box, text in lines:
        label = strip_markup(text).strip()
        out.append(f"{REF_OPEN}{label}{REF_CLOSE}{DET_OPEN}[{box.as_list()}]{DET_CLOSE}\n")
    return "".join(out)


def strip_markup(text: str) -> str:
    """``text`` without grounding tags, so recognised text cannot open a region.

    >>> strip_markup("a <|ref|>b<|/det|>")
    'a b'
    """
    for tag in (REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE):
        text = text.replace(tag, "")
    return text
