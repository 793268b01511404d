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
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from vllm.model_executor.models.deepseek_ocr import (
    DeepseekOCRDummyInputsBuilder,
    DeepseekOCRForCausalLM,
    DeepseekOCRMultiModalProcessor,
    DeepseekOCRProcessingInfo,
)
from vllm.model_executor.models.deepseek_ocr2 import (
    DeepseekOCR2DummyInputsBuilder,
    DeepseekOCR2ForCausalLM,
    DeepseekOCR2MultiModalProcessor,
    DeepseekOCR2ProcessingInfo,
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


@dataclass(frozen=True)
class ViewGeometry:
    """What a model family's encoder accepts.

    Every item carries its tiles at ``tile_size``, so vLLM can concatenate the tiles of a
    mixed batch; untiled modes send zero tiles of that shape.
    """

    global_sizes: frozenset[int]
    tile_size: int
    strategy: Literal["v1", "v2"]

    def num_tokens(self, base_size: int, grid: tuple[int, int]) -> int:
        return image_token_count(base_size, self.tile_size, grid, self.strategy)


OCR1_GEOMETRY = ViewGeometry(frozenset({512, 640, 1024, 1280}), 640, "v1")
# DeepSeek-OCR-2's encoder has learned queries for 1024 global views and 768 tiles only.
OCR2_GEOMETRY = ViewGeometry(frozenset({1024}), 768, "v2")


def pretiled_item(prepared: PreparedImage) -> dict[str, torch.Tensor]:
    """The multimodal data item for one prepared image (zero-copy views of its arrays).

    Raises:
        ValueError: If the tiles do not have the model family's tile size.
    """
    tiles = prepared.tiles
    tile_size = (
        OCR2_GEOMETRY.tile_size if prepared.mode.strategy == "v2" else OCR1_GEOMETRY.tile_size
    )
    if tiles.shape[0] == 0:
        tiles_t = torch.zeros((0, 3, tile_size, tile_size), dtype=torch.uint8)
    elif tiles.shape[-1] != tile_size:
        raise ValueError(f"tiles for this model are {tile_size} px, got {tiles.shape[-1]}")
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


def validate_item(
    data: Mapping[str, torch.Tensor], geometry: ViewGeometry
) -> tuple[int, tuple[int, int]]:
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
    if base not in geometry.global_sizes:
        raise ValueError(f"global view side {base} is not one of {sorted(geometry.global_sizes)}")
    if tuple(spatial.shape) != (1, 2):
        raise ValueError(f"images_spatial_crop must be [1, 2], got {list(spatial.shape)}")
    w, h = (int(v) for v in spatial[0])
    tiled = w > 1 or h > 1
    expected = (w * h if tiled else 0, 3, geometry.tile_size, geometry.tile_size)
    if tuple(crops.shape) != expected or (w < 1 or h < 1):
        raise ValueError(
            f"images_crop must be {list(expected)} for grid {w}x{h}, got {list(crops.shape)}"
        )
    return base, (w, h)


class PreTiledDataParser(MultiModalDataParser):
    """Parses a dict image item as pre-tiled views; anything else as vLLM does."""

    def __init__(self, geometry: ViewGeometry, **kwargs: Any) -> None:
        self.geometry = geometry
        super().__init__(**kwargs)

    def _parse_image_data(self, data: Any) -> ModalityDataItems[Any, Any] | None:
        if isinstance(data, Mapping):
            validate_item(data, self.geometry)
            return DictEmbeddingItems(
                data,
                modality="image",
                required_fields=PRETILED_FIELDS,
                fields_factory=_field_config,
            )
        return super()._parse_image_data(data)


def _parser(info: Any, geometry: ViewGeometry) -> MultiModalDataParser:
    return PreTiledDataParser(
        geometry,
        expected_hidden_size=info._get_expected_hidden_size(),
        allow_missing_mm_embeddings=info.allow_missing_mm_embeddings,
    )


def _prompt_updates(
    processor: Any,
    geometry: ViewGeometry,
    mm_items: MultiModalDataItems,
    hf_processor_mm_kwargs: Mapping[str, object],
) -> Sequence[PromptUpdate] | None:
    """Prompt updates sized from pre-tiled items; ``None`` for other items (PIL images)."""
    images = mm_items.get_items(
        "image", (DictEmbeddingItems, ImageEmbeddingItems, ImageProcessorItems)
    )
    if not isinstance(images, DictEmbeddingItems):
        return None
    image_token_id = processor.info.get_hf_processor(**hf_processor_mm_kwargs).image_token_id

    def replacement(item_idx: int) -> list[int]:
        item = images.get(item_idx)
        base = int(item["pixel_values"].shape[-1])
        w, h = (int(v) for v in item["images_spatial_crop"])
        return [image_token_id] * geometry.num_tokens(base, (w, h))

    return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]


