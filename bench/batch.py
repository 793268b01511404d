"""The offline batch path (Ray Data) against the Serve graph, in one run: pages/s on the same
pages with the fake engine at a fixed cost per page, and the batch's memory as the corpus
grows.

Run: ``.venv/bin/python -m bench.batch [--engine fake|rapidocr] [--pages 1000]
[--memory-pages 1000 10000]``.

The Serve graph is deployed as ``serve_config.yaml`` deploys it (fixed replica counts) and
sent the documents through ``/v1/ocr?stream=true`` at several numbers of documents in flight;
its best is the baseline (target: the batch at least 1.2x). Then the batch runs the same
documents with as many engine actors as the graph has engine replicas. Warm and cold: the
batch's rate after its first page (its actors up) against the deployed graph's, and its whole
run with Ray's start against the graph's deployment plus its run. For memory, corpora of
one-page PDFs are run and the peak resident memory of the driver and of all Ray workers, and
the object store's peak use, are sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from serve_app.config import AppConfig
from serve_app.testing.synthetic import text_pdf

PDF = {"content-type": "application/pdf"}


def corpus(folder: Path, documents: int, pages_each: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pdf = text_pdf(pages_each)
    paths = []
    for n in range(documents):
        path = folder / f"doc_{n:05d}.pdf"
        path.write_bytes(pdf)
        paths.append(path)
    return paths


def serve_pages_per_s(
    url: str, paths: list[Path], in_flight: int, pages: int, params: dict[str, str]
) -> float:
    def one(path: Path) -> int:
        with httpx.Client(base_url=url, timeout=600) as client, client.stream(
            "POST", "/v1/ocr", params=params | {"stream": "true"},
            content=path.read_bytes(), headers=PDF,
        ) as answer:  # fmt: skip
            return sum(json.loads(line).get("object") == "ocr.page"
                       for line in answer.iter_lines() if line)  # fmt: skip

    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        done = sum(pool.map(one, paths))
    assert done == pages, (done, pages)
    return pages / (time.perf_counter() - start)


class Peak:
    """Peak resident memory of this process and of Ray's workers, and of the object store."""

    def __init__(self) -> None:
        self.driver = self.workers = self.store = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import ray

        me = psutil.Process()
        while not self._stop.wait(0.5):
            self.driver = max(self.driver, me.memory_info().rss / 2**20)
            workers = 0.0
            for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmdline = " ".join(process.info["cmdline"] or ())
                if process.info["name"].startswith("ray::") or "default_worker.py" in cmdline:
                    workers += process.info["memory_info"].rss / 2**20
            self.workers = max(self.workers, workers)
            if not ray.is_initialized():
                continue  # the batch starts Ray itself
            total = ray.cluster_resources().get("object_store_memory", 0)
            free = ray.available_resources().get("object_store_memory", total)
            self.store = max(self.store, (total - free) / 2**20)


def batch_args(
    inputs: Path,
    out: Path,
    config: Path,
    engines: int,
    cpu_actors: int,
    mode: str | None,
    store_mb: int | None = None,
) -> argparse.Namespace:
    from batch.run import parse_args

    return parse_args([str(inputs), "-o", str(out), "--config", str(config), "--engines",
                       str(engines), "--cpu-actors", str(cpu_actors), "--flush-every", "256",
                       *(["--mode", mode] if mode else []),
                       *([] if store_mb is None else ["--store-mb", str(store_mb)])])  # fmt: skip


def engine_models(engine: str, page_latency: float) -> dict[str, Any]:
    if engine == "rapidocr":
        return {"rapidocr": {"kind": "rapidocr", "rapidocr": {"max_side": 1600}}}
    return {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": page_latency}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("fake", "rapidocr"), default="fake")
    parser.add_argument("--pages", type=int, default=1000,
                        help="throughput corpus, pages (0: memory only)")  # fmt: skip
    parser.add_argument("--pages-each", type=int, default=10, help="pages per document")
    parser.add_argument("--page-latency", type=float, default=0.1, help="fake engine s/page")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[2, 4, 8, 16],
                        help="documents in flight tried against the Serve graph")  # fmt: skip
    parser.add_argument("--cpu-actors", type=int, nargs="+", default=[1, 2],
                        help="batch preprocess/postprocess actors tried")  # fmt: skip
    parser.add_argument("--memory-pages", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument(
        "--store-mb", type=int, nargs="*", default=[None], help="the batch's (0: Ray Data's)"
    )
    args = parser.parse_args()

    from serve_app.testing.serve import deployed_options

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    args_yaml = {"models": engine_models(args.engine, args.page_latency)}
    (model,) = args_yaml["models"]
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump({"applications": [{"args": args_yaml}]}))
    config = AppConfig.model_validate(args_yaml)
    mode = "tiny" if args.engine == "fake" else None
    params = {"mode": mode} if mode else {}
    documents = args.pages // args.pages_each
    pages = documents * args.pages_each
    paths = corpus(work / "in", documents, args.pages_each)

    options = deployed_options(config)
    engines = options[f"EngineDeployment-{model}"]["num_replicas"]
    if pages:
        throughput(args, config, options, work, config_path, paths, engines, params, mode)
    memory(args, work, config_path, engines, mode)


