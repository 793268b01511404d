"""The cluster job store: jobs, leases, queues and the page index in Redis; uploads and page
bodies as blobs every node reaches (:mod:`serve_app.jobs.blobs`: an S3 bucket).

Why Redis: a KubeRay cluster with GCS fault tolerance already runs one, a job's state is a
handful of fields, and every change that must not race is one Lua script, atomic on the
server. Large data stays out of it: a page body (figures and annotated images can make it
megabytes) is a blob, and Redis keeps only which blob holds page ``n``.

Time is Redis's own (``TIME``, read inside the scripts): leases compare one clock, however
far apart the nodes' clocks are. Keys (under ``prefix``, one hash tag so a Redis Cluster keeps
them on one slot):

- ``job:<id>``: the job's fields (a hash, with the layout's version ``v``);
  ``job:<id>:pages``: page number to blob; ``job:<id>:order``: page numbers in the order they
  were stored (an event stream's ids); ``job:<id>:delivery``: its webhook call's id.
- ``queued``: every queued job by creation time (counts, the oldest);
  ``queue:<owner>``: an owner's queued jobs by creation time; ``turns``: owners with a queued
  job by when they were last served (round-robin: the lowest goes next); ``served``: each
  owner's last turn; ``seq``: the turn counter.
- ``running``: running jobs by lease end (a lapsed lease is found without a scan);
  ``finished``: ended jobs by end time (what expiry reads); ``owner:<owner>``: a caller's
  jobs by creation time; ``idem:<owner>:<key>``: a job's idempotency key, with the request's
  fingerprint.
- ``delivery:<msg id>``: a webhook call owed; ``outbox``: those pending, by when they are due.

A claim takes a fencing token (``lease_token``, counted per job): every change the lease
guards checks it in its script, so a runner that lost its job, in another replica or in its
own, cannot write to it. A page body is written before its index entry, under a name of its
own, so a lapsed holder never overwrites the body of a page the holder stored.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serve_app.jobs.blobs import Blobs
from serve_app.jobs.model import SCHEMA_VERSION, Job, JobSpec, JobState
from serve_app.jobs.store import (
    RUNNER_LOST,
    Delivery,
    IdempotencyConflictError,
    JobStats,
    PageBodyMissingError,
    QueueFullError,
    StoredPage,
    outages_as_unavailable,
    request_fingerprint,
    unreadable,
    webhook_receiver,
)

logger = logging.getLogger("ray.serve")

# Shared by the scripts: the clock (a test's, or the server's), the lease check, and the
# owner's place in the round-robin.
_LIB = """
local P = ARGV[1]
local function clock(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.6f', x) end
local function holds(key, token)
  local st = redis.call('HMGET', key, 'state', 'lease_token')
  return st[1] == 'running' and st[2] == token
end
local function enqueue(id, owner, created)
  redis.call('ZADD', P .. 'queued', created, id)
  redis.call('ZADD', P .. 'queue:' .. owner, created, id)
  if not redis.call('ZSCORE', P .. 'turns', owner) then
    redis.call('ZADD', P .. 'turns', redis.call('HGET', P .. 'served', owner) or 0, owner)
  end
end
local function dequeue(id, owner)
  redis.call('ZREM', P .. 'queued', id)
  redis.call('ZREM', P .. 'queue:' .. owner, id)
  if redis.call('ZCARD', P .. 'queue:' .. owner) == 0 then
    redis.call('ZREM', P .. 'turns', owner)
  end
end
local function owe(id, state, now)
  local key = P .. 'job:' .. id
  local hook = redis.call('HMGET', key, 'webhook_url', 'owner', 'webhook_receiver')
  if not hook[1] or hook[1] == '' then return end
  local msg = 'msg_' .. redis.sha1hex(id .. state .. now)
  redis.call('HSET', P .. 'delivery:' .. msg, 'id', msg, 'job_id', id, 'url', hook[1],
             'owner', hook[2], 'receiver', hook[3], 'state', 'pending', 'job_state', state,
             'created_at', num(now), 'attempts', '0')
  redis.call('ZADD', P .. 'outbox', now, msg)
  redis.call('SET', key .. ':delivery', msg)
end
local function ended(id, state, now, err)
  local key = P .. 'job:' .. id
  redis.call('HSET', key, 'state', state, 'finished_at', num(now))
  if err ~= '' then redis.call('HSET', key, 'error', err) end
  redis.call('HDEL', key, 'lease_owner', 'lease_until')
  redis.call('ZREM', P .. 'running', id)
  redis.call('ZADD', P .. 'finished', now, id)
  owe(id, state, now)
end
"""

# ARGV: prefix, now, id, owner, idempotency key ('' none), fingerprint, max queued ('' none),
# then field/value pairs of the job -> {'new'|'existing'|'conflict', id} or {'full', count}
_SUBMIT = (
    _LIB
    + """
local id, owner, key, fp = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local idem = P .. 'idem:' .. owner .. ':' .. key
if key ~= '' then
  local held = redis.call('GET', idem)
  if held then
    local at = string.find(held, ' ', 1, true)
    local other = string.sub(held, 1, at - 1)
    if string.sub(held, at + 1) ~= fp then return {'conflict', other} end
    return {'existing', other}
  end
end
local queued = redis.call('ZCARD', P .. 'queue:' .. owner)
if ARGV[7] ~= '' and queued >= tonumber(ARGV[7]) then return {'full', tostring(queued)} end
local now = clock(ARGV[2])
local job = P .. 'job:' .. id
for i = 8, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', job, 'created_at', num(now))
redis.call('ZADD', P .. 'owner:' .. owner, now, id)
enqueue(id, owner, now)
if key ~= '' then redis.call('SET', idem, id .. ' ' .. fp) end
return {'new', id}
"""
)

# ARGV: prefix, now, worker, lease_s, max_attempts, error of a job past them
# -> {id, token} or false
_CLAIM = (
    _LIB
    + """
local now = clock(ARGV[2])
local worker, lease, limit = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local function take(id)
  local key = P .. 'job:' .. id
  local token = redis.call('HINCRBY', key, 'lease_token', 1)
  redis.call('HSET', key, 'state', 'running', 'lease_owner', worker,
             'lease_until', num(now + lease))
  if not redis.call('HGET', key, 'started_at') then
    redis.call('HSET', key, 'started_at', num(now))
  end
  redis.call('ZADD', P .. 'running', now + lease, id)
  return {id, tostring(token)}
end
while true do
  local lapsed = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', '(' .. num(now), 'LIMIT', 0, 1)
  if #lapsed == 0 then break end
  local lapses = redis.call('HINCRBY', P .. 'job:' .. lapsed[1], 'lapses', 1)
  if lapses < limit then return take(lapsed[1]) end
  ended(lapsed[1], 'failed', now, ARGV[6])
end
while true do
  local owners = redis.call('ZRANGE', P .. 'turns', 0, 0)
  if #owners == 0 then return false end
  local owner = owners[1]
  local ids = redis.call('ZRANGE', P .. 'queue:' .. owner, 0, 0)
  if #ids == 0 then
    redis.call('ZREM', P .. 'turns', owner)
  else
    dequeue(ids[1], owner)
    local turn = redis.call('INCR', P .. 'seq')
    redis.call('HSET', P .. 'served', owner, turn)
    if redis.call('ZSCORE', P .. 'turns', owner) then
      redis.call('ZADD', P .. 'turns', turn, owner)
    end
    return take(ids[1])
  end
end
"""
)

# KEYS: job; ARGV: prefix, now, id, token, lease_s
_RENEW = (
    _LIB
    + """
if not holds(KEYS[1], ARGV[4]) then return 0 end
local ends = clock(ARGV[2]) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'lease_until', num(ends))
redis.call('ZADD', P .. 'running', ends, ARGV[3])
return 1
"""
)

# KEYS: job; ARGV: prefix, now, token, field, value, ...
_SET_HELD = (
    _LIB
    + """
if not holds(KEYS[1], ARGV[3]) then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
)

