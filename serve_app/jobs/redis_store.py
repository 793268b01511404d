"""The cluster job store: jobs, leases and the page index in Redis; uploads and page bodies in
blob storage every node reaches (:class:`~serve_app.jobs.blobs.LocalBlobs` on a shared volume).

Why Redis: a KubeRay cluster with GCS fault tolerance already runs one (``k8s/components/
gcs-ft``), a job's state is a handful of fields changed by single-key operations, and leases
are small atomic scripts. Large data stays out of it: a page body (figures and annotated
images can make it megabytes) is a blob, and Redis keeps only which blob holds page ``n``.

Keys (under ``prefix``, one hash tag so a Redis Cluster keeps them on one slot):

- ``job:<id>``: the job's fields (a hash); ``job:<id>:pages``: page number to blob name;
  ``job:<id>:order``: page numbers in the order they were stored (an event stream's ids).
- ``active``: queued and running jobs by creation time (what a claim scans);
  ``finished``: ended jobs by end time (what expiry scans); ``owner:<owner>``: a caller's
  jobs by creation time; ``idem:<owner>:<key>``: a job's idempotency key.
- ``delivery:<msg id>``: a webhook call owed; ``outbox``: those pending, by when they are due;
  ``job:<id>:delivery``: the job's.

Every change a lease guards (renew, pages, end, release) is one Lua script that checks the
lease first, so a runner that lost its job cannot write to it. A page body is written before
its index entry, under a name of its own, so a runner that lost its lease never overwrites
the body of a page the holder stored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from serve_app.jobs.blobs import LocalBlobs
from serve_app.jobs.model import Job, JobSpec, JobState
from serve_app.jobs.store import Delivery, JobStats, StoredPage

_HOLDS = """
local function holds(key, worker)
  local st = redis.call('HMGET', key, 'state', 'lease_owner')
  return st[1] == 'running' and st[2] == worker
end
"""

# KEYS: active; ARGV: now, worker, lease_s, job key prefix
_CLAIM = """
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[4] .. id
  local st = redis.call('HMGET', key, 'state', 'lease_until')
  if st[1] == 'queued' or (st[1] == 'running' and tonumber(st[2]) < tonumber(ARGV[1])) then
    redis.call('HSET', key, 'state', 'running', 'lease_owner', ARGV[2],
               'lease_until', tostring(tonumber(ARGV[1]) + tonumber(ARGV[3])))
    redis.call('HSETNX', key, 'started_at', ARGV[1])
    return id
  end
end
return false
"""

# KEYS: job; ARGV: worker, lease_until
_RENEW = (
    _HOLDS
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
return 1
"""
)

# KEYS: job; ARGV: worker, field, value, ...
_SET_HELD = (
    _HOLDS
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
)

# KEYS: job, pages, order; ARGV: worker, number, blob, failed -> 0 lost, 1 already stored, 2 new
_SAVE_PAGE = (
    _HOLDS
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 1 end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'pages_done', 1)
redis.call('HINCRBY', KEYS[1], 'pages_failed', ARGV[4])
return 2
"""
)

# The ended job's webhook call, in the outbox, if it asked for one.
_OWE = """
local function owe(job, id, state, now, msg, prefix)
  local url = cjson.decode(redis.call('HGET', job, 'spec'))['webhook_url']
  if url == nil or url == cjson.null then return end
  redis.call('HSET', prefix .. 'delivery:' .. msg, 'id', msg, 'job_id', id, 'url', url,
             'state', 'pending', 'job_state', state, 'created_at', now, 'attempts', '0')
  redis.call('ZADD', prefix .. 'outbox', now, msg)
  redis.call('SET', prefix .. 'job:' .. id .. ':delivery', msg)
end
"""

# KEYS: job, active, finished; ARGV: worker, id, state, now, error ('' for none), msg, prefix
_FINISH = (
    _HOLDS
    + _OWE
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'finished_at', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
owe(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[7])
return 1
"""
)

