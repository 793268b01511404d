"""What a job is: what was submitted, and where it stands."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from serve_app.documents.door import RequestFields


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # finished, some pages failed
    FAILED = "failed"  # no page succeeded, or the document could not be opened
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobSpec:
    """A submitted job: the request's fields (checked at the door before the job exists, and
    resolved again by the runner), whose it is, and what comes back with it.

    Attributes:
        owner: Who may see the job (an API key's hash), or ``None`` without keys.
        idempotency_key: The client's key: a repeated submit of it returns the same job.
    """

    fields: RequestFields
    owner: str | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fields": dataclasses.asdict(self.fields)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**{**data, "fields": RequestFields(**data["fields"])})


@dataclass(frozen=True)
class Job:
    """A job as the store holds it.

    Attributes:
        selected: The document's selected page numbers (1-based), known once it was opened.
        pages_total: How many pages the job runs (``None`` until the document was opened).
        pages_done: Pages stored, failed ones included.
        error: The job's error (``{"code", "message"}``) when the document itself failed.
        lease_owner: The runner working on it, until ``lease_until`` (store clock seconds).
    """

    id: str
    state: JobState
    spec: JobSpec
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expired_at: float | None = None  # its upload and pages were freed
    kind: str | None = None  # "pdf" or "image", once the document was opened
    page_count: int | None = None
    selected: tuple[int, ...] | None = None
    pages_done: int = 0
    pages_failed: int = 0
    error: dict[str, str] | None = None
    lease_owner: str | None = None
    lease_until: float | None = None

    @property
    def pages_total(self) -> int | None:
        return len(self.selected) if self.selected is not None else None
