"""The plugin path on the real engine: it sees the image, runs every mode, mixes modes in a
batch, and equals plain vLLM.

Inputs are the cheapest that prove each point on a slow CPU (``PAGES``: a 1000x500 page is
the smallest Gundam page with local tiles, a 2x1 grid), each generated once per run. The
costly shapes (an A4 page's 2x3 tiles, a 4000x300 strip) run under ``-m oracle``, compared
with plain vLLM.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from PIL import Image

from serve_app.core.modes import get_mode
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.recognize import PageGeneration, generate_once
from serve_app.engine.vllm_engine import VLLMEngine
from serve_app.testing.synthetic import noise_rgb
from tests.engine.conftest import (
    PAGES,
    TEST_ENGINE_CONFIG,
    builtin_engine,
    builtin_generate,
    generated,
    plugin_engine,
    request_for,
)
from tests.support import EngineSlot, LoopThread

pytestmark = pytest.mark.engine
_ids = itertools.count()
PROMPT = build_prompt(Task.DOCUMENT)


def test_the_model_sees_the_image(vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    white = Image.new("RGB", (600, 400), "white")
    white_out = loop.run(generate_once(vllm_engine, request_for(white, "tiny")))
    noise_out = loop.run(generate_once(vllm_engine, request_for(noise_rgb(600, 400, 1), "tiny")))
    assert white_out.prompt_tokens == noise_out.prompt_tokens
    assert white_out.logprobs != noise_out.logprobs
    assert white_out.token_ids != noise_out.token_ids


@pytest.mark.parametrize("mode", ["tiny", "small", "base", "large", "gundam"])
def test_every_mode_runs(mode: str, vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    result = generated(loop, vllm_engine, "tiled", mode)
    image_tokens = prepare_image(PAGES["tiled"](), get_mode(mode)).num_image_tokens
    assert image_tokens == {"tiny": 73, "small": 111, "base": 273, "large": 421,
                            "gundam": 273 + 10 * 21}[mode]  # fmt: skip
    assert 0 < result.prompt_tokens - image_tokens < 100  # BOS + the task text
    assert result.completion_tokens == len(result.token_ids) > 0


@pytest.mark.oracle  # 40 s on an AVX2 CPU; the 2x1 page runs the same tiled path
def test_an_a4_page_in_gundam_mode(vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    result = generated(loop, vllm_engine, "a4-page", "gundam")
    image = prepare_image(PAGES["a4-page"](), get_mode("gundam"))
    assert (image.width, image.height, image.grid, image.num_image_tokens) == (
        1190, 1684, (2, 3), 903,
    )  # fmt: skip
    assert 0 < result.prompt_tokens - 903 < 100
    assert result.text and result.completion_tokens == len(result.token_ids) > 0


def test_mixed_batch_equals_alone(vllm_engine: VLLMEngine, loop: LoopThread) -> None:
    alone = [generated(loop, vllm_engine, "tiled", mode) for mode in ("tiny", "gundam")]

    async def together() -> list[PageGeneration]:
        requests = [request_for(PAGES["tiled"](), mode) for mode in ("tiny", "gundam")]
        return list(await asyncio.gather(*(generate_once(vllm_engine, r) for r in requests)))

    batched = loop.run(together())
    for a, b in zip(alone, batched, strict=True):
        assert (a.token_ids, a.prompt_tokens) == (b.token_ids, b.prompt_tokens)
        # float32 kernels round differently for a batch of two (1e-6 seen); a page given
        # another page's views would differ by whole units.
        assert b.logprobs == pytest.approx(a.logprobs, rel=0, abs=1e-4)


def assert_plugin_equals_plain_vllm(slot: EngineSlot, loop: LoopThread, pages: list[str]) -> None:
    """Our pages first (the plugin engine), then plain vLLM's: never two engines at once."""
    engine = plugin_engine(slot, loop, TEST_ENGINE_CONFIG)
    ours = {page: generated(loop, engine, page, "gundam") for page in pages}
    params = {page: engine.sampling_params(request_for(PAGES[page]())) for page in pages}
    llm = builtin_engine(slot, loop, TEST_ENGINE_CONFIG)
    for page in pages:
        ids, logprobs, prompt_tokens = builtin_generate(
            loop, llm, PROMPT, PAGES[page](), params[page], f"builtin-{next(_ids)}"
        )
        result = ours[page]
        assert result.prompt_tokens == prompt_tokens, page
        assert (result.token_ids, result.logprobs) == (ids, logprobs), page


# Plain vLLM is an engine start of its own (two minutes on an AVX2 CPU): these run with
# `make test-oracle`, after a change to the plugin, tiling or the vLLM pin.
@pytest.mark.oracle
def test_plugin_path_equals_plain_vllm(engine_slot: EngineSlot, loop: LoopThread) -> None:
    assert_plugin_equals_plain_vllm(engine_slot, loop, ["untiled", "tiled", "a4-page", "very-wide"])
