"""The embedded job store: one SQLite file, no server (``make serve``; one node).

The contract is :class:`serve_app.jobs.store.JobStore`'s.

Jobs, their uploads and each finished page live in the file, so a job outlives the request
that submitted it and the replica that ran it. A runner *claims* a job with a lease it renews
while it works; a job whose lease ran out (its runner died) is claimed again and resumed at its
first page not stored. Only the lease holder stores pages or finishes the job, and a page is
stored once. Several processes on one node may share the file (WAL mode; claims are exclusive
transactions). A cluster of nodes needs a store that every node reaches (``redis``).

Calls block (SQLite): async code runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_app.jobs.model import Job, JobSpec, JobState
from serve_app.jobs.store import Delivery, JobStats, StoredPage

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    owner TEXT,
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expired_at REAL,
    kind TEXT,
    page_count INTEGER,
    selected TEXT,
    pages_done INTEGER NOT NULL DEFAULT 0,
    pages_failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    lease_owner TEXT,
    lease_until REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (coalesce(owner, ''), idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    job_state TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS uploads (job_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    page TEXT NOT NULL,
    UNIQUE (job_id, number)
);
"""


class SqliteJobStore:
    """Jobs in the SQLite file at ``path`` (made if missing); ``clock`` gives seconds."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self._path = str(path)
        self._clock = clock
        self._local = threading.local()
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the file (opened once per thread: opening one costs
        more than most calls here)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            # With WAL, a commit survives a crash of any process; only an OS crash or power
            # loss may take the last commits back (then their pages run again: never lost,
            # never stored twice).
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An exclusive write transaction: claims and lease checks see no one in between."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def submit(self, spec: JobSpec, upload: bytes) -> tuple[Job, bool]:
        """A new queued job, or the one this owner already submitted with the same
        idempotency key; ``True`` when it is new."""
        with self._transaction() as db:
            if spec.idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE coalesce(owner, '') = ? AND idempotency_key = ?",
                    (spec.owner or "", spec.idempotency_key),
                ).fetchone()
                if row is not None:
                    return _job(row), False
            job_id = f"job-{uuid.uuid4().hex}"
            db.execute(
                "INSERT INTO jobs (id, state, spec, owner, idempotency_key, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, JobState.QUEUED, json.dumps(spec.to_json()), spec.owner,
                 spec.idempotency_key, self._clock()),
            )  # fmt: skip
            db.execute("INSERT INTO uploads (job_id, data) VALUES (?, ?)", (job_id, upload))
            return _job(_row(db, job_id)), True

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def upload(self, job_id: str) -> bytes:
        """The job's document.

        Raises:
            KeyError: The job has none (deleted or expired).
        """
        with self._connect() as db:
            row = db.execute("SELECT data FROM uploads WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return bytes(row["data"])

    def list_jobs(
        self, owner: str | None, state: JobState | None = None, limit: int = 20, offset: int = 0
    ) -> list[Job]:
        """``owner``'s jobs (``None``: those submitted without a key), newest first."""
        query = "SELECT * FROM jobs WHERE coalesce(owner, '') = ?"
        args: list[Any] = [owner or ""]
        if state is not None:
            query += " AND state = ?"
            args.append(state)
        query += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        with self._connect() as db:
            return [_job(row) for row in db.execute(query, [*args, limit, offset])]

    def claim(self, worker: str, lease_s: float) -> Job | None:
        """The oldest queued job, or a running one whose lease ran out, now leased to
        ``worker`` for ``lease_s``; ``None`` when there is none."""
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? OR (state = ? AND lease_until < ?) "
                "ORDER BY created_at LIMIT 1",
                (JobState.QUEUED, JobState.RUNNING, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, lease_owner = ?, lease_until = ?, "
                "started_at = coalesce(started_at, ?) WHERE id = ?",
                (JobState.RUNNING, worker, now + lease_s, now, row["id"]),
            )
            return _job(_row(db, row["id"]))

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease; ``False`` once it no longer holds it (the job was
        cancelled, or claimed by another runner after the lease ran out)."""
        with self._transaction() as db:
            return _holds(db, job_id, worker, extend_to=self._clock() + lease_s)

    def set_selected(
        self, job_id: str, worker: str, kind: str, page_count: int, numbers: Sequence[int]
    ) -> bool:
        """Record what the opened document is: its kind, page count and selected pages."""
        with self._transaction() as db:
            if not _holds(db, job_id, worker):
                return False
            db.execute(
                "UPDATE jobs SET kind = ?, page_count = ?, selected = ? WHERE id = ?",
                (kind, page_count, json.dumps(list(numbers)), job_id),
            )
            return True

    def save_page(
        self, job_id: str, worker: str, number: int, page: dict[str, Any], failed: bool
    ) -> bool:
        """Store a finished page (once: a page already stored is left as it is); ``False``
        when ``worker`` no longer holds the job's lease (nothing is stored)."""
        with self._transaction() as db:
            if not _holds(db, job_id, worker):
                return False
            stored = db.execute(
                "INSERT OR IGNORE INTO pages (job_id, number, failed, page) VALUES (?, ?, ?, ?)",
                (job_id, number, int(failed), json.dumps(page)),
            ).rowcount
            if stored:
                db.execute(
                    "UPDATE jobs SET pages_done = pages_done + 1, "
                    "pages_failed = pages_failed + ? WHERE id = ?",
                    (int(failed), job_id),
                )
            return True

    def stored_numbers(self, job_id: str) -> set[int]:
        with self._connect() as db:
            rows = db.execute("SELECT number FROM pages WHERE job_id = ?", (job_id,))
            return {row["number"] for row in rows}

    def pages(self, job_id: str, skip: int = 0) -> list[StoredPage]:
        """The job's stored pages in the order they were stored, after the first ``skip``
        (an event stream's position: its ids count the pages sent)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT seq, number, page FROM pages WHERE job_id = ? ORDER BY seq "
                "LIMIT -1 OFFSET ?",
                (job_id, skip),
            ).fetchall()
        return [StoredPage(row["seq"], row["number"], json.loads(row["page"])) for row in rows]

    def page(self, job_id: str, number: int) -> dict[str, Any] | None:
        """Page ``number`` (1-based) of the job, if stored."""
        with self._connect() as db:
            row = db.execute(
                "SELECT page FROM pages WHERE job_id = ? AND number = ?", (job_id, number)
            ).fetchone()
        return json.loads(row["page"]) if row is not None else None

    def queue_position(self, job: Job) -> int:
        """How many queued jobs are ahead of ``job`` (0: it is next)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT count(*) AS ahead FROM jobs WHERE state = ? AND created_at < ?",
                (JobState.QUEUED, job.created_at),
            ).fetchone()
        return int(row["ahead"])

    def stats(self) -> JobStats:
        with self._connect() as db:
            row = db.execute(
                "SELECT sum(state = ?) AS queued, sum(state = ?) AS running, "
                "min(CASE WHEN state = ? THEN created_at END) AS oldest FROM jobs",
                (JobState.QUEUED, JobState.RUNNING, JobState.QUEUED),
            ).fetchone()
        oldest = self._clock() - row["oldest"] if row["oldest"] is not None else 0.0
        return JobStats(row["queued"] or 0, row["running"] or 0, oldest)

    def finish(
        self, job_id: str, worker: str, state: JobState, error: dict[str, str] | None = None
    ) -> bool:
        with self._transaction() as db:
            if not _holds(db, job_id, worker):
                return False
            now = self._clock()
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                (state, now, json.dumps(error) if error else None, job_id),
            )
            _owe_webhook(db, job_id, state, now)
            return True

    def release(self, job_id: str, worker: str) -> bool:
        """Give the job back to the queue (the service was full): its stored pages stay."""
        with self._transaction() as db:
            if not _holds(db, job_id, worker):
                return False
            db.execute(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (JobState.QUEUED, job_id),
            )
            return True

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its runner loses the lease and stops); a finished
        one is left as it is. ``None`` for an unknown id."""
        with self._transaction() as db:
            now = self._clock()
            cancelled = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ? AND state IN (?, ?)",
                (JobState.CANCELLED, now, job_id, JobState.QUEUED, JobState.RUNNING),
            ).rowcount
            if cancelled:
                _owe_webhook(db, job_id, JobState.CANCELLED, now)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def claim_delivery(self, lease_s: float) -> Delivery | None:
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? "
                "ORDER BY next_at LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                (now + lease_s, row["id"]),
            )
        return Delivery(row["id"], row["job_id"], row["url"], JobState(row["job_state"]),
                        row["created_at"], row["attempts"] + 1)  # fmt: skip

    def delivery_result(
        self, delivery_id: str, delivered: bool, retry_at: float | None, error: str | None
    ) -> None:
        state = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, next_at = coalesce(?, next_at), "
                "last_error = ? WHERE id = ?",
                (state, retry_at, error, delivery_id),
            )

    def delivery_state(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT state, attempts, last_error FROM deliveries WHERE job_id = ?", (job_id,)
            ).fetchone()
        return dict(row) if row is not None else None

    def delete(self, job_id: str) -> bool:
        """Remove the job and everything stored for it (a runner still working on it loses
        its lease and stops)."""
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            db.execute("DELETE FROM deliveries WHERE job_id = ? AND state != 'pending'", (job_id,))
            db.execute("DELETE FROM uploads WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM pages WHERE job_id = ?", (job_id,))
        return bool(deleted)

    def expire(self, older_than_s: float) -> int:
        """Free the upload and pages of jobs that finished more than ``older_than_s`` ago;
        the job itself stays, marked expired (so its id answers 410, not 404)."""
        now = self._clock()
        with self._transaction() as db:
            ids = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE finished_at < ? AND expired_at IS NULL",
                    (now - older_than_s,),
                )
            ]
            for job_id in ids:
                db.execute("DELETE FROM uploads WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM pages WHERE job_id = ?", (job_id,))
                db.execute("UPDATE jobs SET expired_at = ? WHERE id = ?", (now, job_id))
        return len(ids)


def _holds(
    db: sqlite3.Connection, job_id: str, worker: str, extend_to: float | None = None
) -> bool:
    """Whether ``worker`` holds the running job's lease (extended to ``extend_to`` if given)."""
    row = db.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND state = ? AND lease_owner = ?",
        (job_id, JobState.RUNNING, worker),
    ).fetchone()
    if row is not None and extend_to is not None:
        db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (extend_to, job_id))
    return row is not None


def _owe_webhook(db: sqlite3.Connection, job_id: str, state: JobState, now: float) -> None:
    """Put the ended job's webhook call in the outbox, if it asked for one."""
    spec = JobSpec.from_json(json.loads(_row(db, job_id)["spec"]))
    if spec.webhook_url is None:
        return
    db.execute(
        "INSERT INTO deliveries (id, job_id, url, state, job_state, created_at, next_at) "
        "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
        (f"msg_{uuid.uuid4().hex}", job_id, spec.webhook_url, state, now, now),
    )


def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    row: sqlite3.Row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        spec=JobSpec.from_json(json.loads(row["spec"])),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expired_at=row["expired_at"],
        kind=row["kind"],
        page_count=row["page_count"],
        selected=tuple(json.loads(row["selected"])) if row["selected"] else None,
        pages_done=row["pages_done"],
        pages_failed=row["pages_failed"],
        error=json.loads(row["error"]) if row["error"] else None,
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
    )
