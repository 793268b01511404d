"""The CPU OCR engine's bound on pages at once holds when requests are cancelled: a thread
cannot be stopped, so a cancelled read keeps its turn, and counts, until it ends."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from serve_app.config import RapidOCRConfig
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import PageImage
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.rapid import RapidOCREngine
from serve_app.engine.recognize import generate_once
from serve_app.testing.docset import render, text_page


class CountingReader:
    """Wraps the engine's reader: how many reads ran at once, at most."""

    def __init__(self, read: Any, seconds: float) -> None:
        self._read, self._seconds = read, seconds
        self._lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self._seconds)  # a slow page, so cancellations land mid-read
            return self._read(*args, **kwargs)
        finally:
            with self._lock:
                self.now -= 1


def wrap_readers(engine: RapidOCREngine, seconds: float) -> list[CountingReader]:
    """Every reader in the engine's pool wrapped (the same reader wrapped once)."""
    pool = engine._readers
    assert pool is not None
    held = [pool.get_nowait() for _ in range(pool.qsize())]
    wrapped: dict[int, CountingReader] = {}
    for reader in held:
        pool.put(wrapped.setdefault(id(reader), CountingReader(reader, seconds)))
    return list(wrapped.values())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cancelled_requests_never_run_more_reads_than_pages_at_once(backend: Any) -> None:
    ((image, _),) = render([text_page(["Bounded reading"])])
    page = PageImage(np.asarray(image))

    async def go() -> tuple[CountingReader, list[int], str]:
        engine = RapidOCREngine(RapidOCRConfig(pages_at_once=1, backend=backend))
        await engine.start()
        (reader,) = wrap_readers(engine, seconds=0.4)

        def request(n: int) -> GenerateRequest:
            return GenerateRequest(f"r{n}", build_prompt(Task.FREE), page, task=Task.FREE)

        unfinished = []
        for n in range(4):  # each read starts, then its request is cancelled
            task = asyncio.create_task(generate_once(engine, request(n)))
            await asyncio.sleep(0.05)
            task.cancel()
            unfinished.append(engine.num_unfinished())
        text = (await generate_once(engine, request(9))).text
        while engine.num_unfinished():
            await asyncio.sleep(0.05)
        return reader, unfinished, text

    reader, unfinished, text = asyncio.run(go())
    assert reader.most == 1  # the turn stayed with the running read
    assert unfinished[0] == 1  # a cancelled request's read still counts while it runs
    assert text == "Bounded reading\n"


@pytest.mark.parametrize(("backend", "readers"), [("onnxruntime", 1), ("openvino", 2)])
def test_pages_at_once_read_in_parallel_each_openvino_read_on_its_own_reader(
    backend: Any, readers: int
) -> None:
    # OpenVINO's reader holds one infer request, so two pages at once need two readers;
    # onnxruntime's sessions are shared safely.
    ((image, _),) = render([text_page(["Parallel reading"])])
    page = PageImage(np.asarray(image))

    async def go() -> tuple[list[CountingReader], list[str]]:
        engine = RapidOCREngine(RapidOCRConfig(pages_at_once=2, backend=backend))
        await engine.start()
        wrapped = wrap_readers(engine, seconds=0.3)
        done = await asyncio.gather(*(
            generate_once(engine, GenerateRequest(f"r{n}", build_prompt(Task.FREE), page,
                                                  task=Task.FREE))
            for n in range(4)
        ))  # fmt: skip
        return wrapped, [generation.text for generation in done]

    wrapped, texts = asyncio.run(go())
    assert len(wrapped) == readers
    assert texts == ["Parallel reading\n"] * 4
    assert sum(reader.calls for reader in wrapped) == 4
    assert max(reader.most for reader in wrapped) == (2 if readers == 1 else 1)
