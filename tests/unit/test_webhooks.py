"""Job webhooks against real local receivers: each tenant's calls signed with its own secret
(as Standard Webhooks verifies, two secrets while one is rotated), short secrets refused,
retried after a 500 and a refused connection, never after a 400, never sent where the
webhooks' allowlist does not reach, a hostile receiver's answer read 4 KiB at most, and a
slow receiver holding back only its own calls."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from serve_app.api.auth import ApiKeys, hash_key
from serve_app.api.jobs import JobsService
from serve_app.config import AppConfig
from serve_app.documents.door import RequestFields
from serve_app.documents.fetch import FetchPolicy, post_url
from serve_app.jobs.model import JobSpec
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.jobs.webhooks import (
    RetryPolicy,
    WebhookSender,
    WebhookSettings,
    receiver,
    signers,
    webhook_settings,
)
from serve_app.testing.serve import free_port
from serve_app.testing.synthetic import text_pdf
from tests.support import LoopThread, LoopTransport, local_api


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


SECRET = whsec(b"0123456789abcdef0123456789abcdef")  # the service's, without keys
SECRET_A, SECRET_B, SECRET_A_OLD = whsec(b"A" * 32), whsec(b"B" * 32), whsec(b"a" * 24)
KEY_A, KEY_B, KEY_C = "ocr-key-a", "ocr-key-b", "ocr-key-c"  # C has no secret
OWNER_A, OWNER_B, OWNER_C = hash_key(KEY_A), hash_key(KEY_B), hash_key(KEY_C)
KEY_SECRETS = {OWNER_A: (SECRET_A,), OWNER_B: (SECRET_B,), OWNER_C: ()}


class Receiver:
    """A local HTTP server answering each POST with the next scripted status (200 once the
    script is done) after ``delay_s``, with an empty body or, ``endless``, one that never
    ends."""

    def __init__(
        self, statuses: Sequence[int] = (), delay_s: float = 0.0, endless: bool = False
    ) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answered = 0
        self.sent = 0  # answer bytes the socket took
        self.most_at_once = 0
        lock, calling = threading.Lock(), [0]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with lock:
                    receiver.received.append((dict(self.headers.items()), body))
                    calling[0] += 1
                    receiver.most_at_once = max(receiver.most_at_once, calling[0])
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                try:
                    time.sleep(delay_s)
                    self.send_response(status)
                    self.send_header("content-length", str(2**40 if endless else 0))
                    self.end_headers()
                    while endless and receiver.sent < 2**32:
                        self.wfile.write(bytes(65536))
                        receiver.sent += 65536
                except OSError:  # the sender hung up
                    pass
                finally:
                    with lock:
                        calling[0] -= 1
                        receiver.answered += 1

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
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Starts receivers (``Receiver``'s arguments); they stop after the test."""
    started: list[Receiver] = []

    def start(*args: Any, **kwargs: Any) -> Receiver:
        started.append(Receiver(*args, **kwargs))
        return started[-1]

    yield start
    for running in started:
        running.close()


@pytest.fixture
def server(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers()


def settings(
    allow: Sequence[Receiver | int], attempts: int = 3, per_receiver: int = 2
) -> WebhookSettings:
    ports = [r.port if isinstance(r, Receiver) else r for r in allow]
    policy = FetchPolicy(max_bytes=4096, connect_timeout_s=2, read_timeout_s=5,
                         total_timeout_s=5, max_redirects=0,
                         allowlist=tuple(f"127.0.0.1:{port}" for port in ports))  # fmt: skip
    retry = RetryPolicy(max_attempts=attempts, backoff_s=0.01, max_backoff_s=0.05)
    return WebhookSettings(signers(KEY_SECRETS, SECRET), policy, retry,
                           "https://ocr.example.com", per_receiver=per_receiver)  # fmt: skip


def ended(store: SqliteJobStore, url: str, owner: str | None = None) -> str:
    """A job with a webhook, ended (cancelled: its call is owed)."""
    job, _ = store.submit(JobSpec(RequestFields(mode="tiny"), owner, webhook_url=url), b"%PDF")
    store.cancel(job.id)
    return job.id


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


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "jobs.db")


