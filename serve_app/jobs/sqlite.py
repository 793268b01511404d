"""The embedded job store: one SQLite file, no server (``make serve``; one node).

The contract is :class:`serve_app.jobs.store.JobStore`'s.

Jobs, their uploads and each finished page live in the file, so a job outlives the request
that submitted it and the replica that ran it. A runner *claims* a job with a lease and a
fencing token; a job whose lease ran out (its runner died) is claimed again and resumed at
its first page not stored. Only the holder of the latest token stores pages or finishes the
job, and a page is stored once. Several processes on one node may share the file (WAL mode;
claims are exclusive transactions). A cluster of nodes needs a store that every node
reaches (``redis``).

Calls block (SQLite): async code runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_app.jobs.model import SCHEMA_VERSION, Job, JobSpec, JobState
from serve_app.jobs.store import (
    RUNNER_LOST,
    Delivery,
    IdempotencyConflictError,
    JobStats,
    QueueFullError,
    StoredPage,
    outages_as_unavailable,
    request_fingerprint,
    unreadable,
    webhook_receiver,
)

logger = logging.getLogger("ray.serve")

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
CREATE TABLE IF NOT EXISTS turns (owner TEXT PRIMARY KEY, served INTEGER NOT NULL);
"""

# Columns later releases added, made on files written before them.
ADDED_COLUMNS = {
    "jobs": {
        "v": f"INTEGER NOT NULL DEFAULT {SCHEMA_VERSION}",
        "fingerprint": "TEXT",
        "lease_token": "INTEGER NOT NULL DEFAULT 0",
        "lapses": "INTEGER NOT NULL DEFAULT 0",
    },
    "deliveries": {"owner": "TEXT", "receiver": "TEXT NOT NULL DEFAULT ''"},
}

