"""Text lines from a page reader: reading order, and DeepSeek-OCR's grammar per task."""

from __future__ import annotations

import pytest

from serve_app.core.grounding import Box, parse_grounded
from serve_app.core.markdown import page_markdown
from serve_app.core.prompts import Task
from serve_app.core.text_lines import (
    TextLine,
    from_quads,
    lines_output,
    paragraphs,
    reading_order,
)

W, H = 1000, 800


def line(text: str, x1: float, y1: float, x2: float, y2: float) -> TextLine:
    return TextLine((x1, y1, x2, y2), text)


def texts(lines: list[TextLine]) -> list[str]:
    return [item.text for item in lines]


def test_from_quads_takes_the_bounding_box_of_a_tilted_quad() -> None:
    (found,) = from_quads([[(10, 22), (200, 18), (201, 40), (11, 44)]], ["tilted"], [0.9])
    assert found == TextLine((10.0, 18.0, 201.0, 44.0), "tilted", 0.9)


def test_title_then_two_columns_then_footer() -> None:
    title = line("Title", 100, 20, 900, 60)
    left = [line(f"left {n}", 100, 100 + 30 * n, 480, 120 + 30 * n) for n in range(4)]
    # The right column's lines sit at the same heights as the left one's.
    right = [line(f"right {n}", 520, 100 + 30 * n, 900, 120 + 30 * n) for n in range(4)]
    footer = line("Footer", 100, 700, 900, 730)
    shuffled = [right[2], footer, left[1], title, right[0], left[3], right[3], left[0], right[1],
                left[2]]  # fmt: skip

    ordered = texts(reading_order(shuffled, W))

    assert ordered == ["Title", *(f"left {n}" for n in range(4)),
                       *(f"right {n}" for n in range(4)), "Footer"]  # fmt: skip


def test_a_table_of_three_columns_is_read_row_by_row() -> None:
    cells = [
        line(f"r{row}c{col}", 100 + 300 * col, 100 + 40 * row, 300 + 300 * col, 125 + 40 * row)
        for row in range(3)
        for col in range(3)
    ]
    ordered = texts(reading_order(list(reversed(cells)), W))
    assert ordered == [f"r{row}c{col}" for row in range(3) for col in range(3)]


def test_pieces_of_one_line_stay_left_to_right() -> None:
    pieces = [line("b", 300, 101, 400, 121), line("a", 100, 100, 250, 120)]
    assert texts(reading_order(pieces, W)) == ["a", "b"]


LINES = [line("Total: 12 <|ref|>", 100, 50, 400, 80), line("Second line", 100, 100, 500, 130)]


def test_ocr_task_labels_are_the_lines_and_boxes_contain_them() -> None:
    grounded = parse_grounded(lines_output(LINES, Task.OCR, W, H))

    assert grounded.problems == ()
    assert [r.label for r in grounded.regions] == ["Total: 12", "Second line"]
    for region, source in zip(grounded.regions, LINES, strict=True):
        (box,) = region.boxes
        pixel = box.to_pixels(W, H)
        x1, y1, x2, y2 = source.box
        assert pixel.x1 <= x1 and pixel.y1 <= y1 and pixel.x2 >= x2 and pixel.y2 >= y2


def test_document_task_gives_a_text_block_per_paragraph() -> None:
    grounded = parse_grounded(lines_output(LINES, Task.DOCUMENT, W, H))

    # 20 px apart at 30 px high, aligned: the second line continues the first.
    (region,) = grounded.regions
    assert (region.label, region.text.strip()) == ("text", "Total: 12 Second line")
    assert region.boxes[0].to_pixels(W, H) == Box(99, 49, 500, 130)  # the union, contained
    assert page_markdown(grounded, page_number=1) == "Total: 12 Second line"


@pytest.mark.parametrize(
    ("below", "why"),
    [
        (line("far below", 100, 110, 500, 140), "a gap of a line height"),
        (line("indented", 140, 100, 500, 130), "indented by more than a line height"),
        (line("heading size", 100, 100, 500, 150), "a different size"),
        (line("above", 100, 10, 500, 40), "not below"),
    ],
)
def test_a_new_paragraph_starts(below: TextLine, why: str) -> None:
    first = line("first", 100, 50, 500, 80)
    assert [p.text for p in paragraphs([first, below])] == ["first", below.text], why


def test_free_task_is_plain_text() -> None:
    assert lines_output(LINES, Task.FREE, W, H) == "Total: 12\nSecond line\n"


def test_locate_boxes_every_line_with_the_phrase() -> None:
    lines = [*LINES, line("second helping", 100, 150, 400, 180)]
    grounded = parse_grounded(lines_output(lines, Task.LOCATE, W, H, phrase="SECOND"))

    (region,) = grounded.regions
    assert region.label == "SECOND"
    assert [b.to_pixels(W, H).y1 for b in region.boxes] == [99, 149]
    assert lines_output(lines, Task.LOCATE, W, H, phrase="absent") == ""


@pytest.mark.parametrize("task", [Task.FIGURE, Task.DESCRIBE, None])
def test_tasks_a_line_reader_cannot_do_are_refused(task: Task | None) -> None:
    with pytest.raises(ValueError, match="cannot do task"):
        lines_output(LINES, task, W, H)


def test_box_scale_is_the_oriented_page() -> None:
    (region,) = parse_grounded(lines_output([line("x", 0, 0, W, H)], Task.OCR, W, H)).regions
    assert region.boxes == (Box(0, 0, 999, 999),)
