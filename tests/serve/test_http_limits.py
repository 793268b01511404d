"""Deadlines and disconnects free the engine; other requests keep flowing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps
from serve_app.testing.synthetic import encode, noise_rgb

pytestmark = pytest.mark.serve

PNG = encode(noise_rgb(300, 200, seed=1))
APP = "ocr-limits"


@pytest.fixture(scope="module")
def slow_app() -> Iterator[httpx.Client]:
    # ~0.05 s per token and ~150 tokens per page: a page takes ~8 s unless cut short.
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"token_latency_s": 0.05, "tokens_per_update": 1}}},
         "ingress": {"request_timeout_s": 1.0, "max_working_requests": 1}}
    )  # fmt: skip
    url = start_app(config, name=APP)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    stop_apps()


def engine_unfinished() -> int:
    from ray import serve

    handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
    return int(handle.num_unfinished.remote().result())


def settled(limit_s: float = 3.0) -> float:
    """Seconds until the engine has no unfinished requests (or ``limit_s``)."""
    start = time.monotonic()
    while engine_unfinished() and time.monotonic() - start < limit_s:
        time.sleep(0.05)
    return time.monotonic() - start


def test_deadline_answers_504_and_frees_the_engine(slow_app: httpx.Client) -> None:
    start = time.monotonic()
    r = slow_app.post("/v1/ocr", files={"file": ("p.png", PNG, "image/png")})
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert time.monotonic() - start < 5
    assert settled() < 3.0 and engine_unfinished() == 0
    ok = slow_app.post(
        "/v1/ocr", files={"file": ("p.png", PNG, "image/png")}, data={"max_tokens": "3"}
    )
    assert ok.status_code == 200 and ok.json()["pages"][0]["usage"]["completion_tokens"] == 3


def test_client_disconnect_cancels_engine_work(slow_app: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        slow_app.post("/v1/ocr", files={"file": ("p.png", PNG, "image/png")},
                      params={"stream": "true"}, timeout=0.5)  # fmt: skip
    # The page would run ~8 s; after the disconnect its engine work stops within a few.
    assert settled(limit_s=4.0) < 4.0 and engine_unfinished() == 0


def test_deadline_counts_from_arrival_not_from_a_free_slot(slow_app: httpx.Client) -> None:
    # One request works at a time (max_working_requests 1): the second waits for the first's
    # slot, and its 1 s deadline runs while it waits, so both answer 504 after about 1 s.
    def post(_: int) -> tuple[int, float]:
        start = time.monotonic()
        with httpx.Client(base_url=str(slow_app.base_url), timeout=30) as client:
            r = client.post("/v1/ocr", files={"file": ("p.png", PNG, "image/png")})
        return r.status_code, time.monotonic() - start

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(post, range(2)))
    assert [status for status, _ in results] == [504, 504]
    assert max(seconds for _, seconds in results) < 1.8  # not 1 s after the slot was freed
    assert settled() < 3.0 and engine_unfinished() == 0
