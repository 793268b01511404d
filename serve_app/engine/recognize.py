"""Running one page to completion, with the retry policy for truncated output."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serve_app.config import RetryConfig
from serve_app.engine.protocol import FinishReason, GenerateRequest, OCREngine


@dataclass(frozen=True)
class PageGeneration:
    """The final output for a page.

    Attributes:
        text: The generated text, grounding markup included.
        finish_reason: Of the attempt that is returned.
        truncated: The page still ran into ``max_tokens`` after every retry.
        attempts: How many generations were run (1 + retries).
        prompt_tokens: Prompt length of the returned attempt, image tokens included.
        completion_tokens: Generated tokens of the returned attempt.
        token_ids: The generated token ids.
        logprobs: Their log-probabilities, if requested.
        queued_s: Seconds the returned attempt waited for an engine step, if known.
    """

    text: str
    finish_reason: FinishReason
    truncated: bool
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    queued_s: float | None = None


async def generate_once(engine: OCREngine, request: GenerateRequest) -> PageGeneration:
    """Collect one generation from the engine's stream."""
    text: list[str] = []
    token_ids: list[int] = []
    logprobs: list[float] = []
    finish: FinishReason | None = None
    prompt_tokens = completion_tokens = 0
    queued_s = None
    async for update in engine.generate(request):
        text.append(update.text)
        token_ids.extend(update.token_ids)
        logprobs.extend(update.logprobs or ())
        finish = update.finish_reason or finish
        prompt_tokens, completion_tokens = update.prompt_tokens, update.completion_tokens
        queued_s = update.queued_s if update.queued_s is not None else queued_s
    return PageGeneration(
        text="".join(text),
        finish_reason=finish or "abort",
        truncated=finish == "length",
        attempts=1,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        token_ids=tuple(token_ids),
        logprobs=tuple(logprobs) if request.logprobs else None,
        queued_s=queued_s,
    )


async def recognize(
    engine: OCREngine, request: GenerateRequest, retry: RetryConfig
) -> PageGeneration:
    """Generate a page; if it hits ``max_tokens``, retry at the policy's temperatures.

    The first attempt that finishes normally is returned. If all attempts are truncated, the
    first one is returned (greedy output is the most faithful prefix), marked truncated.
    """
    first = await generate_once(engine, request)
    if first.finish_reason != "length":
        return first
    for attempt, temperature in enumerate(retry.temperatures, start=2):
        again = dataclasses.replace(
            request, request_id=f"{request.request_id}-retry{attempt - 1}", temperature=temperature
        )
        result = await generate_once(engine, again)
        if result.finish_reason != "length":
            return dataclasses.replace(result, attempts=attempt)
    return dataclasses.replace(first, attempts=1 + len(retry.temperatures))