# A file another process holds locked past the busy timeout.
_unavailable = outages_as_unavailable(
    lambda error: (
        isinstance(error, sqlite3.OperationalError)
        and ("locked" in str(error) or "busy" in str(error))
    ),
    "sqlite",
)


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
            for table, columns in ADDED_COLUMNS.items():
                have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

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

    @_unavailable
    def submit(
        self, spec: JobSpec, upload: bytes, max_queued: int | None = None
    ) -> tuple[Job, bool]:
        fingerprint = request_fingerprint(spec, upload) if spec.idempotency_key else None
        with self._transaction() as db:
            if spec.idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE coalesce(owner, '') = ? AND idempotency_key = ?",
                    (spec.owner or "", spec.idempotency_key),
                ).fetchone()
                if row is not None:
                    if row["fingerprint"] != fingerprint:
                        raise IdempotencyConflictError(row["id"])
                    return _job(row), False
            if max_queued is not None:
                queued = db.execute(
                    "SELECT count(*) FROM jobs WHERE coalesce(owner, '') = ? AND state = ?",
                    (spec.owner or "", JobState.QUEUED),
                ).fetchone()[0]
                if queued >= max_queued:
                    raise QueueFullError(queued)
            job_id = f"job-{uuid.uuid4().hex}"
            db.execute(
                "INSERT INTO jobs (id, state, spec, owner, idempotency_key, fingerprint, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, JobState.QUEUED, json.dumps(spec.to_json()), spec.owner,
                 spec.idempotency_key, fingerprint, self._clock()),
            )  # fmt: skip
            db.execute("INSERT INTO uploads (job_id, data) VALUES (?, ?)", (job_id, upload))
            return _job(_row(db, job_id)), True

    @_unavailable
    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    @_unavailable
    def upload(self, job_id: str) -> bytes:
        with self._connect() as db:
            row = db.execute("SELECT data FROM uploads WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return bytes(row["data"])

    @_unavailable
    def list_jobs(
        self, owner: str | None, state: JobState | None = None, limit: int = 20, offset: int = 0
    ) -> list[Job]:
        query = "SELECT * FROM jobs WHERE coalesce(owner, '') = ?"
        args: list[Any] = [owner or ""]
        if state is not None:
            query += " AND state = ?"
            args.append(state)
        query += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        with self._connect() as db:
            rows = db.execute(query, [*args, limit, offset]).fetchall()
        return [job for job in map(_tolerant, rows) if job is not None]

    @_unavailable
    def claim(self, worker: str, lease_s: float, max_attempts: int = 3) -> Job | None:
        now = self._clock()
        while True:
            with self._transaction() as db:
                while True:  # a lapsed lease first: its job is running already
                    row = db.execute(
                        "SELECT id, lapses FROM jobs WHERE state = ? AND lease_until < ? "
                        "ORDER BY lease_until LIMIT 1",
                        (JobState.RUNNING, now),
                    ).fetchone()
                    if row is None or row["lapses"] + 1 < max_attempts:
                        break
                    db.execute("UPDATE jobs SET lapses = lapses + 1 WHERE id = ?", (row["id"],))
                    _end(db, row["id"], JobState.FAILED, now, RUNNER_LOST)
                if row is not None:
                    db.execute("UPDATE jobs SET lapses = lapses + 1 WHERE id = ?", (row["id"],))
                else:
                    row = db.execute(
                        "SELECT j.id, coalesce(j.owner, '') AS owner FROM jobs j "
                        "LEFT JOIN turns t ON t.owner = coalesce(j.owner, '') WHERE j.state = ? "
                        "ORDER BY coalesce(t.served, 0), t.owner, j.created_at, j.id LIMIT 1",
                        (JobState.QUEUED,),
                    ).fetchone()
                    if row is None:
                        return None
                    db.execute(
                        "INSERT INTO turns (owner, served) VALUES (?, "
                        "(SELECT coalesce(max(served), 0) + 1 FROM turns)) "
                        "ON CONFLICT (owner) DO UPDATE SET served = excluded.served",
                        (row["owner"],),
                    )
                db.execute(
                    "UPDATE jobs SET state = ?, lease_owner = ?, lease_until = ?, "
                    "lease_token = lease_token + 1, started_at = coalesce(started_at, ?) "
                    "WHERE id = ?",
                    (JobState.RUNNING, worker, now + lease_s, now, row["id"]),
                )
                claimed = _row(db, row["id"])
            try:
                return _job(claimed)
            except (KeyError, ValueError, TypeError) as error:
                logger.exception("job %s: its stored fields do not decode; it fails", row["id"])
                token = claimed["lease_token"]
                self.finish(claimed["id"], token, JobState.FAILED, unreadable(error))

    @_unavailable
    def renew(self, job_id: str, token: int, lease_s: float) -> bool:
        with self._transaction() as db:
            return _holds(db, job_id, token, extend_to=self._clock() + lease_s)

    @_unavailable
    def set_selected(
        self, job_id: str, token: int, kind: str, page_count: int, numbers: Sequence[int]
    ) -> bool:
        with self._transaction() as db:
            if not _holds(db, job_id, token):
                return False
            db.execute(
                "UPDATE jobs SET kind = ?, page_count = ?, selected = ? WHERE id = ?",
                (kind, page_count, json.dumps(list(numbers)), job_id),
            )
            return True

    @_unavailable
    def save_page(
        self, job_id: str, token: int, number: int, page: dict[str, Any], failed: bool
    ) -> bool:
        with self._transaction() as db:
            if not _holds(db, job_id, token):
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

    @_unavailable
    def stored_numbers(self, job_id: str) -> set[int]:
        with self._connect() as db:
            rows = db.execute("SELECT number FROM pages WHERE job_id = ?", (job_id,))
            return {row["number"] for row in rows}

    @_unavailable
    def pages(self, job_id: str, skip: int = 0) -> list[StoredPage]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT seq, number, page FROM pages WHERE job_id = ? ORDER BY seq "
                "LIMIT -1 OFFSET ?",
                (job_id, skip),
            ).fetchall()
        return [
            StoredPage(skip + index, row["number"], json.loads(row["page"]))
            for index, row in enumerate(rows, start=1)
        ]

    @_unavailable
    def page(self, job_id: str, number: int) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT page FROM pages WHERE job_id = ? AND number = ?", (job_id, number)
            ).fetchone()
        return json.loads(row["page"]) if row is not None else None

    @_unavailable
    def queue_position(self, job: Job) -> int:
        owner = job.spec.owner or ""
        with self._connect() as db:
            rank = db.execute(
                "SELECT count(*) FROM jobs WHERE coalesce(owner, '') = ? AND state = ? "
                "AND (created_at < ? OR (created_at = ? AND id < ?))",
                (owner, JobState.QUEUED, job.created_at, job.created_at, job.id),
            ).fetchone()[0]
            mine = db.execute("SELECT served FROM turns WHERE owner = ?", (owner,)).fetchone()
            others = db.execute(
                "SELECT coalesce(sum(min(q.n, ? + (coalesce(t.served, 0) < ?))), 0) FROM "
                "(SELECT coalesce(owner, '') AS o, count(*) AS n FROM jobs WHERE state = ? "
                "GROUP BY o) q LEFT JOIN turns t ON t.owner = q.o WHERE q.o != ?",
                (rank, mine["served"] if mine else 0, JobState.QUEUED, owner),
            ).fetchone()[0]
        return int(rank) + int(others)

    @_unavailable
    def stats(self) -> JobStats:
        with self._connect() as db:
            row = db.execute(
                "SELECT sum(state = ?) AS queued, sum(state = ?) AS running, "
                "min(CASE WHEN state = ? THEN created_at END) AS oldest FROM jobs "
                "WHERE state IN (?, ?)",
                (JobState.QUEUED, JobState.RUNNING, JobState.QUEUED, JobState.QUEUED,
                 JobState.RUNNING),
            ).fetchone()  # fmt: skip
        oldest = self._clock() - row["oldest"] if row["oldest"] is not None else 0.0
        return JobStats(row["queued"] or 0, row["running"] or 0, oldest)

    @_unavailable
    def finish(
        self, job_id: str, token: int, state: JobState, error: dict[str, str] | None = None
    ) -> bool:
        with self._transaction() as db:
            if not _holds(db, job_id, token):
                return False
            _end(db, job_id, state, self._clock(), error)
            return True

    @_unavailable
    def release(self, job_id: str, token: int) -> bool:
        with self._transaction() as db:
            if not _holds(db, job_id, token):
                return False
            db.execute(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (JobState.QUEUED, job_id),
            )
            return True

    @_unavailable
    def cancel(self, job_id: str) -> Job | None:
        with self._transaction() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if state is not None and state["state"] in (JobState.QUEUED, JobState.RUNNING):
                _end(db, job_id, JobState.CANCELLED, self._clock(), None)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    @_unavailable
    def claim_delivery(self, lease_s: float, busy: Collection[str] = ()) -> Delivery | None:
        now = self._clock()
        skipped = ",".join("?" * len(busy))
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? "
                f"AND receiver NOT IN ({skipped}) ORDER BY next_at LIMIT 1",
                (now, *busy),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                (now + lease_s, row["id"]),
            )
        return Delivery(row["id"], row["job_id"], row["url"], JobState(row["job_state"]),
                        row["created_at"], row["attempts"] + 1, owner=row["owner"],
                        receiver=row["receiver"])  # fmt: skip

    @_unavailable
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

    @_unavailable
    def delivery_state(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT state, attempts, last_error FROM deliveries WHERE job_id = ?", (job_id,)
            ).fetchone()
        return dict(row) if row is not None else None

    @_unavailable
    def delete(self, job_id: str) -> bool:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM uploads WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM pages WHERE job_id = ?", (job_id,))
        return bool(deleted)

    @_unavailable
    def expire(self, older_than_s: float) -> int:
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


