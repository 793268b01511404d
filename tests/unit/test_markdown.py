"""Markdown rendering of parsed pages and documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.core.grounding import parse_grounded
from serve_app.core.markdown import (
    PAGE_SPLIT,
    clean_text,
    figure_boxes,
    join_pages,
    page_markdown,
)
from tests.conftest import FIXTURES, shared_samples

PAPER = (FIXTURES / "outputs" / "two_column_paper.txt").read_text()


def test_document_page_markdown() -> None:
    md = page_markdown(parse_grounded(PAPER), page_number=2)

    assert md.startswith("# Serving Vision-Language Models at Scale\n\nAda Lovelace")
    assert "<|" not in md and "|>" not in md
    # Each box of an image ref is its own figure, numbered per box, in reading order.
    assert md.count("![](images/2_") == 3
    assert md.index("![](images/2_1.jpg)") < md.index("Figure 1") < md.index("![](images/2_2.jpg)")
    assert "![](images/2_2.jpg)\n![](images/2_3.jpg)" in md
    assert "u := t_{busy}" in md and "=: f(b)" in md
    assert "\n\n\n" not in md
    assert "<table><tr><td>Batch</td>" in md


def test_figure_boxes_match_markdown_links() -> None:
    grounded = parse_grounded(PAPER)
    assert len(figure_boxes(grounded)) == page_markdown(grounded).count("![](")
    assert figure_boxes(grounded, labels_are_text=True) == []


def test_ocr_lines_keep_their_text() -> None:
    grounded = parse_grounded((FIXTURES / "outputs" / "ocr_lines.txt").read_text())
    md = page_markdown(grounded, labels_are_text=True)
    assert md == "INVOICE 2026-0117\nTotal due: 1,250.00 EUR"
    assert page_markdown(grounded, labels_are_text=False) == ""


def test_grounded_phrases_stay_in_the_sentence() -> None:
    text = ("<|ref|>A series<|/ref|><|det|>[[3, 3, 992, 990]]<|/det|> of images showing "
            "<|ref|>a tracer<|/ref|><|det|>[[1, 1, 990, 990]]<|/det|> in the liver.")  # fmt: skip
    md = page_markdown(parse_grounded(text), labels_are_text=True)
    assert md == "A series of images showing a tracer in the liver."


def test_clean_text_removes_stray_control_tokens() -> None:
    assert clean_text("a<|grounding|>b<|text_contd|>c<｜end▁of▁sentence｜>") == "abc"


def test_join_pages_puts_the_marker_between_pages() -> None:
    assert join_pages(["one", "two"]) == f"one\n\n{PAGE_SPLIT}\n\ntwo"
    assert join_pages(["only"]) == "only"


@pytest.mark.usefixtures("require_shared_samples")
@pytest.mark.parametrize("path", shared_samples(), ids=lambda p: p.name[:2])
def test_published_outputs_render_without_markup(path: Path) -> None:
    md = page_markdown(parse_grounded(path.read_text()))
    assert "<|ref|>" not in md and "<|det|>" not in md and "<|/det|>" not in md
