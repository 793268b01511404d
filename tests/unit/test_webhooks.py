"""Job webhooks against a real local receiver: signed as Standard Webhooks verifies, retried
after a 500 and a refused connection, never after a 400, never sent where the URL policy
refuses, and given up after the configured attempts."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from serve_app.config import AppConfig
from serve_app.documents.door import RequestFields
from serve_app.documents.fetch import FetchPolicy
from serve_app.jobs.model import JobSpec, JobState
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.jobs.webhooks import (
    RetryPolicy,
    WebhookSender,
    WebhookSettings,
    secret_key,
    webhook_settings,
)
from serve_app.testing.serve import free_port

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver:
    """A local HTTP server answering each POST with the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/ocr"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver([])
    yield running
    running.close()


def settings(allow: list[str], attempts: int = 3) -> WebhookSettings:
    policy = FetchPolicy(max_bytes=2**20, connect_timeout_s=2, read_timeout_s=2,
                         total_timeout_s=5, max_redirects=0, allowlist=tuple(allow))  # fmt: skip
    retry = RetryPolicy(max_attempts=attempts, backoff_s=0.01, max_backoff_s=0.05)
    return WebhookSettings(secret_key(SECRET), policy, retry, "https://ocr.example.com")


def ended_job(tmp_path: Path, url: str) -> tuple[SqliteJobStore, str]:
    store = SqliteJobStore(tmp_path / "jobs.db")
    job, _ = store.submit(JobSpec(RequestFields(mode="tiny"), webhook_url=url), b"%PDF")
    store.claim("r", 30)
    store.finish(job.id, "r", JobState.PARTIAL)
    return store, job.id


def send_all(store: SqliteJobStore, hooks: WebhookSettings) -> list[str]:
    """Run a sender until nothing is due for a moment; the outcomes it reported."""
    outcomes: list[str] = []
    sender = WebhookSender(store, hooks, on_outcome=outcomes.append)

    async def go() -> None:
        idle = 0
        while idle < 10:
            idle = 0 if await sender.send_next() else idle + 1
            await asyncio.sleep(0.02)

    asyncio.run(go())
    return outcomes


def test_a_500_is_retried_and_every_attempt_verifies(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [500, 200]
    store, job_id = ended_job(tmp_path, receiver.url)
    outcomes = send_all(store, settings([f"127.0.0.1:{receiver.port}"]))

    assert outcomes == ["retry", "delivered"]
    assert store.delivery_state(job_id) == {"state": "delivered", "attempts": 2,
                                            "last_error": None}  # fmt: skip
    verifier = Webhook(SECRET)
    (first, body), (second, again) = receiver.received
    assert first["webhook-id"] == second["webhook-id"] and body == again  # one message
    for headers, sent in receiver.received:
        event = verifier.verify(sent, headers)  # raises for a bad signature or timestamp
        assert event["type"] == "job.partial"
        assert event["data"]["id"] == job_id and event["data"]["status"] == "partial"
        assert event["data"]["urls"]["result"] == (
            f"https://ocr.example.com/v1/jobs/{job_id}/result"
        )
    assert json.loads(body)["timestamp"].endswith("+00:00")


def test_a_400_is_not_retried(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [400]
    store, job_id = ended_job(tmp_path, receiver.url)
    assert send_all(store, settings([f"127.0.0.1:{receiver.port}"])) == ["failed"]
    assert len(receiver.received) == 1
    assert store.delivery_state(job_id) == {"state": "failed", "attempts": 1,
                                            "last_error": "HTTP 400"}  # fmt: skip


def test_an_address_the_url_policy_refuses_is_never_called(
    tmp_path: Path, receiver: Receiver
) -> None:
    store, job_id = ended_job(tmp_path, receiver.url)
    assert send_all(store, settings([])) == ["failed"]  # loopback, not allowlisted
    assert receiver.received == []
    state = store.delivery_state(job_id)
    assert state is not None and "public addresses" in state["last_error"]


def test_a_refused_connection_is_retried_until_the_attempts_run_out(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    store, job_id = ended_job(tmp_path, f"http://127.0.0.1:{port}/hook")
    outcomes = send_all(store, settings([f"127.0.0.1:{port}"], attempts=2))
    assert outcomes == ["retry", "failed"]
    state = store.delivery_state(job_id)
    assert state is not None and state["state"] == "failed" and state["attempts"] == 2


def test_webhooks_are_off_without_a_secret_and_refuse_a_malformed_one() -> None:
    config = AppConfig.model_validate({"models": {"m": {"kind": "fake"}}})
    assert webhook_settings(config, env={}) is None
    assert webhook_settings(config, env={"OCR_WEBHOOK_SECRET": SECRET}) is not None
    with pytest.raises(ValueError, match="whsec_"):
        webhook_settings(config, env={"OCR_WEBHOOK_SECRET": "hunter2"})


def test_retries_back_off_exponentially_up_to_a_ceiling() -> None:
    retry = RetryPolicy(max_attempts=5, backoff_s=10, max_backoff_s=30)
    assert [retry.retry_at(n, 0.0) for n in range(1, 6)] == [10.0, 20.0, 30.0, 30.0, None]
