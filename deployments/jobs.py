"""The job runner deployment: runs stored jobs through the same preprocess, engine and
postprocess deployments as ``/v1/ocr``, outside any HTTP request."""

from __future__ import annotations

import asyncio
import logging

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.handles import HandleStages
from deployments.telemetry import RayRecorder, setup_replica
from serve_app.api.auth import key_secrets
from serve_app.config import AppConfig
from serve_app.documents.door import Door
from serve_app.documents.run import DocumentRunner
from serve_app.jobs.configured import open_store
from serve_app.jobs.runner import JobLoop, JobRunner
from serve_app.jobs.webhooks import WebhookSender, webhook_settings
from serve_app.telemetry.metrics import ServiceMetrics

logger = logging.getLogger("ray.serve")


def alive_nodes() -> int:
    """How many nodes the Ray cluster has now (a local blob directory needs exactly one)."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))  # type: ignore[no-untyped-call]


# Its own work is light (JSON, the store): the stages do the pages' work.
@serve.deployment(health_check_period_s=5.0, ray_actor_options={"num_cpus": 0.1})
class JobRunnerDeployment:
    """Leases queued jobs from the store and runs up to ``jobs.jobs_at_once`` of them, each
    with at most ``jobs.pages_in_flight`` pages in the stages. A replica that dies leaves its
    jobs' leases to lapse; one stopped by a redeploy gives them back at once. Either way
    another replica resumes each at its first page not stored."""

    def __init__(
        self,
        config: AppConfig,
        preprocess: DeploymentHandle,
        engines: dict[str, DeploymentHandle],
        postprocess: DeploymentHandle,
    ) -> None:
        setup_replica("jobs")
        jobs = config.jobs
        stages = HandleStages(preprocess, engines, postprocess, jobs.max_pages)
        metrics = ServiceMetrics(RayRecorder(serve.get_replica_context().app_name))
        window = config.ingress.model_copy(update={"pages_in_flight": jobs.pages_in_flight})
        documents = DocumentRunner.from_config(window, stages, metrics, batch=True)
        worker = f"runner-{ray.get_runtime_context().get_actor_id()}"
        store = open_store(jobs, nodes=alive_nodes())  # raises for blobs it cannot reach
        runner = JobRunner(store, documents, Door(config), worker, jobs.lease_s,
                           check_s=jobs.poll_interval_s, max_attempts=jobs.max_attempts,
                           store_retry_s=jobs.store_retry_s)  # fmt: skip
        self._loop = JobLoop(runner, jobs.jobs_at_once, jobs.poll_interval_s, jobs.result_ttl_s,
                             busy_backoff_s=jobs.busy_backoff_s,
                             max_busy_backoff_s=jobs.max_busy_backoff_s)  # fmt: skip
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop.run())
        self._webhooks: asyncio.Task[None] | None = None
        # Signed with each API key's own secrets; raises for a malformed or short one.
        settings = webhook_settings(config, key_secrets(config.ingress))
        if settings.signers:
            sender = WebhookSender(store, settings, on_outcome=metrics.webhook)
            self._webhooks = loop.create_task(sender.run(jobs.poll_interval_s))
            logger.info("Webhooks: on, %d calls at once, %d to one receiver",
                        settings.concurrency, settings.per_receiver)  # fmt: skip
        else:
            logger.info("Webhooks: off (no API key entry has a secret, and "
                        f"${jobs.webhooks.secret_env} is unset)")  # fmt: skip
        logger.info("Job runner %s: store %s, %d jobs at once, %d pages in flight each, "
                    "lease %.0f s", worker, jobs.describe_store(), jobs.jobs_at_once,
                    jobs.pages_in_flight, jobs.lease_s)  # fmt: skip

    def wake(self) -> None:
        """A job was submitted: look for it now rather than at the next poll."""
        self._loop.wake()

    def running(self) -> list[str]:
        """The ids of the jobs this replica is running."""
        return sorted(self._loop.running)

    def actor_name(self) -> str:
        """This replica's Ray actor (namespace ``serve``): what an operator or a test kills."""
        return serve.get_replica_context().replica_id.to_full_id_str()

    def check_health(self) -> None:
        for task in (self._task, self._webhooks):
            if task is not None and task.done():
                error = None if task.cancelled() else task.exception()
                raise RuntimeError(f"a job runner loop stopped ({error!r})")

    async def __del__(self) -> None:
        """Serve stops the replica (a redeploy, scaling down): give its jobs back."""
        if self._webhooks is not None:
            self._webhooks.cancel()
        await self._loop.stop(self._task)
