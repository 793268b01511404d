"""Jobs on a Ray cluster whose nodes share no disk: a head and two worker nodes, each worker in
its own mount namespace with private tmpfs over /tmp, /dev/shm and ~/.cache
(:class:`~serve_app.testing.cluster.LocalCluster`), a real S3 server (SeaweedFS) for the blobs
and a real ``redis-server`` with its append-only file on.

Each worker node runs one ingress and one job runner replica; preprocess, the (fake) engine
and postprocess run on the head, which HTTP reaches through the head's proxy. One cluster for
the module; the tests run in order: a store restarted, the bucket stopped, the application
redeployed, and last a worker node killed."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.jobs.blobs import open_blobs
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.testing.cluster import HEAD, WORKER_RESOURCE, LocalCluster, namespaces_available
from serve_app.testing.redis_aof import RedisServer, redis_aof_server
from serve_app.testing.seaweed import SeaweedS3, s3_server
from serve_app.testing.serve import deployed_options, start_app
from serve_app.testing.synthetic import text_pdf

pytestmark = pytest.mark.serve

APP = "ocr-nodes"
PAGES = 40
ENGINE = "EngineDeployment-deepseek-ocr"
DOCUMENT = text_pdf(PAGES)


def app_config(redis_url: str, blob_url: str, page_s: float = 0.25) -> AppConfig:
    return AppConfig.model_validate(
        {
            "models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": page_s}}},
            "jobs": {"enabled": True, "store": "redis", "redis_url": redis_url,
                     "blob_url": blob_url, "lease_s": 3.0, "poll_interval_s": 0.5,
                     "pages_in_flight": 4, "jobs_at_once": 1, "store_retry_s": 60.0,
                     "busy_backoff_s": 0.2},
        }
    )  # fmt: skip


def placed(config: AppConfig) -> dict[str, dict[str, Any]]:
    """The deployments as ``serve_config.yaml`` sets them, placed: one ingress and one runner
    on each worker node, the page stages on the head (no CPUs asked: 2 cores for 3 nodes)."""
    options = deployed_options(config, {"OCRIngress": 2, "JobRunnerDeployment": 2})
    for name, chosen in options.items():
        on_workers = name in ("OCRIngress", "JobRunnerDeployment")
        actor = dict(chosen.get("ray_actor_options") or {})
        actor.update(num_cpus=0, resources={WORKER_RESOURCE if on_workers else HEAD: 0.01})
        chosen["ray_actor_options"] = actor
        if on_workers:
            chosen["max_replicas_per_node"] = 1
    return options


@dataclass
class Cluster:
    nodes: LocalCluster
    s3: SeaweedS3
    redis: RedisServer
    store: RedisJobStore  # the store as the replicas see it, read from the test
    http: httpx.Client

    def replica_logs(self, node: str, deployment: str) -> dict[str, str]:
        """The node's replica logs of ``deployment`` (read through its private /tmp)."""
        folder = self.nodes.node_path(node, self.nodes.serve_log_dir)
        return {log.name: log.read_text() for log in folder.glob(f"replica_{APP}_{deployment}_*")}

    def runner_node(self, worker: str) -> str:
        """The worker node whose runner replica is ``worker`` (its name in the job's lease)."""
        for node in filter(self.nodes.alive, self.nodes.worker_names):
            if any(f"Job runner {worker}:" in text
                   for text in self.replica_logs(node, "JobRunnerDeployment").values()):  # fmt: skip
                return node
        raise AssertionError(f"no worker node's runner is {worker}")

    def engine_calls(self, job_id: str) -> Counter[int]:
        """How many times the engine was asked for each page of the job."""
        import ray

        # Asked by a task on the head: a handle made in this process after it had joined
        # another Ray cluster earlier in the run never resolves (Ray 2.60).
        ask = ray.remote(num_cpus=0, resources={HEAD: 0.01})(_ask_engine)
        served: list[str] = ray.get(ask.remote(), timeout=60)
        return Counter(int(rid.rpartition("-p")[2]) for rid in served if rid.startswith(job_id))


def _ask_engine() -> list[str]:
    from ray import serve

    handle = serve.get_deployment_handle(ENGINE, APP)
    served: list[str] = handle.served_requests.remote().result(timeout_s=30)
    return served


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not namespaces_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs the multi-node tests: they need unshare -m and tmpfs (root)")
        pytest.skip("needs mount namespaces (unshare -m as root)")
    with (
        s3_server() as s3,
        redis_aof_server() as redis,
        LocalCluster(env=s3.env()) as nodes,
    ):
        nodes.start_serve()
        config = app_config(redis.url, s3.url)
        url = start_app(config, name=APP, options=placed(config))
        blobs = open_blobs(s3.url, env=s3.env())
        store = RedisJobStore(redis.url, blobs, prefix=config.jobs.redis_prefix)
        with httpx.Client(base_url=url, timeout=60) as http:
            yield Cluster(nodes, s3, redis, store, http)