# KEYS: job, pages, order; ARGV: prefix, now, token, number, blob, failed
# -> 0 lost, 1 already stored, 2 new
_SAVE_PAGE = (
    _LIB
    + """
if not holds(KEYS[1], ARGV[3]) then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5]) == 0 then return 1 end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'pages_done', 1)
redis.call('HINCRBY', KEYS[1], 'pages_failed', ARGV[6])
return 2
"""
)

# KEYS: job; ARGV: prefix, now, id, token, state, error ('' none)
_FINISH = (
    _LIB
    + """
if not holds(KEYS[1], ARGV[4]) then return 0 end
ended(ARGV[3], ARGV[5], clock(ARGV[2]), ARGV[6])
return 1
"""
)

# KEYS: job; ARGV: prefix, now, id, token
_RELEASE = (
    _LIB
    + """
if not holds(KEYS[1], ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued')
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
redis.call('ZREM', P .. 'running', ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'owner', 'created_at')
enqueue(ARGV[3], st[1], tonumber(st[2]))
return 1
"""
)

# KEYS: job; ARGV: prefix, now, id -> 0 unknown, 1 known
_CANCEL = (
    _LIB
    + """
local st = redis.call('HMGET', KEYS[1], 'state', 'owner')
if not st[1] then return 0 end
if st[1] == 'queued' then dequeue(ARGV[3], st[2]) end
if st[1] == 'queued' or st[1] == 'running' then
  ended(ARGV[3], 'cancelled', clock(ARGV[2]), '')
end
return 1
"""
)