def test_a_500_is_retried_and_every_attempt_verifies(
    store: SqliteJobStore, server: Receiver
) -> None:
    server.statuses = [500, 200]
    job_id = ended(store, server.url)
    outcomes = send_all(store, settings([server]))

    assert outcomes == ["retry", "delivered"]
    assert store.delivery_state(job_id) == {"state": "delivered", "attempts": 2,
                                            "last_error": None}  # fmt: skip
    verifier = Webhook(SECRET)
    (first, body), (second, again) = server.received
    assert first["webhook-id"] == second["webhook-id"] and body == again  # one message
    for headers, sent in server.received:
        event = verifier.verify(sent, headers)  # raises for a bad signature or timestamp
        assert event["type"] == "job.cancelled"
        assert event["data"]["id"] == job_id and event["data"]["status"] == "cancelled"
        assert event["data"]["urls"]["result"] == (
            f"https://ocr.example.com/v1/jobs/{job_id}/result"
        )
    assert json.loads(body)["timestamp"].endswith("+00:00")


def test_each_tenant_signs_with_its_own_secret(store: SqliteJobStore, server: Receiver) -> None:
    """A tenant that verifies its own calls cannot verify, so cannot forge, another's; the
    service's secret signs no keyed job's call."""
    job_a, job_b = ended(store, server.url, OWNER_A), ended(store, server.url, OWNER_B)
    assert send_all(store, settings([server])) == ["delivered", "delivered"]
    calls = {json.loads(body)["data"]["id"]: (body, headers) for headers, body in server.received}
    (body_a, headers_a), (body_b, headers_b) = calls[job_a], calls[job_b]

    assert Webhook(SECRET_A).verify(body_a, headers_a)["data"]["id"] == job_a
    assert Webhook(SECRET_B).verify(body_b, headers_b)["data"]["id"] == job_b
    for secret, body, headers in [(SECRET_A, body_b, headers_b), (SECRET_B, body_a, headers_a),
                                  (SECRET, body_a, headers_a), (SECRET, body_b, headers_b)]:  # fmt: skip
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, headers)


def test_during_a_rotation_both_secrets_sign(store: SqliteJobStore, server: Receiver) -> None:
    hooks = settings([server])
    rotating = signers({OWNER_A: (SECRET_A, SECRET_A_OLD)})
    hooks = WebhookSettings(rotating, hooks.policy, hooks.retry, hooks.public_url)
    ended(store, server.url, OWNER_A)
    assert send_all(store, hooks) == ["delivered"]
    (headers, body), = server.received  # fmt: skip
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET_A).verify(body, headers)  # a receiver that switched
    Webhook(SECRET_A_OLD).verify(body, headers)  # one that did not yet


def test_a_key_without_a_secret_is_never_signed_with_the_services(
    store: SqliteJobStore, server: Receiver
) -> None:
    job_id = ended(store, server.url, OWNER_C)
    assert send_all(store, settings([server])) == ["failed"]
    assert server.received == []
    assert store.delivery_state(job_id) == {
        "state": "failed", "attempts": 1,
        "last_error": "the job's API key has no webhook signing secret",
    }  # fmt: skip


def test_a_400_is_not_retried(store: SqliteJobStore, server: Receiver) -> None:
    server.statuses = [400]
    job_id = ended(store, server.url)
    assert send_all(store, settings([server])) == ["failed"]
    assert len(server.received) == 1
    assert store.delivery_state(job_id) == {"state": "failed", "attempts": 1,
                                            "last_error": "HTTP 400"}  # fmt: skip