def throughput(args: argparse.Namespace, config: AppConfig, options: dict[str, Any], work: Path,
               config_path: Path, paths: list[Path], engines: int, params: dict[str, str],
               mode: str | None) -> None:  # fmt: skip
    import ray
    from ray import serve

    from batch.run import run
    from serve_app.testing.serve import start_app

    documents, pages = len(paths), len(paths) * args.pages_each
    started = time.perf_counter()
    url = start_app(config, name="bench-batch", options=options)
    deploy_s = time.perf_counter() - started  # Ray and the graph, as a cold batch starts Ray
    serve_pages_per_s(url, paths[:2], 2, 2 * args.pages_each, params)  # warm-up
    rates = {n: serve_pages_per_s(url, paths, n, pages, params) for n in args.in_flight}
    best = max(rates, key=rates.__getitem__)
    serve.shutdown()
    ray.shutdown()

    engine = (f"fake engine {args.page_latency} s/page" if args.engine == "fake"
              else "rapidocr (PP-OCRv6 tiny)")  # fmt: skip
    print(f"{engine}; {pages} pages in {documents} PDFs ({mode or 'page'} mode); {engines} engine "
          f"replica(s) / actor(s); machine: {os.cpu_count()} cores")  # fmt: skip
    print("Serve graph, /v1/ocr?stream=true, pages/s by documents in flight: "
          + ", ".join(f"{n}: {rate:.2f}" for n, rate in rates.items()))  # fmt: skip
    cold = pages / (deploy_s + pages / rates[best])
    print(f"Serve graph cold, deployed ({deploy_s:.1f} s) then the pages at {best} in flight: "
          f"{cold:.2f} pages/s")  # fmt: skip
    for cpu_actors in args.cpu_actors:
        out = work / f"out-{cpu_actors}"
        started = time.perf_counter()
        summary = run(batch_args(work / "in", out, config_path, engines, cpu_actors, mode))
        wall = time.perf_counter() - started  # Ray's start and the documents' files too
        assert summary.pages_run == pages and not summary.failures
        print(f"batch on Ray Data, {cpu_actors} CPU actor(s) a stage: {summary.pages_per_s:.2f} "
              f"pages/s in all ({summary.pages_per_s / rates[best]:.2f}x the graph's best, "
              f"{best} in flight); {summary.steady_pages_per_s:.2f} pages/s after the first "
              f"page at {summary.first_page_s:.1f} s "
              f"({summary.steady_pages_per_s / rates[best]:.2f}x); cold, Ray started: "
              f"{pages / wall:.2f} pages/s ({pages / wall / cold:.2f}x the graph cold)"
              )  # fmt: skip
        ray.shutdown()


def memory(args: argparse.Namespace, work: Path, config_path: Path, engines: int,
           mode: str | None) -> None:  # fmt: skip
    import ray

    from batch.run import run

    for store_mb in args.store_mb or [None]:
        for count in args.memory_pages:
            folder = work / f"mem-{count}"
            if not folder.exists():
                corpus(folder, count, 1)
            with Peak() as peak:
                done = run(batch_args(folder, work / f"mem-out-{count}-{store_mb}", config_path,
                                      engines, max(args.cpu_actors), mode, store_mb))  # fmt: skip
            assert done.pages_run == count and not done.failures
            budget = {None: "the default store budget", 0: "Ray Data's store budget"}.get(
                store_mb, f"--store-mb {store_mb}"
            )
            print(f"{count} one-page PDFs, {budget}: {done.pages_per_s:.2f} pages/s; peak "
                  f"resident MiB: driver {peak.driver:.0f}, Ray workers {peak.workers:.0f}; "
                  f"object store peak {peak.store:.0f} MiB")  # fmt: skip
            ray.shutdown()


if __name__ == "__main__":
    main()
