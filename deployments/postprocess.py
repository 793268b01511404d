"""Postprocess deployment (CPU): grounding, markdown, figure crops, annotated pages."""

from __future__ import annotations

import asyncio

from ray import serve

from deployments.page_data import StoredPage, page_data_sync
from deployments.telemetry import setup_replica
from serve_app.config import PostprocessConfig
from serve_app.core.document import PageResult
from serve_app.core.gate import PriorityGate
from serve_app.documents.messages import PageTask
from serve_app.documents.stages import Postprocessor


@serve.deployment
class PostprocessDeployment:
    def __init__(self, config: PostprocessConfig) -> None:
        setup_replica("postprocess")
        self._post = Postprocessor(config)
        self._turns = PriorityGate(config.pages_at_once)

    async def page(self, page: StoredPage, text: str, task: PageTask) -> PageResult:
        """The page's result; at most ``pages_at_once`` at a time, requests' pages first."""
        async with self._turns.turn(task.batch):
            return await asyncio.to_thread(self._page, page, text, task)

    def _page(self, page: StoredPage, text: str, task: PageTask) -> PageResult:
        pixels = page_data_sync(page.pixels) if page.pixels is not None else None
        return self._post.page(page.header, pixels, text, task)
