"""Jobs on three Ray nodes that share no disk against the same on one node, in one run: the
pages/s of ten 100-page jobs submitted at once, and the cluster store's cost per page with its
blobs in S3 (SeaweedFS) beside Redis with local blobs and SQLite.

Run: ``.venv/bin/python -m bench.jobs --cluster`` (root: worker nodes live in their own mount
namespaces; fake engine at a fixed cost per page). Both layouts run the same graph and
configuration: the redis store with S3 blobs, two ingress and two runner replicas, one of each
per worker node on the cluster; the page stages on the head. On one machine the three nodes
share its cores, so the figure is the cluster's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.jobs import store_cost
from serve_app.config import AppConfig
from serve_app.jobs.blobs import LocalBlobs, open_blobs
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.testing.synthetic import text_pdf

APP = "bench-jobs-cluster"
PDF = {"content-type": "application/pdf"}


def config(redis_url: str, blob_url: str, page_s: float) -> AppConfig:
    return AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": page_s}}},
         "jobs": {"enabled": True, "store": "redis", "redis_url": redis_url,
                  "blob_url": blob_url}}
    )  # fmt: skip


def options(app: AppConfig, spread: bool) -> dict[str, dict[str, Any]]:
    """``serve_config.yaml``'s deployments with two ingress and two runner replicas; with
    ``spread``, one of each per worker node and the page stages on the head."""
    from serve_app.testing.cluster import HEAD, WORKER_RESOURCE
    from serve_app.testing.serve import deployed_options

    chosen = deployed_options(app, {"OCRIngress": 2, "JobRunnerDeployment": 2})
    for name, deployment in chosen.items():
        actor = dict(deployment.get("ray_actor_options") or {}, num_cpus=0)
        if spread:
            front = name in ("OCRIngress", "JobRunnerDeployment")
            actor["resources"] = {WORKER_RESOURCE if front else HEAD: 0.01}
            if front:
                deployment["max_replicas_per_node"] = 1
        deployment["ray_actor_options"] = actor
    return chosen


def jobs_pages_per_s(url: str, jobs: int, pages: int) -> tuple[float, dict[str, Any]]:
    """Submit ``jobs`` documents of ``pages`` at once; pages/s until the last one ended, and
    a stored page (for the store's cost)."""
    pdf = text_pdf(pages)
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(2), headers=PDF)
        time.sleep(3)  # warm: the first job's stages are up
        start = time.perf_counter()
        ids = [client.post("/v1/jobs", params={"mode": "tiny"}, content=pdf, headers=PDF)
               .json()["id"] for _ in range(jobs)]  # fmt: skip
        for job_id in ids:
            while True:
                job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
                if job["status"] not in ("queued", "running"):
                    break
            assert job["status"] == "succeeded" and job["pages"]["done"] == pages, job
        rate = jobs * pages / (time.perf_counter() - start)
        page: dict[str, Any] = client.get(f"/v1/jobs/{ids[0]}/pages/1").json()
        return rate, page


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--pages", type=int, default=100, help="pages per job")
    parser.add_argument("--page-latency", type=float, default=0.1, help="fake engine s/page")
    parser.add_argument("--store-pages", type=int, default=500, help="the store cost's pages")
    args = parser.parse_args(argv)

    import ray

    from serve_app.testing.cluster import LocalCluster
    from serve_app.testing.redis_aof import redis_aof_server
    from serve_app.testing.seaweed import s3_server
    from serve_app.testing.serve import local_ray, start_app, stop_apps

    work = Path(tempfile.mkdtemp(prefix="bench-jobs-cluster-"))
    print(f"fake engine {args.page_latency} s/page; {args.jobs} jobs of {args.pages} pages "
          "submitted at once; redis store, S3 blobs (SeaweedFS)")  # fmt: skip
    with s3_server() as s3, redis_aof_server(appendfsync="everysec") as redis:
        os.environ.update(s3.env())  # the one-node replicas inherit it from this process
        app = config(redis.url, s3.url, args.page_latency)
        local_ray()
        start = time.perf_counter()
        url = start_app(app, name=APP, options=options(app, spread=False))
        print(f"one node: deployed in {time.perf_counter() - start:.1f} s")
        one, _ = jobs_pages_per_s(url, args.jobs, args.pages)
        print(f"one node: {one:.2f} pages/s")
        stop_apps()
        ray.shutdown()

        with LocalCluster(env=s3.env()) as cluster:
            cluster.start_serve()
            start = time.perf_counter()
            url = start_app(app, name=APP, options=options(app, spread=True))
            print(f"three nodes: deployed in {time.perf_counter() - start:.1f} s")
            three, page = jobs_pages_per_s(url, args.jobs, args.pages)
            print(f"three nodes (head + 2 workers sharing no disk): {three:.2f} pages/s "
                  f"({three / one:.2f}x one node)")  # fmt: skip

        count = args.store_pages
        size = len(json.dumps(page))
        print(f"store cost per page ({count} pages of {size} bytes of page JSON):")
        s3_store = RedisJobStore(redis.url, open_blobs(s3.url, env=s3.env()), prefix="{cost}:")
        for name, store in (
            ("redis + S3 blobs", s3_store),
            ("redis + local blobs", RedisJobStore(redis.url, LocalBlobs(work / "blobs"),
                                                  prefix="{cost-local}:")),
            ("sqlite", SqliteJobStore(work / "cost.db")),
        ):  # fmt: skip
            saved, read = store_cost(store, page, count)
            print(f"  {name}: store {saved:.2f} ms, read back {read:.3f} ms")
