"""Engine faults in the real Serve graph: a replica killed mid-document, a poison page."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app
from serve_app.testing.synthetic import text_pdf
from tests.unit.test_pipeline import POISON

pytestmark = pytest.mark.serve

APP = "ocr-faults"
PAGE_S = 2.0


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    from ray import serve

    # Every page takes PAGE_S; a 600-pixel-wide page runs one second more, then its replica's
    # process exits (as a replica whose engine crashed).
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": PAGE_S, "crash_on_width": 600,
                                             "crash_delay_s": 1.0, "crash_mode": "exit"}}},
         "ingress": {"crash_retries": 6}}
    )  # fmt: skip
    url = start_app(config, name=APP)
    with httpx.Client(base_url=url, timeout=120) as http:
        yield http
    serve.shutdown()


def engine(name: str) -> dict[str, int]:
    from ray import serve

    handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
    return dict(getattr(handle, name).remote().result(timeout_s=60))


def post_pdf(client: httpx.Client, pdf: bytes) -> httpx.Response:
    return client.post("/v1/ocr", content=pdf, params={"mode": "tiny"},
                       headers={"content-type": "application/pdf"})  # fmt: skip


def test_a_replica_killed_mid_document_loses_no_page(client: httpx.Client) -> None:
    before = engine("counters")
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(post_pdf(client, text_pdf(3))))
    sender.start()
    deadline = time.monotonic() + PAGE_S
    while engine("counters")["pages_recognized"] < before["pages_recognized"] + 3:
        assert time.monotonic() < deadline, "the pages never reached the engine"
        time.sleep(0.05)
    os.kill(before["pid"], signal.SIGKILL)  # the three pages are in flight on it
    sender.join()

    (r,) = answers
    assert r.status_code == 200, r.text
    pages = r.json()["pages"]
    assert [p["page"] for p in pages] == [1, 2, 3]
    assert all("error" not in p and p["engine_crashes"] == 1 for p in pages)
    assert engine("counters")["pid"] != before["pid"]  # Serve replaced the replica


def test_a_poison_page_is_quarantined_and_refused_when_sent_again(client: httpx.Client) -> None:
    r = post_pdf(client, POISON)
    assert r.status_code == 200, r.text
    pages = r.json()["pages"]
    assert ["error" in p for p in pages] == [False, True, False]
    assert pages[1]["error"]["code"] == "page_quarantined"
    assert pages[1]["engine_crashes"] == 2

    pid = engine("counters")["pid"]
    start = time.monotonic()
    again = post_pdf(client, POISON)
    pages = again.json()["pages"]
    assert again.status_code == 200 and pages[1]["error"]["code"] == "page_quarantined"
    assert "engine_crashes" not in pages[1] and "error" not in pages[0]
    assert time.monotonic() - start < PAGE_S + 1.0  # nothing crashed, nothing was retried
    assert engine("counters")["pid"] == pid