# KEYS: job; ARGV: prefix, now, id -> 0 unknown, 1 deleted
_DELETE = (
    _LIB
    + """
local st = redis.call('HMGET', KEYS[1], 'state', 'owner', 'idempotency_key')
if not st[1] then return 0 end
local id, owner = ARGV[3], st[2]
if st[1] == 'queued' then dequeue(id, owner) end
local msg = redis.call('GET', KEYS[1] .. ':delivery')
if msg then
  redis.call('DEL', P .. 'delivery:' .. msg)
  redis.call('ZREM', P .. 'outbox', msg)
end
if st[3] and st[3] ~= '' then
  local idem = P .. 'idem:' .. owner .. ':' .. st[3]
  local held = redis.call('GET', idem)
  if held and string.sub(held, 1, #id + 1) == id .. ' ' then redis.call('DEL', idem) end
end
redis.call('DEL', KEYS[1], KEYS[1] .. ':pages', KEYS[1] .. ':order', KEYS[1] .. ':delivery')
redis.call('ZREM', P .. 'running', id)
redis.call('ZREM', P .. 'finished', id)
redis.call('ZREM', P .. 'owner:' .. owner, id)
return 1
"""
)

# ARGV: prefix, now, older_than_s, batch -> the ids freed
_EXPIRE = (
    _LIB
    + """
local now = clock(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', now - tonumber(ARGV[3]),
                       'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local key = P .. 'job:' .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('DEL', key .. ':pages', key .. ':order')
    redis.call('HSET', key, 'expired_at', num(now))
  end
  redis.call('ZREM', P .. 'finished', id)
end
return ids
"""
)

# ARGV: prefix, now, lease_s, busy receiver, ... -> the delivery's id or false
_CLAIM_DELIVERY = (
    _LIB
    + """
local now = clock(ARGV[2])
local busy = {}
for i = 4, #ARGV do busy[ARGV[i]] = true end
local due = redis.call('ZRANGEBYSCORE', P .. 'outbox', '-inf', num(now), 'LIMIT', 0, 256)
for _, msg in ipairs(due) do
  local receiver = redis.call('HGET', P .. 'delivery:' .. msg, 'receiver')
  if not receiver then
    redis.call('ZREM', P .. 'outbox', msg)
  elseif not busy[receiver] then
    redis.call('ZADD', P .. 'outbox', now + tonumber(ARGV[3]), msg)
    redis.call('HINCRBY', P .. 'delivery:' .. msg, 'attempts', 1)
    return msg
  end
end
return false
"""
)

# KEYS: delivery; ARGV: prefix, now, id, state, retry_at ('' none), error
_DELIVERY_RESULT = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[4] == 'pending' then
  redis.call('ZADD', P .. 'outbox', ARGV[5], ARGV[3])
else
  redis.call('ZREM', P .. 'outbox', ARGV[3])
end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'last_error', ARGV[6])
return 1
"""
)

# KEYS: job; ARGV: prefix -> {rank in its owner's queue, jobs of other owners before it}
_POSITION = (
    _LIB
    + """
local st = redis.call('HMGET', KEYS[1], 'id', 'owner')
local rank = redis.call('ZRANK', P .. 'queue:' .. st[2], st[1])
if not rank then return {0, 0} end
local mine = redis.call('ZSCORE', P .. 'turns', st[2]) or 0
local others = 0
local turns = redis.call('ZRANGE', P .. 'turns', 0, -1, 'WITHSCORES')
for i = 1, #turns, 2 do
  if turns[i] ~= st[2] then
    local first = tonumber(turns[i + 1]) < tonumber(mine) and 1 or 0
    others = others + math.min(redis.call('ZCARD', P .. 'queue:' .. turns[i]), rank + first)
  end
