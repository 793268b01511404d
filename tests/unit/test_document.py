"""Page postprocessing, multi-page assembly, layout PDF and ZIP bundle."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pymupdf
import pytest
from PIL import Image

from serve_app.core.document import (
    PageFailure,
    PageResult,
    bundle_zip,
    document_markdown,
    layout_pdf,
    postprocess_page,
)
from serve_app.core.grounding import Box
from serve_app.core.markdown import PAGE_SPLIT
from serve_app.testing.synthetic import noise_rgb

RAW = (
    "<|ref|>title<|/ref|><|det|>[[50, 20, 950, 80]]<|/det|>\n# Report \n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 200, 400, 600], [500, 200, 900, 600]]<|/det|>\n \n\n"
    "<|ref|>text<|/ref|><|det|>[[50, 700, 950, 800]]<|/det|>\nClosing words. "
)


def page(number: int, *, image: Image.Image | None = None) -> PageResult:
    image = image or noise_rgb(1000, 800, seed=number)
    return postprocess_page(RAW, page_number=number, size=image.size, image=image,
                            with_figures=True, with_annotated=True)  # fmt: skip


def test_postprocess_page_crops_figures_named_as_linked() -> None:
    image = noise_rgb(1000, 800, seed=1)
    result = page(3, image=image)

    assert [f.name for f in result.figures] == ["images/3_1.jpg", "images/3_2.jpg"]
    assert "![](images/3_1.jpg)\n![](images/3_2.jpg)" in result.markdown
    first = result.figures[0]
    assert first.pixel_box == Box(100, 160, 400, 480)
    decoded = Image.open(io.BytesIO(first.jpeg))
    assert decoded.size == (300, 320)
    # JPEG is lossy: compare with the exact source region loosely, but far tighter than noise.
    diff = np.abs(np.asarray(decoded, np.int16) - np.asarray(image, np.int16)[160:480, 100:400])
    assert diff.mean() < 40


def test_the_page_image_is_the_page_the_boxes_are_in_not_the_annotated_copy() -> None:
    image = noise_rgb(1000, 800, seed=4)
    result = postprocess_page(RAW, page_number=1, size=image.size, image=image,
                              with_page_image=True)  # fmt: skip
    assert result.page_jpeg is not None and result.annotated_jpeg is None
    decoded = np.asarray(Image.open(io.BytesIO(result.page_jpeg)), np.int16)
    assert decoded.shape == (800, 1000, 3)
    assert np.abs(decoded - np.asarray(image, np.int16)).mean() < 40  # no boxes drawn on it
    assert postprocess_page(RAW, page_number=1, size=image.size, image=image).page_jpeg is None


def test_postprocess_without_image_still_gives_markdown_and_boxes() -> None:
    result = postprocess_page(RAW, page_number=1, size=(1000, 800))
    assert result.figures == () and result.annotated_jpeg is None
    assert result.markdown.startswith("# Report")
    assert len(result.grounded.regions) == 3


def test_postprocess_rejects_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="need the page image"):
        postprocess_page(RAW, page_number=1, size=(10, 10), with_figures=True)
    with pytest.raises(ValueError, match="size says"):
        postprocess_page(RAW, page_number=1, size=(10, 10), image=noise_rgb(11, 10, seed=0))


def test_document_markdown_keeps_every_page_in_order() -> None:
    pages = [page(1), PageFailure(2, "timeout", "engine took too long"), page(3)]
    md = document_markdown(pages)

    parts = md.split(f"\n\n{PAGE_SPLIT}\n\n")
    assert len(parts) == 3
    assert parts[0].startswith("# Report") and "images/1_1.jpg" in parts[0]
    assert parts[1] == "<!-- page 2 failed: engine took too long -->"
    assert "images/3_2.jpg" in parts[2]


def test_layout_pdf_has_one_page_per_annotated_page() -> None:
    data = layout_pdf([page(1), page(2)], dpi=144)
    doc = pymupdf.open(stream=data, filetype="pdf")
    assert doc.page_count == 2
    assert (round(doc[0].rect.width), round(doc[0].rect.height)) == (500, 400)
    assert len(doc[0].get_images()) == 1


def test_bundle_contains_every_output() -> None:
    pages = [page(1), PageFailure(2, "timeout", "too slow")]
    with zipfile.ZipFile(io.BytesIO(bundle_zip(pages, extra_files={"pages.json": b"[]"}))) as zf:
        names = set(zf.namelist())
        md = zf.read("result.md").decode()
        raw = zf.read("result_det.md").decode()
    assert names == {"result.md", "result_det.md", "images/1_1.jpg", "images/1_2.jpg",
                     "annotated/page_1.jpg", "layout.pdf", "pages.json"}  # fmt: skip
    assert "<|ref|>title" in raw and "page 2 failed" in raw
    assert "page 2 failed: too slow" in md
