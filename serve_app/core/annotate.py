"""Figure crops and box-annotated page images (Pillow only; deterministic output).

The official scripts pick a random colour per region; here a label always gets the same
colour, so annotated pages are reproducible and comparable across runs.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from serve_app.core.grounding import Box, Grounded

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 160, 160), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40),
    (128, 0, 0), (0, 128, 128),
)  # fmt: skip
FILL_ALPHA = 40
THICK_LABELS = frozenset({"title"})
# The layout classes DeepSeek-OCR emits most get distinct colours; other labels hash.
_KNOWN_LABELS = ("title", "text", "image", "table", "equation", "sub_title", "image_caption",
                 "table_caption", "figure_title", "table_footnote")  # fmt: skip


def label_color(label: str) -> tuple[int, int, int]:
    """The colour of a label: fixed for common layout classes, else a stable hash."""
    if label in _KNOWN_LABELS:
        return PALETTE[_KNOWN_LABELS.index(label)]
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def crop_figures(image: Image.Image, boxes: Sequence[Box]) -> list[Image.Image]:
    """Crop each 0..999 box out of ``image``; a box narrower than one pixel gives a 1x1 crop
    at its corner rather than an empty image."""
    crops = []
    for box in boxes:
        px = box.to_pixels(image.width, image.height)
        x2 = min(max(px.x2, px.x1 + 1), image.width)
        y2 = min(max(px.y2, px.y1 + 1), image.height)
        crops.append(image.crop((min(px.x1, x2 - 1), min(px.y1, y2 - 1), x2, y2)))
    return crops


def annotate(image: Image.Image, grounded: Grounded) -> Image.Image:
    """A copy of ``image`` with every region's boxes tinted, outlined and labelled."""
    base = image.convert("RGBA")
    placed = [
        (region.label or "", box.to_pixels(base.width, base.height))
        for region in grounded.regions
        for box in region.boxes
    ]
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    tint = ImageDraw.Draw(overlay)
    for label, px in placed:
        tint.rectangle(_rect(px), fill=(*label_color(label), FILL_ALPHA))
    out = Image.alpha_composite(base, overlay).convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(12, min(out.width, out.height) // 60))
    for label, px in placed:
        color = label_color(label)
        draw.rectangle(_rect(px), outline=color, width=4 if label in THICK_LABELS else 2)
        if label:
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            anchor = (px.x1, max(0, px.y1 - (bottom - top) - 4))
            draw.rectangle(draw.textbbox(anchor, label, font=font), fill=(255, 255, 255))
            draw.text(anchor, label, fill=color, font=font)
    return out


def _rect(px: Box) -> tuple[int, int, int, int]:
    return (px.x1, px.y1, max(px.x2, px.x1), max(px.y2, px.y1))


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB rendition of ``image``."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
