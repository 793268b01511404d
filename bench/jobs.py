"""Jobs against /v1/ocr, in one run: a long PDF's pages/s as a job and as a stream, interactive
latency while two large jobs run, each store's cost per page, and the ingress's and runner's
memory after a 1,000-page job.

Run: ``.venv/bin/python -m bench.jobs`` (``--cluster``: :mod:`bench.jobs_cluster`, three
Ray nodes against one) (fake engine at a fixed cost per page; the graph as
``serve_config.yaml`` deploys it, fixed replica counts; Linux, for /proc). Targets (issue 21):
a job at least 0.95x the stream's pages/s; interactive p50 and p95 at most 2x idle while two
large jobs run; flat memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.load import percentile, replica_memory
from serve_app.config import AppConfig
from serve_app.documents.door import RequestFields
from serve_app.jobs.blobs import LocalBlobs
from serve_app.jobs.model import JobSpec
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.jobs.store import JobStore
from serve_app.testing.synthetic import text_pdf

APP = "bench-jobs"
PDF = {"content-type": "application/pdf"}
OPTIONS = {"mode": "tiny"}


def stream_pages_per_s(client: httpx.Client, pdf: bytes, pages: int) -> float:
    start = time.perf_counter()
    with client.stream("POST", "/v1/ocr", params={**OPTIONS, "stream": "true"}, content=pdf,
                       headers=PDF) as answer:  # fmt: skip
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    seconds = time.perf_counter() - start
    assert sum(1 for line in lines if line.get("object") == "ocr.page") == pages, lines[-1]
    return pages / seconds


def job_pages_per_s(client: httpx.Client, pdf: bytes, pages: int) -> float:
    """Submit to the job's last event, following its events."""
    start = time.perf_counter()
    job = client.post("/v1/jobs", params=OPTIONS, content=pdf, headers=PDF).json()
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
        lines = [json.loads(line) for line in events.iter_lines() if line]
    seconds = time.perf_counter() - start
    assert lines[-1]["status"] == "succeeded" and len(lines) == pages + 1, lines[-1]
    return pages / seconds


