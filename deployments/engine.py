"""Engine deployment: one engine (vLLM AsyncLLM, rapidocr or the fake) per replica; one such
deployment per served model (``EngineDeployment-<model>``)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import ray
from ray import serve

from deployments.page_data import StoredPage, page_data
from deployments.telemetry import serve_log_file_kept, setup_replica
from serve_app.config import EngineConfig
from serve_app.documents.messages import PageTask
from serve_app.documents.stages import Recognizer
from serve_app.engine import make_engine
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import EngineCrashedError

logger = logging.getLogger("ray.serve")


# A replica whose engine died fails its health check: checked often, so it leaves routing soon.
@serve.deployment(health_check_period_s=2.0)
class EngineDeployment:
    async def __init__(self, model: str, config: EngineConfig) -> None:
        setup_replica("engine")
        start = time.perf_counter()
        with serve_log_file_kept():  # importing vLLM reconfigures logging
            engine = make_engine(config, serve.get_replica_context().rank.rank)
            await asyncio.wait_for(engine.start(), timeout=config.start_timeout_s)
        logger.info("Model %s: %s engine ready in %.1f s (reads %s)", model, config.kind,
                    time.perf_counter() - start, config.reads)  # fmt: skip
        self._recognizer = Recognizer(engine, config)
        # The replica's name is its actor id, as the ingress names a replica whose process died.
        self._replica_id = ray.get_runtime_context().get_actor_id()

    async def recognize(self, page: StoredPage, task: PageTask) -> PageGeneration:
        image = await page_data(page.image)
        try:
            return await self._recognizer.recognize(image, task)
        except EngineCrashedError as crash:
            # Name this replica: the ingress counts the distinct replicas a page crashed.
            crash.replica = self._replica_id
            raise

    def check_health(self) -> None:
        """A replica whose engine died fails here, and Serve replaces it."""
        if not self._recognizer.engine.is_ready():
            raise RuntimeError("the engine is not ready (its process may have died)")

    def ready(self) -> bool:
        return self._recognizer.engine.is_ready()

    def served_requests(self) -> list[str]:
        """The fake engine's request ids so far, one per call (tests count the engine calls a
        job made across nodes); empty for a real engine."""
        return list(getattr(self._recognizer.engine, "served", ()))

    def num_unfinished(self) -> int:
        """Requests the engine is still working on (aborted ones leave promptly)."""
        return self._recognizer.engine.num_unfinished()

    def counters(self) -> dict[str, int]:
        """Work done by this replica since it started, and its process id."""
        return {"pages_recognized": self._recognizer.pages_recognized, "pid": os.getpid()}