def test_destinations_are_allowed_by_the_webhooks_allowlist_only(
    store: SqliteJobStore, server: Receiver
) -> None:
    """Loopback is reached when ``jobs.webhooks.allowlist`` names it; the URL inputs'
    allowlist does not open it to webhooks."""
    here = f"127.0.0.1:{server.port}"
    env = {"OCR_WEBHOOK_SECRET": SECRET}

    def configured(url_inputs: list[str], hooks: list[str]) -> WebhookSettings:
        config = AppConfig.model_validate({
            "models": {"m": {"kind": "fake"}},
            "ingress": {"url_fetch": {"allowlist": url_inputs}},
            "jobs": {"webhooks": {"allowlist": hooks, "backoff_s": 0.01}},
        })  # fmt: skip
        return webhook_settings(config, {}, env)

    refused = ended(store, server.url)
    assert send_all(store, configured([here], [])) == ["failed"]
    state = store.delivery_state(refused)
    assert state is not None and "public addresses" in state["last_error"]
    assert server.received == []

    ended(store, server.url)
    assert send_all(store, configured([], [here])) == ["delivered"]
    assert len(server.received) == 1


def test_a_refused_connection_is_retried_until_the_attempts_run_out(
    store: SqliteJobStore,
) -> None:
    port = free_port()  # nothing listens there
    job_id = ended(store, f"http://127.0.0.1:{port}/hook")
    assert send_all(store, settings([port], attempts=2)) == ["retry", "failed"]
    state = store.delivery_state(job_id)
    assert state is not None and state["state"] == "failed" and state["attempts"] == 2


def test_a_hostile_receivers_answer_is_read_4_kib_at_most(
    store: SqliteJobStore, receivers: Callable[..., Receiver]
) -> None:
    """An answer that never ends: the call is delivered once its status came and 4 KiB of
    body were read, the connection closed; the receiver's socket took little more than
    the buffers between (all of it was read, up to the timeout: 1.8 GB in 5 s)."""
    hostile = receivers(endless=True)
    policy = FetchPolicy(total_timeout_s=5, allowlist=(f"127.0.0.1:{hostile.port}",))
    answer = asyncio.run(post_url(hostile.url, policy, b"{}", {}, max_answer_bytes=4096))
    assert answer.status_code == 200 and answer.content == bytes(4096)

    ended(store, hostile.url)
    started = time.monotonic()
    assert send_all(store, settings([hostile], attempts=1)) == ["delivered"]
    assert time.monotonic() - started < 4  # not the 5 s timeout
    assert hostile.sent < 16 * 2**20


def test_a_slow_receiver_does_not_delay_the_others(
    store: SqliteJobStore, receivers: Callable[..., Receiver]
) -> None:
    """Three calls owed to a receiver that answers after 3 s, then four to one that answers
    at once: the four are delivered while the slow one's first two are still waiting, and
    the third waits for a free place (two calls to one receiver at most)."""
    slow, fast = receivers(delay_s=3.0), receivers()
    slow_jobs = [ended(store, slow.url) for _ in range(3)]
    fast_jobs = [ended(store, fast.url) for _ in range(4)]
    sender = WebhookSender(store, settings([slow, fast], per_receiver=2))

    async def go() -> tuple[list[str], list[str]]:
        task = asyncio.create_task(sender.run(poll_s=0.05))
        deadline = time.monotonic() + 2.5
        while fast.answered < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the results are recorded
        states = [store.delivery_state(job)["state"] for job in fast_jobs + slow_jobs]  # type: ignore[index]
        calls_to_slow = [headers["webhook-id"] for headers, _ in slow.received]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return states, calls_to_slow

    states, calls_to_slow = asyncio.run(go())
    assert states == ["delivered"] * 4 + ["pending"] * 3
    assert slow.answered == 0 and len(calls_to_slow) == 2 and slow.most_at_once == 2


