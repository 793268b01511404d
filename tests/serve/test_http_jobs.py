"""Jobs in the real Serve graph with the embedded store (fake engine): a 40-page job whose
runner replica is killed halfway finishes with every page present once, and no page stored
before the kill reaches an engine again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps
from tests.serve.jobs_helpers import PAGES, every_page_once, submit, wait_for

pytestmark = pytest.mark.serve

APP = "ocr-jobs"
LEASE_S = 4.0


def app_config(store: Path, page_s: float) -> AppConfig:
    return AppConfig.model_validate(
        {
            "models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": page_s}}},
            "jobs": {"enabled": True, "store_path": str(store), "lease_s": LEASE_S, "poll_interval_s": 0.2,
                     "pages_in_flight": 4},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs") / "jobs.db"


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[httpx.Client]:

    url = start_app(app_config(store, 0.3), name=APP)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http
    stop_apps()


def call(deployment: str, method: str) -> Any:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=APP)
    return getattr(handle, method).remote().result(timeout_s=60)


def engine_calls() -> int:
    return int(call("EngineDeployment-deepseek-ocr", "counters")["pages_recognized"])


def test_a_job_whose_runner_is_killed_halfway_loses_and_repeats_no_page(
    client: httpx.Client,
) -> None:
    import ray

    job_id = submit(client)
    wait_for(client, job_id, PAGES // 3)
    runner = ray.get_actor(call("JobRunnerDeployment", "actor_name"), namespace="serve")
    ray.kill(runner, no_restart=True)
    # Nobody holds the job until its lease lapses: the stored pages and the engine's count
    # settle (pages the dead runner had in flight finish or are dropped).
    time.sleep(LEASE_S / 2)
    stored = client.get(f"/v1/jobs/{job_id}").json()["pages"]["done"]
    calls_before = engine_calls()
    assert 0 < stored < PAGES

    every_page_once(client, job_id)
    # Only the pages not stored at the kill reached the engine afterwards, each once.
    assert engine_calls() - calls_before == PAGES - stored
