"""Jobs in the real Serve graph (fake engine): a 40-page job whose runner replica is killed
halfway, and one whose application is redeployed halfway, each finish with every page
present once; no page stored before the kill reaches an engine again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app
from serve_app.testing.synthetic import text_pdf

pytestmark = pytest.mark.serve

APP = "ocr-jobs"
PAGES = 40
LEASE_S = 4.0


def app_config(store: Path, page_s: float) -> AppConfig:
    return AppConfig.model_validate(
        {
            "models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": page_s}}},
            "jobs": {"store_path": str(store), "lease_s": LEASE_S, "poll_interval_s": 0.2,
                     "pages_in_flight": 4},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs") / "jobs.db"


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[httpx.Client]:
    from ray import serve

    url = start_app(app_config(store, 0.3), name=APP)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http
    serve.shutdown()


def call(deployment: str, method: str) -> Any:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=APP)
    return getattr(handle, method).remote().result(timeout_s=60)


def engine_calls() -> int:
    return int(call("EngineDeployment-deepseek-ocr", "counters")["pages_recognized"])


def submit(client: httpx.Client) -> str:
    answer = client.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(PAGES),
                         headers={"content-type": "application/pdf"})  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_for(client: httpx.Client, job_id: str, done: int) -> dict[str, Any]:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 2}).json()
        if job["pages"]["done"] >= done or job["status"] not in ("queued", "running"):
            return dict(job)
    raise AssertionError(f"job {job_id}: fewer than {done} pages after 120 s")


def every_page_once(client: httpx.Client, job_id: str) -> None:
    job = wait_for(client, job_id, PAGES + 1)  # i.e. until it ends
    assert job["status"] == "succeeded", job
    assert job["pages"] == {"total": PAGES, "done": PAGES, "failed": 0}
    pages = client.get(f"/v1/jobs/{job_id}/result").json()["pages"]
    assert [page["page"] for page in pages] == list(range(1, PAGES + 1))
    events = [line for line in client.get(f"/v1/jobs/{job_id}/events").text.splitlines() if line]
    assert len(events) == PAGES + 1  # each page once, then the job


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


def test_a_redeploy_mid_job_loses_no_page(client: httpx.Client, store: Path) -> None:
    from ray import serve

    from deployments.app import build_graph

    job_id = submit(client)
    wait_for(client, job_id, PAGES // 3)
    # New arguments replace every replica; the runner gives its job back as it stops.
    serve.run(build_graph(app_config(store, 0.25)), name=APP, route_prefix="/")
    every_page_once(client, job_id)
