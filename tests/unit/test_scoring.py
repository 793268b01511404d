"""Error rates and box measures of the quality harness, on values worked out by hand."""

from __future__ import annotations

import random

import pytest

from bench import scoring
from bench.scoring import (
    box_iou,
    cer,
    char_errors,
    contained_words,
    contains,
    edit_distance,
    match_lines,
    normalize,
    wer,
    word_containment,
    word_errors,
)


def reference_distance(a: str, b: str) -> int:
    """The textbook dynamic programme, one cell at a time."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_kitten_sitting() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert cer("kitten", "sitting") == 0.5
    assert char_errors("kitten", "sitting") == (3, 6)


def test_the_vectorised_distance_equals_the_textbook_one() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 15)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 15)))
        assert edit_distance(a, b) == reference_distance(a, b), (a, b)


def test_word_error_rate() -> None:
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "the bat sat down") == pytest.approx(2 / 3)
    assert word_errors("a b c d", "a c d") == (1, 4)
    assert edit_distance(["ab", "c"], ["c"]) == 1


def test_whitespace_is_normalised_and_case_counts_unless_ignored() -> None:
    assert normalize("  a \n\n b\tc ") == "a b c"
    assert cer("one two\nthree", "one  two three") == 0.0
    assert wer("one two\nthree", "one\ntwo three\n") == 0.0
    assert cer("Hello", "hello") == 0.2
    assert cer("Hello", "hello", ignore_case=True) == 0.0
    assert wer("Hello World", "hello world", ignore_case=True) == 0.0


def test_empty_texts() -> None:
    assert cer("", "") == 0.0
    assert cer("", "x") == 1.0
    assert cer("abc", "") == 1.0
    assert cer("   ", "\n") == 0.0
    assert wer("", "") == 0.0
    assert wer("", "extra words") == 1.0
    assert wer("two words", "") == 1.0
    assert char_errors("abc", "") == (3, 3)


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 0, 10), (0, 0, 0, 10)) == 0.0  # empty boxes


def test_match_lines_takes_each_true_line_best_iou() -> None:
    truth = [(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10)]
    pred = [(0, 0, 10, 10), (25, 0, 35, 10), (40, 0, 50, 5)]
    match = match_lines(truth, pred)
    assert match.best == pytest.approx((1.0, 1 / 3, 0.5))
    assert match.hits == 2
    assert match.recall == pytest.approx(2 / 3)
    assert match.mean_iou == pytest.approx((1 + 1 / 3 + 0.5) / 3)
    assert match_lines(truth, pred, threshold=0.6).hits == 1
    assert match_lines(truth, []).best == (0.0, 0.0, 0.0)
    assert match_lines([], pred).mean_iou == 1.0 and match_lines([], pred).recall == 1.0


def test_word_containment_with_a_pixel_tolerance() -> None:
    assert contains((1, 1, 10, 10), (0, 0, 10, 10), tolerance=1)
    assert not contains((1, 1, 10, 10), (0, 0, 10, 10), tolerance=0.5)
    words = [(0, 0, 10, 10), (12, 0, 20, 10), (30, 0, 40, 10), (50, 0, 60, 10)]
    lines = [(1, 1, 21, 9), (29, 0, 39, 10)]
    assert contained_words(words, lines, tolerance=1) == 3  # not the word at x 50..60
    assert word_containment(words, lines, tolerance=1) == 0.75
    assert word_containment(words, lines, tolerance=0.5) == 0.0
    assert word_containment(words, [(0, 0, 60, 10)], tolerance=0) == 1.0
    assert word_containment([], lines) == 1.0


def test_word_recall_counts_each_true_word_as_often_as_it_occurs() -> None:
    # "the" twice in the truth, read once; "cat" misread; order does not matter.
    assert scoring.word_recall("the cat and the dog", "dog the and cot") == (3, 5)


def test_unordered_errors_ignore_the_order_of_words_but_not_their_letters() -> None:
    assert scoring.unordered_char_errors("alpha beta gamma", "gamma alpha beta") == (0, 16)
    assert scoring.unordered_char_errors("alpha beta", "beta alpah")[0] == 2
