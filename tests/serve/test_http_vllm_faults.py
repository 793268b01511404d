"""A dead vLLM engine core under the Serve graph: a clear 503, then a replaced replica."""

from __future__ import annotations

import signal
import time

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

        # The page is sent again while Serve replaces the replica; if that takes longer than
        # the retries, the answer is a clear 503 engine_crashed, never a 500.
        first = ocr(client)
        assert first.status_code in (200, 503), first.text
        if first.status_code == 503:
            assert first.json()["error"]["code"] == "engine_crashed"
            assert first.headers["retry-after"]

        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if engine_pid() != replica.pid:
                    break
            except Exception:  # noqa: BLE001 - the replica may be between lives
                pass
            time.sleep(2)
        assert engine_pid() != replica.pid, "Serve did not replace the replica"
        r = ocr(client)
        assert r.status_code == 200, r.text
        assert r.json()["pages"][0]["usage"]["completion_tokens"] > 0
