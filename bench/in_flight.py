"""The Serve graph's pages/s as more documents are in flight, with the preprocess and
postprocess routers as ``serve_config.yaml`` sets them (polling for a free replica slot every
50 ms at most) against Serve's default (0.5 s), in one run.

Run: ``.venv/bin/python -m bench.in_flight [--documents 50] [--in-flight 4 16]`` (fake engine
at 0.1 s a page, 10-page PDFs in tiny mode, one replica each, as ``serve_config.yaml``'s
minimums; about two minutes a setting on 2 cores). Each document's 8 pages in flight are calls
to the preprocess and postprocess replicas, which hold 16 each; the rest wait in the caller's
router, and a router that sleeps half a second between tries leaves a replica idle whose pages
take tens of milliseconds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.batch import corpus, serve_pages_per_s
from serve_app.config import AppConfig

ROUTED = ("PreprocessDeployment", "PostprocessDeployment")


def rates(
    config: AppConfig, options: dict[str, Any], paths: list[Path], in_flight: list[int], pages: int
) -> dict[int, float]:
    import ray
    from ray import serve

    from serve_app.testing.serve import start_app

    url = start_app(config, name="bench-in-flight", options=options)
    params = {"mode": "tiny"}
    serve_pages_per_s(url, paths[:2], 2, 2 * pages // len(paths), params)  # warm-up
    try:
        return {n: serve_pages_per_s(url, paths, n, pages, params) for n in in_flight}
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=50, help="10-page PDFs")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()

    from serve_app.testing.serve import deployed_options

    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": 0.1}}}}
    )
    paths = corpus(Path(tempfile.mkdtemp(prefix="bench-in-flight-")), args.documents, 10)
    pages = 10 * len(paths)
    ours = deployed_options(config)
    backoffs = {name: ours[name]["request_router_config"]["max_backoff_s"] for name in ROUTED}
    serves = {name: {k: v for k, v in chosen.items() if k != "request_router_config"}
              for name, chosen in ours.items()}  # fmt: skip
    print(f"fake engine 0.1 s/page; {pages} pages in {len(paths)} PDFs; pages/s by documents "
          f"in flight (/v1/ocr?stream=true)")  # fmt: skip
    measured = {}
    for label, options in [("Serve's default router backoff (0.5 s)", serves),
                           (f"serve_config.yaml's {backoffs}", ours)]:  # fmt: skip
        measured[label] = rates(config, options, paths, args.in_flight, pages)
        print(f"{label}: " + ", ".join(f"{n}: {r:.2f}" for n, r in measured[label].items()),
              flush=True)  # fmt: skip
    before, after = measured.values()
    print("ratio, ours / Serve's default: "
          + ", ".join(f"{n}: {after[n] / before[n]:.2f}x" for n in args.in_flight))  # fmt: skip


if __name__ == "__main__":
    main()
