"""Peak memory of the ingress and preprocess replicas for 50-, 300- and 600-page PDFs.

Run: ``.venv/bin/python -m bench.memory`` (fake engine; Linux, needs /proc). Before each
request the replicas' peak-RSS marks (VmHWM) are reset, so each figure is the peak during that
request alone, after one warm-up request. Flat memory means the peaks do not grow with the
page count.
"""

from __future__ import annotations

import json
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


def main() -> None:
    from ray import serve

    from serve_app.testing.serve import start_app

    config = AppConfig.model_validate({"ingress": {"max_pages": 600, "pages_in_flight": 8},
                                       "engine": {"kind": "fake"}})  # fmt: skip
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
            with client.stream("POST", "/v1/ocr", params={"stream": "true"}, content=pdf,
                               headers={"content-type": "application/pdf"}) as r:  # fmt: skip
                r.raise_for_status()
                for line in r.iter_lines():
                    if line and (item := json.loads(line)).get("object") == "ocr.page":
                        numbers.append(item["page"])
            elapsed = time.perf_counter() - start
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
