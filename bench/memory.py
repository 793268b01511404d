"""Peak memory of the ingress and preprocess replicas for 50-, 300- and 600-page PDFs, and
Ray's object store during each request.

Run: ``.venv/bin/python -m bench.memory`` (fake engine; Linux, needs /proc). Before each
request the replicas' peak-RSS marks (VmHWM) are reset, so each figure is the peak during that
request alone, after one warm-up request. Flat memory means the peaks do not grow with the
page count. The object store (pages' views and pixels live there between stages) is sampled
every 0.2 s: before, at its peak, and after each request; after should equal before.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import psutil

from serve_app.config import AppConfig
from serve_app.testing.synthetic import text_pdf

DEPLOYMENTS = ("OCRIngress", "PreprocessDeployment")


def replica_pids(app: str) -> dict[str, int]:
    """PIDs of the replica processes, found by the process titles Ray gives them."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or ())
        for name in DEPLOYMENTS:
            if f"ServeReplica:{app}:{name}" in title:
                found[name] = proc.info["pid"]
    return found


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def object_store_mib() -> tuple[float, int]:
    """MiB and objects in this node's object store (Ray's memory summary; private API)."""
    from ray._private.internal_api import memory_summary

    summary = memory_summary(stats_only=True)
    match = re.search(r"Plasma memory usage (\d+) MiB, (\d+) objects", summary)
    return (float(match[1]), int(match[2])) if match else (float("nan"), -1)


class StoreSampler:
    """The object store's peak while a request runs."""

    def __init__(self) -> None:
        self.peak = (0.0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, object_store_mib())

    def __enter__(self) -> StoreSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    from ray import serve

    from serve_app.testing.serve import start_app

    config = AppConfig.model_validate({"ingress": {"max_pages": 600, "pages_in_flight": 8},
                                       "models": {"deepseek-ocr": {"kind": "fake"}}})  # fmt: skip
    url = start_app(config, name="mem")
    pids = replica_pids("mem")
    print(f"replicas: {pids}")
    results = {}
    with httpx.Client(base_url=url, timeout=1800) as client:
        # Warm-up: thread pools, allocator arenas and caches fill on the first requests.
        client.post("/v1/ocr", content=text_pdf(50), headers={"content-type": "application/pdf"})
        for pages in (50, 300, 600):
            pdf = text_pdf(pages)
            for pid in pids.values():
                reset_peak(pid)
            start = time.perf_counter()
            numbers = []
            before = object_store_mib()
            with StoreSampler() as store, client.stream(
                "POST", "/v1/ocr", params={"stream": "true"}, content=pdf,
                headers={"content-type": "application/pdf"},
            ) as r:  # fmt: skip
                r.raise_for_status()
                for line in r.iter_lines():
                    if line and (item := json.loads(line)).get("object") == "ocr.page":
                        numbers.append(item["page"])
            elapsed = time.perf_counter() - start
            time.sleep(1.0)  # let the last pages' references be released
            after = object_store_mib()
            print(f"{pages:>4} pages: object store MiB (objects) before {before[0]:.0f} "
                  f"({before[1]}), peak {store.peak[0]:.0f} ({store.peak[1]}), "
                  f"after {after[0]:.0f} ({after[1]})")  # fmt: skip
            assert numbers == list(range(1, pages + 1)), "pages missing or out of order"
            results[pages] = {name: peak_mib(pid) for name, pid in pids.items()}
            print(f"{pages:>4} pages in {elapsed:6.1f} s, all in order; peak RSS MiB: "
                  + ", ".join(f"{n} {v:.0f}" for n, v in results[pages].items()))  # fmt: skip
    serve.shutdown()
    for name in pids:
        first, second = (
            results[300][name] / results[50][name],
            results[600][name] / results[300][name],
        )
        print(f"{name}: peak ratio 300/50 pages = {first:.2f}, 600/300 pages = {second:.2f}")


if __name__ == "__main__":
    main()
