"""The application builder: ``serve run serve_config.yaml`` calls :func:`build_app`.

``args:`` in ``serve_config.yaml`` are validated against :class:`serve_app.config.AppConfig`
(unknown keys rejected). Scheduling (replicas, CPUs, GPUs, autoscaling) stays in the
``deployments:`` section of that file.
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation at runtime
# to validate `args:` against AppConfig.
from typing import Any

from ray.serve import Application

from deployments.engine import EngineDeployment
from deployments.ingress import OCRIngress
from deployments.postprocess import PostprocessDeployment
from deployments.preprocess import PreprocessDeployment
from serve_app.config import AppConfig


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    """Wire ingress -> preprocess -> engine -> postprocess from one typed config.

    Raises:
        pydantic.ValidationError: For unknown or invalid keys in ``args``.
    """
    if not isinstance(args, AppConfig):
        args = AppConfig.model_validate(args)
    preprocess = PreprocessDeployment.bind(args.preprocess, args.engine.family)
    engine = EngineDeployment.bind(args.engine)
    postprocess = PostprocessDeployment.bind(args.postprocess)
    return OCRIngress.bind(args.ingress, args.preprocess, preprocess, engine, postprocess)
