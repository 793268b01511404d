"""DeepSeek-OCR-2 through the same plugin route: its own tiny checkpoint, engine and oracle."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import generate_once
from serve_app.engine.vllm_engine import VLLMEngine
from serve_app.testing.synthetic import noise_rgb
from tests.engine.conftest import TEST_ENGINE_CONFIG, start_builtin
from tests.support import LoopThread

pytestmark = pytest.mark.engine

CONFIG = TEST_ENGINE_CONFIG.model_copy(update={"family": ModelFamily.OCR2})
PROMPT = build_prompt(Task.DOCUMENT)
_ids = itertools.count()


def request_for(image: Image.Image) -> GenerateRequest:
    prepared = prepare_image(image, get_mode("gundam", family=ModelFamily.OCR2))
    return GenerateRequest(f"ocr2-{next(_ids)}", PROMPT, prepared, max_tokens=6, logprobs=True)


def test_ocr2_sees_the_image_and_equals_plain_vllm(loop: LoopThread) -> None:
    # The two engines run one after the other, so at most two engines (with the session's
    # shared one) are ever alive in a test run.
    image = noise_rgb(1000, 500, seed=8)  # 768 tiles: a 2x1 grid
    req = request_for(image)
    ocr2_engine = VLLMEngine(CONFIG)
    loop.run(ocr2_engine.start())
    try:
        ours = loop.run(generate_once(ocr2_engine, req))
        white_image = Image.new("RGB", (1000, 500), "white")
        white = loop.run(generate_once(ocr2_engine, request_for(white_image)))
        params = ocr2_engine.sampling_params(req)
    finally:
        loop.run(ocr2_engine.shutdown())
    assert ours.logprobs != white.logprobs

    builtin = start_builtin(loop, CONFIG)

    async def generate() -> tuple[list[int], list[float], int]:
        ids: list[int] = []
        logprobs: list[float] = []
        prompt_tokens = 0
        prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
        async for out in builtin.generate(prompt, params, request_id=f"ocr2-b{next(_ids)}"):
            delta = out.outputs[0]
            ids.extend(delta.token_ids)
            logprobs.extend(
                e[t].logprob for t, e in zip(delta.token_ids, delta.logprobs, strict=True)
            )
            prompt_tokens = len(out.prompt_token_ids)
        return ids, logprobs, prompt_tokens

    try:
        ids, logprobs, prompt_tokens = loop.run(generate())
    finally:
        builtin.shutdown()
    assert req.image.grid == (2, 1) and req.image.num_image_tokens == 256 + 1 + 144 * 2
    assert ours.prompt_tokens == prompt_tokens
    assert (ours.token_ids, ours.logprobs) == (tuple(ids), tuple(logprobs))
