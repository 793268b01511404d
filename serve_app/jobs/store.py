"""What a job store does (:func:`serve_app.jobs.configured.open_store` opens one).

Two stores keep the same contract (``tests/unit/test_jobs.py`` runs it against both):

- ``sqlite`` (default): one SQLite file, no server; every replica must be on one node (or
  share the file's volume). :mod:`serve_app.jobs.sqlite`.
- ``redis``: jobs, leases and the page index in Redis, uploads and page bodies as files under
  a directory every node mounts (a shared volume). :mod:`serve_app.jobs.redis_store`.

A runner *claims* a job with a lease it renews while it works; only the lease holder stores
pages or ends the job, and a page is stored once. Calls block: async code runs them with
``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.jobs.model import Job, JobSpec, JobState


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
        attempts: Tries so far, this one included (a claim counts as one).
        created_at: When the job ended (the event's timestamp).
    """

    id: str
    job_id: str
    url: str
    state: JobState
    created_at: float
    attempts: int


class JobStore(Protocol):
    def submit(self, spec: JobSpec, upload: bytes) -> tuple[Job, bool]:
        """A new queued job, or the one this owner already submitted with the same
        idempotency key; ``True`` when it is new."""
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

    def claim(self, worker: str, lease_s: float) -> Job | None:
        """The oldest queued job, or a running one whose lease ran out, now leased to
        ``worker``; ``None`` when there is none."""
        ...

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease; ``False`` once it no longer holds it."""
        ...

    def set_selected(
        self, job_id: str, worker: str, kind: str, page_count: int, numbers: Sequence[int]
    ) -> bool: ...

    def save_page(
        self, job_id: str, worker: str, number: int, page: dict[str, Any], failed: bool
    ) -> bool:
        """Store a finished page once (a page already stored stays as it is); ``False`` when
        ``worker`` no longer holds the lease (nothing is stored)."""
        ...

    def stored_numbers(self, job_id: str) -> set[int]: ...

    def pages(self, job_id: str, skip: int = 0) -> list[StoredPage]:
        """The stored pages in the order they were stored, after the first ``skip``."""
        ...

    def page(self, job_id: str, number: int) -> dict[str, Any] | None: ...

    def queue_position(self, job: Job) -> int:
        """How many queued jobs are ahead of ``job``."""
        ...

    def stats(self) -> JobStats: ...

    def finish(
        self, job_id: str, worker: str, state: JobState, error: dict[str, str] | None = None
    ) -> bool:
        """End ``worker``'s job in a final ``state`` (and owe its webhook, in the same step);
        ``False`` if it no longer holds it."""
        ...

    def release(self, job_id: str, worker: str) -> bool:
        """Give the job back to the queue; its stored pages stay."""
        ...

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its runner loses the lease; its webhook is owed);
        ``None`` if unknown."""
        ...

    def delete(self, job_id: str) -> bool:
        """Remove the job and everything stored for it."""
        ...

    def claim_delivery(self, lease_s: float) -> Delivery | None:
        """The oldest webhook call that is due, held for ``lease_s`` (then due again, if its
        sender died); ``None`` when none is due."""
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
        job stays, marked expired (410, not 404). How many were freed."""
        ...
