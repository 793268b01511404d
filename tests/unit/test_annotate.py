"""Figure crops are exactly the boxed pixels; annotation is deterministic."""

from __future__ import annotations

import numpy as np
from PIL import Image

from serve_app.core.annotate import annotate, crop_figures, label_color
from serve_app.core.grounding import Box, parse_grounded
from serve_app.testing.synthetic import noise_rgb


def test_crop_is_exactly_the_boxed_region() -> None:
    pixels = np.full((800, 1000, 3), 255, dtype=np.uint8)
    pixels[160:480, 100:400] = (200, 0, 0)  # Box(100, 200, 400, 600) on 1000x800
    image = Image.fromarray(pixels)

    (crop,) = crop_figures(image, [Box(100, 200, 400, 600)])

    assert crop.size == (300, 320)
    assert (np.asarray(crop) == (200, 0, 0)).all()


def test_crop_on_odd_sizes_matches_array_slice() -> None:
    image = noise_rgb(1237, 1753, seed=5)
    box = Box(123, 456, 789, 998)
    px = box.to_pixels(1237, 1753)

    (crop,) = crop_figures(image, [box])

    assert np.array_equal(np.asarray(crop), np.asarray(image)[px.y1 : px.y2, px.x1 : px.x2])


def test_degenerate_box_on_tiny_image_still_crops_one_pixel() -> None:
    (crop,) = crop_figures(noise_rgb(3, 3, seed=1), [Box(0, 0, 1, 1)])
    assert crop.size == (1, 1)


def test_annotation_is_deterministic_and_marks_boxes() -> None:
    image = Image.new("RGB", (600, 400), (255, 255, 255))
    grounded = parse_grounded("<|ref|>title<|/ref|><|det|>[[100, 100, 500, 500]]<|/det|>\nT")

    first, second = annotate(image, grounded), annotate(image, grounded)

    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert image.getpixel((0, 0)) == (255, 255, 255)  # source untouched
    px = Box(100, 100, 500, 500).to_pixels(600, 400)
    assert first.getpixel((px.x1, px.y2 - 1)) == label_color("title")  # outline drawn
    assert first.getpixel((px.x1 + 20, px.y1 + 20)) != (255, 255, 255)  # inside is tinted
    assert first.getpixel((599, 399)) == (255, 255, 255)  # outside untouched


def test_label_colors_are_stable() -> None:
    assert label_color("table") == label_color("table")
    assert len({label_color(lbl) for lbl in ("title", "text", "table", "image")}) == 4
