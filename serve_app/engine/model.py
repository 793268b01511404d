"""DeepSeek-OCR for vLLM with pre-tiled image input (the model behind our plugin).

``DeepseekOCRServeForCausalLM`` is vLLM's ``DeepseekOCRForCausalLM`` whose multimodal
processor also accepts an image item that our CPU preprocess already tiled: a dict of
``pixel_values`` (uint8 ``[1, 3, B, B]``), ``images_crop`` (uint8 ``[n, 3, 640, 640]``)
and ``images_spatial_crop`` (``[[w, h]]``); see :func:`pretiled_item`. The placeholder count
is computed from the item's own shapes, so every mode (Tiny .. Gundam, any ``max_crops``)
works per request and one batch may mix them. The uint8 views are normalised on the engine's device.

PIL images still work and go through vLLM's own processor (Gundam only); vLLM's memory
profiling uses that path. This module imports vLLM: only the engine process loads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from vllm.model_executor.models.deepseek_ocr import (
    DeepseekOCRDummyInputsBuilder,
    DeepseekOCRForCausalLM,
    DeepseekOCRMultiModalProcessor,
    DeepseekOCRProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    DictEmbeddingItems,
    ImageEmbeddingItems,
    ImageProcessorItems,
    ModalityDataItems,
    MultiModalDataItems,
    MultiModalDataParser,
)
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from serve_app.core.modes import image_token_count
from serve_app.core.tiling import PreparedImage

PRETILED_FIELDS = frozenset({"pixel_values", "images_crop", "images_spatial_crop"})
GLOBAL_SIZES = frozenset({512, 640, 1024, 1280})
# Every item carries its tiles with this trailing shape, so vLLM can concatenate the tiles of
# a mixed batch; untiled modes send zero tiles of it.
TILE_SIZE = 640


def pretiled_item(prepared: PreparedImage) -> dict[str, torch.Tensor]:
    """The multimodal data item for one prepared image (zero-copy views of its arrays).

    Raises:
        ValueError: If the image was tiled with another tile size than DeepSeek-OCR's 640.
    """
    tiles = prepared.tiles
    if tiles.shape[0] == 0:
        tiles_t = torch.zeros((0, 3, TILE_SIZE, TILE_SIZE), dtype=torch.uint8)
    elif tiles.shape[-1] != TILE_SIZE:
        raise ValueError(f"DeepSeek-OCR tiles are {TILE_SIZE} px, got {tiles.shape[-1]}")
    else:
        tiles_t = torch.from_numpy(tiles)
    return {
        "pixel_values": torch.from_numpy(prepared.global_view).unsqueeze(0),
        "images_crop": tiles_t,
        "images_spatial_crop": torch.tensor([prepared.grid], dtype=torch.int64),
    }


def _field_config(data: Mapping[str, torch.Tensor]) -> Mapping[str, MultiModalFieldConfig]:
    spatial = data["images_spatial_crop"]
    tiled = (spatial[:, 0] > 1) | (spatial[:, 1] > 1)
    tiles_per_image = torch.where(tiled, spatial.prod(dim=-1), 0)
    return {
        "pixel_values": MultiModalFieldConfig.batched("image"),
        "images_spatial_crop": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        "images_crop": MultiModalFieldConfig.flat_from_sizes("image", tiles_per_image),
    }


def validate_item(data: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, int]]:
    """Check a pre-tiled item's keys, dtypes and shapes.

    Returns:
        The global view's side and the tile grid ``(w, h)``.

    Raises:
        ValueError: Naming what is wrong with the item.
    """
    if set(data) != PRETILED_FIELDS:
        raise ValueError(
            f"pre-tiled image needs exactly {sorted(PRETILED_FIELDS)}, got {sorted(data)}"
        )
    pixels, crops, spatial = data["pixel_values"], data["images_crop"], data["images_spatial_crop"]
    if pixels.dtype != torch.uint8 or crops.dtype != torch.uint8:
        raise ValueError("pre-tiled views must be uint8 (the engine normalises them)")
    if pixels.ndim != 4 or pixels.shape[:2] != (1, 3) or pixels.shape[2] != pixels.shape[3]:
        raise ValueError(f"pixel_values must be [1, 3, B, B], got {list(pixels.shape)}")
    base = int(pixels.shape[-1])
    if base not in GLOBAL_SIZES:
        raise ValueError(f"global view side {base} is not one of {sorted(GLOBAL_SIZES)}")
    if tuple(spatial.shape) != (1, 2):
        raise ValueError(f"images_spatial_crop must be [1, 2], got {list(spatial.shape)}")
    w, h = (int(v) for v in spatial[0])
    tiled = w > 1 or h > 1
    expected = (w * h if tiled else 0, 3, TILE_SIZE, TILE_SIZE)
    if tuple(crops.shape) != expected or (w < 1 or h < 1):
        raise ValueError(
            f"images_crop must be {list(expected)} for grid {w}x{h}, got {list(crops.shape)}"
        )
    return base, (w, h)


class PreTiledDataParser(MultiModalDataParser):
    """Parses a dict image item as pre-tiled views; anything else as vLLM does."""

    def _parse_image_data(self, data: Any) -> ModalityDataItems[Any, Any] | None:
        if isinstance(data, Mapping):
            validate_item(data)
            return DictEmbeddingItems(
                data,
                modality="image",
                required_fields=PRETILED_FIELDS,
                fields_factory=_field_config,
            )
        return super()._parse_image_data(data)


class PreTiledProcessingInfo(DeepseekOCRProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        return PreTiledDataParser(
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )


class PreTiledMultiModalProcessor(DeepseekOCRMultiModalProcessor):
    """Sizes each pre-tiled image's placeholder run from the item itself."""

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        images = mm_items.get_items(
            "image", (DictEmbeddingItems, ImageEmbeddingItems, ImageProcessorItems)
        )
        if not isinstance(images, DictEmbeddingItems):
            return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        image_token_id = self.info.get_hf_processor(**hf_processor_mm_kwargs).image_token_id

        def replacement(item_idx: int) -> list[int]:
            item = images.get(item_idx)
            base = int(item["pixel_values"].shape[-1])
            grid = tuple(int(v) for v in item["images_spatial_crop"])
            return [image_token_id] * image_token_count(base, TILE_SIZE, (grid[0], grid[1]))

        return [
            PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)
        ]


