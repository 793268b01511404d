"""Engine faults in the real Serve graph, with the default crash settings: a replica killed
mid-document, a poison page whose engine dies while its process lives (as vLLM's engine core
does), and a page sent meanwhile."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps
from serve_app.testing.synthetic import text_pdf
from tests.unit.test_pipeline import POISON

pytestmark = pytest.mark.serve

APP = "ocr-faults"
PAGE_S = 2.0


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # Every page takes PAGE_S; a 600-pixel-wide page runs one second more, then its engine dies
    # with every page in flight; the replica lives on until its health check fails.
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": PAGE_S, "crash_on_width": 600,
                                             "crash_delay_s": 1.0, "crash_mode": "die"}}}}
    )  # fmt: skip
    url = start_app(config, name=APP)
    with httpx.Client(base_url=url, timeout=120) as http:
        yield http
    stop_apps()


def engine(name: str) -> Any:
    from ray import serve

    handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
    return getattr(handle, name).remote().result(timeout_s=60)


def engine_answers() -> bool:
    try:
        return bool(engine("ready"))
    except Exception:  # noqa: BLE001 - no replica yet, or one that is going away
        return False


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


def test_a_poison_page_is_quarantined_and_a_page_sent_meanwhile_is_answered(
    client: httpx.Client,
) -> None:
    """The poison page kills its engine; a page sent while that replica still takes requests
    is refused there without counting a crash, and answered by the replica that replaces
    it. The poison page, alone on two more engines that die, is quarantined."""
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(post_pdf(client, POISON)))
    sender.start()
    deadline = time.monotonic() + 3 * PAGE_S
    while engine("ready"):
        assert time.monotonic() < deadline, "the poison page never killed its engine"
        time.sleep(0.05)
    meanwhile = post_pdf(client, text_pdf(1))
    sender.join()

    assert meanwhile.status_code == 200, meanwhile.text
    (innocent,) = meanwhile.json()["pages"]
    assert "error" not in innocent and "engine_crashes" not in innocent
    (r,) = answers
    assert r.status_code == 200, r.text
    pages = r.json()["pages"]
    assert ["error" in p for p in pages] == [False, True, False]
    assert pages[1]["error"]["code"] == "page_quarantined"
    assert pages[1]["engine_crashes"] >= 3  # with others once, then alone on two engines
    assert "engine_crashes" not in pages[0] and "engine_crashes" not in pages[2]


def test_a_quarantined_page_is_refused_at_once_when_sent_again(client: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while not engine_answers():  # the last engine the poison page killed is being replaced
        assert time.monotonic() < deadline, "Serve did not replace the engine replica"
        time.sleep(0.2)
    pid = engine("counters")["pid"]
    start = time.monotonic()
    again = post_pdf(client, POISON)
    pages = again.json()["pages"]
    assert again.status_code == 200 and pages[1]["error"]["code"] == "page_quarantined"
    assert "engine_crashes" not in pages[1] and "error" not in pages[0]
    assert time.monotonic() - start < PAGE_S + 1.0  # nothing crashed, nothing was retried
    assert engine("counters")["pid"] == pid
