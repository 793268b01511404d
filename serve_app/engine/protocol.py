"""The engine seam: what the engine deployment needs from an engine, and nothing more.

Three implementations: :class:`serve_app.engine.vllm_engine.VLLMEngine` (vLLM ``AsyncLLM``),
:class:`serve_app.engine.rapid.RapidOCREngine` (PP-OCR on CPU, text lines only) and
:class:`serve_app.engine.fake.FakeEngine` (scripted output, latency and faults). One
contract test suite (``tests/engine/test_contract.py``) runs against all three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from serve_app.core.prompts import Task
from serve_app.core.tiling import EngineImage

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class GenerateRequest:
    """One page for the model.

    Attributes:
        request_id: Unique among the engine's in-flight requests; used to abort.
        prompt: The prompt text, starting with the ``<image>`` placeholder.
        image: The page from the preprocess stage: DeepSeek's views, or the page's pixels
            for an engine that reads those (``EngineConfig.reads``).
        task: The task the prompt asks for (``None``: a free-form prompt), for engines that
            do not read prompts.
        text: The phrase to find, for ``locate``.
        max_tokens: Cap on generated tokens; ``None`` takes the configured default. The
            engine also clamps it to what the context window leaves after the prompt.
        temperature: ``None`` takes the configured default (greedy).
        logprobs: Return the log-probability of each generated token.
        trace_headers: W3C trace context of the caller's span, for engines that trace.
        batch: A job's page: engines that queue pages serve requests' pages first.
    """

    request_id: str
    prompt: str
    image: EngineImage
    task: Task | None = Task.DOCUMENT
    text: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    logprobs: bool = False
    trace_headers: dict[str, str] | None = None
    batch: bool = False


@dataclass(frozen=True)
class GenerateUpdate:
    """A streamed piece of output. The last update of a request has ``finish_reason`` set.

    ``text``, ``token_ids`` and ``logprobs`` hold what is new since the previous update;
    the token counts are running totals. ``queued_s``, on the last update and when the engine
    knows it, is how long the request waited for its first step.
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    queued_s: float | None = None


class OCREngine(Protocol):
    """A started engine generates text for pages, streaming, and can abort them."""

    async def start(self) -> None:
        """Load the model; returns once the engine can serve."""

    def is_ready(self) -> bool:
        """Whether :meth:`start` finished and the engine is healthy."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateUpdate]:
        """Stream the output for one page. Closing the iterator early aborts the request.

        Raises:
            InvalidInputError: The engine rejected the request (e.g. prompt too long).
            GenerationError: The engine failed while generating.
            NotReadyError: :meth:`start` has not finished.
        """

    async def abort(self, request_id: str) -> None:
        """Stop a request in flight; its stream ends with ``finish_reason="abort"``."""

    def num_unfinished(self) -> int:
        """Requests the engine is still working on."""

    async def shutdown(self) -> None:
        """Release the model and any engine processes."""
