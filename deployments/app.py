"""The application builder: ``serve run serve_config.yaml`` calls :func:`build_app`.

``args:`` in ``serve_config.yaml`` are validated against :class:`serve_app.config.AppConfig`
(unknown keys rejected). Scheduling (replicas, CPUs, GPUs, autoscaling) stays in the
``deployments:`` section of that file.
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation at runtime
# to validate `args:` against AppConfig.
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from deployments.engine import EngineDeployment
from deployments.ingress import OCRIngress
from deployments.postprocess import PostprocessDeployment
from deployments.preprocess import PreprocessDeployment
from serve_app.config import AppConfig

GRAPH: tuple[Any, ...] = (OCRIngress, PreprocessDeployment, EngineDeployment, PostprocessDeployment)
DEPLOYMENT_NAMES = tuple(deployment.name for deployment in GRAPH)


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    """Wire ingress -> preprocess -> engine -> postprocess from one typed config.

    Raises:
        pydantic.ValidationError: For unknown or invalid keys in ``args``.
    """
    if not isinstance(args, AppConfig):
        args = AppConfig.model_validate(args)
    return build_graph(args)


def build_graph(
    args: AppConfig, options: Mapping[str, Mapping[str, Any]] | None = None
) -> Application:
    """The graph of :func:`build_app`, with ``Deployment.options(...)`` per deployment name
    (``{"EngineDeployment": {"num_replicas": 2}}``): what ``deployments:`` in
    ``serve_config.yaml`` sets, for tests and benchmarks that start the graph from Python.
    """
    options = options or {}
    if unknown := set(options) - set(DEPLOYMENT_NAMES):
        raise ValueError(
            f"no deployment named {sorted(unknown)}; the graph has {sorted(DEPLOYMENT_NAMES)}"
        )

    def configured(deployment: Any) -> Any:
        chosen = options.get(deployment.name)
        return deployment.options(**chosen) if chosen else deployment

    preprocess = configured(PreprocessDeployment).bind(args.preprocess)
    engine = configured(EngineDeployment).bind(args.engine)
    postprocess = configured(PostprocessDeployment).bind(args.postprocess)
    ingress = configured(OCRIngress)
    return ingress.bind(args, preprocess, engine, postprocess)
