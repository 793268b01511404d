"""DeepSeek-OCR-2 through the same plugin route: its own tiny checkpoint and engine.

Runs after ``test_vllm_plugin.py`` (file order), so the DeepSeek-OCR engines are gone before
this module starts its own. That start (two minutes on an AVX2 CPU) and plain vLLM's make
both tests oracle tests (``make test-oracle``): run them after a change to the plugin, tiling or
the vLLM pin.
"""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import PageGeneration, generate_once
from serve_app.testing.synthetic import noise_rgb
from tests.engine.conftest import OCR2_CONFIG, builtin_engine, builtin_generate, plugin_engine
from tests.support import EngineSlot, LoopThread

pytestmark = [pytest.mark.engine, pytest.mark.oracle]

PROMPT = build_prompt(Task.DOCUMENT)
NOISE = noise_rgb(1000, 500, seed=8)  # 768 tiles: a 2x1 grid
_ids = itertools.count()
_generated: dict[str, PageGeneration] = {}


def request_for(image: Image.Image) -> GenerateRequest:
    prepared = prepare_image(image, get_mode("gundam", family=ModelFamily.OCR2))
    return GenerateRequest(f"ocr2-{next(_ids)}", PROMPT, prepared, max_tokens=6, logprobs=True)


def noise_page(slot: EngineSlot, loop: LoopThread) -> PageGeneration:
    if "noise" not in _generated:
        engine = plugin_engine(slot, loop, OCR2_CONFIG)
        _generated["noise"] = loop.run(generate_once(engine, request_for(NOISE)))
    return _generated["noise"]


def test_ocr2_sees_the_image(engine_slot: EngineSlot, loop: LoopThread) -> None:
    req = request_for(NOISE)
    assert req.image.grid == (2, 1) and req.image.num_image_tokens == 256 + 1 + 144 * 2
    ours = noise_page(engine_slot, loop)
    engine = plugin_engine(engine_slot, loop, OCR2_CONFIG)
    white = loop.run(generate_once(engine, request_for(Image.new("RGB", (1000, 500), "white"))))
    assert ours.prompt_tokens == white.prompt_tokens
    assert 0 < ours.prompt_tokens - req.image.num_image_tokens < 100
    assert ours.completion_tokens == len(ours.token_ids) == 6
    assert ours.logprobs != white.logprobs


def test_ocr2_equals_plain_vllm(engine_slot: EngineSlot, loop: LoopThread) -> None:
    ours = noise_page(engine_slot, loop)
    params = plugin_engine(engine_slot, loop, OCR2_CONFIG).sampling_params(request_for(NOISE))
    llm = builtin_engine(engine_slot, loop, OCR2_CONFIG)
    ids, logprobs, prompt_tokens = builtin_generate(
        loop, llm, PROMPT, NOISE, params, f"ocr2-b{next(_ids)}"
    )
    assert ours.prompt_tokens == prompt_tokens
    assert (ours.token_ids, ours.logprobs) == (ids, logprobs)
