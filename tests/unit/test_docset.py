"""The generated document set: its truth matches the pixels it ships, in every case."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.scoring import contains
from serve_app.core.pdf import open_pdf
from serve_app.testing.docset import (
    INK_LEVEL,
    Case,
    DrawnLine,
    PageSpec,
    TruePage,
    document_set,
    exif_jpeg_case,
    pdf_cases,
    png_case,
    render,
    render_pdf,
    text_page,
    text_page_png,
)
from serve_app.testing.synthetic import EXIF_ORIENTATION_TAG

CASES = {c.name: c for c in document_set()}


def oriented(case: Case) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(case.data))).convert("L")


def ink_outside_words(image: Image.Image, truth: TruePage, tolerance: int) -> int:
    """Dark pixels outside every word's ink box grown by ``tolerance`` px."""
    dark = np.asarray(image) < INK_LEVEL
    for word in truth.words:
        x1, y1, x2, y2 = (int(v) for v in word.ink)
        dark[max(y1 - tolerance, 0) : y2 + tolerance, max(x1 - tolerance, 0) : x2 + tolerance] = (
            False
        )
    return int(dark.sum())


def words_without_ink(image: Image.Image, truth: TruePage) -> list[str]:
    """Words whose ink box holds no dark pixel, or touches none of its four edges."""
    dark = np.asarray(image) < INK_LEVEL
    missing = []
    for w in truth.words:
        x1, y1, x2, y2 = (int(v) for v in w.ink)
        ink = dark[y1:y2, x1:x2]
        if not (ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()):
            missing.append(w.text)
    return missing


def test_the_set_holds_each_kind_of_document_in_eight_pages() -> None:
    assert list(CASES) == [
        "fonts", "two_columns", "table", "rotated_scan", "pdf_100dpi", "pdf_200dpi",
    ]  # fmt: skip
    assert sum(len(c.pages) for c in CASES.values()) == 8
    assert [c.content_type for c in CASES.values()] == ["image/png"] * 3 + ["image/jpeg"] + [
        "application/pdf"
    ] * 2
    assert CASES["pdf_100dpi"].fields == {"dpi": "100"}
    assert CASES["pdf_200dpi"].fields == {"dpi": "200"}
    assert CASES["fonts"].fields == {}


def test_every_word_box_lies_in_its_page_and_lines_are_their_words() -> None:
    for case in CASES.values():
        for page in case.pages:
            assert page.lines
            for line in page.lines:
                assert line.text == " ".join(w.text for w in line.words)
                assert line.box == (
                    min(w.box[0] for w in line.words),
                    min(w.box[1] for w in line.words),
                    max(w.box[2] for w in line.words),
                    max(w.box[3] for w in line.words),
                )
                for word in line.words:
                    x1, y1, x2, y2 = word.box
                    assert 0 <= x1 < x2 <= page.width and 0 <= y1 < y2 <= page.height, case.name
                    assert contains(word.box, word.ink, tolerance=3) and word.ink != word.box, word


def test_reading_order_and_texts() -> None:
    columns = CASES["two_columns"].pages[0].lines
    assert columns[0].text == "Field notes on river gauges"
    assert columns[1].text == "The northern gauge was read at dawn"
    assert columns[7].text == "The southern gauge sits below the"
    assert len(columns) == 13
    assert max(ln.box[2] for ln in columns[1:7]) < min(ln.box[0] for ln in columns[7:])
    assert CASES["table"].pages[0].text.split("\n")[:6] == [
        "Item", "Qty", "Unit", "Total", "Bolts M6", "120",
    ]  # fmt: skip
    assert len(CASES["table"].pages[0].lines) == 20
    assert CASES["rotated_scan"].pages[0].text == (
        "Dear customer,\nyour order 5512 left our depot today.\n"
        "It should arrive within 4 working days.\nKind regards, the dispatch team"
    )
    fonts = CASES["fonts"].pages[0]
    assert [ln.words[0].text for ln in fonts.lines] == [
        "Helvetica", "Times", "Courier", "Helvetica", "Times", "Courier",
    ]  # fmt: skip
    # The smallest text (10 pt at 144 dpi) is still at least 14 px tall.
    assert min(ln.box[3] - ln.box[1] for ln in fonts.lines) >= 14


