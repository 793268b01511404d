"""What a job store does (:func:`serve_app.jobs.configured.open_store` opens one).

Two stores keep the same contract (``tests/unit/test_jobs.py`` runs it against both):

- ``sqlite`` (default): one SQLite file, no server; every replica must be on one node.
  :mod:`serve_app.jobs.sqlite`.
- ``redis``: jobs, leases, queues and the page index in Redis; uploads and page bodies in
  object storage every node reaches (:mod:`serve_app.jobs.blobs`).
  :mod:`serve_app.jobs.redis_store`.

A runner *claims* a job: the claim is a lease with a *fencing token*, a number no earlier
claim of the job had. Every change the lease guards (renew, pages, end, release) names the
token, so a holder whose lease lapsed cannot write to the job, even in the replica that took
it back. A page is stored once. Queued jobs are claimed round-robin across owners (the oldest
of the owner served longest ago first), a job whose lease lapsed before a queued one. Calls
block: async code runs them with ``asyncio.to_thread``. A store that cannot reach its server
or blobs for a moment raises :class:`StoreUnavailableError`: the call may be made again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

import httpx

from serve_app.documents.fetch import DEFAULT_PORTS
from serve_app.jobs.model import Job, JobSpec, JobState

# A job whose runner died with it max_attempts times (see JobsConfig.max_attempts).
RUNNER_LOST = {
    "code": "job_runner_lost",
    "message": "the job's runner stopped while running it too many times (jobs.max_attempts): "
    "one of its pages may bring the service down; the pages stored are kept",
}


def request_fingerprint(spec: JobSpec, upload: bytes) -> str:
    """What an idempotency key is held to: the request's options and document."""
    digest = hashlib.sha256(json.dumps(spec.fingerprint_json(), sort_keys=True).encode())
    digest.update(hashlib.sha256(upload).digest())
    return digest.hexdigest()


def receiver(url: str) -> str:
    """Whom ``url`` calls: its ``scheme://host:port``, the default port written out. Calls to
    one receiver are limited together.

    >>> receiver("https://Hooks.example.com/ocr?job=1")
    'https://hooks.example.com:443'
    >>> receiver("http://[::1]:8080/hook")
    'http://[::1]:8080'

    Raises:
        ValueError: For a URL that is not http(s) with a host.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError("a webhook URL is not a URL") from None
    host = parsed.raw_host.decode("ascii")
    if parsed.scheme not in DEFAULT_PORTS or not host:
        raise ValueError("a webhook URL is http(s) and names a host")
    host = f"[{host}]" if ":" in host else host
    return f"{parsed.scheme}://{host}:{parsed.port or DEFAULT_PORTS[parsed.scheme]}"


def webhook_receiver(spec: JobSpec) -> str:
    """Whom the job's webhook calls (``scheme://host:port``); empty without one."""
    try:
        return receiver(spec.webhook_url) if spec.webhook_url else ""
    except ValueError:  # refused at submit; an old job's bad URL fails at its call
        return ""


def unreadable(error: Exception) -> dict[str, str]:
    """The error of a claimed job whose stored fields do not decode (it fails, the queue
    goes on)."""
    return {
        "code": "stored_job_unreadable",
        "message": f"the stored job could not be read ({error!r})",
    }