end
return {rank, others}
"""
)

# Redis not answering: down, restarting, loading its data, a replica not yet promoted.
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)
_unavailable = outages_as_unavailable(lambda error: isinstance(error, _OUTAGES), "redis")


class RedisJobStore:
    """Jobs in the Redis at ``url`` under ``prefix``; large data in ``blobs``. ``clock`` (for
    tests) replaces the server's clock."""

    def __init__(
        self,
        url: str,
        blobs: Blobs,
        prefix: str = "{ocr-jobs}:",
        clock: Callable[[], float] | None = None,
    ) -> None:
        # No retries inside the client: a script whose answer was lost must not run twice
        # (callers retry what is safe to retry).
        # Any: redis-py's annotations say bytes | str whatever decode_responses says.
        self._redis: Any = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0), health_check_interval=30,
        )  # fmt: skip
        self._blobs, self._prefix, self._clock = blobs, prefix, clock
        scripts = {
            "submit": _SUBMIT, "claim": _CLAIM, "renew": _RENEW, "set_held": _SET_HELD,
            "save_page": _SAVE_PAGE, "finish": _FINISH, "release": _RELEASE,
            "cancel": _CANCEL, "delete": _DELETE, "expire": _EXPIRE,
            "claim_delivery": _CLAIM_DELIVERY, "delivery_result": _DELIVERY_RESULT,
            "position": _POSITION,
        }  # fmt: skip
        self._scripts = {name: self._redis.register_script(s) for name, s in scripts.items()}

    @property
    def blobs(self) -> Blobs:
        return self._blobs

    def _run(self, script: str, keys: Sequence[str], *args: Any) -> Any:
        now = repr(self._clock()) if self._clock is not None else ""
        return self._scripts[script](keys=list(keys), args=[self._prefix, now, *args])

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    @_unavailable
    def submit(
        self, spec: JobSpec, upload: bytes, max_queued: int | None = None
    ) -> tuple[Job, bool]:
        owner = spec.owner or "-"
        if max_queued is not None and self._redis.zcard(self._key("queue", owner)) >= max_queued:
            raise QueueFullError(max_queued)  # before the upload; the script checks again
        job_id = f"job-{uuid.uuid4().hex}"
        blob = f"jobs/{job_id}/upload"
        self._blobs.put(blob, upload)
        fields = {"id": job_id, "v": SCHEMA_VERSION, "state": JobState.QUEUED.value,
                  "spec": json.dumps(spec.to_json()), "owner": owner,
                  "idempotency_key": spec.idempotency_key or "",
                  "webhook_url": spec.webhook_url or "",
                  "webhook_receiver": webhook_receiver(spec),
                  "pages_done": 0, "pages_failed": 0, "lease_token": 0, "lapses": 0}  # fmt: skip
        pairs = [item for pair in fields.items() for item in pair]
        outcome, found = self._run(
            "submit", [self._job_key(job_id)], job_id, owner, spec.idempotency_key or "",
            request_fingerprint(spec, upload) if spec.idempotency_key else "",
            "" if max_queued is None else max_queued, *pairs,
        )  # fmt: skip
        if outcome != "new":
            self._blobs.delete(blob)
        if outcome == "full":
            raise QueueFullError(int(found))
        if outcome == "conflict":
            raise IdempotencyConflictError(found)
        job = self.get(found)
        if job is None:  # deleted the moment it was made
            raise KeyError(found)
        return job, outcome == "new"

    @_unavailable
    def get(self, job_id: str) -> Job | None:
        fields = self._redis.hgetall(self._job_key(job_id))
        return _job(fields) if fields else None

    @_unavailable
    def upload(self, job_id: str) -> bytes:
        return self._blobs.get(f"jobs/{job_id}/upload")

    @_unavailable
    def list_jobs(
        self, owner: str | None, state: JobState | None = None, limit: int = 20, offset: int = 0
    ) -> list[Job]:
        index = self._key("owner", owner or "-")
        if state is None:
            ids = self._redis.zrevrange(index, offset, offset + limit - 1)
            return [job for job in self._jobs(ids) if job is not None]
        found: list[Job] = []
        skipped, start = 0, 0
        while len(found) < limit:
            ids = self._redis.zrevrange(index, start, start + 199)
            if not ids:
                break
            start += len(ids)
            for job in self._jobs(ids):
                if job is None or job.state is not state:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                found.append(job)
                if len(found) == limit:
                    break
        return found

    def _jobs(self, ids: Sequence[str]) -> list[Job | None]:
        with self._redis.pipeline(transaction=False) as batch:
            for job_id in ids:
                batch.hgetall(self._job_key(job_id))
            rows = batch.execute()
        return [_tolerant(fields) for fields in rows]

    @_unavailable
    def claim(self, worker: str, lease_s: float, max_attempts: int = 3) -> Job | None:
        while True:
            claimed = self._run("claim", [self._key("running")], worker, repr(lease_s),
                                max_attempts, json.dumps(RUNNER_LOST))  # fmt: skip
            if not claimed:
                return None
            job_id, token = claimed
            fields = self._redis.hgetall(self._job_key(job_id))
            try:
                return _job(fields)
            except (KeyError, ValueError, TypeError) as error:
                logger.exception("job %s: its stored fields do not decode; it fails", job_id)
                self.finish(job_id, int(token), JobState.FAILED, unreadable(error))

    @_unavailable
    def renew(self, job_id: str, token: int, lease_s: float) -> bool:
        keys = [self._job_key(job_id)]
        return bool(self._run("renew", keys, job_id, token, repr(lease_s)))

    @_unavailable
    def set_selected(
        self, job_id: str, token: int, kind: str, page_count: int, numbers: Sequence[int]
    ) -> bool:
        args = [token, "kind", kind, "page_count", page_count,
                "selected", json.dumps(list(numbers))]  # fmt: skip
        return bool(self._run("set_held", [self._job_key(job_id)], *args))

    @_unavailable
    def save_page(
        self, job_id: str, token: int, number: int, page: dict[str, Any], failed: bool
    ) -> bool:
        blob = f"jobs/{job_id}/pages/{number}.{uuid.uuid4().hex[:12]}.json"  # this save's own
        self._blobs.put(blob, json.dumps(page).encode())
        keys = [self._job_key(job_id), self._key("job", job_id, "pages"),
                self._key("job", job_id, "order")]  # fmt: skip
        outcome = self._run("save_page", keys, token, number, blob, int(failed))
        if outcome != 2:  # not held, or stored before: this body is nobody's
            self._blobs.delete(blob)
        return bool(outcome)

    @_unavailable
    def stored_numbers(self, job_id: str) -> set[int]:
        return {int(n) for n in self._redis.hkeys(self._key("job", job_id, "pages"))}

    @_unavailable
    def pages(self, job_id: str, skip: int = 0) -> list[StoredPage]:
        numbers = self._redis.lrange(self._key("job", job_id, "order"), skip, -1)
        if not numbers:
            return []
        blobs = self._redis.hmget(self._key("job", job_id, "pages"), numbers)
        out = []
        for seq, (number, blob) in enumerate(zip(numbers, blobs, strict=True), start=skip + 1):
            page = self._body(job_id, blob)
            if page is None:  # freed meanwhile (expired, deleted)
                break
            out.append(StoredPage(seq, int(number), page))
        return out

    @_unavailable
    def page(self, job_id: str, number: int) -> dict[str, Any] | None:
        blob = self._redis.hget(self._key("job", job_id, "pages"), str(number))
        return self._body(job_id, blob) if blob is not None else None

    def _body(self, job_id: str, blob: str | None) -> dict[str, Any] | None:
        """A stored page's body; ``None`` when its job was freed meanwhile.

        Raises:
            PageBodyMissingError: The body is gone while the job still holds it.
        """
        try:
            if blob is None:
                raise KeyError(blob)
            page: dict[str, Any] = json.loads(self._blobs.get(blob))
            return page
        except KeyError:
            fields = self._redis.hmget(self._job_key(job_id), "state", "expired_at")
            if fields[0] is None or fields[1] is not None:
                return None
            raise PageBodyMissingError(
                f"job {job_id}: a stored page's body ({blob}) is missing from {self._blobs.url}"
            ) from None

    @_unavailable
    def queue_position(self, job: Job) -> int:
        rank, others = self._run("position", [self._job_key(job.id)])
        return int(rank) + int(others)

    @_unavailable
    def stats(self) -> JobStats:
        with self._redis.pipeline(transaction=False) as batch:
            batch.zcard(self._key("queued"))
            batch.zcard(self._key("running"))
            batch.zrange(self._key("queued"), 0, 0, withscores=True)
            batch.time()
            queued, running, oldest, (seconds, micros) = batch.execute()
        now = self._clock() if self._clock is not None else seconds + micros / 1e6
        return JobStats(queued, running, now - oldest[0][1] if oldest else 0.0)

    @_unavailable
    def finish(
        self, job_id: str, token: int, state: JobState, error: dict[str, str] | None = None
    ) -> bool:
        body = json.dumps(error) if error else ""
        return bool(self._run("finish", [self._job_key(job_id)], job_id, token, state.value, body))

    @_unavailable
    def release(self, job_id: str, token: int) -> bool:
        return bool(self._run("release", [self._job_key(job_id)], job_id, token))

    @_unavailable
    def cancel(self, job_id: str) -> Job | None:
        if not self._run("cancel", [self._job_key(job_id)], job_id):
            return None
        return self.get(job_id)

    @_unavailable
    def delete(self, job_id: str) -> bool:
        if not self._run("delete", [self._job_key(job_id)], job_id):
            return False
        self._blobs.delete_tree(f"jobs/{job_id}")
        return True

    @_unavailable
    def expire(self, older_than_s: float) -> int:
        freed = 0
        while ids := self._run("expire", [self._key("finished")], repr(older_than_s), 100):
            for job_id in ids:
                self._blobs.delete_tree(f"jobs/{job_id}")
            freed += len(ids)
        return freed

    @_unavailable
    def claim_delivery(self, lease_s: float, busy: Collection[str] = ()) -> Delivery | None:
        delivery_id = self._run("claim_delivery", [self._key("outbox")], repr(lease_s), *busy)
        if not delivery_id:
            return None
        fields = self._redis.hgetall(self._key("delivery", delivery_id))
        if not fields:  # its job was deleted meanwhile
            return None
        return Delivery(
            delivery_id, fields["job_id"], fields["url"], JobState(fields["job_state"]),
            float(fields["created_at"]), int(fields["attempts"]),
            owner=None if fields.get("owner", "-") == "-" else fields["owner"],
            receiver=fields.get("receiver", ""),
        )  # fmt: skip

    @_unavailable
    def delivery_result(
        self, delivery_id: str, delivered: bool, retry_at: float | None, error: str | None
    ) -> None:
        state = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
        keys = [self._key("delivery", delivery_id)]
        retry = repr(retry_at) if retry_at is not None else ""
        self._run("delivery_result", keys, delivery_id, state, retry, error or "")

    @_unavailable
    def delivery_state(self, job_id: str) -> dict[str, Any] | None:
        delivery_id = self._redis.get(self._key("job", job_id, "delivery"))
        fields = self._redis.hgetall(self._key("delivery", delivery_id)) if delivery_id else {}
        if not fields:
            return None
        return {"state": fields["state"], "attempts": int(fields["attempts"]),
                "last_error": fields.get("last_error") or None}  # fmt: skip


