"""Postprocess deployment (CPU): grounding, markdown, figure crops, annotated pages."""

from __future__ import annotations

import numpy as np
from ray import serve

from serve_app.config import PostprocessConfig
from serve_app.core.document import PageResult
from serve_app.pipeline import OCROptions
from serve_app.stages import Postprocessor


@serve.deployment
class PostprocessDeployment:
    def __init__(self, config: PostprocessConfig) -> None:
        self._post = Postprocessor(config)

    def page(
        self,
        number: int,
        size: tuple[int, int],
        pixels: np.ndarray | None,
        text: str,
        options: OCROptions,
    ) -> PageResult:
        return self._post.page(number, size, pixels, text, options)
