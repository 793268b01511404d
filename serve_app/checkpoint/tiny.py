"""Write a tiny DeepSeek-OCR (or DeepSeek-OCR-2) checkpoint that vLLM loads as the real
architecture.

The directory holds a real ``config.json`` (a 2-layer DeepSeek-V2 MoE language model; the
vision encoders are fixed-size in vLLM: SAM + CLIP, ~399M parameters, for DeepSeek-OCR; SAM +
a Qwen2-shaped encoder for DeepSeek-OCR-2), the byte-level tokenizer from
:mod:`serve_app.checkpoint.tokenizer`, and ``model.safetensors`` in the original checkpoint's
parameter naming, so loading goes through vLLM's weight name mapping as real weights do.

Weights are seeded normals, large enough in the language model that its output depends on
the image (vLLM's ``load_format="dummy"`` uniform +-1e-3 init makes every image look alike).
The same seed always gives the same bytes. Nothing here imports vLLM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from serve_app.checkpoint.tokenizer import build_tokenizer
from serve_app.core.modes import ModelFamily

ARCHITECTURES = {
    ModelFamily.OCR1: "DeepseekOCRForCausalLM",
    ModelFamily.OCR2: "DeepseekOCR2ForCausalLM",
}
FORMAT_VERSION = 1  # bump when the layout or init below changes

HIDDEN = 128
HEADS = 4  # head_dim 32: a size vLLM's CPU attention supports
INTERMEDIATE = 256
MOE_INTERMEDIATE = 64
LAYERS = 2  # layer 0 dense, layer 1 MoE, so both paths run
EXPERTS = 4
SHARED_EXPERTS = 1
EXPERTS_PER_TOKEN = 2

SAM_DIM, SAM_DEPTH, SAM_GLOBAL_ATTN = 768, 12, (2, 5, 8, 11)
CLIP_DIM, CLIP_DEPTH, CLIP_MLP = 1024, 24, 4096
# DeepSeek-OCR-2: SAM ends in 896 channels, then a Qwen2-0.5B-shaped encoder with queries.
QWEN_DIM, QWEN_DEPTH, QWEN_KV_DIM, QWEN_MLP = 896, 24, 128, 4864
QWEN_QUERIES = {"query_768": 144, "query_1024": 256}

VISION_STD, LM_STD, EMBED_STD = 0.02, 0.3, 1.0


def language_config(vocab_size: int, bos_id: int, eos_id: int) -> dict[str, object]:
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "moe_intermediate_size": MOE_INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "first_k_dense_replace": 1,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "n_routed_experts": EXPERTS,
        "num_experts_per_tok": EXPERTS_PER_TOKEN,
        "n_shared_experts": SHARED_EXPERTS,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "q_lora_rank": None,
        "kv_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
        "use_mla": False,
        "max_position_embeddings": 8192,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "bfloat16",
    }


def vision_width(family: ModelFamily) -> int:
    """Width of the features the projector reads."""
    return 2 * CLIP_DIM if family is ModelFamily.OCR1 else QWEN_DIM


def model_config(
    vocab_size: int, bos_id: int, eos_id: int, family: ModelFamily = ModelFamily.OCR1
) -> dict[str, object]:
    """``config.json`` of the tiny model, shaped like the real DeepSeek-OCR(-2) one."""
    return {
        "architectures": [ARCHITECTURES[family]],
        "model_type": "deepseek_vl_v2",
        "tile_tag": "2D",
        "global_view_pos": "head",
        "candidate_resolutions": [[1024, 1024]],
        "torch_dtype": "bfloat16",
        "vision_config": {"model_type": "vision", "image_size": 1024},
        "projector_config": {
            "model_type": "mlp_projector",
            "projector_type": "linear",
            "input_dim": vision_width(family),
            "n_embed": HIDDEN,
        },
        "language_config": language_config(vocab_size, bos_id, eos_id),
        "vocab_size": vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def _sam_shapes(last_channels: int = 1024) -> Iterator[tuple[str, tuple[int, ...]]]:
    d = SAM_DIM
    yield "pos_embed", (1, 64, 64, d)
    yield "patch_embed.proj.weight", (d, 3, 16, 16)
    yield "patch_embed.proj.bias", (d,)
    for i in range(SAM_DEPTH):
        rel = 2 * 64 - 1 if i in SAM_GLOBAL_ATTN else 2 * 14 - 1  # global attn vs window 14
        b = f"blocks.{i}."
        yield b + "norm1.weight", (d,)
        yield b + "norm1.bias", (d,)
        yield b + "attn.rel_pos_h", (rel, 64)
        yield b + "attn.rel_pos_w", (rel, 64)
        yield b + "attn.qkv.weight", (3 * d, d)
        yield b + "attn.qkv.bias", (3 * d,)
        yield b + "attn.proj.weight", (d, d)
        yield b + "attn.proj.bias", (d,)
        yield b + "norm2.weight", (d,)
        yield b + "norm2.bias", (d,)
        yield b + "mlp.lin1.weight", (4 * d, d)
        yield b + "mlp.lin1.bias", (4 * d,)
        yield b + "mlp.lin2.weight", (d, 4 * d)
        yield b + "mlp.lin2.bias", (d,)
    yield "neck.0.weight", (256, d, 1, 1)
    yield "neck.1.weight", (256,)
    yield "neck.1.bias", (256,)
    yield "neck.2.weight", (256, 256, 3, 3)
    yield "neck.3.weight", (256,)
    yield "neck.3.bias", (256,)
    yield "net_2.weight", (512, 256, 3, 3)
    yield "net_3.weight", (last_channels, 512, 3, 3)


def _clip_shapes() -> Iterator[tuple[str, tuple[int, ...]]]:
    d = CLIP_DIM
    yield "embeddings.class_embedding", (d,)
    yield "embeddings.patch_embedding.weight", (d, 3, 14, 14)  # unused: SAM feeds patches
    yield "embeddings.position_embedding.weight", (257, d)
    yield "pre_layrnorm.weight", (d,)
    yield "pre_layrnorm.bias", (d,)
    for i in range(CLIP_DEPTH):
        b = f"transformer.layers.{i}."
        yield b + "self_attn.qkv_proj.weight", (3 * d, d)
        yield b + "self_attn.qkv_proj.bias", (3 * d,)
        yield b + "self_attn.out_proj.weight", (d, d)
        yield b + "self_attn.out_proj.bias", (d,)
        yield b + "layer_norm1.weight", (d,)
        yield b + "layer_norm1.bias", (d,)
        yield b + "layer_norm2.weight", (d,)
        yield b + "layer_norm2.bias", (d,)
        yield b + "mlp.fc1.weight", (CLIP_MLP, d)
        yield b + "mlp.fc1.bias", (CLIP_MLP,)
        yield b + "mlp.fc2.weight", (d, CLIP_MLP)
        yield b + "mlp.fc2.bias", (d,)


def _qwen_encoder_shapes() -> Iterator[tuple[str, tuple[int, ...]]]:
    d = QWEN_DIM
    for i in range(QWEN_DEPTH):
        b = f"model.model.layers.{i}."
        yield b + "self_attn.q_proj.weight", (d, d)
        yield b + "self_attn.q_proj.bias", (d,)
        yield b + "self_attn.k_proj.weight", (QWEN_KV_DIM, d)
        yield b + "self_attn.k_proj.bias", (QWEN_KV_DIM,)
        yield b + "self_attn.v_proj.weight", (QWEN_KV_DIM, d)
        yield b + "self_attn.v_proj.bias", (QWEN_KV_DIM,)
        yield b + "self_attn.o_proj.weight", (d, d)
        yield b + "mlp.gate_proj.weight", (QWEN_MLP, d)
        yield b + "mlp.up_proj.weight", (QWEN_MLP, d)
        yield b + "mlp.down_proj.weight", (d, QWEN_MLP)
        yield b + "input_layernorm.weight", (d,)
        yield b + "post_attention_layernorm.weight", (d,)
    yield "model.model.norm.weight", (d,)
    for name, count in QWEN_QUERIES.items():
        yield f"{name}.weight", (count, d)


def _language_shapes(vocab_size: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    h = HIDDEN
    yield "model.embed_tokens.weight", (vocab_size, h)
    for i in range(LAYERS):
        b = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield b + f"self_attn.{proj}.weight", (h, h)
        yield b + "input_layernorm.weight", (h,)
        yield b + "post_attention_layernorm.weight", (h,)
        if i == 0:
            yield from _mlp_shapes(b + "mlp.", INTERMEDIATE)
            continue
        yield b + "mlp.gate.weight", (EXPERTS, h)
        for e in range(EXPERTS):
            yield from _mlp_shapes(b + f"mlp.experts.{e}.", MOE_INTERMEDIATE)
        yield from _mlp_shapes(b + "mlp.shared_experts.", MOE_INTERMEDIATE * SHARED_EXPERTS)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (vocab_size, h)


def _mlp_shapes(prefix: str, inner: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield prefix + "gate_proj.weight", (inner, HIDDEN)
    yield prefix + "up_proj.weight", (inner, HIDDEN)
    yield prefix + "down_proj.weight", (HIDDEN, inner)


def parameter_shapes(
    vocab_size: int, family: ModelFamily = ModelFamily.OCR1
) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, by its name in the original checkpoint."""
    shapes: dict[str, tuple[int, ...]] = {}
    if family is ModelFamily.OCR1:
        shapes.update((f"model.sam_model.{n}", s) for n, s in _sam_shapes())
        shapes.update((f"model.vision_model.{n}", s) for n, s in _clip_shapes())
        shapes["model.image_newline"] = (HIDDEN,)
    else:
        shapes.update((f"model.sam_model.{n}", s) for n, s in _sam_shapes(QWEN_DIM))
        shapes.update((f"model.qwen2_model.{n}", s) for n, s in _qwen_encoder_shapes())
    shapes["model.projector.layers.weight"] = (HIDDEN, vision_width(family))
    shapes["model.projector.layers.bias"] = (HIDDEN,)
    shapes["model.view_seperator"] = (HIDDEN,)  # sic: the original checkpoint's spelling
    shapes.update(_language_shapes(vocab_size))
    return shapes


