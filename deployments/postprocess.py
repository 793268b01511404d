"""Postprocess deployment (CPU): grounding, markdown, figure crops, annotated pages."""

from __future__ import annotations

from typing import cast

import numpy as np
from ray import serve

from deployments.page_data import page_data_sync
from deployments.telemetry import setup_replica
from serve_app.config import PostprocessConfig
from serve_app.core.document import PageResult
from serve_app.core.tiling import PageImage
from serve_app.messages import PageTask, PreparedPage
from serve_app.stages import Postprocessor


@serve.deployment
class PostprocessDeployment:
    def __init__(self, config: PostprocessConfig) -> None:
        setup_replica("postprocess")
        self._post = Postprocessor(config)

    def page(self, page: PreparedPage, text: str, task: PageTask) -> PageResult:
        pixels = page_data_sync(page.pixels)
        if isinstance(pixels, PageImage):  # a page reader's image, shared with the engine
            pixels = pixels.pixels
        return self._post.page(page.header, cast("np.ndarray | None", pixels), text, task)
