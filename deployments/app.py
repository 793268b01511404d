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
from deployments.jobs import JobRunnerDeployment
from deployments.postprocess import PostprocessDeployment
from deployments.preprocess import PreprocessDeployment
from serve_app.config import AppConfig, engine_deployment_name


def deployment_names(args: AppConfig) -> tuple[str, ...]:
    """The graph's deployments: ingress, preprocess, one engine deployment per model,
    postprocess, and the job runner when jobs are on."""
    engines = tuple(engine_deployment_name(model) for model in args.models)
    runner = (JobRunnerDeployment.name,) if args.jobs.enabled else ()
    return (OCRIngress.name, PreprocessDeployment.name, *engines, PostprocessDeployment.name,
            *runner)  # fmt: skip


def build_app(args: AppConfig | dict[str, Any]) -> Application:
    """Wire ingress -> preprocess -> the engine of each model -> postprocess from one typed
    config; beside the ingress, the job runner over the same three.

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
    (``{"EngineDeployment-deepseek-ocr": {"num_replicas": 2}}``): what ``deployments:`` in
    ``serve_config.yaml`` sets, for tests and benchmarks that start the graph from Python.
    """
    options = options or {}
    names = deployment_names(args)
    if unknown := set(options) - set(names):
        raise ValueError(f"no deployment named {sorted(unknown)}; the graph has {sorted(names)}")

    def configured(deployment: Any) -> Any:
        chosen = options.get(deployment.name)
        return deployment.options(**chosen) if chosen else deployment

    preprocess = configured(PreprocessDeployment).bind(args.preprocess)
    engines = {
        model: configured(EngineDeployment.options(name=engine_deployment_name(model))).bind(
            model, engine
        )
        for model, engine in args.models.items()
    }
    postprocess = configured(PostprocessDeployment).bind(args.postprocess)
    runner = None
    if args.jobs.enabled:
        runner = configured(JobRunnerDeployment).bind(args, preprocess, engines, postprocess)
    ingress = configured(OCRIngress)
    return ingress.bind(args, preprocess, engines, postprocess, runner)