_NORM_WEIGHT_SUFFIXES = (
    "norm.weight",
    "norm1.weight",
    "norm2.weight",
    "neck.1.weight",
    "neck.3.weight",
)


def _is_norm_weight(name: str) -> bool:
    return name.endswith(_NORM_WEIGHT_SUFFIXES)


def init_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Norm scales 1, biases 0, embeddings N(0, 1), language model N(0, 0.3), vision N(0, 0.02)."""
    if _is_norm_weight(name):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if name == "model.embed_tokens.weight":
        std = EMBED_STD
    elif name.startswith(("model.layers.", "lm_head.", "model.norm.")):
        std = LM_STD
    else:
        std = VISION_STD
    return torch.randn(shape, generator=generator) * std


def _config_for(tokenizer: Any, family: ModelFamily) -> dict[str, object]:
    return model_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, family)


def spec_digest(seed: int, family: ModelFamily = ModelFamily.OCR1) -> str:
    """Identifies what :func:`write_checkpoint` writes; names the cache entry."""
    tokenizer = build_tokenizer()
    spec = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "config": _config_for(tokenizer, family),
        "vocab": sorted(tokenizer.get_vocab().items()),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def write_checkpoint(
    out_dir: Path, *, seed: int = 0, family: ModelFamily = ModelFamily.OCR1
) -> Path:
    """Write the checkpoint into ``out_dir`` (created; must not exist yet). Returns it."""
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    out_dir.mkdir(parents=True)
    config = _config_for(tokenizer, family)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(out_dir)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        name: init_tensor(name, shape, generator).to(torch.bfloat16).contiguous()
        for name, shape in parameter_shapes(vocab_size, family).items()
    }
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


def default_cache_dir() -> Path:
    root = os.environ.get("DEEPSEEK_OCR_CACHE") or Path.home() / ".cache" / "deepseek-ocr-serve"
    return Path(root) / "checkpoints"


def ensure_checkpoint(
    cache_dir: Path | None = None, *, seed: int = 0, family: ModelFamily = ModelFamily.OCR1
) -> Path:
    """The cached tiny checkpoint, written first if it is not there yet.

    Safe when several processes race: each writes to a temporary directory and the first
    rename wins.
    """
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / f"tiny-{family.value}-{spec_digest(seed, family)}"
    if (target / "model.safetensors").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
    try:
        write_checkpoint(scratch / "ckpt", seed=seed, family=family)
        try:
            (scratch / "ckpt").rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``deepseek-ocr-tiny-checkpoint [--cache-dir DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(
        description="Write (or find) the tiny DeepSeek-OCR checkpoint."
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--family", type=ModelFamily, choices=list(ModelFamily), default=ModelFamily.OCR1
    )
    args = parser.parse_args(argv)
    print(ensure_checkpoint(args.cache_dir, seed=args.seed, family=args.family))  # noqa: T201


if __name__ == "__main__":
    main()
