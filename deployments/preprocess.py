"""Preprocess deployment (CPU): decode, render PDF pages, tile."""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray import ObjectRef, serve

from deployments.page_data import StoredPage
from deployments.telemetry import setup_replica
from serve_app.config import PreprocessConfig
from serve_app.core.gate import PriorityGate
from serve_app.core.pdf import load_mupdf
from serve_app.core.tiling import PageImage
from serve_app.documents.messages import DocumentInfo, OCROptions, PageTask, PreparedPage
from serve_app.documents.stages import Preprocessor


@serve.deployment
class PreprocessDeployment:
    def __init__(self, config: PreprocessConfig) -> None:
        setup_replica("preprocess")
        load_mupdf()  # now, not on the first PDF's clock
        self._pre = Preprocessor(config)
        self._turns = PriorityGate(config.pages_at_once)

    def inspect(
        self, source: ObjectRef[bytes] | bytes, options: OCROptions, max_pages: int
    ) -> DocumentInfo:
        return self._pre.inspect(_bytes(source), options, max_pages)

    async def prepare(self, source: ObjectRef[bytes] | bytes, task: PageTask) -> StoredPage:
        """The page's header, with its views and pixels left in the object store: the engine
        and postprocess read them from there, the ingress never does. At most
        ``pages_at_once`` pages at a time, requests' pages first."""
        async with self._turns.turn(task.batch):
            return await asyncio.to_thread(self._prepare, source, task)

    def _prepare(self, source: ObjectRef[bytes] | bytes, task: PageTask) -> StoredPage:
        page = self._pre.prepare(_bytes(source), task)
        if isinstance(page.image, PageImage) and page.pixels is page.image:
            # A page reader's image: one copy is both what the engine reads and the pixels.
            shared: ObjectRef[Any] = ray.put(page.image)
            return PreparedPage(page.header, shared, shared)
        pixels = ray.put(page.pixels) if page.pixels is not None else None
        return PreparedPage(page.header, ray.put(page.image), pixels)

    def counters(self) -> dict[str, int]:
        """Work done by this replica since it started."""
        return {
            "documents_opened": self._pre.documents_opened,
            "pages_prepared": self._pre.pages_prepared,
        }


def _bytes(source: ObjectRef[bytes] | bytes) -> bytes:
    """The upload: the ingress stores it once in the object store and passes the reference
    (or its bytes, where Ray resolved it on the way)."""
    data = ray.get(source) if isinstance(source, ObjectRef) else source
    if not isinstance(data, bytes):
        raise TypeError(f"expected the upload as bytes, got {type(data).__name__}")
    return data
