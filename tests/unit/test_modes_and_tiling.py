"""Modes, token formulas and view shapes (no vLLM; the oracle test compares with vLLM)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serve_app.core.images import decode_image, to_model_rgb
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.tiling import PAD_COLOR, candidate_grids, choose_grid, prepare_image
from serve_app.testing.synthetic import noise_rgb, tiling_cases

CASES = tiling_cases()
FIXED_TOKENS = {"tiny": 73, "small": 111, "base": 273, "large": 421}


@pytest.mark.parametrize(("mode_name", "tokens"), FIXED_TOKENS.items())
def test_untiled_modes_match_design_formula_for_every_image(mode_name: str, tokens: int) -> None:
    mode = get_mode(mode_name)
    g = mode.base_size // 64
    assert tokens == g * (g + 1) + 1  # DESIGN.md: g = base/64 -> g*(g+1) + 1 separator
    for case in CASES:
        prepared = prepare_image(to_model_rgb(decode_image(case.data)), mode)
        assert prepared.num_image_tokens == tokens, case.name
        assert prepared.grid == (1, 1)
        assert prepared.tiles.shape == (0, 3, mode.tile_size, mode.tile_size)
        assert prepared.global_view.shape == (3, mode.base_size, mode.base_size)
        assert prepared.global_view.dtype == np.uint8


def test_gundam_tokens_match_design_formula_for_every_image() -> None:
    mode = get_mode("gundam")
    for case in CASES:
        prepared = prepare_image(to_model_rgb(decode_image(case.data)), mode)
        w, h = prepared.grid
        expected = 273 + ((10 * h) * (10 * w + 1) if (w, h) != (1, 1) else 0)
        assert prepared.num_image_tokens == expected, case.name
        assert prepared.tiles.shape[0] == (w * h if (w, h) != (1, 1) else 0)


def test_a4_page_is_903_tokens() -> None:
    prepared = prepare_image(noise_rgb(1190, 1684, seed=0), get_mode("gundam"))
    assert (prepared.grid, prepared.num_image_tokens) == ((2, 3), 903)


@pytest.mark.parametrize(
    ("size", "grid"),
    [((640, 640), (1, 1)), ((641, 641), (2, 2)), ((800, 640), (2, 2)), ((1600, 1280), (3, 2)),
     ((4000, 300), (6, 1)), ((300, 4000), (1, 6)), ((1224, 1584), (2, 3))],
)  # fmt: skip
def test_choose_grid(size: tuple[int, int], grid: tuple[int, int]) -> None:
    assert choose_grid(*size, get_mode("gundam")) == grid


def test_max_crops_bounds_the_grid() -> None:
    assert choose_grid(6000, 200, get_mode("gundam", max_crops=9)) == (9, 1)
    assert choose_grid(6000, 200, get_mode("gundam", max_crops=3)) == (3, 1)
    assert all(2 <= w * h <= 9 for w, h in candidate_grids(2, 9))


def test_ocr2_gundam_tokens() -> None:
    mode = get_mode("gundam", family=ModelFamily.OCR2)
    assert (mode.base_size, mode.tile_size) == (1024, 768)
    assert mode.num_image_tokens((1, 1)) == 257
    assert mode.num_image_tokens((2, 3)) == 256 + 1 + 144 * 6
    assert mode.num_image_tokens((1, 6)) == 1121
    prepared = prepare_image(noise_rgb(1190, 1684, seed=0), mode)
    assert prepared.tiles.shape == (6, 3, 768, 768)


def test_base_mode_pads_instead_of_squashing() -> None:
    image = Image.new("RGB", (2000, 500), (10, 200, 30))
    view = prepare_image(image, get_mode("base")).global_view
    assert tuple(view[:, 0, 512]) == PAD_COLOR  # top border is padding
    assert tuple(view[:, 512, 512]) == (10, 200, 30)


def test_tiny_mode_squashes_to_the_full_square() -> None:
    image = Image.new("RGB", (2000, 500), (10, 200, 30))
    view = prepare_image(image, get_mode("tiny")).global_view
    assert view.shape == (3, 512, 512)
    assert tuple(view[:, 0, 0]) == (10, 200, 30)  # no padding anywhere


def test_tiles_are_row_major_cuts_of_the_resized_image() -> None:
    image = noise_rgb(1280, 1920, seed=3)  # exactly 2x3 tiles of 640: no resampling
    prepared = prepare_image(image, get_mode("gundam"))
    pixels = np.asarray(image).transpose(2, 0, 1)
    assert prepared.grid == (2, 3)
    assert np.array_equal(prepared.tiles[1], pixels[:, 0:640, 640:1280])
    assert np.array_equal(prepared.tiles[4], pixels[:, 1280:1920, 0:640])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"name": "huge"}, "unknown mode"), ({"name": "tiny", "max_crops": 4}, "only to cropping"),
     ({"name": "gundam", "max_crops": 10}, "between 2 and 9"),
     ({"name": "base", "family": ModelFamily.OCR2}, "does not support")],
)  # fmt: skip
def test_get_mode_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_mode(**kwargs)  # type: ignore[arg-type]


def test_prepare_image_requires_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        prepare_image(Image.new("L", (10, 10)), get_mode("gundam"))
