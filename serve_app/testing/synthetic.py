"""Seeded synthetic inputs for tests and benchmarks: images in every colour mode, and PDFs.

Nothing here reads files or the network; the same arguments always give the same bytes.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
import pymupdf
from PIL import Image

from serve_app.core.modes import get_mode
from serve_app.core.tiling import candidate_grids

A4_144DPI = (1190, 1684)
LETTER_144DPI = (1224, 1584)
EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageCase:
    """One encoded test image and why it is in the set."""

    name: str
    data: bytes


def noise_rgb(width: int, height: int, seed: int) -> Image.Image:
    """Uniform RGB noise with a gradient, so resampling sees every kind of edge."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels[: height // 2] = ((pixels[: height // 2] + ramp) / 2).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def in_mode(image: Image.Image, mode: str, seed: int) -> Image.Image:
    """``image`` converted to a Pillow ``mode``; alpha modes get a seeded alpha channel."""
    if mode in ("RGBA", "LA"):
        rng = np.random.default_rng(seed + 1)
        alpha = rng.integers(0, 256, (image.height, image.width), dtype=np.uint8)
        alpha[: image.height // 3] = 0  # a fully transparent band
        converted = image.convert(mode)
        converted.putalpha(Image.fromarray(alpha, "L"))
        return converted
    if mode == "P+transparency":
        pal = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        pal.info["transparency"] = 3
        return pal
    return image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", *, exif_orientation: int | None = None) -> bytes:
    """Encode ``image``; JPEGs may carry an EXIF orientation tag."""
    buf = io.BytesIO()
    kwargs: dict[str, object] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if fmt == "JPEG":
        kwargs["quality"] = 90
    elif fmt == "PNG":
        kwargs["compress_level"] = 0  # noise does not compress; keep encoding fast
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def tie_sizes() -> list[tuple[int, int]]:
    """Image sizes whose aspect ratio lies exactly between two Gundam grids, each at the
    smallest tiled size and at a size above every tie-break area threshold, so both
    outcomes of the tie-break rule occur."""
    mode = get_mode("gundam")
    ratios = sorted({i / j for i, j in candidate_grids(2, mode.max_crops)})
    threshold = 0.5 * mode.tile_size**2 * mode.max_crops
    sizes = []
    for lo, hi in zip(ratios, ratios[1:], strict=False):
        mid = (lo + hi) / 2
        if abs(mid - lo) != abs(mid - hi):
            continue
        exact = [(round(mid * h), h) for h in range(1, 8000) if round(mid * h) / h == mid]
        tiled = [(w, h) for w, h in exact if max(w, h) > mode.tile_size]
        sizes.append(tiled[0])
        sizes.append(next((w, h) for w, h in tiled if w * h > threshold))
    return sizes


@functools.cache
def tiling_cases() -> tuple[ImageCase, ...]:
    """The image set for the tiling equivalence test: sizes from 1x1 to 6000 px long,
    exact-640 and tie-breaking sizes, page sizes, every colour mode and EXIF orientations."""
    sizes = [
        (1, 1), (2, 3), (16, 16), (37, 19), (100, 50),
        (512, 512), (639, 639), (640, 480), (480, 640), (300, 640), (640, 100),
        (640, 640), (641, 641), (769, 769), (641, 100), (100, 641), (641, 640),
        (4000, 300), (300, 4000), (6000, 200), (200, 6000), (3000, 640), (1, 2000),
        A4_144DPI, LETTER_144DPI, A4_144DPI[::-1], LETTER_144DPI[::-1], (1819, 2573),
        (800, 640), (1600, 1280), (1000, 800), (1280, 1024),
    ]  # fmt: skip
    cases = [
        ImageCase(f"rgb-{w}x{h}", encode(noise_rgb(w, h, seed=i)))
        for i, (w, h) in enumerate(sizes + tie_sizes())
    ]
    for i, mode in enumerate(("L", "RGBA", "LA", "P", "P+transparency", "1", "I;16")):
        for w, h in ((500, 300), A4_144DPI):
            image = in_mode(noise_rgb(w, h, seed=100 + i), mode, seed=100 + i)
            cases.append(ImageCase(f"{mode}-{w}x{h}", encode(image)))
    cmyk = noise_rgb(*LETTER_144DPI, seed=200).convert("CMYK")
    cases.append(ImageCase("cmyk-jpeg", encode(cmyk, "JPEG")))
    cases.append(
        ImageCase("cmyk-tiff", encode(noise_rgb(700, 900, seed=201).convert("CMYK"), "TIFF"))
    )
    for orientation in range(2, 9):
        image = noise_rgb(1300, 700, seed=300 + orientation)
        cases.append(
            ImageCase(f"exif-{orientation}", encode(image, "JPEG", exif_orientation=orientation))
        )
    cases.append(ImageCase("webp", encode(noise_rgb(900, 1400, seed=400), "WEBP")))
    return tuple(cases)


def text_pdf(num_pages: int, *, size: tuple[float, float] = (595, 842)) -> bytes:
    """A PDF of ``num_pages`` pages, each with a title naming its page number and some text."""
    doc = pymupdf.open()
    for number in range(1, num_pages + 1):
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text((72, 90), f"Page {number}", fontsize=28)
        body = f"This is line {{}} of page {number}. The quick brown fox jumps."
        for line in range(12):
            page.insert_text((72, 140 + 22 * line), body.format(line + 1), fontsize=11)
    data: bytes = doc.tobytes()
    doc.close()
    return data
