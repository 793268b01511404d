"""The engine contract, run against FakeEngine, the real VLLMEngine and RapidOCREngine alike."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from serve_app.config import RetryConfig
from serve_app.core.modes import get_mode
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import EngineImage, PageImage, PreparedImage, prepare_image
from serve_app.engine.protocol import GenerateRequest, GenerateUpdate, OCREngine
from serve_app.engine.rapid import RapidOCREngine
from serve_app.engine.recognize import generate_once, recognize
from serve_app.errors import InvalidInputError
from serve_app.testing.docset import render, text_page
from serve_app.testing.synthetic import noise_rgb
from tests.support import LoopThread

_ids = itertools.count()
# Tiny mode keeps the real engine's vision encoder cheap on CPU.
IMAGE = prepare_image(noise_rgb(500, 400, seed=11), get_mode("tiny"))
# What a page-reading engine gets: pixels with a few lines of text, so it has output.
PAGE = PageImage(
    np.asarray(render([text_page(["Contract line one", "Second line 42", "Third"])])[0][0])
)


def image_for(engine: OCREngine) -> EngineImage:
    return PAGE if isinstance(engine, RapidOCREngine) else IMAGE


def request(engine: OCREngine, max_tokens: int = 6, **kwargs: object) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"contract-{next(_ids)}",
        prompt=build_prompt(Task.DOCUMENT),
        image=image_for(engine),
        max_tokens=max_tokens,
        **kwargs,  # type: ignore[arg-type]
    )


async def collect(engine: OCREngine, req: GenerateRequest) -> list[GenerateUpdate]:
    return [update async for update in engine.generate(req)]


def test_is_ready(engine: OCREngine) -> None:
    assert engine.is_ready()


def test_stream_accounts_for_every_token(engine: OCREngine, loop: LoopThread) -> None:
    updates = loop.run(collect(engine, request(engine, max_tokens=6, logprobs=True)))

    assert all(u.finish_reason is None for u in updates[:-1])
    last = updates[-1]
    assert last.finish_reason in ("stop", "length")
    token_ids = [t for u in updates for t in u.token_ids]
    assert last.completion_tokens == len(token_ids) <= 6
    assert [len(u.logprobs or ()) for u in updates] == [len(u.token_ids) for u in updates]
    assert all(lp <= 0 for u in updates for lp in u.logprobs or ())
    image = image_for(engine)
    if isinstance(image, PreparedImage):
        assert image.num_image_tokens < last.prompt_tokens < image.num_image_tokens + 100
    else:
        assert last.prompt_tokens == 0  # a page reader has no prompt tokens


def test_greedy_is_deterministic(engine: OCREngine, loop: LoopThread) -> None:
    first = loop.run(generate_once(engine, request(engine, max_tokens=6)))
    second = loop.run(generate_once(engine, request(engine, max_tokens=6)))
    assert (first.text, first.token_ids) == (second.text, second.token_ids)
    assert first.text


def test_a_jobs_page_is_read_as_a_requests_page(engine: OCREngine, loop: LoopThread) -> None:
    """A job's page only waits differently (vLLM's priority 1, the CPU engine's gate)."""
    asked = loop.run(generate_once(engine, request(engine, max_tokens=6)))
    batch = loop.run(generate_once(engine, request(engine, max_tokens=6, batch=True)))
    assert (batch.text, batch.token_ids) == (asked.text, asked.token_ids)


def test_max_tokens_truncates_with_length(engine: OCREngine, loop: LoopThread) -> None:
    result = loop.run(generate_once(engine, request(engine, max_tokens=3)))
    assert (result.completion_tokens, result.finish_reason) == (3, "length")


def test_truncated_page_is_retried_then_marked(engine: OCREngine, loop: LoopThread) -> None:
    policy = RetryConfig(temperatures=(0.3,))
    result = loop.run(recognize(engine, request(engine, max_tokens=2), policy))
    assert (result.attempts, result.truncated, result.finish_reason) == (2, True, "length")
    assert engine.num_unfinished() == 0


def test_abort_frees_the_request(engine: OCREngine, loop: LoopThread) -> None:
    async def abort_after_first_update() -> list[GenerateUpdate]:
        req = request(engine, max_tokens=2000)
        updates = []
        async for update in engine.generate(req):
            updates.append(update)
            if len(updates) == 1:
                await engine.abort(req.request_id)
        return updates

    updates = loop.run(abort_after_first_update())
    assert updates[-1].finish_reason == "abort"
    assert updates[-1].completion_tokens < 2000
    assert loop.run(_settled(engine)) == 0
    assert loop.run(generate_once(engine, request(engine))).finish_reason in ("stop", "length")


def test_closing_the_stream_aborts(engine: OCREngine, loop: LoopThread) -> None:
    async def read_one_update() -> None:
        stream = engine.generate(request(engine, max_tokens=2000))
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]

    loop.run(read_one_update())
    assert loop.run(_settled(engine)) == 0


def test_prompt_without_placeholder_is_rejected(engine: OCREngine, loop: LoopThread) -> None:
    bad = GenerateRequest(f"contract-{next(_ids)}", prompt="Free OCR.", image=image_for(engine))
    with pytest.raises(InvalidInputError, match="<image>"):
        loop.run(collect(engine, bad))


async def _settled(engine: OCREngine, timeout_s: float = 10) -> int:
    """The unfinished count once aborts have propagated (vLLM aborts asynchronously)."""
    for _ in range(int(timeout_s / 0.05)):
        if engine.num_unfinished() == 0:
            return 0
        await asyncio.sleep(0.05)
    return engine.num_unfinished()
