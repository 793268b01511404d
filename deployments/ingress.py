"""HTTP ingress on Ray Serve: the API of :mod:`serve_app.api` running documents over
deployment handles."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from deployments.handles import HandleStages
from deployments.jobs import alive_nodes
from deployments.telemetry import RayRecorder, setup_replica
from serve_app.api.admission import Admission
from serve_app.api.app import ASGIApp, create_api
from serve_app.api.auth import configured_keys
from serve_app.api.jobs import JobsService
from serve_app.api.service import OCRService
from serve_app.config import AppConfig
from serve_app.documents.run import DocumentRunner
from serve_app.errors import NotReadyError
from serve_app.jobs.configured import open_store
from serve_app.telemetry.metrics import ServiceMetrics

logger = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class OCRIngress:
    def __init__(
        self,
        config: AppConfig,
        preprocess: DeploymentHandle,
        engines: dict[str, DeploymentHandle],
        postprocess: DeploymentHandle,
        job_runner: DeploymentHandle | None = None,
    ) -> None:
        """``job_runner``: the job runner deployment, when jobs are on."""
        setup_replica("ingress")
        ingress = config.ingress
        stages = HandleStages(preprocess, engines, postprocess, ingress.max_pages)
        self._app_name = serve.get_replica_context().app_name
        metrics = ServiceMetrics(RayRecorder(self._app_name))
        runner = DocumentRunner.from_config(ingress, stages, metrics)
        self._service = OCRService(config, runner)
        self._admission = Admission(ingress.max_working_requests, ingress.max_waiting_requests)
        self._keys = configured_keys(ingress)  # raises when required and there are none
        if self._keys.enabled:
            logger.info("API keys: required on every route but /health and /ready")
        else:
            logger.warning("API keys: none configured (ingress.api_keys_required is off): "
                           "every route is open to whoever reaches this port")  # fmt: skip
        logger.info("Models: %s (default %s)", ", ".join(config.models), config.default_model_name)
        self._jobs = None
        if job_runner is not None:
            store = open_store(config.jobs, nodes=alive_nodes())  # raises for unreachable blobs
            self._jobs = JobsService(config, store, wake=lambda: _wake(job_runner))
            logger.info("Jobs: on, store %s", config.jobs.describe_store())
        self._engines = engines
        # serve.status() blocks on the controller: one thread, so stuck probes cannot pile up.
        self._status_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-status")
        self._was_running = False

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return create_api(self._service, self._admission, self._ready, self._keys, self._jobs)

    async def _ready(self) -> None:
        """Every engine replica the application was deployed with has loaded.

        Serve reports the application RUNNING once each deployment has its target replicas,
        and an engine replica counts only when its constructor (the engine start) finished;
        so this is the application's status, plus a replica of every model's engine
        answering within 2 s.
        Once this replica has seen the application RUNNING it stays ready while an engine
        answers: replicas that autoscaling adds, or an in-place config update rolling the
        engines, do not take it out of a load balancer.

        Raises:
            NotReadyError: Until then (503 with Retry-After).
        """
        if not self._was_running:
            if not await self._application_running():
                raise NotReadyError("the application is still deploying (engines loading)")
            self._was_running = True
        asking = {name: engine.ready.remote() for name, engine in self._engines.items()}
        loading = []
        for name, answer in asking.items():
            try:
                if await asyncio.wait_for(answer, timeout=2.0):
                    continue
            except TimeoutError:
                pass
            loading.append(name)
        if loading:
            raise NotReadyError(f"the engine of {', '.join(loading)} is still loading")

    async def _application_running(self) -> bool:
        """Serve's status of this ingress's application is RUNNING (False if unknown in 2 s)."""
        loop = asyncio.get_running_loop()
        try:
            status = await asyncio.wait_for(
                loop.run_in_executor(self._status_pool, serve.status), timeout=2.0
            )
        except (TimeoutError, ray.exceptions.RayError):
            return False
        app = status.applications.get(self._app_name)
        return app is not None and app.status == ApplicationStatus.RUNNING


def _wake(runner: DeploymentHandle) -> None:
    """Tell a runner replica a job was queued (without waiting: it polls anyway)."""
    try:
        runner.wake.remote()
    except Exception:  # the runner is being replaced: it finds the job when it polls
        logger.warning("could not wake the job runner", exc_info=True)
