"""Decoding uploaded images and bringing them into the model's colour space.

``to_model_rgb`` reproduces vLLM's own input normalisation (``vllm.multimodal.image``) so that
the views we tile match what vLLM would have tiled: EXIF orientation applied, then RGB, with
any transparency composited onto white.
"""

from __future__ import annotations

import contextlib
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.errors import CorruptDocumentError, ImageTooLargeError, UnsupportedMediaTypeError

# Raster formats Pillow decodes in-process. EPS (Ghostscript) and stub formats are left out.
ALLOWED_IMAGE_FORMATS: tuple[str, ...] = (
    "AVIF", "BMP", "GIF", "ICO", "JPEG", "JPEG2000", "PCX", "PNG", "PPM", "QOI", "SGI",
    "TGA", "TIFF", "WEBP",
)  # fmt: skip

ALPHA_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes into a fully loaded PIL image (first frame of animations).

    Raises:
        UnsupportedMediaTypeError: The bytes are not an image in an allowed format.
        ImageTooLargeError: The image has more than ``max_pixels`` pixels.
        CorruptDocumentError: The header is valid but the pixel data cannot be decoded.
    """
    image = open_image(data, max_pixels=max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptDocumentError(f"image data cannot be decoded: {exc}") from None
    return image


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image's header and check its format and size; the pixels are not decoded.

    Raises:
        UnsupportedMediaTypeError: The bytes are not an image in an allowed format.
        ImageTooLargeError: The image has more than ``max_pixels`` pixels.
        CorruptDocumentError: The header gives an empty size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaTypeError(
            "input is not a supported image (PNG, JPEG, WEBP, TIFF, BMP, GIF, ...) or PDF"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError("image dimensions exceed the decoder's safety limit") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if width == 0 or height == 0:
        raise CorruptDocumentError(f"image has an empty size {width}x{height}")
    return image


def has_transparency(image: Image.Image) -> bool:
    """Whether the image carries alpha or a transparent palette/colour key."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def to_model_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert to RGB exactly as vLLM does before tiling.

    Transparent pixels are composited onto white; other modes (L, P, CMYK, I;16, ...) use
    Pillow's ``convert("RGB")``.
    """
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if has_transparency(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        flat.paste(rgba, mask=rgba.split()[3])
        return flat
    return image.convert("RGB")
