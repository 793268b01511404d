"""Webhooks: when a job ends, its ``webhook_url`` gets a small signed event.

Signed the Standard Webhooks way (https://www.standardwebhooks.com) by its reference library:
headers ``webhook-id`` (the same on every attempt, so a receiver can drop repeats),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,`` and the base64
HMAC-SHA256 of ``<id>.<timestamp>.<body>``, once per secret, space-separated). Any Standard
Webhooks library verifies it.

Each tenant signs with its own secrets: a job submitted with an API key is signed with that
key's (its entry in the key hashes, :mod:`serve_app.api.auth`; two while one is rotated), so
a tenant's secret verifies no other tenant's calls. Only a job without a key (a service
without keys) is signed with the service's one secret (``jobs.webhooks.secret_env``).
Secrets are ``whsec_`` and base64 of at least 24 bytes.

Delivered at least once from the store's outbox: the call is owed in the same step that ends
the job, and a :class:`WebhookSender` in every runner replica sends what is due, several
receivers at once and a few calls per receiver at most, so a slow receiver holds back only
its own calls. A 2xx answer delivers it (at most 4 KiB of any answer is read); a 5xx, 408,
429, a timeout or a connection failure is retried with exponential backoff up to
``max_attempts``; any other answer (a 4xx, a redirect), a URL the SSRF policy refuses and a
job whose owner has no secret give it up at once. The URL is checked as URL inputs are
(:func:`serve_app.documents.fetch.post_url`), against the webhooks' own allowlist.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from standardwebhooks import Webhook

from serve_app.config import AppConfig
from serve_app.documents.fetch import FetchPolicy, UrlNotAllowedError, post_url
from serve_app.errors import ClientError, InvalidInputError
from serve_app.jobs.store import (
    Delivery,
    JobStore,
    receiver,  # noqa: F401  (part of this module's API)
)

logger = logging.getLogger("ray.serve")

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
ANSWER_BYTES = 4096  # of a receiver's answer, read at most
RETRIED_STATUSES = frozenset({408, 429})
HOW_TO_MAKE = ("python -m serve_app.api.auth new makes a key with its secret, "
               "python -m serve_app.jobs.webhooks new a secret alone")  # fmt: skip


def secret_key(secret: str) -> bytes:
    """The signing key of a ``whsec_<base64>`` secret.

    Raises:
        ValueError: For a secret of another form or shorter than 24 bytes; the message says
            how to make one, and never repeats the secret.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret is 'whsec_' and base64 ({HOW_TO_MAKE})")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError(
            f"a webhook secret's part after 'whsec_' is not base64 ({HOW_TO_MAKE})"
        ) from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret is {len(key)} bytes; at least {MIN_SECRET_BYTES} "
                         f"are needed ({HOW_TO_MAKE})")  # fmt: skip
    return key


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Signers:
    """The secrets that sign a job's calls, by the job's owner.

    Attributes:
        by_owner: An API key's hash: that key's secrets, the current one first.
        anonymous: The service's secret, for jobs without an owner (no API keys). Never
            used for a keyed job: every tenant would hold it.
    """

    by_owner: Mapping[str, tuple[Webhook, ...]] = field(default_factory=dict)
    anonymous: tuple[Webhook, ...] = ()

    def of(self, owner: str | None) -> tuple[Webhook, ...]:
        """``owner``'s secrets; none for a key without one."""
        return self.anonymous if owner is None else self.by_owner.get(owner, ())

    def __bool__(self) -> bool:
        return bool(self.anonymous) or any(self.by_owner.values())


def signers(key_secrets: Mapping[str, Sequence[str]], service_secret: str = "") -> Signers:
    """:class:`Signers` of ``whsec_`` secrets: each API key hash's, and the service's.

    Raises:
        ValueError: For a malformed or short secret.
    """
    anonymous = (Webhook(secret_key(service_secret)),) if service_secret else ()
    by_owner = {owner: tuple(Webhook(secret_key(s)) for s in owned)
                for owner, owned in key_secrets.items() if owned}  # fmt: skip
    return Signers(by_owner, anonymous)


