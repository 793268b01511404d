"""Preprocess deployment (CPU): decode, render PDF pages, tile."""

from __future__ import annotations

import ray
from ray import serve

from deployments.telemetry import setup_replica
from serve_app.config import PreprocessConfig
from serve_app.core.tiling import PageImage
from serve_app.messages import DocumentInfo, OCROptions, PageTask, PreparedPage
from serve_app.stages import Preprocessor


@serve.deployment
class PreprocessDeployment:
    def __init__(self, config: PreprocessConfig) -> None:
        setup_replica("preprocess")
        self._pre = Preprocessor(config)

    def inspect(self, source: object, options: OCROptions, max_pages: int) -> DocumentInfo:
        return self._pre.inspect(_bytes(source), options, max_pages)

    def prepare(self, source: object, task: PageTask) -> PreparedPage:
        """The page's header, with its views and pixels left in the object store: the engine
        and postprocess read them from there, the ingress never does."""
        header, image, pixels = self._pre.prepare(_bytes(source), task)
        image_ref = ray.put(image)
        if isinstance(image, PageImage) and pixels is image.pixels:
            return PreparedPage(header, image_ref, image_ref)  # one copy serves both readers
        return PreparedPage(header, image_ref, ray.put(pixels) if pixels is not None else None)

    def counters(self) -> dict[str, int]:
        """Work done by this replica since it started."""
        return {
            "documents_opened": self._pre.documents_opened,
            "pages_prepared": self._pre.pages_prepared,
        }


def _bytes(source: object) -> bytes:
    """The upload: the ingress stores it once in the object store and passes the reference."""
    data = ray.get(source) if isinstance(source, ray.ObjectRef) else source
    if not isinstance(data, bytes):
        raise TypeError(f"expected the upload as bytes, got {type(data).__name__}")
    return data