def submit(http: httpx.Client) -> str:
    answer = http.post("/v1/jobs", params={"mode": "tiny"}, content=DOCUMENT,
                       headers={"content-type": "application/pdf"})  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def follow(http: httpx.Client, job_id: str, done: int, timeout_s: float = 120) -> dict[str, Any]:
    """The job once ``done`` pages are stored or it ended; a 503 while a store restarts is
    waited out."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        answer = http.get(f"/v1/jobs/{job_id}", params={"wait": 2})
        if answer.status_code == 503:
            time.sleep(0.5)
            continue
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if job["pages"]["done"] >= done or job["status"] not in ("queued", "running"):
            return job
    raise AssertionError(f"job {job_id}: fewer than {done} pages after {timeout_s} s")


def every_page_once(cluster: Cluster, job_id: str) -> dict[str, Any]:
    """The job succeeded with each page stored, fetched and streamed once; its answer."""
    job = follow(cluster.http, job_id, PAGES + 1)
    assert job["status"] == "succeeded", job
    assert job["pages"] == {"total": PAGES, "done": PAGES, "failed": 0}
    result = cluster.http.get(f"/v1/jobs/{job_id}/result").json()
    assert [page["page"] for page in result["pages"]] == list(range(1, PAGES + 1))
    events = cluster.http.get(f"/v1/jobs/{job_id}/events").text.splitlines()
    assert len([line for line in events if line]) == PAGES + 1  # each page once, then the job
    assert sorted(cluster.store.stored_numbers(job_id)) == list(range(1, PAGES + 1))
    return job


def test_a_job_submitted_on_one_node_is_followed_through_the_other_with_redis_restarted(
    cluster: Cluster,
) -> None:
    job_id = submit(cluster.http)
    for _ in range(40):  # the head's proxy spreads requests over both nodes' ingresses
        if all(any(f"job_id={job_id} " in text for text in cluster.replica_logs(node,
               "OCRIngress").values()) for node in cluster.nodes.worker_names):  # fmt: skip
            break
        assert cluster.http.get(f"/v1/jobs/{job_id}").status_code == 200
    else:
        raise AssertionError("the job's requests never reached both nodes' ingress replicas")
    # The upload is in the bucket, not on any node's disk.
    assert cluster.store.upload(job_id) == DOCUMENT
    for node in cluster.nodes.worker_names:
        assert not list(cluster.nodes.node_path(node, "/tmp").rglob(f"*{job_id}*"))

    follow(cluster.http, job_id, PAGES // 4)
    cluster.redis.restart(down_s=1.0, hard=True)  # SIGKILL: what the AOF kept is all there is
    every_page_once(cluster, job_id)
    assert cluster.engine_calls(job_id) == Counter(range(1, PAGES + 1))  # no page ran twice


def test_the_bucket_stopped_for_10_s_pauses_the_job_and_it_succeeds(cluster: Cluster) -> None:
    job_id = submit(cluster.http)
    follow(cluster.http, job_id, PAGES // 4)
    cluster.s3.stop(hard=True)
    stopped_at = follow(cluster.http, job_id, 0)["pages"]["done"]
    time.sleep(10)
    paused = follow(cluster.http, job_id, 0)
    assert paused["status"] == "running" and paused["pages"]["done"] <= stopped_at + 4
    cluster.s3.start()
    every_page_once(cluster, job_id)
    assert cluster.engine_calls(job_id) == Counter(range(1, PAGES + 1))


def test_a_redeploy_mid_job_loses_no_page(cluster: Cluster) -> None:
    from ray import serve

    from deployments.app import build_graph

    job_id = submit(cluster.http)
    follow(cluster.http, job_id, PAGES // 3)
    # New arguments replace every replica; a runner gives its job back as it stops.
    config = app_config(cluster.redis.url, cluster.s3.url, page_s=0.2)
    serve.run(build_graph(config, placed(config)), name=APP, route_prefix="/")
    every_page_once(cluster, job_id)
    after = cluster.store.get(job_id)
    assert after is not None and after.lapses == 0  # given back, not left to lapse


def test_a_job_whose_node_is_killed_finishes_on_the_other_without_running_a_stored_page(
    cluster: Cluster,
) -> None:
    job_id = submit(cluster.http)
    job = follow(cluster.http, job_id, PAGES // 4)
    holder = cluster.store.get(job_id)
    assert holder is not None and holder.lease_owner is not None
    doomed = cluster.runner_node(holder.lease_owner)
    survivor = next(node for node in cluster.nodes.worker_names if node != doomed)

    cluster.nodes.kill_node(doomed)  # its raylet, its workers: SIGKILL
    stored_before = cluster.store.stored_numbers(job_id)
    assert PAGES // 4 <= job["pages"]["done"] <= len(stored_before) < PAGES

    done = every_page_once(cluster, job_id)
    after = cluster.store.get(job_id)
    assert after is not None and after.lapses == 1 and after.lease_owner is None
    finished_by = cluster.replica_logs(survivor, "JobRunnerDeployment").values()
    assert any(f"job {job_id}: succeeded" in text for text in finished_by)
    calls = cluster.engine_calls(job_id)
    assert set(calls) == set(range(1, PAGES + 1))
    assert {page: calls[page] for page in stored_before} == dict.fromkeys(stored_before, 1)
    rerun = sorted(page for page, count in calls.items() if count > 1)
    assert len(rerun) <= 4  # only pages in flight on the dead node (pages_in_flight)
    assert done["finished_at"] > done["started_at"]
