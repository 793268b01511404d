"""What a job is: what was submitted, and where it stands."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from serve_app.documents.door import RequestFields

logger = logging.getLogger("ray.serve")

# The stored job's layout; a store writes it beside every job (a later release that changes
# the layout reads older jobs by it).
SCHEMA_VERSION = 1


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
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        """The spec stored as ``data``; a field this release does not know (written by a
        newer one, or renamed) is dropped and logged, a missing one takes its default.

        Raises:
            ValueError: When ``data`` is not a stored spec at all.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("fields", {}), Mapping):
            raise ValueError(f"not a stored job spec: {str(data)[:200]}")
        fields = _known(RequestFields, data.get("fields", {}))
        return _known(cls, {**data, "fields": fields})

    def fingerprint_json(self) -> dict[str, Any]:
        """What makes two submits the same request (the owner and key aside)."""
        out = self.to_json()
        del out["owner"], out["idempotency_key"]
        return out


@dataclass(frozen=True)
class Job:
    """A job as the store holds it.

    Attributes:
        selected: The document's selected page numbers (1-based), known once it was opened.
        pages_total: How many pages the job runs (``None`` until the document was opened).
        pages_done: Pages stored, failed ones included.
        error: The job's error (``{"code", "message"}``) when the document itself failed.
        lease_owner: The runner working on it, until ``lease_until`` (store clock seconds).
        lease_token: The fencing token of the latest claim: only its holder may change the
            job.
        lapses: Claims whose lease ran out (their runner died); past ``jobs.max_attempts``
            the job fails.
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
    lease_token: int | None = None
    lapses: int = 0

    @property
    def pages_total(self) -> int | None:
        return len(self.selected) if self.selected is not None else None


_T = TypeVar("_T")


def _known(cls: type[_T], data: Mapping[str, Any]) -> _T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        logger.warning("stored %s: ignoring fields this release does not know: %s",
                       cls.__name__, ", ".join(unknown))  # fmt: skip
    return cls(**{k: v for k, v in data.items() if k in names})
