"""Webhooks: when a job ends, its ``webhook_url`` gets a small signed event.

Signed the Standard Webhooks way (https://www.standardwebhooks.com): headers ``webhook-id``
(the same on every attempt, so a receiver can drop repeats), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of
``<id>.<timestamp>.<body>`` under the configured ``whsec_`` secret). Any Standard Webhooks
library verifies it.

Delivered at least once from the store's outbox: the call is owed in the same step that ends
the job, and a :class:`WebhookSender` in every runner replica sends what is due. A 2xx
answer delivers it; a 5xx, 408, 429, a timeout or a connection failure is retried with
exponential backoff up to ``max_attempts``; any other answer (a 4xx, a redirect) and a URL
the SSRF policy refuses give it up at once. The URL goes through the same checks as URL
inputs (:func:`serve_app.documents.fetch.post_url`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from serve_app.config import AppConfig
from serve_app.documents.fetch import FetchPolicy, UrlNotAllowedError, post_url
from serve_app.errors import ClientError
from serve_app.jobs.store import Delivery, JobStore

logger = logging.getLogger("ray.serve")

SECRET_PREFIX = "whsec_"
RETRIED_STATUSES = frozenset({408, 429})


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret.

    Raises:
        ValueError: For a secret of another form.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret is 'whsec_' and base64 (python -m "
                         "serve_app.jobs.webhooks new makes one)")  # fmt: skip
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError("the webhook secret's part after 'whsec_' is not base64") from None


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of ``body``.

    >>> signature(b"k", "msg_1", 1700000000, b"{}")
    'v1,LTBsW2zNVsMNlXYZbgw/T+jGxr1msQBcXoa3h1dR9wQ='
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_body(delivery: Delivery, base_url: str) -> bytes:
    """The event: its type, when the job ended, and the job's id, state and links (what a
    receiver fetches next). The same bytes on every attempt."""
    url = f"{base_url.rstrip('/')}/v1/jobs/{delivery.job_id}"
    event = {
        "type": f"job.{delivery.state.value}",
        "timestamp": datetime.fromtimestamp(delivery.created_at, UTC).isoformat(),
        "data": {
            "id": delivery.job_id,
            "object": "job",
            "status": delivery.state.value,
            "urls": {"self": url, "result": f"{url}/result", "events": f"{url}/events"},
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before attempt ``n + 1`` after attempt ``n`` failed, and when to stop."""

    max_attempts: int = 8
    backoff_s: float = 10.0
    max_backoff_s: float = 3600.0

    def retry_at(self, attempts: int, now: float) -> float | None:
        """When to try again after ``attempts`` tries; ``None``: give up."""
        if attempts >= self.max_attempts:
            return None
        return now + min(self.backoff_s * 2.0 ** (attempts - 1), self.max_backoff_s)


@dataclass(frozen=True)
class WebhookSettings:
    """What signing and sending need: the key, the URL policy, retries, the links' base."""

    key: bytes
    policy: FetchPolicy
    retry: RetryPolicy
    public_url: str


def webhook_settings(
    config: AppConfig, env: Mapping[str, str] = os.environ
) -> WebhookSettings | None:
    """The webhook settings ``config`` and the secret in ``env`` make; ``None`` without a
    secret (webhooks are off).

    Raises:
        ValueError: For a secret that is not ``whsec_`` and base64.
    """
    hooks = config.jobs.webhooks
    secret = env.get(hooks.secret_env, "").strip()
    if not secret:
        return None
    fetch = config.ingress.url_fetch  # URL inputs' rules: allowlist, private CAs
    policy = FetchPolicy(
        max_bytes=2**20,
        connect_timeout_s=min(fetch.connect_timeout_s, hooks.timeout_s),
        read_timeout_s=hooks.timeout_s,
        total_timeout_s=hooks.timeout_s,
        max_redirects=0,
        allowlist=tuple(fetch.allowlist),
        ca_file=fetch.ca_file,
    )
    retry = RetryPolicy(hooks.max_attempts, hooks.backoff_s, hooks.max_backoff_s)
    return WebhookSettings(secret_key(secret), policy, retry, hooks.public_url)


class WebhookSender:
    """Sends the store's due webhook calls one at a time; ``on_outcome`` hears each
    attempt's outcome (delivered, retry, failed)."""

    def __init__(
        self,
        store: JobStore,
        settings: WebhookSettings,
        on_outcome: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._key, self._policy, self._retry = settings.key, settings.policy, settings.retry
        self._base_url = settings.public_url
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._clock = clock

    async def run(self, poll_s: float) -> None:
        """Send what is due, looking again every ``poll_s`` once the outbox is empty."""
        while True:
            try:
                sent = await self.send_next()
            except Exception:
                logger.exception("webhook delivery failed unexpectedly")
                sent = False
            if not sent:
                await asyncio.sleep(poll_s)

    async def send_next(self) -> bool:
        """Make the next due attempt; ``False`` when none was due."""
        # Held past the longest attempt: another sender does not take it meanwhile.
        lease = self._policy.total_timeout_s + 30
        delivery = await asyncio.to_thread(self._store.claim_delivery, lease)
        if delivery is None:
            return False
        outcome, error = await self._attempt(delivery)
        retry_at = None
        if outcome == "retry":
            retry_at = self._retry.retry_at(delivery.attempts, self._clock())
            if retry_at is None:
                outcome = "failed"
        await asyncio.to_thread(self._store.delivery_result, delivery.id,
                                outcome == "delivered", retry_at, error)  # fmt: skip
        self._on_outcome(outcome)
        log = logger.info if outcome == "delivered" else logger.warning
        log("webhook %s of job %s, attempt %d: %s%s", delivery.id, delivery.job_id,
            delivery.attempts, outcome, f" ({error})" if error else "")  # fmt: skip
        return True

    async def _attempt(self, delivery: Delivery) -> tuple[str, str | None]:
        """``delivered``, ``retry`` or ``failed``, and why it was not delivered."""
        body = event_body(delivery, self._base_url)
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._key, delivery.id, timestamp, body),
        }
        try:
            response = await post_url(delivery.url, self._policy, body, headers)
        except UrlNotAllowedError as refused:
            return "failed", refused.message
        except ClientError as unreachable:  # timeouts, refused connections, no such host
            return "retry", unreachable.message
        status = response.status_code
        if 200 <= status < 300:
            return "delivered", None
        why = f"HTTP {status}"
        if status >= 500 or status in RETRIED_STATUSES:
            return "retry", why
        return "failed", why


def main(argv: list[str] | None = None) -> int:
    """``python -m serve_app.jobs.webhooks new``: a new secret to configure."""
    import argparse
    import secrets
    import sys

    parser = argparse.ArgumentParser(description="Webhook secrets for the OCR service.")
    parser.add_argument("command", choices=["new"])
    parser.parse_args(argv)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    sys.stdout.write(f"{secret}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
