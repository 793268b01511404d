"""Our CPU tiling against vLLM's own DeepSeek-OCR processor, tensor for tensor."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from serve_app.core.images import decode_image, to_model_rgb
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.tiling import PreparedImage, prepare_image
from serve_app.testing.synthetic import ImageCase, tiling_cases

pytestmark = pytest.mark.vllm

CASES = tiling_cases()


@pytest.fixture(scope="module")
def vllm_processor_factory() -> Any:
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

    from serve_app.checkpoint.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()

    def make(max_crops: int = 6, family: ModelFamily = ModelFamily.OCR1) -> Any:
        if family is ModelFamily.OCR2:
            return DeepseekOCRProcessor(tokenizer=tokenizer, image_size=768, strategy="v2")
        return DeepseekOCRProcessor(tokenizer=tokenizer, max_crops=max_crops)

    return make


def vllm_views(processor: Any, data: bytes) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """What vLLM makes of these bytes: its own input normalisation, then its processor."""
    from vllm.multimodal.image import convert_image_mode, normalize_image

    image = convert_image_mode(normalize_image(Image.open(io.BytesIO(data))), "RGB")
    out = processor.tokenize_with_images("<image>\nFree OCR.", [image], cropping=True)
    _, pixel_values, images_crop, _, spatial_crop, num_image_tokens, _ = out
    return pixel_values[0], images_crop, spatial_crop[0].tolist(), num_image_tokens[0]


def normalised(prepared: PreparedImage) -> tuple[torch.Tensor, torch.Tensor]:
    """Our uint8 views, normalised the way vLLM's ToTensor + Normalize(0.5, 0.5) does."""

    def norm(a: Any) -> torch.Tensor:
        return torch.from_numpy(a).to(torch.float32).div(255).sub(0.5).div(0.5)

    return norm(prepared.global_view), norm(prepared.tiles)


def test_case_set_covers_what_the_issue_asks() -> None:
    names = [c.name for c in CASES]
    assert len(CASES) >= 60
    for needle in ("rgb-1x1", "rgb-640x640", "rgb-4000x300", "rgb-300x4000", "rgb-1190x1684",
                   "rgb-1224x1584", "L-", "RGBA-", "P-", "cmyk", "exif-6"):  # fmt: skip
        assert any(n.startswith(needle) for n in names), needle


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gundam_views_equal_vllm_processor(case: ImageCase, vllm_processor_factory: Any) -> None:
    ref_global, ref_tiles, ref_grid, ref_tokens = vllm_views(vllm_processor_factory(), case.data)

    prepared = prepare_image(to_model_rgb(decode_image(case.data)), get_mode("gundam"))
    ours_global, ours_tiles = normalised(prepared)

    assert list(prepared.grid) == ref_grid
    assert prepared.num_image_tokens == ref_tokens
    assert torch.equal(ours_global, ref_global)
    assert ours_tiles.shape == ref_tiles.shape
    assert torch.equal(ours_tiles, ref_tiles)


@pytest.mark.parametrize("max_crops", [2, 4, 9])
@pytest.mark.parametrize("name", ["rgb-6000x200", "rgb-1190x1684", "rgb-1600x1280"])
def test_max_crops_equal_vllm_processor(
    name: str, max_crops: int, vllm_processor_factory: Any
) -> None:
    data = next(c.data for c in CASES if c.name == name)
    processor = vllm_processor_factory(max_crops)
    ref_global, ref_tiles, ref_grid, ref_tokens = vllm_views(processor, data)

    mode = get_mode("gundam", max_crops=max_crops)
    prepared = prepare_image(to_model_rgb(decode_image(data)), mode)
    ours_global, ours_tiles = normalised(prepared)

    assert prepared.grid[0] * prepared.grid[1] <= max_crops
    assert (list(prepared.grid), prepared.num_image_tokens) == (ref_grid, ref_tokens)
    assert torch.equal(ours_global, ref_global)
    assert torch.equal(ours_tiles, ref_tiles)


@pytest.mark.parametrize(
    "name", ["rgb-640x640", "rgb-769x769", "rgb-1190x1684", "rgb-4000x300", "RGBA-500x300"]
)
def test_ocr2_views_equal_vllm_processor(name: str, vllm_processor_factory: Any) -> None:
    data = next(c.data for c in CASES if c.name == name)
    processor = vllm_processor_factory(family=ModelFamily.OCR2)
    ref_global, ref_tiles, ref_grid, ref_tokens = vllm_views(processor, data)

    mode = get_mode("gundam", family=ModelFamily.OCR2)
    prepared = prepare_image(to_model_rgb(decode_image(data)), mode)
    ours_global, ours_tiles = normalised(prepared)

    assert (list(prepared.grid), prepared.num_image_tokens) == (ref_grid, ref_tokens)
    assert torch.equal(ours_global, ref_global)
    assert torch.equal(ours_tiles, ref_tiles)
