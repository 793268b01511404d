"""Jobs with the cluster store (Redis from the distribution, blobs on a shared directory) and
two ingress replicas: a job submitted through one replica is followed and fetched through the
other, and a redeploy of the application mid-job loses no page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import SERVE_LOGS, start_app, stop_apps
from tests.serve.jobs_helpers import PAGES, every_page_once, submit, wait_for

pytestmark = pytest.mark.serve

APP = "ocr-jobs-cluster"
OPTIONS = {"OCRIngress": {"num_replicas": 2}}


def app_config(redis_url: str, blobs: Path, page_s: float) -> AppConfig:
    return AppConfig.model_validate(
        {
            "models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": page_s}}},
            "jobs": {"enabled": True, "store": "redis", "redis_url": redis_url, "blob_url": str(blobs),
                     "lease_s": 4.0, "poll_interval_s": 0.2, "pages_in_flight": 4},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blobs")


@pytest.fixture(scope="module")
def client(redis_url: str, blobs: Path) -> Iterator[httpx.Client]:

    url = start_app(app_config(redis_url, blobs, 0.3), name=APP, options=OPTIONS)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http
    stop_apps()


def replicas_that_served(job_id: str) -> set[str]:
    """The ingress replicas whose access log has a request of ``job_id``."""
    return {
        log.name
        for log in SERVE_LOGS.glob(f"replica_{APP}_OCRIngress_*.log")
        if f"job_id={job_id} " in log.read_text()
    }


def test_a_job_submitted_through_one_ingress_replica_is_followed_through_the_other(
    client: httpx.Client, blobs: Path
) -> None:
    job_id = submit(client, pages=6)
    for _ in range(20):  # Serve spreads requests over both replicas
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    every_page_once(client, job_id, pages=6)
    assert len(replicas_that_served(job_id)) == 2
    assert (blobs / "jobs" / job_id / "upload").is_file()  # the document is where all nodes see it


def test_a_redeploy_mid_job_loses_no_page(
    client: httpx.Client, redis_url: str, blobs: Path
) -> None:
    from ray import serve

    from deployments.app import build_graph

    job_id = submit(client)
    wait_for(client, job_id, PAGES // 3)
    # New arguments replace every replica; the runner gives its job back as it stops.
    graph = build_graph(app_config(redis_url, blobs, 0.25), OPTIONS)
    serve.run(graph, name=APP, route_prefix="/")
    every_page_once(client, job_id)
    body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    assert body["started_at"] < body["finished_at"]
