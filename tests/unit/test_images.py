"""Image decoding and colour normalisation."""

from __future__ import annotations

import pytest
from PIL import Image

from serve_app.core.images import decode_image, open_image, to_model_rgb
from serve_app.errors import CorruptDocumentError, ImageTooLargeError, UnsupportedMediaTypeError
from serve_app.testing.synthetic import encode, noise_rgb


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 255, 255))
    rgb = to_model_rgb(decode_image(encode(image)))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (0, 0, 255)


def test_exif_orientation_is_applied() -> None:
    image = noise_rgb(300, 100, seed=0)
    rotated = to_model_rgb(decode_image(encode(image, "JPEG", exif_orientation=6)))
    assert rotated.size == (100, 300)


def test_not_an_image() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        decode_image(b"hello world")


def test_truncated_image() -> None:
    data = encode(noise_rgb(200, 200, seed=0), "PNG")
    with pytest.raises(CorruptDocumentError):
        decode_image(data[: len(data) // 2])


def test_too_many_pixels() -> None:
    with pytest.raises(ImageTooLargeError, match="limit is 100"):
        decode_image(encode(noise_rgb(20, 20, seed=0)), max_pixels=100)


def test_open_image_checks_the_header_without_decoding() -> None:
    data = encode(noise_rgb(200, 100, seed=0), "PNG")
    assert open_image(data[: len(data) // 2]).size == (200, 100)  # pixels are not read
    with pytest.raises(ImageTooLargeError):
        open_image(data, max_pixels=100)
    with pytest.raises(UnsupportedMediaTypeError):
        open_image(b"%PDF? no")
