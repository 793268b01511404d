"""A CPU OCR engine: PP-OCR text detection and recognition through ``rapidocr`` (onnxruntime).

Its models ship inside the ``rapidocr`` wheel, so it reads real text on any machine with no
download. It finds and reads text lines only: no layout classes, tables, formulas or figures,
and no free-form prompts (the tasks it can do are :data:`serve_app.config.PIXEL_ENGINE_TASKS`).
It answers in DeepSeek-OCR's grounding grammar (:mod:`serve_app.core.text_lines`), so the
pipeline downstream is the same for every model, streamed a line at a time. There is no
tokenizer: its "tokens" are characters (ids are code points, each logprob the log of the
page's mean line confidence) and prompts count 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from serve_app.config import RapidOCRConfig
from serve_app.core.gate import PriorityGate
from serve_app.core.prompts import IMAGE_PLACEHOLDER
from serve_app.core.text_lines import from_quads, lines_output, reading_order
from serve_app.core.tiling import PageImage
from serve_app.engine.in_flight import InFlight
from serve_app.engine.protocol import FinishReason, GenerateRequest, GenerateUpdate
from serve_app.errors import GenerationError, InvalidInputError, NotReadyError

logger = logging.getLogger("ray.serve")


class RapidOCREngine:
    """Implements :class:`serve_app.engine.protocol.OCREngine` with rapidocr on CPU.

    Pages run in worker threads (onnxruntime releases the GIL), at most
    ``config.pages_at_once`` at a time; the rest wait their turn in arrival order, requests'
    pages before jobs' (:class:`~serve_app.core.gate.PriorityGate`). A thread
    cannot be stopped, so a read whose request was cancelled keeps its turn (and counts as
    unfinished) until it ends.
    """

    def __init__(self, config: RapidOCRConfig) -> None:
        self._config = config
        self._ocr: Any = None
        self._turns = PriorityGate(config.pages_at_once)
        self._running = InFlight()
        self._reads: dict[asyncio.Future[tuple[str, float]], str] = {}  # thread -> request id

    async def start(self) -> None:
        self._ocr = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        from rapidocr import RapidOCR

        # Default model choices only: other versions or types are downloaded from the network.
        ocr = RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.use_cls": self._config.turn_lines,
                "EngineConfig.onnxruntime.intra_op_num_threads": self._config.threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                "Det.limit_type": "max",
                "Det.limit_side_len": self._config.max_side,
            }
        )
        start = time.perf_counter()
        ocr(np.full((64, 256, 3), 255, np.uint8))  # loads the models now, not on the first page
        logger.info(
            "Engine start: kind=rapidocr threads=%d pages_at_once=%d max_side=%d min_score=%.2f "
            "turn_lines=%s (models loaded in %.1f s)", self._config.threads,
            self._config.pages_at_once, self._config.max_side, self._config.min_score,
            self._config.turn_lines, time.perf_counter() - start,
        )  # fmt: skip
        return ocr

    def is_ready(self) -> bool:
        return self._ocr is not None

    def num_unfinished(self) -> int:
        return len(self._running.ids() | set(self._reads.values()))

    async def abort(self, request_id: str) -> None:
        self._running.abort(request_id)

    async def shutdown(self) -> None:
        self._running.abort_all()
        self._ocr = None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateUpdate]:
        if self._ocr is None:
            raise NotReadyError("the engine is still starting")
        if not request.prompt.startswith(IMAGE_PLACEHOLDER):
            raise InvalidInputError("the prompt must start with the <image> placeholder")
        if not isinstance(request.image, PageImage):
            raise InvalidInputError("rapidocr reads the page's pixels, not DeepSeek's views")
        with self._running.running(request.request_id) as aborted:
            start = time.perf_counter()
            await self._turns.acquire(request.batch)
            queued_s = time.perf_counter() - start
            if aborted.is_set():
                self._turns.release()
                yield GenerateUpdate("", (), None, "abort", 0, 0, queued_s)
                return
            text, confidence = await asyncio.shield(self._start_read(request))
            limit = request.max_tokens if request.max_tokens is not None else len(text)
            finish: FinishReason = "length" if len(text) > limit else "stop"
            pieces = text[:limit].splitlines(keepends=True) or [""]
            logprob = math.log(max(confidence, 1e-6))
            done = 0
            for n, piece in enumerate(pieces, start=1):
                if aborted.is_set():
                    yield GenerateUpdate("", (), None, "abort", 0, done, queued_s)
                    return
                done += len(piece)
                yield GenerateUpdate(
                    text=piece,
                    token_ids=tuple(ord(c) for c in piece),
                    logprobs=(logprob,) * len(piece) if request.logprobs else None,
                    finish_reason=finish if n == len(pieces) else None,
                    prompt_tokens=0,
                    completion_tokens=done,
                    queued_s=queued_s if n == len(pieces) else None,
                )
                await asyncio.sleep(0)  # an abort between lines is seen

    def _start_read(self, request: GenerateRequest) -> asyncio.Future[tuple[str, float]]:
        """The page's read in a thread, holding the turn taken for it until the thread ends
        (not until its request does: a cancelled request leaves its thread running)."""
        reading = asyncio.ensure_future(asyncio.to_thread(self._read, request))
        self._reads[reading] = request.request_id

        def finished(done: asyncio.Future[tuple[str, float]]) -> None:
            del self._reads[done]
            self._turns.release()
            if not done.cancelled():
                done.exception()  # seen here, whether or not its request is still waiting

        reading.add_done_callback(finished)
        return reading

    def _read(self, request: GenerateRequest) -> tuple[str, float]:
        """The page's answer for the request's task, and the mean confidence of its lines."""
        image = request.image
        assert isinstance(image, PageImage)
        try:
            # rapidocr takes numpy images in OpenCV's BGR order.
            result = self._ocr(np.ascontiguousarray(image.pixels[:, :, ::-1]))
        except Exception as exc:  # noqa: BLE001 - onnxruntime and OpenCV raise many types
            raise GenerationError(f"rapidocr failed: {type(exc).__name__}: {exc}") from None
        if result.boxes is None:
            return "", 1.0
        found = from_quads(result.boxes, result.txts, result.scores)
        lines = [line for line in found if line.score >= self._config.min_score and line.text]
        ordered = reading_order(lines, image.width)
        confidence = sum(line.score for line in lines) / len(lines) if lines else 1.0
        try:
            text = lines_output(ordered, request.task, image.width, image.height, request.text)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        return text, confidence
