"""The grounding parser on well-formed, malformed and real published model output."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.core.grounding import Block, Box, parse_boxes, parse_grounded
from tests.conftest import FIXTURES, shared_samples

OUTPUTS = FIXTURES / "outputs"


def test_multi_region_page() -> None:
    grounded = parse_grounded((OUTPUTS / "two_column_paper.txt").read_text())

    labels = [b.label for b in grounded.blocks]
    assert labels == ["title", "text", "sub_title", "text", "image", "image_caption",
                      "equation", "table", "image", "text"]  # fmt: skip
    assert grounded.problems == ()
    authors = grounded.blocks[1]
    assert authors.boxes == (Box(112, 130, 487, 160), Box(512, 130, 887, 160))
    assert authors.text.strip() == "Ada Lovelace, Charles Babbage"
    table = grounded.blocks[7]
    assert table.text.strip().startswith("<table><tr><td>Batch</td>")
    assert grounded.blocks[8].boxes == (Box(112, 660, 480, 900), Box(520, 660, 887, 900))


def test_truncated_last_tag_degrades_to_text() -> None:
    grounded = parse_grounded((OUTPUTS / "truncated_last_tag.txt").read_text())

    assert [b.label for b in grounded.blocks] == ["sub_title", "text", "equation"]
    assert grounded.blocks[-1].boxes == ()
    assert any("unclosed det" in p for p in grounded.problems)
    assert grounded.blocks[1].text.strip() == "The model reads every page."


@pytest.mark.parametrize(
    ("payload", "boxes"),
    [
        ("[[1, 2, 3, 4]]", [Box(1, 2, 3, 4)]),
        (" [[1,2,3,4],[10, 20, 30, 40]] ", [Box(1, 2, 3, 4), Box(10, 20, 30, 40)]),
        ("[[110, -1, 444, 43]]", [Box(110, 0, 444, 43)]),  # clamped
        ("[[0, 0, 1000, 1200]]", [Box(0, 0, 999, 999)]),  # clamped
        ("[[1100, 0, 999, 100]]", []),  # empty after clamping
        ("[[100, 363, 100, 400]]", []),  # zero width
        ("[[550, s 331, 652, 345]]", [Box(550, 331, 652, 345)]),  # one stray letter
        ("[[117, - 325, 500, 392]]", [Box(117, 325, 500, 392)]),  # detached minus
        ("[[110, \\frac{1}{1+x^2}}]]", []),  # LaTeX, not numbers
        ("[[1, 2, 3]]", []),
        ("[[1, 2, 3, 4, 5]]", []),
        ("no boxes here", []),
        ("[[1, 2, 3, 4]] trailing", []),
        ("", []),
    ],
)
def test_parse_boxes(payload: str, boxes: list[Box]) -> None:
    assert list(parse_boxes(payload)[0]) == boxes


def test_reversed_and_garbage_boxes_are_reported() -> None:
    _, problems = parse_boxes("[[1200, 281, 465, 302], [1, 2, x y z, 4]]")
    assert len(problems) == 3  # clamped, then empty; and not four integers


def test_text_before_first_ref_is_kept() -> None:
    grounded = parse_grounded("Intro line.\n<|ref|>text<|/ref|><|det|>[[1,2,30,40]]<|/det|>\nBody")
    assert grounded.blocks == (
        Block(None, (), "Intro line.\n"),
        Block("text", (Box(1, 2, 30, 40),), "\nBody"),
    )


def test_nested_ref_keeps_inner_label() -> None:
    grounded = parse_grounded("<|ref|>equation<|ref|>text<|/ref|><|det|>[[1,2,3,4]]<|/det|>\nx")
    assert [(b.label, b.boxes) for b in grounded.blocks] == [("text", (Box(1, 2, 3, 4),))]
    assert any("nested ref" in p for p in grounded.problems)


def test_unclosed_last_ref_splits_label_from_content() -> None:
    grounded = parse_grounded("<|ref|>text<|/ref|><|det|>[[1,2,3,4]]<|/det|>\na\n\n"
                              "<|ref|>equation\n\\[ x = 1 \\]")  # fmt: skip
    last = grounded.blocks[-1]
    assert (last.label, last.boxes, last.text) == ("equation", (), "\n\\[ x = 1 \\]")


def test_unclosed_det_with_valid_boxes_keeps_boxes_and_text() -> None:
    grounded = parse_grounded("<|ref|>text<|/ref|><|det|> [[125, 264, 737, 311]]\nHello\n")
    assert grounded.blocks[0].boxes == (Box(125, 264, 737, 311),)
    assert grounded.blocks[0].text == "\nHello\n"


def test_unclosed_det_holding_a_formula_keeps_it_as_text() -> None:
    text = (
        "<|ref|>equation<|/ref|><|det|>\\[ V = \\pi r^2 \\]\n\n"
        "<|ref|>text<|/ref|><|det|>[[1,2,3,4]]<|/det|>\nok"
    )
    grounded = parse_grounded(text)
    assert grounded.blocks[0].text == "\\[ V = \\pi r^2 \\]\n\n"
    assert grounded.blocks[1].boxes == (Box(1, 2, 3, 4),)


def test_orphan_tags_do_not_break_parsing() -> None:
    grounded = parse_grounded(
        "<|/ref|><|det|>[[37, 48, 279, 140]]<|/det|>\n"
        "<|ref|>Deploy models<|/ref|><|det|>[[42, 48, 857, 133]]<|/det|>\n"
    )
    assert [b.label for b in grounded.blocks] == [None, "Deploy models"]
    assert grounded.blocks[0].boxes == (Box(37, 48, 279, 140),)
    assert "closing ref without an opening one" in grounded.problems


def test_stripped_special_tokens_are_recovered() -> None:
    text = (
        "text[[217, 146, 785, 191]]\nSome words.  \n\n"
        "sub_title[[217, 209, 520, 225]]\n### 5.1 HPO\n"
    )
    grounded = parse_grounded(text)
    assert [(b.label, b.boxes) for b in grounded.blocks] == [
        ("text", (Box(217, 146, 785, 191),)),
        ("sub_title", (Box(217, 209, 520, 225),)),
    ]
    assert grounded.blocks[1].text == "\n### 5.1 HPO\n"


def test_eos_text_is_removed() -> None:
    grounded = parse_grounded(
        "<|ref|>text<|/ref|><|det|>[[1,2,3,4]]<|/det|>\nEnd.<｜end▁of▁sentence｜>"
    )
    assert grounded.blocks[0].text == "\nEnd."


def test_box_to_pixels_uses_the_999_scale() -> None:
    assert Box(0, 0, 999, 999).to_pixels(1190, 1684) == Box(0, 0, 1190, 1684)
    assert Box(100, 200, 400, 600).to_pixels(1000, 800) == Box(100, 160, 400, 480)
    # 883x736 (sample 19's image): floor(v * size / 999) exactly, no float rounding loss.
    assert Box(333, 333, 666, 666).to_pixels(883, 736) == Box(294, 245, 588, 490)


@pytest.mark.parametrize(
    "text",
    ["", "<|ref|>", "<|det|>", "<|/det|><|/ref|>", "<|ref|><|det|><|/ref|><|/det|>",
     "[[1,2,3,4]]", "<|det|>[[" + "9, " * 5000, "<|ref|>x<|/ref|><|det|>[[1,2,3,4]]<|/det|>" * 500],
)  # fmt: skip
def test_never_raises(text: str) -> None:
    parse_grounded(text)


@pytest.mark.usefixtures("require_shared_samples")
@pytest.mark.parametrize("path", shared_samples(), ids=lambda p: p.name[:2])
def test_published_outputs(path: Path) -> None:
    text = path.read_text()
    grounded = parse_grounded(text)

    for region in grounded.regions:
        for box in region.boxes:
            assert 0 <= box.x1 < box.x2 <= 999 and 0 <= box.y1 < box.y2 <= 999
    # Nothing the model wrote outside the markup is lost: every block's text is in the input.
    for block in grounded.blocks:
        assert block.text.strip() == "" or block.text.strip()[:200] in text


def test_published_outputs_specifics(require_shared_samples: None) -> None:
    by_number = {p.name[:2]: parse_grounded(p.read_text()) for p in shared_samples()}
    assert len(by_number["13"].blocks[3].boxes) == 5  # one ref, five boxes
    assert len(by_number["13"].blocks[11].boxes) == 2  # a block across two columns
    assert any("empty" in p for p in by_number["03"].problems)
    assert any("nested ref" in p for p in by_number["06"].problems)
    assert any("unclosed det" in p for p in by_number["07"].problems)
    assert [b.label for b in by_number["12"].blocks][:2] == ["text", "sub_title"]
    assert [b.label for b in by_number["18"].blocks] == ["一段接一段", "越过高峰", "另一峰却又见"]
    assert by_number["05"].blocks[-1].label == "equation"


def test_pixel_boxes_map_to_999_boxes_that_contain_them_tightly() -> None:
    import random

    from serve_app.core.grounding import box_to_999

    rng = random.Random(0)
    for _ in range(2000):
        width, height = rng.randint(20, 5000), rng.randint(20, 5000)
        x1, y1 = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
        x2, y2 = rng.uniform(x1 + 1, width), rng.uniform(y1 + 1, height)
        back = box_to_999(x1, y1, x2, y2, width, height).to_pixels(width, height)
        assert back.x1 <= x1 and back.y1 <= y1 and back.x2 >= x2 and back.y2 >= y2
        slack_x, slack_y = width / 999 + 2, height / 999 + 2
        assert x1 - back.x1 <= slack_x and back.x2 - x2 <= slack_x
        assert y1 - back.y1 <= slack_y and back.y2 - y2 <= slack_y


def test_grounded_lines_parse_back_to_their_text_and_boxes() -> None:
    from serve_app.core.grounding import Box, grounded_lines, parse_grounded

    lines = [(Box(10, 20, 500, 60), "Invoice 12345"), (Box(10, 80, 999, 120), "a <|ref|>b")]
    parsed = parse_grounded(grounded_lines(lines))
    assert parsed.problems == ()
    assert [(r.label, r.boxes) for r in parsed.regions] == [
        ("Invoice 12345", (Box(10, 20, 500, 60),)),
        ("a b", (Box(10, 80, 999, 120),)),
    ]
