"""A deterministic stand-in for the model: scripted grounded output, latency, faults.

The output is a small DeepSeek-OCR-style document derived from the image (size, tile grid)
and the prompt, so pipelines downstream see realistic markup. Same request, same output.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections import deque
from collections.abc import AsyncIterator

from serve_app.config import FakeEngineConfig, SamplingConfig
from serve_app.core.tiling import PreparedImage
from serve_app.engine.in_flight import InFlight
from serve_app.engine.protocol import FinishReason, GenerateRequest, GenerateUpdate
from serve_app.errors import (
    EngineCrashedError,
    EngineUnavailableError,
    GenerationError,
    InvalidInputError,
    NotReadyError,
)

VOCAB_SIZE = 272
_TOKEN_RE_SPLIT = 4  # characters per fake token


def scripted_output(request: GenerateRequest, extra_text: str = "") -> str:
    """The fake model's full answer for a request (before ``max_tokens`` is applied);
    ``extra_text`` is a last text region of a grounded answer."""
    image = request.image
    assert isinstance(image, PreparedImage)
    head = f"Page {image.width}x{image.height}, grid {image.grid[0]}x{image.grid[1]}"
    if "<|grounding|>" not in request.prompt:
        return f"{head}\n\nFree text of a {image.mode.name} view.\n"
    return (
        "<|ref|>title<|/ref|><|det|>[[60, 40, 940, 90]]<|/det|>\n"
        f"# {head}\n\n"
        "<|ref|>text<|/ref|><|det|>[[60, 120, 940, 300]]<|/det|>\n"
        f"Recognised with {image.num_image_tokens} image tokens in {image.mode.name} mode.\n\n"
        "<|ref|>image<|/ref|><|det|>[[100, 350, 500, 650]]<|/det|>\n \n\n"
        "<|ref|>image_caption<|/ref|><|det|>[[100, 660, 500, 690]]<|/det|>\n"
        "<center>Figure 1: a scripted figure.</center>\n\n"
        "<|ref|>table<|/ref|><|det|>[[60, 720, 940, 900]]<|/det|>\n"
        "<table><tr><td>mode</td><td>tokens</td></tr>"
        f"<tr><td>{image.mode.name}</td><td>{image.num_image_tokens}</td></tr></table>\n"
        + (f"\n<|ref|>text<|/ref|><|det|>[[60, 920, 940, 980]]<|/det|>\n{extra_text}\n"
           if extra_text else "")
    )  # fmt: skip


def _tokens(text: str) -> list[str]:
    return [text[i : i + _TOKEN_RE_SPLIT] for i in range(0, len(text), _TOKEN_RE_SPLIT)]


class FakeEngine:
    """Implements :class:`serve_app.engine.protocol.OCREngine` without a model.

    Faults are injected by request number (1-based, counted from start): every
    ``fail_every``-th request raises :class:`GenerationError`, every ``truncate_every``-th
    one stops at a quarter of its output with ``finish_reason="length"``. A page
    ``crash_on_width`` pixels wide crashes the engine after its first-token latency: the
    process exits (``crash_mode="exit"``, as a replica whose process died), the engine dies
    with every request in flight and refuses work from then on while the process lives
    (``"die"``, as vLLM's engine core), or :class:`EngineCrashedError` is raised for that
    request alone, naming a new replica each time (``"raise"``).
    """

    def __init__(
        self, config: FakeEngineConfig, sampling: SamplingConfig, replica_rank: int = 0
    ) -> None:
        self._config = config
        self._sampling = sampling
        self._start_latency_s = (
            config.start_latency_s + replica_rank * config.start_latency_per_rank_s
        )
        self._ready = False
        self._requests = 0
        self._running = InFlight()
        self._died = asyncio.Event()
        # The latest requests' ids, in order (tests count engine calls); bounded.
        self.served: deque[str] = deque(maxlen=100_000)

    async def start(self) -> None:
        await asyncio.sleep(self._start_latency_s)
        self._ready = True

    def is_ready(self) -> bool:
        return self._ready

    def num_unfinished(self) -> int:
        return len(self._running)

    async def abort(self, request_id: str) -> None:
        self._running.abort(request_id)

    async def shutdown(self) -> None:
        self._running.abort_all()
        self._ready = False

    def _crash(self, number: int) -> None:
        if self._config.crash_mode == "exit":
            os._exit(17)
        if self._config.crash_mode == "die":
            self._ready = False
            self._died.set()  # every request in flight ends with it
            raise EngineCrashedError(f"the engine died with request {number}")
        raise EngineCrashedError(f"injected crash on request {number}", replica=f"fake-{number}")

    async def _wait(self, seconds: float, number: int) -> None:
        """Sleep ``seconds``, unless the engine dies first (``crash_mode="die"``)."""
        if self._config.crash_mode != "die":
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._died.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise EngineCrashedError(f"the engine died with request {number} in flight")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateUpdate]:
        if self._died.is_set():
            raise EngineUnavailableError("the fake engine has died")
        if not self._ready:
            raise NotReadyError("the engine is still starting")
        if not request.prompt.startswith("<image>"):
            raise InvalidInputError("the prompt must start with the <image> placeholder")
        if not isinstance(request.image, PreparedImage):
            raise InvalidInputError("the fake engine reads tiled views, not the page's pixels")
        with self._running.running(request.request_id) as aborted:
            self._requests += 1
            self.served.append(request.request_id)
            number = self._requests
            if self._config.fail_every and number % self._config.fail_every == 0:
                raise GenerationError(f"injected failure on request {number}")
            tokens = _tokens(scripted_output(request, self._config.extra_text))
            limit = request.max_tokens or self._sampling.max_tokens
            if self._config.truncate_every and number % self._config.truncate_every == 0:
                limit = min(limit, max(1, len(tokens) // 4))
            finish: FinishReason = "length" if len(tokens) > limit else "stop"
            tokens = tokens[:limit]
            prompt_tokens = 1 + len(request.prompt.encode()) - 6 + request.image.num_image_tokens
            await self._wait(self._config.first_token_latency_s, number)
            if request.image.width == self._config.crash_on_width:
                await asyncio.sleep(self._config.crash_delay_s)
                self._crash(number)
            step = self._config.tokens_per_update
            for start in range(0, len(tokens), step):
                if aborted.is_set():
                    yield GenerateUpdate("", (), None, "abort", prompt_tokens, start)
                    return
                chunk = tokens[start : start + step]
                await self._wait(self._config.token_latency_s * len(chunk), number)
                done = start + step >= len(tokens)
                yield GenerateUpdate(
                    text="".join(chunk),
                    token_ids=tuple(zlib.crc32(t.encode()) % VOCAB_SIZE for t in chunk),
                    logprobs=tuple(-0.1 for _ in chunk) if request.logprobs else None,
                    finish_reason=finish if done else None,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=start + len(chunk),
                )
