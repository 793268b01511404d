"""Preprocess deployment (CPU): decode, render PDF pages, tile."""

from __future__ import annotations

import ray
from ray import serve

from serve_app.config import PreprocessConfig
from serve_app.core.modes import ModelFamily
from serve_app.pipeline import DocumentInfo, OCROptions, PreparedPage
from serve_app.stages import Preprocessor


@serve.deployment
class PreprocessDeployment:
    def __init__(self, config: PreprocessConfig, family: ModelFamily) -> None:
        self._pre = Preprocessor(config, family)

    def inspect(self, source: object, options: OCROptions, max_pages: int) -> DocumentInfo:
        return self._pre.inspect(_bytes(source), options, max_pages)

    def prepare(self, source: object, index: int, number: int, options: OCROptions) -> PreparedPage:
        return self._pre.prepare(_bytes(source), index, number, options)


def _bytes(source: object) -> bytes:
    """The upload: the ingress stores it once in the object store and passes the reference."""
    data = ray.get(source) if isinstance(source, ray.ObjectRef) else source
    if not isinstance(data, bytes):
        raise TypeError(f"expected the upload as bytes, got {type(data).__name__}")
    return data
