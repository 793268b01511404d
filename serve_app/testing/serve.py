"""Start the Serve application locally on a free port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket

from serve_app.config import AppConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(config: AppConfig, name: str = "ocr-test") -> str:
    """Run the whole graph (ingress, preprocess, engine, postprocess) and return its URL."""
    import ray
    from ray import serve

    from deployments.app import build_app

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        # Logical CPUs are bookkeeping only; replicas ask for fractions of them.
        ray.init(num_cpus=8, include_dashboard=False, object_store_memory=512 * 2**20,
                 _temp_dir="/tmp/rt-ocr", log_to_driver=False)  # fmt: skip
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=name, route_prefix="/")
    return f"http://127.0.0.1:{port}"