@MULTIMODAL_REGISTRY.register_processor(
    PreTiledMultiModalProcessor,
    info=PreTiledProcessingInfo,
    dummy_inputs=DeepseekOCRDummyInputsBuilder,
)
class DeepseekOCRServeForCausalLM(DeepseekOCRForCausalLM):
    """DeepSeek-OCR that encodes each image separately at its own sizes."""

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor] | None:  # type: ignore[override]
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return None
        spatial = cast(torch.Tensor, kwargs["images_spatial_crop"]).to(torch.long)
        crops = cast(torch.Tensor, kwargs["images_crop"])
        # Same-size views arrive stacked, mixed sizes as a list; either way, one per image.
        views = list(cast("torch.Tensor | list[torch.Tensor]", pixel_values))
        tiled = (spatial[:, 0] > 1) | (spatial[:, 1] > 1)
        tiles = torch.split(crops, torch.where(tiled, spatial.prod(dim=-1), 0).tolist())
        embeddings: list[torch.Tensor] = []
        for view, view_tiles, grid in zip(views, tiles, spatial, strict=True):
            (embedding,) = self._pixel_values_to_embedding(
                pixel_values=self._normalise(view.unsqueeze(0)),
                images_crop=self._normalise(view_tiles),
                images_spatial_crop=grid.unsqueeze(0),
            )
            embedding = cast(torch.Tensor, embedding)
            grid_wh = (int(grid[0]), int(grid[1]))
            expected = image_token_count(int(view.shape[-1]), TILE_SIZE, grid_wh)
            if embedding.shape[0] != expected:
                raise RuntimeError(
                    f"encoder produced {embedding.shape[0]} embeddings for {expected} placeholders"
                )
            embeddings.append(embedding)
        return embeddings

    def _normalise(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 -> model dtype, as vLLM's processor does: ``(x / 255 - 0.5) / 0.5``."""
        if views.dtype != torch.uint8:
            return views  # PIL path: vLLM's processor already normalised and cast
        dtype = self.view_seperator.dtype
        return views.to(torch.float32).div(255).sub(0.5).div(0.5).to(dtype)
