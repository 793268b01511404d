"""Global view and local tiles for DeepSeek-OCR, computed on CPU as uint8 arrays.

For the Gundam mode the result is bit-exact with vLLM's ``DeepseekOCRProcessor`` once
normalised as vLLM does (``(x / 255 - 0.5) / 0.5``); ``tests/unit/test_tiling_oracle.py``
checks that against vLLM itself. The engine normalises, so only uint8 crosses the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from serve_app.core.modes import Mode

# The global view is padded with the normalisation mean, int(0.5 * 255).
PAD_COLOR = (127, 127, 127)
# Above this tile side the official code pads instead of squashing in untiled modes.
SQUASH_LIMIT = 640


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """What the engine needs for one image, in the layout vLLM's model consumes.

    Attributes:
        mode: The mode the views were made for.
        width: Width of the oriented source image; grounding boxes are relative to it.
        height: Height of the oriented source image.
        global_view: ``uint8[3, base, base]``, the padded whole image.
        tiles: ``uint8[n, 3, tile, tile]`` in row-major order; ``n == 0`` when untiled.
        grid: ``(width_tiles, height_tiles)``; ``(1, 1)`` when untiled.
        num_image_tokens: Length of the ``<image>`` placeholder run for this image.
    """

    mode: Mode
    width: int
    height: int
    global_view: np.ndarray
    tiles: np.ndarray
    grid: tuple[int, int]
    num_image_tokens: int

    @property
    def nbytes(self) -> int:
        return int(self.global_view.nbytes + self.tiles.nbytes)


@dataclass(frozen=True, eq=False)
class PageImage:
    """The oriented page itself, for an engine that reads pixels at its own resolution.

    Attributes:
        pixels: ``uint8[height, width, 3]`` RGB; grounding boxes are relative to it.
    """

    pixels: np.ndarray

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


EngineImage = PreparedImage | PageImage


def candidate_grids(min_crops: int, max_crops: int) -> list[tuple[int, int]]:
    """Tile grids ``(w, h)`` with ``min_crops <= w*h <= max_crops``, in vLLM's scan order.

    The order among equal products is CPython's iteration order of the set vLLM builds; it
    decides exact ties, so it is reproduced by building the same set the same way.
    """
    grids = {
        (i, j)
        for n in range(min_crops, max_crops + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_crops <= i * j <= max_crops
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, mode: Mode) -> tuple[int, int]:
    """The tile grid for an image of ``width`` x ``height`` pixels in ``mode``.

    Images that fit in one tile, and every image in an untiled mode, get ``(1, 1)``.
    Otherwise the grid whose aspect ratio is closest to the image's wins; on an exact tie the
    later (larger) grid wins if the image has more than half the grid's pixel area.

    >>> from serve_app.core.modes import get_mode
    >>> choose_grid(1190, 1684, get_mode("gundam"))
    (2, 3)
    """
    if not mode.crop or (width <= mode.tile_size and height <= mode.tile_size):
        return (1, 1)
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for grid in candidate_grids(mode.min_crops, mode.max_crops):
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best_diff, best = diff, grid
        elif diff == best_diff and area > 0.5 * mode.tile_size * mode.tile_size * grid[0] * grid[1]:
            best = grid
    return best


def _chw(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def global_view(image: Image.Image, mode: Mode) -> np.ndarray:
    """The padded square view of the whole image, ``uint8[3, base, base]``."""
    if not mode.crop and mode.tile_size <= SQUASH_LIMIT:
        image = image.resize((mode.tile_size, mode.tile_size), Image.Resampling.BICUBIC)
    padded = ImageOps.pad(image, (mode.base_size, mode.base_size), color=PAD_COLOR)
    return _chw(padded)


def local_tiles(image: Image.Image, grid: tuple[int, int], tile_size: int) -> np.ndarray:
    """Resize to the grid (aspect-distorting) and cut row-major tiles, ``uint8[n, 3, s, s]``."""
    w_tiles, h_tiles = grid
    if (w_tiles, h_tiles) == (1, 1):
        return np.zeros((0, 3, tile_size, tile_size), dtype=np.uint8)
    resized = image.resize((tile_size * w_tiles, tile_size * h_tiles), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.uint8)
    # (H, W, C) -> (h_tiles, s, w_tiles, s, C) -> (h_tiles, w_tiles, C, s, s) -> (n, C, s, s)
    blocks = pixels.reshape(h_tiles, tile_size, w_tiles, tile_size, 3).transpose(0, 2, 4, 1, 3)
    return np.ascontiguousarray(blocks.reshape(w_tiles * h_tiles, 3, tile_size, tile_size))


def prepare_image(image: Image.Image, mode: Mode) -> PreparedImage:
    """Make the model's views of an RGB image (see :func:`serve_app.core.images.to_model_rgb`).

    Raises:
        ValueError: If the image is not in RGB mode.
    """
    if image.mode != "RGB":
        raise ValueError(f"prepare_image needs an RGB image, got mode {image.mode!r}")
    width, height = image.size
    grid = choose_grid(width, height, mode)
    return PreparedImage(
        mode=mode,
        width=width,
        height=height,
        global_view=global_view(image, mode),
        tiles=local_tiles(image, grid, mode.tile_size),
        grid=grid,
        num_image_tokens=mode.num_image_tokens(grid),
    )