def signature(signing: Sequence[Webhook], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of ``body``: one ``v1,`` signature per secret.

    >>> signature([Webhook(b"k" * 24)], "msg_1", 1700000000, b"{}")
    'v1,E3sCg9uS8x43RKlJqcda1EcaYZxNkN+l2u7RBZBSZQQ='
    """
    when = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(secret.sign(message_id, when, body) for secret in signing)


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
    """What signing and sending need: the secrets, the URL policy, retries, the links' base,
    and how many calls at once (in all, and to one receiver)."""

    signers: Signers
    policy: FetchPolicy
    retry: RetryPolicy
    public_url: str
    concurrency: int = 16
    per_receiver: int = 2


def webhook_settings(
    config: AppConfig,
    key_secrets: Mapping[str, Sequence[str]],
    env: Mapping[str, str] = os.environ,
) -> WebhookSettings:
    """The webhook settings of ``config``: ``key_secrets`` (each API key hash's secrets,
    :func:`serve_app.api.auth.key_secrets`) and the service's secret in ``env`` sign. Webhooks
    are off (``not settings.signers``) without any secret.

    Raises:
        ValueError: For a malformed or short secret.
    """
    hooks = config.jobs.webhooks
    fetch = config.ingress.url_fetch  # for its private CAs; its allowlist is for URL inputs
    policy = FetchPolicy(
        max_bytes=ANSWER_BYTES,
        connect_timeout_s=min(fetch.connect_timeout_s, hooks.timeout_s),
        read_timeout_s=hooks.timeout_s,
        total_timeout_s=hooks.timeout_s,
        max_redirects=0,
        allowlist=tuple(hooks.allowlist),
        ca_file=fetch.ca_file,
    )
    retry = RetryPolicy(hooks.max_attempts, hooks.backoff_s, hooks.max_backoff_s)
    signing = signers(key_secrets, env.get(hooks.secret_env, "").strip())
    return WebhookSettings(signing, policy, retry, hooks.public_url, hooks.concurrency,
                           hooks.per_receiver)  # fmt: skip


class WebhookSender:
    """Sends the store's due webhook calls, up to ``concurrency`` at once and ``per_receiver``
    to one receiver, so a slow receiver holds back only its own calls; ``on_outcome`` hears
    each attempt's outcome (delivered, retry, failed)."""

    def __init__(
        self,
        store: JobStore,
        settings: WebhookSettings,
        on_outcome: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._signers, self._policy = settings.signers, settings.policy
        self._retry, self._base_url = settings.retry, settings.public_url
        self._concurrency, self._per_receiver = settings.concurrency, settings.per_receiver
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._clock = clock
        self._calling: dict[str, int] = {}  # calls in flight, by receiver

    async def run(self, poll_s: float) -> None:
        """Send what is due, looking again as soon as a call ends, and every ``poll_s`` while
        nothing is due. Cancelled, it cancels its calls in flight (they are due again once
        their claims lapse)."""
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                while len(calls) < self._concurrency:
                    delivery = await self._claim()
                    if delivery is None:
                        break
                    call = asyncio.create_task(self._deliver(delivery))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
                if not calls:
                    await asyncio.sleep(poll_s)
                    continue
                full = len(calls) >= self._concurrency
                await asyncio.wait(calls, timeout=None if full else poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    async def send_next(self) -> bool:
        """Make the next due attempt and wait for it; ``False`` when none was due."""
        delivery = await self._claim()
        if delivery is None:
            return False
        await self._deliver(delivery)
        return True

    async def _claim(self) -> Delivery | None:
        """The next due call to a receiver not at its limit, counted as in flight; ``None``
        when none is due (or the store did not answer)."""
        busy = frozenset(r for r, n in self._calling.items() if n >= self._per_receiver)
        # Held past the longest attempt: another sender does not take it meanwhile.
        lease = self._policy.total_timeout_s + 30
        try:
            delivery = await asyncio.to_thread(self._store.claim_delivery, lease, busy)
        except Exception:
            logger.exception("could not claim a webhook call")
            return None
        if delivery is not None:
            to = _receiver_of(delivery)
            self._calling[to] = self._calling.get(to, 0) + 1
        return delivery

    async def _deliver(self, delivery: Delivery) -> None:
        """Attempt ``delivery`` and record the outcome."""
        to = _receiver_of(delivery)
        try:
            outcome, error = await self._attempt(delivery)
            retry_at = None
            if outcome == "retry":
                retry_at = self._retry.retry_at(delivery.attempts, self._clock())
                if retry_at is None:
                    outcome = "failed"
            await asyncio.to_thread(self._store.delivery_result, delivery.id,
                                    outcome == "delivered", retry_at, error)  # fmt: skip
        except Exception:
            logger.exception("webhook delivery %s failed unexpectedly", delivery.id)
            return
        finally:
            self._calling[to] -= 1
            if not self._calling[to]:
                del self._calling[to]
        self._on_outcome(outcome)
        log = logger.info if outcome == "delivered" else logger.warning
        log("webhook %s of job %s, attempt %d: %s%s", delivery.id, delivery.job_id,
            delivery.attempts, outcome, f" ({error})" if error else "")  # fmt: skip

    async def _attempt(self, delivery: Delivery) -> tuple[str, str | None]:
        """``delivered``, ``retry`` or ``failed``, and why it was not delivered."""
        signing = self._signers.of(delivery.owner)
        if not signing:
            whose = "the service" if delivery.owner is None else "the job's API key"
            return "failed", f"{whose} has no webhook signing secret"
        body = event_body(delivery, self._base_url)
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(signing, delivery.id, timestamp, body),
        }
        try:
            answer = await post_url(delivery.url, self._policy, body, headers, ANSWER_BYTES)
        except (UrlNotAllowedError, InvalidInputError) as refused:
            return "failed", refused.message
        except ClientError as unreachable:  # timeouts, refused connections, no such host
            return "retry", unreachable.message
        status = answer.status_code
        if 200 <= status < 300:
            return "delivered", None
        why = f"HTTP {status}"
        if status >= 500 or status in RETRIED_STATUSES:
            return "retry", why
        return "failed", why


def _receiver_of(delivery: Delivery) -> str:
    """The receiver the store named, or the URL's (the URL itself when it has none)."""
    if delivery.receiver:
        return delivery.receiver
    try:
        return receiver(delivery.url)
    except ValueError:
        return delivery.url


def main(argv: list[str] | None = None) -> int:
    """``python -m serve_app.jobs.webhooks new``: a new secret, for a service without API
    keys (a key's own secret comes with it: ``python -m serve_app.api.auth new``)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Webhook secrets for the OCR service.")
    parser.add_argument("command", choices=["new"])
    parser.parse_args(argv)
    sys.stdout.write(f"{new_secret()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
