"""Backpressure over real HTTP: full queues answer 429 (ingress) or 503 (engine), fast.

The app runs with small queues and a fake engine that takes a fixed time per page, so the
queues really fill: the ingress works on 2 requests and queues 2 more (Serve's
``max_ongoing_requests`` / ``max_queued_requests``, rejecting with serve_config.yaml's
``backpressure_config``); the engine runs 2 pages and queues 2 more.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

pytestmark = pytest.mark.serve

APP = "ocr-backpressure"
PNG = encode(noise_rgb(300, 200, seed=2))
PAGE_S = 2.0  # the fake engine's time per page (before its first token)
FLOOD = 12
INGRESS = {"max_ongoing_requests": 2, "max_queued_requests": 2}
ENGINE = {"max_ongoing_requests": 2, "max_queued_requests": 2}


def production_backpressure() -> dict[str, Any]:
    """The ingress's ``backpressure_config`` in serve_config.yaml."""
    config = yaml.safe_load((Path(__file__).parents[2] / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    (ingress,) = [d for d in app["deployments"] if d["name"] == "OCRIngress"]
    return dict(ingress["backpressure_config"])


BACKPRESSURE = production_backpressure()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from ray import serve

    assert BACKPRESSURE["status_code"] == 429
    config = AppConfig.model_validate(
        {"engine": {"kind": "fake", "fake": {"first_token_latency_s": PAGE_S}}}
    )
    options = {
        "OCRIngress": {**INGRESS, "backpressure_config": BACKPRESSURE},
        "EngineDeployment": ENGINE,
    }
    yield start_app(config, name=APP, options=options)
    serve.shutdown()


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

    handle = serve.get_deployment_handle("EngineDeployment", app_name=APP)
    return int(handle.num_unfinished.remote().result())


def test_ingress_overflow_is_429_with_retry_after(flood: list[Any]) -> None:
    statuses = sorted(status for status, _, _ in flood)
    admitted = [r for status, _, r in flood if status == 200]
    rejected = [(seconds, r) for status, seconds, r in flood if status == 429]
    assert set(statuses) <= {200, 429}, statuses
    # Serve's queue count is approximate both ways (a request being assigned to a replica is
    # not counted as queued, and a request may be rejected before a queued one is assigned):
    # some get in, most of the flood is turned away.
    assert admitted and len(rejected) >= FLOOD // 2, statuses
    retry_after = str(math.ceil(BACKPRESSURE["retry_after_s"]))
    for seconds, r in rejected:
        assert r.headers["Retry-After"] == retry_after
        assert seconds < PAGE_S  # rejected at once, not after waiting for a slot
    for r in admitted:  # the admitted requests finish normally
        body = r.json()
        assert body["pages_failed"] == 0 and body["pages"][0]["finish_reason"] == "stop"


@pytest.mark.xfail(
    reason="Ray Serve's proxy writes its own text/plain body for backpressure rejections "
    "(backpressure_config sets only the status and Retry-After); the service's JSON error "
    "shape needs admission control inside the ingress",
)
def test_ingress_overflow_body_is_an_openai_style_error(flood: list[Any]) -> None:
    r = next(r for status, _, r in flood if status == 429)
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == "invalid_request_error"


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
