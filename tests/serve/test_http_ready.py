"""/ready waits for every engine replica the application was deployed with, not just one."""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps

pytestmark = pytest.mark.serve

APP = "ocr-ready"
STAGGER_S = 10.0  # the engine replica of rank 1 loads this long after rank 0


def app_status() -> str:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.status.value if app else "MISSING"


def one_engine_answers() -> bool:
    """What /ready used to check: some engine replica answers a ping."""
    from ray import serve

    try:
        handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
        return bool(handle.ready.remote().result(timeout_s=1.0))
    except Exception:  # not deployed yet, or no replica up yet
        return False


def get_ready(client: httpx.Client) -> httpx.Response | None:
    """GET /ready, or None while the proxy has no route to the ingress yet."""
    try:
        r = client.get("/ready")
    except httpx.TransportError:
        return None
    return None if r.status_code == 404 else r


def test_ready_waits_for_every_engine_replica() -> None:
    from ray import serve

    config = AppConfig.model_validate(
        {
            "models": {
                "deepseek-ocr": {"kind": "fake", "fake": {"start_latency_per_rank_s": STAGGER_S}}
            }
        }
    )
    url = start_app(
        config, name=APP, options={"EngineDeployment-deepseek-ocr": {"num_replicas": 2}}, wait=False
    )
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            # Wait until the ingress is routed and engine replica 0 has loaded; replica 1 is
            # still loading, so the application is DEPLOYING.
            deadline = time.monotonic() + 60
            while not (one_engine_answers() and get_ready(client) is not None):
                assert time.monotonic() < deadline, "the ingress and engine 0 never came up"
                time.sleep(0.25)
            assert app_status() == "DEPLOYING"
            r = client.get("/ready")
            assert app_status() == "DEPLOYING"  # still one replica loading during the call
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "10"
            assert r.json()["error"]["code"] == "not_ready"
            assert r.json()["error"]["type"] == "server_error"
            assert one_engine_answers()  # the old check would have said ready

            # Once replica 1 has loaded the application is RUNNING and /ready says so.
            while (r := client.get("/ready")).status_code != 200:
                assert r.status_code == 503, r.text
                assert time.monotonic() < deadline + STAGGER_S, "never became ready"
                time.sleep(0.25)
            assert r.json() == {"ready": True}
            engine = serve.status().applications[APP].deployments["EngineDeployment-deepseek-ocr"]
            assert engine.replica_states == {"RUNNING": 2}
    finally:
        stop_apps()