class _PreTiledEmbedding:
    """Encodes each image separately at its own sizes, normalising uint8 on the device."""

    geometry: ViewGeometry

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor] | None:
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
            (embedding,) = self._pixel_values_to_embedding(  # type: ignore[attr-defined]
                pixel_values=self._normalise(view.unsqueeze(0)),
                images_crop=self._normalise(view_tiles),
                images_spatial_crop=grid.unsqueeze(0),
            )
            embedding = cast(torch.Tensor, embedding)
            expected = self.geometry.num_tokens(int(view.shape[-1]), (int(grid[0]), int(grid[1])))
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
        dtype = self.view_seperator.dtype  # type: ignore[attr-defined]
        return views.to(torch.float32).div(255).sub(0.5).div(0.5).to(dtype)


class _PreTiledInfo:
    """Processing-info mixin: parse dict image items as pre-tiled views."""

    geometry: ViewGeometry

    def get_data_parser(self) -> MultiModalDataParser:
        return _parser(self, self.geometry)


class _PreTiledPrompts:
    """Processor mixin: size placeholder runs of pre-tiled items from the items."""

    geometry: ViewGeometry

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        updates = _prompt_updates(self, self.geometry, mm_items, hf_processor_mm_kwargs)
        if updates is None:
            return super()._get_prompt_updates(  # type: ignore[misc]
                mm_items, hf_processor_mm_kwargs, out_mm_kwargs
            )
        return updates


class PreTiledProcessingInfo(_PreTiledInfo, DeepseekOCRProcessingInfo):
    geometry = OCR1_GEOMETRY


class PreTiledMultiModalProcessor(_PreTiledPrompts, DeepseekOCRMultiModalProcessor):
    geometry = OCR1_GEOMETRY


@MULTIMODAL_REGISTRY.register_processor(
    PreTiledMultiModalProcessor,
    info=PreTiledProcessingInfo,
    dummy_inputs=DeepseekOCRDummyInputsBuilder,
)
class DeepseekOCRServeForCausalLM(_PreTiledEmbedding, DeepseekOCRForCausalLM):  # type: ignore[misc]
    """DeepSeek-OCR taking pre-tiled uint8 views in any mode."""

    geometry = OCR1_GEOMETRY


class PreTiledOCR2ProcessingInfo(_PreTiledInfo, DeepseekOCR2ProcessingInfo):
    geometry = OCR2_GEOMETRY


class PreTiledOCR2MultiModalProcessor(_PreTiledPrompts, DeepseekOCR2MultiModalProcessor):
    geometry = OCR2_GEOMETRY


@MULTIMODAL_REGISTRY.register_processor(
    PreTiledOCR2MultiModalProcessor,
    info=PreTiledOCR2ProcessingInfo,
    dummy_inputs=DeepseekOCR2DummyInputsBuilder,
)
class DeepseekOCR2ServeForCausalLM(_PreTiledEmbedding, DeepseekOCR2ForCausalLM):  # type: ignore[misc]
    """DeepSeek-OCR-2 taking pre-tiled uint8 views (1024 global view, 768 tiles)."""

    geometry = OCR2_GEOMETRY
