"""PDF opening, page selection and rendering, with typed errors."""

from __future__ import annotations

import pymupdf
import pytest

from serve_app.core.pdf import looks_like_pdf, open_pdf, parse_page_ranges
from serve_app.errors import (
    CorruptDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageTooLargeError,
    InvalidPageRangeError,
    TooManyPagesError,
)
from serve_app.testing.synthetic import text_pdf


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("1-3,7", [0, 1, 2, 6]),
        ("7, 1-3", [0, 1, 2, 6]),
        ("2,2,2", [1]),
        ("9-", [8, 9]),
        ("-2", [0, 1]),
        ("10", [9]),
        (" 4 - 5 ", [3, 4]),
    ],
)
def test_parse_page_ranges(spec: str | None, expected: list[int]) -> None:
    assert parse_page_ranges(spec, 10) == expected


@pytest.mark.parametrize("spec", ["0", "3-1", "11", "1-11", "a", "1,,2", "1-2-3", "-", "1 2"])
def test_bad_page_ranges(spec: str) -> None:
    with pytest.raises(InvalidPageRangeError):
        parse_page_ranges(spec, 10)


def test_render_page_at_default_dpi() -> None:
    with open_pdf(text_pdf(3)) as doc:
        assert doc.page_count == 3
        image = doc.render(1)
    assert image.mode == "RGB"
    assert image.size == (1190, 1684)  # A4 at 144 dpi, the official script's setting
    assert image.getpixel((5, 5)) == (255, 255, 255)  # no alpha: white, not transparent black


def test_render_dpi_scales_size() -> None:
    with open_pdf(text_pdf(1)) as doc:
        assert doc.render(0, dpi=72).size == (595, 842)


def test_select_limits_page_count() -> None:
    with open_pdf(text_pdf(5)) as doc:
        assert doc.select("2-3", max_pages=2) == [1, 2]
        with pytest.raises(TooManyPagesError, match="5 pages selected; at most 4"):
            doc.select(None, max_pages=4)


def test_render_refuses_oversized_pages() -> None:
    with open_pdf(text_pdf(1, size=(14400, 14400))) as doc, pytest.raises(ImageTooLargeError):
        doc.render(0, dpi=144)


def test_corrupt_pdf() -> None:
    with pytest.raises(CorruptDocumentError):
        open_pdf(b"%PDF-1.7\nthis is not really a pdf")


def test_encrypted_pdf() -> None:
    doc = pymupdf.open(stream=text_pdf(1), filetype="pdf")
    data = doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    with pytest.raises(EncryptedDocumentError):
        open_pdf(data)


def test_empty_pdf() -> None:
    # A syntactically valid PDF whose page tree is empty.
    data = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF"
    )
    with pytest.raises(EmptyDocumentError):
        open_pdf(data)


def test_looks_like_pdf() -> None:
    assert looks_like_pdf(text_pdf(1))
    assert not looks_like_pdf(b"\x89PNG\r\n")
