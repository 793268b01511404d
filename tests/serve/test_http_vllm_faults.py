"""A dead vLLM engine core under the Serve graph: its replica refuses work without counting a
crash, fails its health check and is replaced, and a page sent meanwhile is answered by the
replacement. (tests/serve/test_http_faults.py runs the same with the fake engine by default.)"""

from __future__ import annotations

import signal

import httpx
import psutil
import pytest

from serve_app.testing.synthetic import encode, noise_rgb
from tests.serve.test_http_vllm import serve_vllm_app
from tests.support import EngineSlot

pytestmark = [pytest.mark.serve, pytest.mark.engine, pytest.mark.costly]

PNG = encode(noise_rgb(300, 200, seed=6))


def engine_pid() -> int:
    from ray import serve

    handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name="ocr-vllm")
    return int(handle.counters.remote().result(timeout_s=30)["pid"])


def ocr(client: httpx.Client) -> httpx.Response:
    return client.post(
        "/v1/ocr", files={"file": ("p.png", PNG, "image/png")}, data={"mode": "tiny"}
    )


def test_a_killed_engine_core_fails_health_and_serve_replaces_the_replica(
    engine_slot: EngineSlot,
) -> None:
    with httpx.Client(base_url=serve_vllm_app(engine_slot), timeout=600) as client:
        assert ocr(client).status_code == 200
        replica = psutil.Process(engine_pid())
        cores = [
            p for p in replica.children() if "EngineCore" in " ".join(p.cmdline() + [p.name()])
        ]
        assert cores, [p.cmdline() for p in replica.children()]
        for core in cores:
            core.send_signal(signal.SIGKILL)

        # Sent while the replica with the dead engine is still routable: refused there (not a
        # crash of this page), then answered once Serve has replaced the replica.
        first = ocr(client)
        assert first.status_code == 200, first.text
        (page,) = first.json()["pages"]
        assert page["usage"]["completion_tokens"] > 0
        assert page.get("engine_crashes", 0) <= 1  # at most a call that raced the replica's end
        assert engine_pid() != replica.pid, "Serve did not replace the replica"