@pytest.mark.parametrize("name", ["fonts", "two_columns", "rotated_scan"])
def test_the_ink_of_an_image_case_lies_in_its_word_boxes(name: str) -> None:
    case = CASES[name]
    image = oriented(case)
    (truth,) = case.pages
    assert image.size == (truth.width, truth.height)
    # A JPEG's edges blur by a pixel or two; a PNG is the rendered page exactly.
    tolerance = 2 if case.content_type == "image/jpeg" else 0
    assert ink_outside_words(image, truth, tolerance) == 0
    if tolerance == 0:
        assert words_without_ink(image, truth) == []


def test_the_rotated_scan_is_stored_sideways_with_exif_orientation_6() -> None:
    case = CASES["rotated_scan"]
    stored = Image.open(io.BytesIO(case.data))
    assert stored.format == "JPEG"
    assert stored.getexif()[EXIF_ORIENTATION_TAG] == 6
    assert stored.size == (case.pages[0].height, case.pages[0].width)
    # Read without the EXIF tag, the ink does not match the truth.
    assert ink_outside_words(stored.convert("L").resize(oriented(case).size), case.pages[0], 2)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_transpose_turns_each_orientation_upright(orientation: int) -> None:
    spec = text_page(["Upright text", "on a short page"], size=14)
    case = exif_jpeg_case("turned", spec, orientation=orientation, dpi=100)
    (truth,) = case.pages
    assert oriented(case).size == (truth.width, truth.height)
    assert ink_outside_words(oriented(case), truth, tolerance=2) == 0


def test_the_pdf_cases_share_bytes_and_scale_their_truth_by_the_dpi_ratio() -> None:
    low, high = CASES["pdf_100dpi"], CASES["pdf_200dpi"]
    assert low.data == high.data and low.filename == "pdf.pdf"
    assert len(low.pages) == len(high.pages) == 2
    for a, b in zip(low.pages, high.pages, strict=True):
        assert a.text == b.text
        for wa, wb in zip(a.words, b.words, strict=True):
            assert wb.box == pytest.approx(tuple(2 * v for v in wa.box), abs=0.02)
    points = render_pdf(low.data, dpi=72)
    for (_, at72), at100 in zip(points, low.pages, strict=True):
        for w72, w100 in zip(at72.words, at100.words, strict=True):
            assert w100.box == pytest.approx(tuple(v * 100 / 72 for v in w72.box), abs=0.02)


@pytest.mark.parametrize("name", ["pdf_100dpi", "pdf_200dpi"])
def test_the_service_renderer_gives_the_true_page_size_and_ink(name: str) -> None:
    case = CASES[name]
    dpi = int(case.fields["dpi"])
    with open_pdf(case.data) as doc:
        for index, truth in enumerate(case.pages):
            image = doc.render(index, dpi=dpi).convert("L")
            assert image.size == (truth.width, truth.height)
            assert ink_outside_words(image, truth, tolerance=0) == 0
            assert words_without_ink(image, truth) == []


def test_the_same_arguments_give_the_same_bytes() -> None:
    spec = text_page(["Same bytes", "every time"])
    assert png_case("a", spec).data == png_case("a", spec).data
    assert exif_jpeg_case("a", spec).data == exif_jpeg_case("a", spec).data
    assert pdf_cases("a", [spec], [72]) == pdf_cases("a", [spec], [72])
    assert document_set() == document_set()


def test_text_page_png_reads_back_the_lines_drawn() -> None:
    case = text_page_png(["Hello there", "second line 42"], font="cour", size=20, dpi=72)
    (truth,) = case.pages
    assert truth.text == "Hello there\nsecond line 42"
    assert Image.open(io.BytesIO(case.data)).size == (truth.width, truth.height)
    assert [w.text for w in truth.words] == ["Hello", "there", "second", "line", "42"]


def test_lines_that_pymupdf_would_merge_are_refused() -> None:
    spec = PageSpec(200, 100, (DrawnLine("ab", 36, 50), DrawnLine("cd", 56, 50)))
    with pytest.raises(ValueError, match="PyMuPDF reads \\['ab cd'\\]"):
        render([spec])
