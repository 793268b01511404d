"""OCR quality measures: character and word error rates, box overlap and word containment.

Text is compared after collapsing every run of whitespace (line breaks too) to one space, so
only the characters and their order count, not the line breaks. Comparisons are
case-sensitive unless ``ignore_case`` is set (then both sides are case-folded).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Box = Sequence[float]
WORD = re.compile(r"\w+")


def normalize(text: str, *, ignore_case: bool = False) -> str:
    """``text`` with whitespace runs collapsed to one space and the ends stripped."""
    text = " ".join(text.split())
    return text.casefold() if ignore_case else text


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """The Levenshtein distance (unit-cost insertions, deletions and substitutions)."""
    if not ref or not hyp:
        return max(len(ref), len(hyp))
    ids: dict[Hashable, int] = {}
    a = np.array([ids.setdefault(t, len(ids)) for t in ref], dtype=np.int64)
    b = np.array([ids.setdefault(t, len(ids)) for t in hyp], dtype=np.int64)
    steps = np.arange(len(b) + 1, dtype=np.int64)
    row = steps.copy()
    for i, token in enumerate(a, start=1):
        # Deletions and substitutions come from the previous row; insertions run along this
        # row: cur[j] = min_k<=j (best[k] - k) + j, a cumulative minimum.
        best = np.empty_like(row)
        best[0] = i
        best[1:] = np.minimum(row[1:] + 1, row[:-1] + (b != token))
        row = np.minimum.accumulate(best - steps) + steps
    return int(row[-1])


def char_errors(ref: str, hyp: str, *, ignore_case: bool = False) -> tuple[int, int]:
    """``(edits, reference length)`` over the normalised characters."""
    r, h = normalize(ref, ignore_case=ignore_case), normalize(hyp, ignore_case=ignore_case)
    return edit_distance(r, h), len(r)


def word_errors(ref: str, hyp: str, *, ignore_case: bool = False) -> tuple[int, int]:
    """``(edits, reference word count)`` over whitespace-separated words."""
    r = normalize(ref, ignore_case=ignore_case).split()
    h = normalize(hyp, ignore_case=ignore_case).split()
    return edit_distance(r, h), len(r)


def cer(ref: str, hyp: str, *, ignore_case: bool = False) -> float:
    """Character error rate: edits / reference characters. An empty reference gives 0.0 for
    an empty hypothesis and 1.0 otherwise."""
    return _rate(*char_errors(ref, hyp, ignore_case=ignore_case))


def wer(ref: str, hyp: str, *, ignore_case: bool = False) -> float:
    """Word error rate: edits / reference words (empty reference as in :func:`cer`)."""
    return _rate(*word_errors(ref, hyp, ignore_case=ignore_case))


def word_recall(ref: str, hyp: str) -> tuple[int, int]:
    """``(true words found, true words)``: words are runs of letters and digits, counted as a
    multiset (a word twice in the truth must be read twice), in any order."""
    found = Counter(WORD.findall(hyp))
    truth = Counter(WORD.findall(ref))
    return sum((truth & found).values()), sum(truth.values())


def unordered_char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """:func:`char_errors` of both texts' words sorted: what was read, whatever the order."""
    return char_errors(" ".join(sorted(ref.split())), " ".join(sorted(hyp.split())))


def _rate(edits: int, length: int) -> float:
    if length == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / length


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes; 0.0 if either is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


@dataclass(frozen=True)
class LineMatch:
    """For each true line box, the best IoU with any predicted box."""

    best: tuple[float, ...]
    threshold: float = 0.5

    @property
    def hits(self) -> int:
        """True lines with a predicted box at IoU >= ``threshold``."""
        return sum(1 for iou in self.best if iou >= self.threshold)

    @property
    def mean_iou(self) -> float:
        """The mean best IoU (1.0 for a page with no true lines)."""
        return sum(self.best) / len(self.best) if self.best else 1.0

    @property
    def recall(self) -> float:
        """The share of true lines found at IoU >= ``threshold`` (1.0 with no true lines)."""
        return self.hits / len(self.best) if self.best else 1.0


def match_lines(
    true_boxes: Sequence[Box], pred_boxes: Sequence[Box], *, threshold: float = 0.5
) -> LineMatch:
    """Each true box's best IoU among ``pred_boxes`` (a predicted box may serve several)."""
    best = tuple(max((box_iou(t, p) for p in pred_boxes), default=0.0) for t in true_boxes)
    return LineMatch(best, threshold)


def contains(outer: Box, inner: Box, *, tolerance: float = 0.0) -> bool:
    """Whether ``inner`` lies inside ``outer`` grown by ``tolerance`` on every side."""
    return (
        inner[0] >= outer[0] - tolerance
        and inner[1] >= outer[1] - tolerance
        and inner[2] <= outer[2] + tolerance
        and inner[3] <= outer[3] + tolerance
    )


def contained_words(
    true_boxes: Sequence[Box], pred_boxes: Sequence[Box], *, tolerance: float = 2.0
) -> int:
    """How many true word boxes lie inside some predicted box (within ``tolerance`` px)."""
    return sum(
        1 for t in true_boxes if any(contains(p, t, tolerance=tolerance) for p in pred_boxes)
    )


def word_containment(
    true_boxes: Sequence[Box], pred_boxes: Sequence[Box], *, tolerance: float = 2.0
) -> float:
    """The share of true word boxes inside some predicted box (1.0 with no true words)."""
    if not true_boxes:
        return 1.0
    return contained_words(true_boxes, pred_boxes, tolerance=tolerance) / len(true_boxes)