def _holds(db: sqlite3.Connection, job_id: str, token: int, extend_to: float | None = None) -> bool:
    """Whether claim ``token`` holds the running job (its lease extended to ``extend_to``)."""
    row = db.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND state = ? AND lease_token = ?",
        (job_id, JobState.RUNNING, token),
    ).fetchone()
    if row is not None and extend_to is not None:
        db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (extend_to, job_id))
    return row is not None


def _end(
    db: sqlite3.Connection,
    job_id: str,
    state: JobState,
    now: float,
    error: dict[str, str] | None,
) -> None:
    """End the job in ``state`` and owe its webhook call, if it asked for one."""
    db.execute(
        "UPDATE jobs SET state = ?, finished_at = ?, error = coalesce(?, error), "
        "lease_owner = NULL, lease_until = NULL WHERE id = ?",
        (state, now, json.dumps(error) if error else None, job_id),
    )
    spec = JobSpec.from_json(json.loads(_row(db, job_id)["spec"]))
    if spec.webhook_url is None:
        return
    db.execute(
        "INSERT INTO deliveries (id, job_id, url, owner, receiver, state, job_state, "
        "created_at, next_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        (f"msg_{uuid.uuid4().hex}", job_id, spec.webhook_url, spec.owner,
         webhook_receiver(spec), state, now, now),
    )  # fmt: skip


def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    row: sqlite3.Row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row


def _tolerant(row: sqlite3.Row) -> Job | None:
    """A listed job, or ``None`` for one that does not decode (logged)."""
    try:
        return _job(row)
    except (KeyError, ValueError, TypeError):
        logger.exception("job %s: its stored fields do not decode", row["id"])
        return None


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
        lease_token=row["lease_token"] if row["state"] == JobState.RUNNING else None,
        lapses=row["lapses"],
    )
