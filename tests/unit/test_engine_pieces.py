"""Engine pieces that need no model: config validation, model sources, fake faults, retries."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.checkpoint.tiny import model_config, parameter_shapes, spec_digest
from serve_app.checkpoint.tokenizer import (
    BOS,
    CONTROL_TOKENS,
    EOS,
    IMAGE,
    PAD,
    TABLE_TOKENS,
    build_tokenizer,
)
from serve_app.config import EngineConfig, FakeEngineConfig, RetryConfig, SamplingConfig
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.tiling import prepare_image
from serve_app.engine import make_engine
from serve_app.engine.fake import FakeEngine
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import recognize
from serve_app.engine.source import ModelUnavailableError, resolve_model
from serve_app.errors import GenerationError, InvalidInputError, NotReadyError
from serve_app.testing.synthetic import noise_rgb

IMAGE_VIEWS = prepare_image(noise_rgb(300, 200, seed=0), get_mode("tiny"))


def req(request_id: str = "r", max_tokens: int | None = None) -> GenerateRequest:
    return GenerateRequest(request_id, "<image>\nFree OCR.", IMAGE_VIEWS, max_tokens=max_tokens)


def fake(**config: object) -> FakeEngine:
    engine = FakeEngine(FakeEngineConfig(**config), SamplingConfig())  # type: ignore[arg-type]
    asyncio.run(engine.start())
    return engine


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="max_model_lenn"):
        EngineConfig.model_validate({"max_model_lenn": 4096})
    with pytest.raises(ValidationError, match="ngram_sise"):
        EngineConfig.model_validate({"sampling": {"ngram_sise": 3}})


def test_config_cross_checks_max_tokens() -> None:
    with pytest.raises(ValidationError, match="exceeds max_model_len"):
        EngineConfig(max_model_len=2048, sampling=SamplingConfig(max_tokens=4096))


def test_profile_defaults() -> None:
    cpu, gpu = EngineConfig(profile="cpu"), EngineConfig(profile="gpu")
    assert (cpu.resolved_enforce_eager, gpu.resolved_enforce_eager) == (True, False)
    assert gpu.resolved_gpu_memory_utilization == 0.9
    assert EngineConfig(profile="gpu", max_num_seqs=3).resolved_max_num_seqs == 3


def test_make_engine_picks_the_fake_without_importing_vllm() -> None:
    assert isinstance(make_engine(EngineConfig(kind="fake")), FakeEngine)


def test_missing_local_model_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist.*engine.model: tiny"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_hub_model_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache.*hf download"):
        resolve_model("deepseek-ai/DeepSeek-OCR")


def test_fake_injects_failures_and_truncation() -> None:
    async def run(engine: FakeEngine, n: int) -> list[str]:
        outcomes = []
        for i in range(n):
            try:
                result = await recognize(engine, req(f"r{i}"), RetryConfig(temperatures=()))
                outcomes.append(result.finish_reason)
            except GenerationError:
                outcomes.append("error")
        return outcomes

    assert asyncio.run(run(fake(fail_every=3, truncate_every=2), 6)) == [
        "stop", "length", "error", "length", "stop", "error",
    ]  # fmt: skip


def test_retry_returns_first_clean_attempt() -> None:
    engine = fake(truncate_every=2)  # request 2 truncated, its retry (request 3) is not
    asyncio.run(recognize(engine, req("first"), RetryConfig()))
    result = asyncio.run(recognize(engine, req("second"), RetryConfig(temperatures=(0.2, 0.5))))
    assert (result.finish_reason, result.truncated, result.attempts) == ("stop", False, 2)


def test_fake_refuses_before_start() -> None:
    engine = FakeEngine(FakeEngineConfig(), SamplingConfig())

    async def first_update() -> None:
        async for _ in engine.generate(req()):
            break

    with pytest.raises(NotReadyError):
        asyncio.run(first_update())


def test_tokenizer_has_deepseek_special_tokens_as_single_tokens() -> None:
    tok = build_tokenizer()
    for token in (BOS, EOS, PAD, IMAGE, *CONTROL_TOKENS, *TABLE_TOKENS):
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    ids = tok("<image>\nhi").input_ids
    assert ids[0] == tok.bos_token_id  # vLLM tokenizes prompts with add_special_tokens
    assert (
        tok.decode(tok.encode("Grüße <td>x</td>", add_special_tokens=False)) == "Grüße <td>x</td>"
    )


def test_checkpoint_spec_is_reproducible_and_shaped_like_deepseek_ocr() -> None:
    assert spec_digest(0) == spec_digest(0) != spec_digest(1)
    tok = build_tokenizer()
    config = model_config(len(tok), tok.bos_token_id, tok.eos_token_id)
    assert config["architectures"] == ["DeepseekOCRForCausalLM"]
    assert config["model_type"] == "deepseek_vl_v2" and config["tile_tag"] == "2D"
    json.dumps(config)
    shapes = parameter_shapes(len(tok))
    counts = {
        prefix: sum(int(_prod(s)) for n, s in shapes.items() if n.startswith(prefix))
        for prefix in ("model.sam_model.", "model.vision_model.")
    }
    # The fixed-size encoders of the real model (deepseek-ocr-in-vllm.md, parameter table).
    assert counts == {"model.sam_model.": 95_569_152, "model.vision_model.": 303_177_728}

    ocr2 = parameter_shapes(len(tok), ModelFamily.OCR2)
    qwen = sum(_prod(s) for n, s in ocr2.items() if n.startswith("model.qwen2_model.model."))
    queries = sum(_prod(s) for n, s in ocr2.items() if ".query_" in n)
    assert round(qwen / 1e6, 1) == 357.9 and queries == (144 + 256) * 896  # OCR-2 encoder
    assert "model.image_newline" not in ocr2  # OCR-2 has no newline tokens


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def test_in_flight_refuses_a_running_id_and_raises_abort_flags() -> None:
    from serve_app.engine.in_flight import InFlight

    running = InFlight()
    with running.running("a") as flag_a, running.running("b") as flag_b:
        assert len(running) == 2
        with pytest.raises(InvalidInputError, match="'a' is already running"), running.running("a"):
            pass
        running.abort("a")
        running.abort("unknown")  # finished or never started: nothing to do
        assert (flag_a.is_set(), flag_b.is_set()) == (True, False)
        running.abort_all()
        assert flag_b.is_set()
    assert len(running) == 0