def latencies(client: httpx.Client, page: bytes, count: int) -> list[float]:
    """One-page /v1/ocr requests, one after another."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        answer = client.post("/v1/ocr", params=OPTIONS, content=page, headers=PDF)
        answer.raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def wait_done(client: httpx.Client, job_id: str, timeout_s: float = 1800) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] not in ("queued", "running"):
            return job
    raise TimeoutError(job_id)


def store_cost(store: JobStore, page: dict[str, Any], pages: int) -> tuple[float, float]:
    """Milliseconds to store a page (lease check included), and to read all back, per page."""
    job, _ = store.submit(JobSpec(RequestFields(mode="tiny")), b"%PDF")
    claimed = store.claim("bench", 600)
    assert claimed is not None and claimed.lease_token is not None
    start = time.perf_counter()
    for number in range(1, pages + 1):
        page_json = {**page, "page": number}
        assert store.save_page(job.id, claimed.lease_token, number, page_json, failed=False)
    saved = (time.perf_counter() - start) / pages * 1000
    start = time.perf_counter()
    assert len(store.pages(job.id)) == pages
    read = (time.perf_counter() - start) / pages * 1000
    return saved, read


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    if "--cluster" in sys.argv[1:]:
        from bench.jobs_cluster import run

        run([arg for arg in sys.argv[1:] if arg != "--cluster"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100, help="the long PDF")
    parser.add_argument("--big-pages", type=int, default=1000, help="the memory job")
    parser.add_argument("--page-latency", type=float, default=0.1, help="fake engine s/page")
    parser.add_argument("--requests", type=int, default=30, help="interactive, per phase")
    parser.add_argument("--job-window", type=int, default=None,
                        help="jobs.pages_in_flight (default: the config's)")  # fmt: skip
    args = parser.parse_args()

    from ray import serve

    from serve_app.testing.redis import redis_server
    from serve_app.testing.serve import deployed_options, start_app

    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    fake = {"first_token_latency_s": args.page_latency}
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": fake}},
         "ingress": {"max_pages": max(args.pages, 500)},
         "jobs": {"enabled": True, "store_path": str(work / "jobs.db"),
                  **({"pages_in_flight": args.job_window} if args.job_window else {})}}
    )  # fmt: skip
    url = start_app(config, name=APP, options=deployed_options(config))
    pdf = text_pdf(args.pages)
    png = text_pdf(1)
    jobs = config.jobs
    print(f"fake engine {args.page_latency} s/page; /v1/ocr {config.ingress.pages_in_flight} "
          f"pages in flight; jobs {jobs.jobs_at_once} at once x {jobs.pages_in_flight} "
          "pages")  # fmt: skip
    with httpx.Client(base_url=url, timeout=1800) as client:
        latencies(client, png, 3)  # warm-up
        stream_pages_per_s(client, text_pdf(8), 8)

        streams, jobs_rates = [], []
        for _ in range(2):
            streams.append(stream_pages_per_s(client, pdf, args.pages))
            jobs_rates.append(job_pages_per_s(client, pdf, args.pages))
        stream, job = statistics.median(streams), statistics.median(jobs_rates)
        print(f"{args.pages}-page PDF, pages/s: /v1/ocr?stream=true {stream:.2f}, as a job "
              f"{job:.2f} ({job / stream:.2f}x; rounds {', '.join(f'{r:.2f}' for r in streams)}"
              f" / {', '.join(f'{r:.2f}' for r in jobs_rates)})")  # fmt: skip

        idle = latencies(client, png, args.requests)
        big = text_pdf(args.big_pages // 2)
        running = [client.post("/v1/jobs", params=OPTIONS, content=big, headers=PDF).json()["id"]
                   for _ in range(2)]  # fmt: skip
        time.sleep(2)
        busy = latencies(client, png, args.requests)
        done = [client.get(f"/v1/jobs/{job_id}").json()["pages"]["done"] for job_id in running]
        for job_id in running:
            client.post(f"/v1/jobs/{job_id}/cancel")
        p50, p95 = statistics.median(idle), percentile(idle, 0.95)
        b50, b95 = statistics.median(busy), percentile(busy, 0.95)
        print(f"interactive /v1/ocr (one page), s: idle p50 {p50:.3f} p95 {p95:.3f}; with two "
              f"{args.big_pages // 2}-page jobs running (they stored {done} pages meanwhile) "
              f"p50 {b50:.3f} p95 {b95:.3f} ({b50 / p50:.2f}x, {b95 / p95:.2f}x)")  # fmt: skip

        time.sleep(3)
        before = replica_memory(APP)
        big_pdf = text_pdf(args.big_pages)
        start = time.perf_counter()
        big_job = client.post("/v1/jobs", params=OPTIONS, content=big_pdf, headers=PDF).json()
        ended = wait_done(client, big_job["id"])
        seconds = time.perf_counter() - start
        assert ended["pages"]["done"] == args.big_pages, ended
        result = client.get(f"/v1/jobs/{big_job['id']}/result")
        after = replica_memory(APP)
        print(f"{args.big_pages}-page job: {ended['status']} in {seconds:.0f} s "
              f"({args.big_pages / seconds:.1f} pages/s), result {len(result.content) / 2**20:.1f} "
              f"MiB; replica MiB private / resident, before -> after:")  # fmt: skip
        for name in sorted(before):
            if name.startswith(("OCRIngress", "JobRunnerDeployment")) and name in after:
                (u0, r0), (u1, r1) = before[name], after[name]
                print(f"  {name:<36} {u0:.0f} / {r0:.0f} -> {u1:.0f} / {r1:.0f}")
        page = client.get(f"/v1/jobs/{big_job['id']}/pages/1").json()
    serve.shutdown()

    count = 500
    print(f"store cost per page ({len(json.dumps(page))} bytes of page JSON, {count} pages):")
    sqlite_path = work / "cost.db"
    saved, read = store_cost(SqliteJobStore(sqlite_path), page, count)
    print(f"  sqlite: store {saved:.2f} ms, read back {read:.3f} ms, "
          f"{sqlite_path.stat().st_size / count / 1024:.1f} KiB on disk")  # fmt: skip
    with redis_server() as redis_url:
        blobs = work / "blobs"
        saved, read = store_cost(RedisJobStore(redis_url, LocalBlobs(blobs)), page, count)
        print(f"  redis + blobs: store {saved:.2f} ms, read back {read:.3f} ms, "
              f"{directory_bytes(blobs) / count / 1024:.1f} KiB of blobs")  # fmt: skip


if __name__ == "__main__":
    main()