def _tolerant(fields: dict[str, str]) -> Job | None:
    """A listed job, or ``None`` for one that does not decode (logged)."""
    if not fields:
        return None
    try:
        return _job(fields)
    except (KeyError, ValueError, TypeError):
        logger.exception("job %s: its stored fields do not decode", fields.get("id"))
        return None


def _job(fields: dict[str, str]) -> Job:
    """A job from its stored fields (fields it does not know are ignored).

    Raises:
        KeyError, ValueError, TypeError: For fields that are not a stored job.
    """

    def number(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value else None

    selected = fields.get("selected")
    page_count = fields.get("page_count")
    error = fields.get("error")
    token = fields.get("lease_token")
    return Job(
        id=fields["id"],
        state=JobState(fields["state"]),
        spec=JobSpec.from_json(json.loads(fields["spec"])),
        created_at=float(fields["created_at"]),
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        expired_at=number("expired_at"),
        kind=fields.get("kind"),
        page_count=int(page_count) if page_count else None,
        selected=tuple(json.loads(selected)) if selected else None,
        pages_done=int(fields.get("pages_done", 0)),
        pages_failed=int(fields.get("pages_failed", 0)),
        error=json.loads(error) if error else None,
        lease_owner=fields.get("lease_owner"),
        lease_until=number("lease_until"),
        lease_token=int(token) if token and fields.get("state") == "running" else None,
        lapses=int(fields.get("lapses", 0)),
    )
