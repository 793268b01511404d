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


TEXT = "words of running text in a column"  # long enough to be a text column's line


def column(
    name: str, x1: float, x2: float, y0: float, count: int, pitch: float = 30
) -> list[TextLine]:
    return [line(f"{name} {n} {TEXT}", x1, y0 + pitch * n, x2, y0 + pitch * n + 20)
            for n in range(count)]  # fmt: skip


def test_title_then_two_columns_then_footer() -> None:
    title = line("Title", 100, 20, 900, 60)
    left = column("left", 100, 480, 100, 4)
    # The right column's lines sit at the same heights as the left one's.
    right = column("right", 520, 900, 100, 4)
    footer = line("Footer", 100, 700, 900, 730)
    shuffled = [right[2], footer, left[1], title, right[0], left[3], right[3], left[0], right[1],
                left[2]]  # fmt: skip

    ordered = texts(reading_order(shuffled, W))

    assert ordered == texts([title, *left, *right, footer])


def test_a_wide_caption_between_columns_cuts_them_into_sections() -> None:
    # Two columns, a full-width figure caption, two columns again: the first pair is read
    # to its end, then the caption, then the second pair; a running head and page number
    # come first and last.
    head = [line("Running head of the journal", 100, 5, 400, 20), line("7", 880, 5, 900, 20)]
    top = column("top-left", 100, 480, 60, 5) + column("top-right", 520, 900, 60, 5)
    caption = line("Figure 1: a caption as wide as the page", 100, 220, 900, 240)
    low = column("low-left", 100, 480, 260, 6) + column("low-right", 520, 900, 260, 6)
    number = line("12", 490, 760, 510, 775)
    page = [*low, number, caption, *reversed(top), *head]

    ordered = texts(reading_order(page, W))

    assert ordered == texts([*head, *top, caption, *low, number])


def test_code_running_into_the_gutter_stays_in_its_column() -> None:
    left = column("left", 100, 480, 100, 6)
    left[2] = line(f"\\documentclass[sigconf, language=english] {TEXT}", 100, 160, 508, 180)
    right = column("right", 520, 900, 100, 6)

    assert texts(reading_order(right + left, W)) == texts(left + right)


def test_three_columns_are_read_one_after_the_other() -> None:
    columns = [column(f"c{n}", 60 + 300 * n, 330 + 300 * n, 100, 5) for n in range(3)]
    shuffled = [item for row in zip(*reversed(columns), strict=True) for item in row]

    assert texts(reading_order(shuffled, W)) == texts([item for c in columns for item in c])


def test_line_numbers_in_the_margin_are_read_with_their_lines() -> None:
    numbers = [line(str(n + 1), 40, 100 + 30 * n, 60, 120 + 30 * n) for n in range(5)]
    body = column("body", 100, 900, 100, 5)

    ordered = texts(reading_order(body + numbers, W))

    assert ordered == [text for pair in zip(texts(numbers), texts(body), strict=True)
                       for text in pair]  # fmt: skip


def reference_list(x1: float, x2: float, first: int) -> list[TextLine]:
    """Three references with hanging indents: a number, then lines indented under it."""
    out = []
    y = 100
    for n in range(first, first + 3):
        out.append(
            line(f"[{n}] A. Author and B. Author. 2020. A title of a paper", x1, y, x2, y + 20)
        )
        out.append(
            line("in the proceedings of a conference, pages 1-10,", x1 + 30, y + 22, x2, y + 42)
        )
        out.append(line("ACM Press.", x1 + 30, y + 44, x1 + 150, y + 64))
        y += 70
    return out  # fmt: skip


def test_a_two_column_reference_list_reads_each_column_and_each_reference_whole() -> None:
    left, right = reference_list(100, 480, 1), reference_list(520, 900, 4)
    shuffled = sorted(left + right, key=lambda item: (item.box[1], -item.box[0]))

    ordered = reading_order(shuffled, W)
    blocks = paragraphs(ordered)

    assert texts(ordered) == texts(left + right)
    assert [block.text.split()[0] for block in blocks] == [f"[{n}]" for n in range(1, 7)]
    assert blocks[0].text.endswith("pages 1-10, ACM Press.")


def test_indented_paragraphs_split_at_each_indent() -> None:
    para = [line("    The first paragraph starts indented and", 130, 100, 480, 120),
            line("runs on over full lines to its end, which", 100, 122, 480, 142),
            line("is short.", 100, 144, 200, 164),
            line("    A second paragraph starts indented too", 130, 166, 480, 186),
            line("and ends here.", 100, 188, 300, 208)]  # fmt: skip

    blocks = paragraphs(para)

    assert [block.text.split()[1] for block in blocks] == ["first", "second"]


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
