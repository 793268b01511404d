"""DeepSeek-OCR resolution modes and their image-token arithmetic.

A mode fixes the global view's side (``base_size``), the local tile's side (``tile_size``)
and whether large images are split into tiles. The token formulas are those of vLLM's
``DeepseekOCRProcessor`` (strategy ``v1`` for DeepSeek-OCR, ``v2`` for DeepSeek-OCR-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 4
MIN_CROPS = 2
DEFAULT_MAX_CROPS = 6
MAX_CROPS_LIMIT = 9


class ModelFamily(StrEnum):
    """Which checkpoint family a mode belongs to; they differ in tile size and token formula."""

    OCR1 = "deepseek-ocr"
    OCR2 = "deepseek-ocr-2"


class ModeName(StrEnum):
    """The mode names a request may ask for."""

    TINY = "tiny"
    SMALL = "small"
    BASE = "base"
    LARGE = "large"
    GUNDAM = "gundam"


@dataclass(frozen=True)
class Mode:
    """One resolution mode.

    Attributes:
        name: The mode's name.
        base_size: Side of the square global view in pixels.
        tile_size: Side of a local tile; for untiled modes the side the image is squashed to
            when it is at most 640 (Tiny, Small), as the official DeepSeek-OCR code does.
        crop: Whether images larger than one tile are split into a grid of tiles.
        max_crops: Upper bound on tiles per image (2..9) when ``crop`` is set.
        strategy: ``"v1"`` (DeepSeek-OCR, a newline token per row) or ``"v2"`` (DeepSeek-OCR-2).
    """

    name: ModeName
    base_size: int
    tile_size: int
    crop: bool
    max_crops: int = DEFAULT_MAX_CROPS
    strategy: Literal["v1", "v2"] = "v1"

    @property
    def min_crops(self) -> int:
        return MIN_CROPS

    def num_image_tokens(self, grid: tuple[int, int]) -> int:
        """Number of ``<image>`` placeholder tokens for one image tiled as ``grid``
        (``(width_tiles, height_tiles)``; ``(1, 1)`` means no local tiles)."""
        return image_token_count(self.base_size, self.tile_size, grid, self.strategy)


def image_token_count(
    base_size: int, tile_size: int, grid: tuple[int, int], strategy: Literal["v1", "v2"] = "v1"
) -> int:
    """Placeholder tokens for a global view of ``base_size`` and a ``grid`` of tiles.

    ``v1`` (DeepSeek-OCR): ``g*(g+1)`` global tokens (a newline per row), a view separator,
    and ``(q*h)*(q*w+1)`` local tokens when tiled, with ``g = base/64`` and ``q = tile/64``.
    ``v2`` (DeepSeek-OCR-2): the same without newline tokens.

    >>> image_token_count(1024, 640, (2, 3))
    903
    """
    g = math.ceil((base_size // PATCH_SIZE) / DOWNSAMPLE_RATIO)
    q = math.ceil((tile_size // PATCH_SIZE) / DOWNSAMPLE_RATIO)
    w_tiles, h_tiles = grid
    tiled = w_tiles > 1 or h_tiles > 1
    newline = 1 if strategy == "v1" else 0
    total = g * (g + newline) + 1
    if tiled:
        total += (q * h_tiles) * (q * w_tiles + newline)
    return total


def max_image_tokens(family: ModelFamily) -> int:
    """The most placeholder tokens one image of ``family`` can take, in any mode and grid.

    >>> max_image_tokens(ModelFamily.OCR1), max_image_tokens(ModelFamily.OCR2)
    (1263, 1121)
    """
    table = _OCR1_MODES if family is ModelFamily.OCR1 else _OCR2_MODES
    limit = MAX_CROPS_LIMIT if family is ModelFamily.OCR1 else DEFAULT_MAX_CROPS
    grids = [(w, h) for w in range(1, limit + 1) for h in range(1, limit + 1) if w * h <= limit]
    return max(
        mode.num_image_tokens(grid if mode.crop else (1, 1))
        for mode in table.values()
        for grid in grids
    )


_OCR1_MODES: dict[ModeName, Mode] = {
    ModeName.TINY: Mode(ModeName.TINY, base_size=512, tile_size=512, crop=False),
    ModeName.SMALL: Mode(ModeName.SMALL, base_size=640, tile_size=640, crop=False),
    ModeName.BASE: Mode(ModeName.BASE, base_size=1024, tile_size=1024, crop=False),
    ModeName.LARGE: Mode(ModeName.LARGE, base_size=1280, tile_size=1280, crop=False),
    ModeName.GUNDAM: Mode(ModeName.GUNDAM, base_size=1024, tile_size=640, crop=True),
}

# DeepSeek-OCR-2's encoder only accepts a 1024 global view and 768 tiles (144 queries each).
_OCR2_MODES: dict[ModeName, Mode] = {
    ModeName.GUNDAM: Mode(ModeName.GUNDAM, base_size=1024, tile_size=768, crop=True, strategy="v2"),
}


def mode_names(family: ModelFamily) -> list[str]:
    """The modes a family supports, smallest first.

    >>> mode_names(ModelFamily.OCR2)
    ['gundam']
    """
    table = _OCR1_MODES if family is ModelFamily.OCR1 else _OCR2_MODES
    return [name.value for name in table]


def get_mode(
    name: str | ModeName,
    *,
    family: ModelFamily = ModelFamily.OCR1,
    max_crops: int | None = None,
) -> Mode:
    """Look up a mode by name for a model family.

    Args:
        name: One of ``tiny``, ``small``, ``base``, ``large``, ``gundam`` (case-insensitive).
        family: The checkpoint family; DeepSeek-OCR-2 supports only ``gundam``.
        max_crops: Overrides the tile limit of a cropping mode (2..9; DeepSeek-OCR-2: 2..6).

    Raises:
        ValueError: For an unknown name, a mode the family lacks, or ``max_crops`` out of range.
    """
    try:
        mode_name = ModeName(str(name).lower())
    except ValueError:
        choices = ", ".join(m.value for m in ModeName)
        raise ValueError(f"unknown mode {name!r}; expected one of: {choices}") from None
    table = _OCR1_MODES if family is ModelFamily.OCR1 else _OCR2_MODES
    if mode_name not in table:
        choices = ", ".join(m.value for m in table)
        raise ValueError(
            f"{family.value} does not support mode {mode_name.value!r}; use: {choices}"
        )
    mode = table[mode_name]
    if max_crops is None:
        return mode
    if not mode.crop:
        raise ValueError(f"max_crops applies only to cropping modes, not {mode_name.value!r}")
    limit = MAX_CROPS_LIMIT if family is ModelFamily.OCR1 else DEFAULT_MAX_CROPS
    if not MIN_CROPS <= max_crops <= limit:
        raise ValueError(f"max_crops must be between {MIN_CROPS} and {limit}, got {max_crops}")
    return replace(mode, max_crops=max_crops)