class StoreUnavailableError(Exception):
    """The store's server or its blobs did not answer (a restart, a network blip, a locked
    database): nothing was changed that a retry of the same call would not make once."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def outages_as_unavailable(
    is_outage: Callable[[Exception], bool], server: str
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A decorator for a store's calls: an error ``is_outage`` says is its ``server`` not
    answering becomes :class:`StoreUnavailableError`, which callers may retry."""

    def decorate(call: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(call)
        def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return call(*args, **kwargs)
            except Exception as error:
                if is_outage(error):
                    raise StoreUnavailableError(f"{server}: {error}") from error
                raise

        return wrapped

    return decorate


class IdempotencyConflictError(Exception):
    """The owner's idempotency key was used before for a different request."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class QueueFullError(Exception):
    """The owner has as many queued jobs as it may."""

    def __init__(self, queued: int) -> None:
        super().__init__(queued)
        self.queued = queued


class PageBodyMissingError(Exception):
    """A stored page's body is missing from the blobs while its job still holds it."""


@dataclass(frozen=True)
class StoredPage:
    """A finished page: ``seq`` orders pages as they were stored."""

    seq: int
    number: int
    page: dict[str, Any]


@dataclass(frozen=True)
class JobStats:
    """Jobs waiting and running, and how long the oldest queued job has waited (0: none)."""

    queued: int
    running: int
    oldest_queued_s: float


@dataclass(frozen=True)
class Delivery:
    """A webhook call owed for a job that ended: the outbox keeps it until it is delivered
    or given up, so it survives the replica that owed it.

    Attributes:
        id: The message id (``webhook-id``): the same on every attempt.
        owner: The job's owner (its API key's hash; ``None`` without keys): whose secret
            signs the call.
        receiver: ``scheme://host:port`` of ``url``: calls to one receiver are limited.
        attempts: Tries so far, this one included (a claim counts as one).
        created_at: When the job ended (the event's timestamp).
    """

    id: str
    job_id: str
    url: str
    state: JobState
    created_at: float
    attempts: int
    owner: str | None = None
    receiver: str = ""


class JobStore(Protocol):
    def submit(
        self, spec: JobSpec, upload: bytes, max_queued: int | None = None
    ) -> tuple[Job, bool]:
        """A new queued job, or the one this owner already submitted with the same
        idempotency key and the same request (its fields and upload); ``True`` when it is new.
        One key makes one job whatever the timing of the submits.

        Raises:
            IdempotencyConflictError: The key was used before for a different request.
            QueueFullError: The owner has ``max_queued`` jobs queued already.
        """
        ...

    def get(self, job_id: str) -> Job | None: ...

    def upload(self, job_id: str) -> bytes:
        """The job's document. Raises ``KeyError`` once it was freed (deleted, expired)."""
        ...

    def list_jobs(
        self, owner: str | None, state: JobState | None = None, limit: int = 20, offset: int = 0
    ) -> list[Job]:
        """``owner``'s jobs (``None``: those submitted without a key), newest first."""
        ...

    def claim(self, worker: str, lease_s: float, max_attempts: int = 3) -> Job | None:
        """A running job whose lease ran out, or else the next queued job (round-robin across
        owners), now leased to ``worker`` with a new ``lease_token``; ``None`` when there is
        none. A job whose lease ran out ``max_attempts`` times is failed
        (``job_runner_lost``) instead of claimed again."""
        ...

    def renew(self, job_id: str, token: int, lease_s: float) -> bool:
        """Extend the lease of claim ``token``; ``False`` once it no longer holds it."""
        ...

    def set_selected(
        self, job_id: str, token: int, kind: str, page_count: int, numbers: Sequence[int]
    ) -> bool: ...

    def save_page(
        self, job_id: str, token: int, number: int, page: dict[str, Any], failed: bool
    ) -> bool:
        """Store a finished page once (a page already stored stays as it is); ``False`` when
        claim ``token`` no longer holds the lease (nothing is stored)."""
        ...

    def stored_numbers(self, job_id: str) -> set[int]: ...

    def pages(self, job_id: str, skip: int = 0) -> list[StoredPage]:
        """The stored pages in the order they were stored, after the first ``skip``; a job
        freed meanwhile (expired, deleted) gives what was read before.

        Raises:
            PageBodyMissingError: A page's body is gone although the job still holds it.
        """
        ...

    def page(self, job_id: str, number: int) -> dict[str, Any] | None: ...

    def queue_position(self, job: Job) -> int:
        """About how many queued jobs will be claimed before ``job`` (round-robin)."""
        ...

    def stats(self) -> JobStats:
        """Queued and running counts, without reading every job."""
        ...

    def finish(
        self, job_id: str, token: int, state: JobState, error: dict[str, str] | None = None
    ) -> bool:
        """End claim ``token``'s job in a final ``state`` (and owe its webhook, in the same
        step); ``False`` if it no longer holds it."""
        ...

    def release(self, job_id: str, token: int) -> bool:
        """Give the job back to the queue (not counted as an attempt); its pages stay."""
        ...

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its runner loses the lease; its webhook is owed);
        ``None`` if unknown."""
        ...

    def delete(self, job_id: str) -> bool:
        """Remove the job and everything stored for it (its webhook call included)."""
        ...

    def claim_delivery(self, lease_s: float, busy: Collection[str] = ()) -> Delivery | None:
        """The oldest webhook call that is due and not to a ``busy`` receiver, held for
        ``lease_s`` (then due again, if its sender died); ``None`` when none is."""
        ...

    def delivery_result(
        self, delivery_id: str, delivered: bool, retry_at: float | None, error: str | None
    ) -> None:
        """Record an attempt: delivered, to be retried at ``retry_at``, or given up."""
        ...

    def delivery_state(self, job_id: str) -> dict[str, Any] | None:
        """The job's webhook: ``state`` (pending, delivered, failed), ``attempts`` and
        ``last_error``; ``None`` when none is owed."""
        ...

    def expire(self, older_than_s: float) -> int:
        """Free the upload and pages of jobs that ended more than ``older_than_s`` ago; the
        job stays, marked expired (410, not 404). How many were freed. A job deleted
        meanwhile stays deleted."""
        ...
