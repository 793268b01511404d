"""DeepSeek-OCR-2 through the same plugin route: its own tiny checkpoint, engine and oracle."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="module")
def ocr2_engine(loop: LoopThread) -> Iterator[VLLMEngine]:
    engine = VLLMEngine(CONFIG)
    loop.run(engine.start())
    yield engine
    loop.run(engine.shutdown())


@pytest.fixture(scope="module")
def ocr2_builtin(loop: LoopThread) -> Iterator[Any]:
    llm = start_builtin(loop, CONFIG)
    yield llm
    llm.shutdown()


def request_for(image: Image.Image) -> GenerateRequest:
    prepared = prepare_image(image, get_mode("gundam", family=ModelFamily.OCR2))
    return GenerateRequest(f"ocr2-{next(_ids)}", PROMPT, prepared, max_tokens=6, logprobs=True)


def test_ocr2_sees_the_image_and_equals_plain_vllm(
    ocr2_engine: VLLMEngine, ocr2_builtin: Any, loop: LoopThread
) -> None:
    image = noise_rgb(1000, 500, seed=8)  # 768 tiles: a 2x1 grid
    req = request_for(image)
    ours = loop.run(generate_once(ocr2_engine, req))
    white = loop.run(
        generate_once(ocr2_engine, request_for(Image.new("RGB", (1000, 500), "white")))
    )
    assert ours.logprobs != white.logprobs

    async def builtin() -> tuple[list[int], list[float], int]:
        ids: list[int] = []
        logprobs: list[float] = []
        prompt_tokens = 0
        params = ocr2_engine.sampling_params(req)
        prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
        async for out in ocr2_builtin.generate(prompt, params, request_id=f"ocr2-b{next(_ids)}"):
            delta = out.outputs[0]
            ids.extend(delta.token_ids)
            logprobs.extend(
                e[t].logprob for t, e in zip(delta.token_ids, delta.logprobs, strict=True)
            )
            prompt_tokens = len(out.prompt_token_ids)
        return ids, logprobs, prompt_tokens

    ids, logprobs, prompt_tokens = loop.run(builtin())
    assert req.image.grid == (2, 1) and req.image.num_image_tokens == 256 + 1 + 144 * 2
    assert (ours.prompt_tokens, ours.token_ids, ours.logprobs) == (
        prompt_tokens,
        tuple(ids),
        tuple(logprobs),
    )
