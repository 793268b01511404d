"""The plugin path on the real engine: it sees the image, equals plain vLLM, mixes modes."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from serve_app.core.modes import get_mode
from serve_app.core.pdf import open_pdf
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import PageGeneration, generate_once
from serve_app.engine.vllm_engine import VLLMEngine
from serve_app.testing.synthetic import noise_rgb, text_pdf
from tests.engine.conftest import TEST_ENGINE_CONFIG, start_builtin
from tests.support import LoopThread

pytestmark = pytest.mark.engine

_ids = itertools.count()
PROMPT = build_prompt(Task.DOCUMENT)
MAX_TOKENS = 8


def a4_page() -> Image.Image:
    with open_pdf(text_pdf(1)) as doc:
        return doc.render(0, dpi=144)


def request_for(image: Image.Image, mode: str = "gundam") -> GenerateRequest:
    return GenerateRequest(
        request_id=f"plugin-{next(_ids)}",
        prompt=PROMPT,
        image=prepare_image(image, get_mode(mode)),
        max_tokens=MAX_TOKENS,
        logprobs=True,
    )


def run(loop: LoopThread, engine: VLLMEngine, req: GenerateRequest) -> PageGeneration:
    return loop.run(generate_once(engine, req))


@pytest.fixture(scope="module")
def builtin_llm(loop: LoopThread) -> Iterator[Any]:
    """Plain vLLM: the built-in DeepseekOCRForCausalLM on the same checkpoint, fed PIL images."""
    llm = start_builtin(loop, TEST_ENGINE_CONFIG)
    yield llm
    llm.shutdown()


def builtin_generate(
    loop: LoopThread, llm: Any, params: Any, image: Image.Image
) -> tuple[tuple[int, ...], tuple[float, ...], int]:
    async def go() -> tuple[tuple[int, ...], tuple[float, ...], int]:
        prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
        ids: list[int] = []
        logprobs: list[float] = []
        prompt_tokens = 0
        async for out in llm.generate(prompt, params, request_id=f"builtin-{next(_ids)}"):
            delta = out.outputs[0]  # params stream deltas, as our engine asks for
            ids.extend(delta.token_ids)
            logprobs.extend(
                e[t].logprob for t, e in zip(delta.token_ids, delta.logprobs, strict=True)
            )
            prompt_tokens = len(out.prompt_token_ids)
        return tuple(ids), tuple(logprobs), prompt_tokens

    return loop.run(go())


def test_the_model_sees_the_image(vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    white = run(loop, vllm_engine, request_for(Image.new("RGB", (600, 400), "white")))
    noise = run(loop, vllm_engine, request_for(noise_rgb(600, 400, seed=1)))
    assert white.logprobs != noise.logprobs
    assert white.token_ids != noise.token_ids


@pytest.mark.parametrize(
    "image_factory",
    [lambda: noise_rgb(600, 400, seed=2), a4_page, lambda: noise_rgb(4000, 300, seed=3)],
    ids=["small", "a4-page", "very-wide"],
)
def test_plugin_path_equals_plain_vllm(
    image_factory: Any, vllm_engine: VLLMEngine, builtin_llm: Any, loop: LoopThread
) -> None:
    image = image_factory()
    req = request_for(image)
    ours = run(loop, vllm_engine, req)
    ids, logprobs, prompt_tokens = builtin_generate(
        loop, builtin_llm, vllm_engine.sampling_params(req), image
    )
    assert ours.prompt_tokens == prompt_tokens
    assert ours.token_ids == ids
    assert ours.logprobs == logprobs


@pytest.mark.parametrize("mode", ["tiny", "small", "base", "large", "gundam"])
def test_every_mode_runs(mode: str, vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    req = request_for(noise_rgb(900, 700, seed=4), mode)
    result = run(loop, vllm_engine, req)
    text_tokens = result.prompt_tokens - req.image.num_image_tokens
    assert 0 < text_tokens < 100  # BOS + the task text around the image run
    assert result.completion_tokens == len(result.token_ids) > 0


def test_mixed_batch_equals_alone(vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    tiny = request_for(noise_rgb(700, 500, seed=5), "tiny")
    gundam = request_for(noise_rgb(1300, 700, seed=6), "gundam")
    alone = [run(loop, vllm_engine, tiny), run(loop, vllm_engine, gundam)]

    async def together() -> list[PageGeneration]:
        again = [dataclasses.replace(r, request_id=f"plugin-{next(_ids)}") for r in (tiny, gundam)]
        return list(await asyncio.gather(*(generate_once(vllm_engine, r) for r in again)))

    batched = loop.run(together())
    for a, b in zip(alone, batched, strict=True):
        assert (a.token_ids, a.logprobs, a.prompt_tokens) == (
            b.token_ids,
            b.logprobs,
            b.prompt_tokens,
        )