@pytest.mark.parametrize("size", [0, 1, 16, 23])
def test_a_secret_shorter_than_24_bytes_is_refused(size: int) -> None:
    config = AppConfig.model_validate({"models": {"m": {"kind": "fake"}}})
    short = whsec(b"k" * size)
    with pytest.raises(ValueError, match="at least 24") as caught:
        webhook_settings(config, {}, env={"OCR_WEBHOOK_SECRET": short})
    assert "auth new" in str(caught.value)  # how to make one
    with pytest.raises(ValueError, match="at least 24"):
        signers({OWNER_A: (short,)})
    assert webhook_settings(config, {}, env={"OCR_WEBHOOK_SECRET": whsec(b"k" * 24)}).signers


def test_webhooks_are_off_without_a_secret_and_refuse_a_malformed_one() -> None:
    config = AppConfig.model_validate({"models": {"m": {"kind": "fake"}}})
    assert not webhook_settings(config, {}, env={}).signers
    assert not webhook_settings(config, {OWNER_C: ()}, env={}).signers
    on = webhook_settings(config, {OWNER_A: (SECRET_A,)}, env={}).signers
    assert on and on.of(OWNER_A) and not on.of(None) and not on.of(OWNER_B)
    with pytest.raises(ValueError, match="whsec_"):
        webhook_settings(config, {}, env={"OCR_WEBHOOK_SECRET": "hunter2"})
    with pytest.raises(ValueError, match="not base64") as caught:
        webhook_settings(config, {}, env={"OCR_WEBHOOK_SECRET": "whsec_hunter2!"})
    assert "hunter2" not in str(caught.value)


def test_retries_back_off_exponentially_up_to_a_ceiling() -> None:
    retry = RetryPolicy(max_attempts=5, backoff_s=10, max_backoff_s=30)
    assert [retry.retry_at(n, 0.0) for n in range(1, 6)] == [10.0, 20.0, 30.0, 30.0, None]


def test_a_receiver_is_its_scheme_host_and_port() -> None:
    assert receiver("https://Hooks.example.com/ocr?job=1") == "https://hooks.example.com:443"
    assert receiver("http://hooks.example.com/a") == "http://hooks.example.com:80"
    assert receiver("https://hooks.example.com:8443/b#c") == "https://hooks.example.com:8443"
    assert receiver("http://[::1]:8080/hook") == "http://[::1]:8080"
    for bad in ("ftp://example.com/x", "not a url", "http:///path"):
        with pytest.raises(ValueError, match="webhook URL"):
            receiver(bad)


def test_a_key_without_a_secret_cannot_ask_for_a_webhook(tmp_path: Path) -> None:
    """At submit: a key with a secret gets its job; one without gets 400 saying how to get
    one, though the service's own secret is set."""
    config = AppConfig.model_validate({"models": {"deepseek-ocr": {"kind": "fake"}},
                                       "jobs": {"store_path": str(tmp_path / "jobs.db")}})  # fmt: skip
    hooks = webhook_settings(config, KEY_SECRETS, env={"OCR_WEBHOOK_SECRET": SECRET})
    jobs = JobsService(config, SqliteJobStore(config.jobs.store_path), webhooks=hooks)
    runner = LoopThread()
    keys = ApiKeys((OWNER_A, OWNER_C))
    app = local_api(runner, config, keys=keys, jobs=jobs)
    pdf = {"content-type": "application/pdf"}
    params = {"mode": "tiny", "webhook_url": "https://hooks.example.com/ocr"}
    with httpx.Client(transport=LoopTransport(app, runner), base_url="http://test") as http:
        answers = {key: http.post("/v1/jobs", params=params, content=text_pdf(1),
                                  headers={**pdf, "Authorization": f"Bearer {key}"})
                   for key in (KEY_A, KEY_C)}  # fmt: skip
    runner.close()
    assert answers[KEY_A].status_code == 202, answers[KEY_A].text
    refused = answers[KEY_C]
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "webhook_url"
    assert "python -m serve_app.api.auth rotate" in refused.json()["error"]["message"]
