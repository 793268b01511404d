"""The service's own stages as Ray Data stages: :class:`Prepare` (CPU preprocessing),
:class:`Recognize` (an engine per actor: vLLM, rapidocr or the fake, through the same
:class:`~serve_app.documents.stages.Recognizer` as the engine deployment) and
:class:`Finish` (postprocessing into the page JSON ``/v1/ocr`` answers). A row that failed
in one stage carries its error through the rest and is written as that page's error."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from batch.plan import Row, error_json
from serve_app.config import EngineConfig, PostprocessConfig, PreprocessConfig
from serve_app.core.document import PageFailure
from serve_app.documents.messages import LocalPage, OCROptions, PageReport, PageTask
from serve_app.documents.results import page_json
from serve_app.documents.stages import Postprocessor, Preprocessor, Recognizer
from serve_app.engine import make_engine
from serve_app.engine.recognize import PageGeneration


def page_task(row: Row, options: OCROptions) -> PageTask:
    # By the document's location: a corpus may hold the same bytes under several names.
    document = hashlib.sha256(str(row["uri"]).encode()).hexdigest()[:12]
    return PageTask(f"batch-{document}", int(row["index"]), row["kind"], options)


class Prepare:
    """Render or decode a page and make what the engine reads (a few documents' bytes kept,
    since a document's pages mostly arrive together)."""

    def __init__(self, config: PreprocessConfig, options: OCROptions, keep: int = 4) -> None:
        self._pre, self._options, self._keep = Preprocessor(config), options, keep
        self._documents: OrderedDict[str, bytes] = OrderedDict()

    def __call__(self, row: Row) -> Row:
        row = row | {"prepared": b"", "generation": b"", "preprocess_s": 0.0, "engine_s": 0.0}
        if row["error"]:
            return row
        try:
            page = self._pre.prepare(self._bytes(row["uri"]), page_task(row, self._options))
        except Exception as exc:  # noqa: BLE001 - the page's error, in place
            return row | {"error": error_json(exc)}
        return row | {"prepared": pickle.dumps(page), "preprocess_s": page.header.seconds}

    def _bytes(self, uri: str) -> bytes:
        from batch.inputs import read_bytes

        if uri not in self._documents:
            self._documents[uri] = read_bytes(uri)
            while len(self._documents) > self._keep:
                self._documents.popitem(last=False)
        self._documents.move_to_end(uri)
        return self._documents[uri]


class Recognize:
    """One engine per actor, started on its own event loop; a batch's pages go to it at
    once, so an engine that batches (vLLM) sees them together."""

    def __init__(self, config: EngineConfig, options: OCROptions) -> None:
        self._options = options
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="engine").start()
        engine = make_engine(config)
        self._run(asyncio.wait_for(engine.start(), timeout=config.start_timeout_s))
        self._recognizer = Recognizer(engine, config)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        done = self._run(self._all(rows))
        return {key: [row[key] for row in done] for key in batch}

    async def _all(self, rows: list[Row]) -> list[Row]:
        return list(await asyncio.gather(*(self._one(row) for row in rows)))

    async def _one(self, row: Row) -> Row:
        if row["error"]:
            return row
        page: LocalPage = pickle.loads(row["prepared"])
        start = time.perf_counter()
        try:
            generation = await self._recognizer.recognize(page.image, page_task(row, self._options))
        except Exception as exc:  # noqa: BLE001 - the page's error, in place
            return row | {"error": error_json(exc)}
        return row | {"generation": pickle.dumps(generation),
                      "engine_s": time.perf_counter() - start}  # fmt: skip


KEPT = ("uri", "name", "doc_hash", "kind", "page_count", "page", "pages_selected")


class Finish:
    """Postprocess a page into the page JSON ``/v1/ocr`` answers (or its error)."""

    def __init__(self, config: PostprocessConfig, options: OCROptions) -> None:
        self._post, self._options = Postprocessor(config), options

    def __call__(self, row: Row) -> Row:
        report = self._report(row)
        out = {key: row[key] for key in KEPT}
        page = page_json(report, self._options) if report else _document_error(row)
        status = "failed" if "error" in page else "ok"
        return out | {"status": status, "page_json": json.dumps(page)}

    def _report(self, row: Row) -> PageReport | None:
        if int(row["page"]) == 0:
            return None  # the document itself failed
        timings = {"preprocess_s": float(row["preprocess_s"]), "engine_s": float(row["engine_s"])}
        if not row["error"]:
            page: LocalPage = pickle.loads(row["prepared"])
            generation: PageGeneration = pickle.loads(row["generation"])
            task = page_task(row, self._options)
            start = time.perf_counter()
            try:
                result = self._post.page(page.header, page.pixels, generation.text, task)
            except Exception as exc:  # noqa: BLE001 - the page's error, in place
                row = row | {"error": error_json(exc)}
            else:
                timings["postprocess_s"] = time.perf_counter() - start
                return PageReport(int(row["page"]), result, generation=generation,
                                  mode=page.header.mode, grid=page.header.grid,
                                  timings=timings)  # fmt: skip
        error = json.loads(row["error"])
        failure = PageFailure(int(row["page"]), error["code"], error["message"])
        return PageReport(int(row["page"]), failure, timings=timings)


def _document_error(row: Row) -> dict[str, Any]:
    return {"object": "ocr.page", "index": -1, "page": 0, "error": json.loads(row["error"])}
