"""The CPU OCR engine's bound on pages at once holds when requests are cancelled: a thread
cannot be stopped, so a cancelled read keeps its turn, and counts, until it ends."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np

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


def test_cancelled_requests_never_run_more_reads_than_pages_at_once() -> None:
    ((image, _),) = render([text_page(["Bounded reading"])])
    page = PageImage(np.asarray(image))

    async def go() -> tuple[CountingReader, list[int], str]:
        engine = RapidOCREngine(RapidOCRConfig(pages_at_once=1))
        await engine.start()
        reader = engine._ocr = CountingReader(engine._ocr, seconds=0.4)

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