# KEYS: job; ARGV: worker
_RELEASE = (
    _HOLDS
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued')
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
return 1
"""
)

# KEYS: job, active, finished; ARGV: id, now, msg, prefix
_CANCEL = (
    _OWE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2])
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  owe(KEYS[1], ARGV[1], 'cancelled', ARGV[2], ARGV[3], ARGV[4])
end
return state and 1 or 0
"""
)

# KEYS: outbox; ARGV: now, lease_s, prefix
_CLAIM_DELIVERY = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], tostring(tonumber(ARGV[1]) + tonumber(ARGV[2])), due[1])
redis.call('HINCRBY', ARGV[3] .. 'delivery:' .. due[1], 'attempts', 1)
return due[1]
"""


class RedisJobStore:
    """Jobs in the Redis at ``url`` under ``prefix``; large data in ``blobs``."""

    def __init__(
        self,
        url: str,
        blobs: LocalBlobs,
        prefix: str = "{ocr-jobs}:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Any: redis-py's annotations say bytes | str whatever decode_responses says.
        self._redis: Any = redis.Redis.from_url(url, decode_responses=True)
        self._blobs, self._prefix, self._clock = blobs, prefix, clock
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._set_held = self._redis.register_script(_SET_HELD)
        self._save_page = self._redis.register_script(_SAVE_PAGE)
        self._finish = self._redis.register_script(_FINISH)
        self._release = self._redis.register_script(_RELEASE)
        self._cancel = self._redis.register_script(_CANCEL)
        self._claim_delivery = self._redis.register_script(_CLAIM_DELIVERY)

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    def submit(self, spec: JobSpec, upload: bytes) -> tuple[Job, bool]:
        job_id = f"job-{uuid.uuid4().hex}"
        owner = spec.owner or "-"
        if spec.idempotency_key is not None:
            idem = self._key("idem", owner, spec.idempotency_key)
            if not self._redis.set(idem, job_id, nx=True):
                existing = self._idempotent(idem)
                if existing is not None:
                    return existing, False
                self._redis.set(idem, job_id)  # its job was never made (a crash): take it over
        self._blobs.put(f"jobs/{job_id}/upload", upload)
        now = self._clock()
        fields = {"id": job_id, "state": JobState.QUEUED.value, "created_at": repr(now),
                  "spec": json.dumps(spec.to_json()), "owner": owner,
                  "pages_done": "0", "pages_failed": "0"}  # fmt: skip
        with self._redis.pipeline(transaction=True) as tx:
            tx.hset(self._job_key(job_id), mapping=fields)
            tx.zadd(self._key("owner", owner), {job_id: now})
            tx.zadd(self._key("active"), {job_id: now})
            tx.execute()
        job = self.get(job_id)
        assert job is not None
        return job, True

    def _idempotent(self, idem: str) -> Job | None:
        """The job an idempotency key names, waiting a moment for one being made."""
        for _ in range(20):
            job_id = self._redis.get(idem)
            job = self.get(job_id) if job_id else None
            if job is not None:
                return job
            time.sleep(0.05)
        return None

    def get(self, job_id: str) -> Job | None:
        fields = self._redis.hgetall(self._job_key(job_id))
        return _job(fields) if fields else None

    def upload(self, job_id: str) -> bytes:
        return self._blobs.get(f"jobs/{job_id}/upload")

    def list_jobs(
        self, owner: str | None, state: JobState | None = None, limit: int = 20, offset: int = 0
    ) -> list[Job]:
        ids = self._redis.zrevrange(self._key("owner", owner or "-"), 0, -1)
        found: list[Job] = []
        skipped = 0
        for start in range(0, len(ids), 200):
            with self._redis.pipeline(transaction=False) as batch:
                for job_id in ids[start : start + 200]:
                    batch.hgetall(self._job_key(job_id))
                rows = batch.execute()
            for fields in rows:
                if not fields or (state is not None and fields["state"] != state.value):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                found.append(_job(fields))
                if len(found) == limit:
                    return found
        return found

    def claim(self, worker: str, lease_s: float) -> Job | None:
        now = self._clock()
        args = [repr(now), worker, repr(lease_s), self._job_key("")]
        job_id = self._claim(keys=[self._key("active")], args=args)
        return self.get(job_id) if job_id else None

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        until = repr(self._clock() + lease_s)
        return bool(self._renew(keys=[self._job_key(job_id)], args=[worker, until]))

    def set_selected(
        self, job_id: str, worker: str, kind: str, page_count: int, numbers: Sequence[int]
    ) -> bool:
        args = [worker, "kind", kind, "page_count", str(page_count),
                "selected", json.dumps(list(numbers))]  # fmt: skip
        return bool(self._set_held(keys=[self._job_key(job_id)], args=args))

    def save_page(
        self, job_id: str, worker: str, number: int, page: dict[str, Any], failed: bool
    ) -> bool:
        blob = f"jobs/{job_id}/pages/{number}.{uuid.uuid4().hex[:12]}.json"  # this save's own
        self._blobs.put(blob, json.dumps(page).encode())
        keys = [self._job_key(job_id), self._key("job", job_id, "pages"),
                self._key("job", job_id, "order")]  # fmt: skip
        outcome = self._save_page(keys=keys, args=[worker, number, blob, int(failed)])
        if outcome != 2:  # not held, or stored before: this body is nobody's
            self._blobs.delete(blob)
        return bool(outcome)

    def stored_numbers(self, job_id: str) -> set[int]:
        return {int(n) for n in self._redis.hkeys(self._key("job", job_id, "pages"))}

    def pages(self, job_id: str, skip: int = 0) -> list[StoredPage]:
        numbers = self._redis.lrange(self._key("job", job_id, "order"), skip, -1)
        if not numbers:
            return []
        blobs = self._redis.hmget(self._key("job", job_id, "pages"), numbers)
        out = []
        for seq, (number, blob) in enumerate(zip(numbers, blobs, strict=True), start=skip + 1):
            try:
                page = json.loads(self._blobs.get(blob))
            except KeyError:  # freed meanwhile (expired, deleted)
                break
            out.append(StoredPage(seq, int(number), page))
        return out

    def page(self, job_id: str, number: int) -> dict[str, Any] | None:
        blob = self._redis.hget(self._key("job", job_id, "pages"), str(number))
        if blob is None:
            return None
        try:
            page: dict[str, Any] = json.loads(self._blobs.get(blob))
        except KeyError:
            return None
        return page

    def _active(self) -> list[tuple[str, str]]:
        """Each queued or running job's id and state, oldest first."""
        ids = self._redis.zrange(self._key("active"), 0, -1)
        with self._redis.pipeline(transaction=False) as batch:
            for job_id in ids:
                batch.hget(self._job_key(job_id), "state")
            states = batch.execute()
        return list(zip(ids, states, strict=True))

    def queue_position(self, job: Job) -> int:
        ahead = 0
        for job_id, state in self._active():
            if job_id == job.id:
                break
            ahead += state == JobState.QUEUED.value
        return ahead

    def stats(self) -> JobStats:
        active = self._active()
        queued = [job_id for job_id, state in active if state == JobState.QUEUED.value]
        oldest = 0.0
        if queued:
            created = self._redis.zscore(self._key("active"), queued[0]) or self._clock()
            oldest = self._clock() - created
        return JobStats(len(queued), len(active) - len(queued), oldest)

    def finish(
        self, job_id: str, worker: str, state: JobState, error: dict[str, str] | None = None
    ) -> bool:
        keys = [self._job_key(job_id), self._key("active"), self._key("finished")]
        body = json.dumps(error) if error else ""
        args = [worker, job_id, state.value, repr(self._clock()), body, _message_id(),
                self._prefix]  # fmt: skip
        return bool(self._finish(keys=keys, args=args))

    def release(self, job_id: str, worker: str) -> bool:
        return bool(self._release(keys=[self._job_key(job_id)], args=[worker]))

    def cancel(self, job_id: str) -> Job | None:
        keys = [self._job_key(job_id), self._key("active"), self._key("finished")]
        args = [job_id, repr(self._clock()), _message_id(), self._prefix]
        if not self._cancel(keys=keys, args=args):
            return None
        return self.get(job_id)

    def claim_delivery(self, lease_s: float) -> Delivery | None:
        args = [repr(self._clock()), repr(lease_s), self._prefix]
        delivery_id = self._claim_delivery(keys=[self._key("outbox")], args=args)
        if not delivery_id:
            return None
        fields = self._redis.hgetall(self._key("delivery", delivery_id))
        return Delivery(delivery_id, fields["job_id"], fields["url"],
                        JobState(fields["job_state"]), float(fields["created_at"]),
                        int(fields["attempts"]))  # fmt: skip

    def delivery_result(
        self, delivery_id: str, delivered: bool, retry_at: float | None, error: str | None
    ) -> None:
        key = self._key("delivery", delivery_id)
        with self._redis.pipeline(transaction=True) as tx:
            if retry_at is not None and not delivered:
                tx.zadd(self._key("outbox"), {delivery_id: retry_at})
            else:
                tx.zrem(self._key("outbox"), delivery_id)
                tx.hset(key, "state", "delivered" if delivered else "failed")
            tx.hset(key, "last_error", error or "")
            tx.execute()

    def delivery_state(self, job_id: str) -> dict[str, Any] | None:
        delivery_id = self._redis.get(self._key("job", job_id, "delivery"))
        fields = self._redis.hgetall(self._key("delivery", delivery_id)) if delivery_id else {}
        if not fields:
            return None
        return {"state": fields["state"], "attempts": int(fields["attempts"]),
                "last_error": fields.get("last_error") or None}  # fmt: skip

    def delete(self, job_id: str) -> bool:
        job = self.get(job_id)
        if job is None:
            return False
        owner = job.spec.owner or "-"
        with self._redis.pipeline(transaction=True) as tx:
            tx.delete(self._job_key(job_id), self._key("job", job_id, "pages"),
                      self._key("job", job_id, "order"))  # fmt: skip
            tx.zrem(self._key("active"), job_id)
            tx.zrem(self._key("finished"), job_id)
            tx.zrem(self._key("owner", owner), job_id)
            if job.spec.idempotency_key is not None:
                tx.delete(self._key("idem", owner, job.spec.idempotency_key))
            tx.execute()
        self._blobs.delete_tree(f"jobs/{job_id}")
        return True

    def expire(self, older_than_s: float) -> int:
        now = self._clock()
        ids = self._redis.zrangebyscore(self._key("finished"), "-inf", now - older_than_s)
        for job_id in ids:
            with self._redis.pipeline(transaction=True) as tx:
                tx.delete(self._key("job", job_id, "pages"), self._key("job", job_id, "order"))
                tx.hset(self._job_key(job_id), "expired_at", repr(now))
                tx.zrem(self._key("finished"), job_id)
                tx.execute()
            self._blobs.delete_tree(f"jobs/{job_id}")
        return len(ids)


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _job(fields: dict[str, str]) -> Job:
    def number(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value is not None else None

    selected = fields.get("selected")
    page_count = fields.get("page_count")
    error = fields.get("error")
    return Job(
        id=fields["id"],
        state=JobState(fields["state"]),
        spec=JobSpec.from_json(json.loads(fields["spec"])),
        created_at=float(fields["created_at"]),
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        expired_at=number("expired_at"),
        kind=fields.get("kind"),
        page_count=int(page_count) if page_count is not None else None,
        selected=tuple(json.loads(selected)) if selected else None,
        pages_done=int(fields.get("pages_done", 0)),
        pages_failed=int(fields.get("pages_failed", 0)),
        error=json.loads(error) if error else None,
        lease_owner=fields.get("lease_owner"),
        lease_until=number("lease_until"),
    )
