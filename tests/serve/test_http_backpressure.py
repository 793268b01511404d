"""Backpressure over real HTTP: full queues answer 429 (ingress) or 503 (engine), fast.

The app runs with small limits and a fake engine that takes a fixed time per page, so the
queues really fill: the ingress works on 2 requests and lets 2 more wait (``args.ingress``
admission, as serve_config.yaml sets it up at scale); the engine runs 2 pages and queues 2.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.errors import RateLimitedError
from serve_app.testing.serve import start_app, stop_apps
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

pytestmark = pytest.mark.serve

APP = "ocr-backpressure"
PNG = encode(noise_rgb(300, 200, seed=2))
PAGE_S = 2.0  # the fake engine's time per page (before its first token)
FLOOD = 12
WORKING, WAITING = 2, 2
# As in serve_config.yaml: Serve lets the ingress hold more than it admits, so the refusal
# is ours (JSON), not the proxy's (plain text).
INGRESS = {"max_ongoing_requests": 16}
ENGINE = {"max_ongoing_requests": 2, "max_queued_requests": 2}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": PAGE_S}}},
         "ingress": {"max_working_requests": WORKING, "max_waiting_requests": WAITING}}
    )  # fmt: skip
    yield start_app(
        config, name=APP, options={"OCRIngress": INGRESS, "EngineDeployment-deepseek-ocr": ENGINE}
    )
    stop_apps()


def concurrently(n: int, call: Callable[[httpx.Client], httpx.Response], url: str) -> list[Any]:
    """``n`` calls released at once, each on its own connection: (status, seconds, response)."""
    barrier = threading.Barrier(n)

    def one(_: int) -> tuple[int, float, httpx.Response]:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get("/health")  # connect before the barrier, so the requests arrive together
            barrier.wait()
            start = time.monotonic()
            r = call(client)
            return r.status_code, time.monotonic() - start, r

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def post_image(client: httpx.Client) -> httpx.Response:
    return client.post(
        "/v1/ocr", files={"file": ("p.png", PNG, "image/png")}, data={"mode": "tiny"}
    )


@pytest.fixture(scope="module")
def flood(url: str) -> list[Any]:
    """FLOOD single-page requests at once at the ingress (capacity 2 working + 2 queued)."""
    return concurrently(FLOOD, post_image, url)


def engine_unfinished() -> int:
    from ray import serve

    handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
    return int(handle.num_unfinished.remote().result())


def test_ingress_overflow_is_a_json_429_with_retry_after(flood: list[Any]) -> None:
    statuses = sorted(status for status, _, _ in flood)
    admitted = [r for status, _, r in flood if status == 200]
    rejected = [(seconds, r) for status, seconds, r in flood if status == 429]
    assert statuses == [200] * (WORKING + WAITING) + [429] * (FLOOD - WORKING - WAITING)
    for seconds, r in rejected:
        assert seconds < PAGE_S  # refused at once, not after waiting for a slot
        assert r.headers["Retry-After"] == str(RateLimitedError.retry_after_s)
        assert r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "rate_limited")
        assert "already waiting" in error["message"]
    for r in admitted:  # the admitted requests (working, then waiting) finish normally
        body = r.json()
        assert body["pages_failed"] == 0 and body["pages"][0]["finish_reason"] == "stop"


def test_slots_are_freed_when_requests_end(url: str, flood: list[Any]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        assert [post_image(client).status_code for _ in range(3)] == [200, 200, 200]


def test_full_engine_queue_is_503_and_frees_the_engine(url: str) -> None:
    # One 8-page PDF puts 8 pages in flight (pages_in_flight): the engine runs 2 and queues 2,
    # and the first page it turns away fails the whole request at once (not a 200 with failed
    # pages, not after the admitted pages finish); the admitted pages are cancelled.
    with httpx.Client(base_url=url, timeout=60) as client:
        start = time.monotonic()
        r = client.post(
            "/v1/ocr",
            content=text_pdf(8),
            params={"mode": "tiny"},
            headers={"content-type": "application/pdf"},
        )
        elapsed = time.monotonic() - start
        assert r.status_code == 503, r.text[:300]
        assert r.headers["Retry-After"] == "5"
        assert r.json()["error"] == {
            "message": "the service is at capacity; retry shortly",
            "type": "server_error",
            "code": "overloaded",
            "param": None,
        }
        assert elapsed < PAGE_S  # not after the admitted pages finished
        deadline = time.monotonic() + 3
        while engine_unfinished() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine_unfinished() == 0
        # With the queue drained, the same service answers again.
        assert post_image(client).status_code == 200
