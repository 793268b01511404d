"""Start the Serve application locally on a free port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig
from serve_app.tooling.deploy_config import SERVE_CONFIG, load_yaml

RAY_TEMP_DIR = "/tmp/rt-ocr"
# Each replica's log file: replica_<app>_<deployment>_<replica id>.log
SERVE_LOGS = Path(RAY_TEMP_DIR) / "session_latest" / "logs" / "serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct free ports, none in ``avoid``: held together while they are chosen
    (one :func:`free_port` after another may give the same port twice)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


def deployed_options(
    config: AppConfig, replicas: Mapping[str, int] | None = None, path: Path = SERVE_CONFIG
) -> dict[str, dict[str, Any]]:
    """``Deployment.options(...)`` by deployment name as ``serve_config.yaml`` deploys them
    (concurrency limits, queues, CPUs), with fixed replica counts instead of autoscaling so
    a benchmark is repeatable: ``replicas`` by name, else each autoscaler's minimum.

    Only the deployments of ``config``'s graph are kept: a benchmark may serve fewer models.
    """
    from deployments.app import deployment_names

    (application,) = load_yaml(path)["applications"]
    wanted = set(deployment_names(config))
    options: dict[str, dict[str, Any]] = {}
    for deployment in application["deployments"]:
        if deployment["name"] not in wanted:
            continue
        chosen = {k: v for k, v in deployment.items() if k not in ("name", "autoscaling_config")}
        name = deployment["name"]
        autoscaling = deployment.get("autoscaling_config") or {}
        chosen["num_replicas"] = (replicas or {}).get(name, autoscaling.get("min_replicas", 1))
        options[name] = chosen
    return options


def local_ray(num_cpus: int = 16) -> str:
    """Start Ray in this process unless it runs (a local cluster of ``num_cpus`` logical CPUs,
    512 MiB of object store) and return its address, for other drivers to join
    (``RAY_ADDRESS``)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        # Logical CPUs are bookkeeping only; replicas and actors share the real cores.
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=512 * 2**20,
                 _temp_dir=RAY_TEMP_DIR, log_to_driver=False,
                 _metrics_export_port=free_port())  # fmt: skip
    return str(ray.get_runtime_context().gcs_address)


def start_app(
    config: AppConfig,
    name: str = "ocr-test",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    wait: bool = True,
    route_prefix: str = "/",
) -> str:
    """Run the whole graph (ingress, preprocess, engine, postprocess) and return its URL.

    ``options`` are ``Deployment.options(...)`` by deployment name, as the ``deployments:``
    section of ``serve_config.yaml`` sets them (``{"OCRIngress": {"max_queued_requests": 4}}``).
    With ``wait=False`` the URL comes back while the application is still deploying (its
    routes may answer 404 or 503 until the ingress is up). A second application beside a
    running one needs its own ``route_prefix``.
    """
    from ray import serve

    from deployments.app import build_graph

    local_ray()
    port = _serving_port()
    app = build_graph(config, options)
    if wait:
        serve.run(app, name=name, route_prefix=route_prefix)
    else:
        # serve.run returns only once the application is RUNNING; this does not wait.
        from ray.serve.api import RunTarget, _run_many

        target = RunTarget(target=app, name=name, route_prefix=route_prefix)
        _run_many([target], wait_for_applications_running=False)
    return f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}"


_port: int | None = None  # the HTTP port of the Serve instance this process started


def _serving_port() -> int:
    """Serve's HTTP port: the running instance's when this process started it (its controller
    and proxy outlive applications, and a start is ~15 s on two cores), else a new one's."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    global _port
    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        _port = None  # none running (Ray or Serve was shut down since)
    else:
        if _port is not None:
            return _port
        # Started elsewhere, on a port this process does not know.
        serve.shutdown()  # type: ignore[no-untyped-call]
    _port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": _port})
    return _port


def stop_apps() -> None:
    """Delete every application, keeping Serve running for the next :func:`start_app`."""
    from ray import serve

    for name in list(serve.status().applications):
        serve.delete(name)


def with_env(
    env: Mapping[str, str],
    config: AppConfig,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``options`` with ``env`` in the environment of every deployment of ``config``'s graph
    (a runtime_env, so replicas of a running Ray cluster get it)."""
    from deployments.app import deployment_names

    merged: dict[str, dict[str, Any]] = {}
    for name in deployment_names(config):
        chosen = dict((options or {}).get(name, {}))
        actor = dict(chosen.get("ray_actor_options") or {})
        runtime_env = dict(actor.get("runtime_env") or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
        merged[name] = {**chosen, "ray_actor_options": {**actor, "runtime_env": runtime_env}}
    return merged


def metrics_url() -> str:
    """Ray's Prometheus endpoint on this node (the cluster :func:`start_app` joined)."""
    import ray

    node = ray._private.worker._global_node
    if node is None:
        raise RuntimeError("Ray is not initialized in this process")
    return f"http://127.0.0.1:{node.metrics_export_port}/metrics"
