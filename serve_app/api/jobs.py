"""``/v1/jobs``: submit a document, follow it page by page, fetch its result later.

A job's options are resolved at the door as ``/v1/ocr``'s are, and its document (fetched
first, for a URL) is stored before the answer: 202 with the job's id and URLs. The job runner
deployment runs it (:mod:`serve_app.jobs.runner`); everything here reads the store, so any
ingress replica answers for any job. With API keys on, a key sees only the jobs it submitted
(another key's job is 404, as if it did not exist).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import Field, field_validator

from serve_app.api.access_log import access_record
from serve_app.api.auth import key_secrets
from serve_app.api.ocr import OCRParams, read_ocr_request
from serve_app.config import AppConfig
from serve_app.documents.door import Door
from serve_app.documents.fetch import check_url
from serve_app.documents.sources import Sources, fetch_policy
from serve_app.errors import (
    ClientError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    JobDataLostError,
    JobExpiredError,
    JobNotFoundError,
    JobStoreUnavailableError,
    PageNotFoundError,
    TooManyQueuedJobsError,
)
from serve_app.jobs.model import Job, JobSpec, JobState
from serve_app.jobs.results import job_json, result_json, result_markdown, result_zip
from serve_app.jobs.store import (
    IdempotencyConflictError,
    JobStore,
    PageBodyMissingError,
    QueueFullError,
    StoreUnavailableError,
)
from serve_app.jobs.webhooks import WebhookSettings, webhook_settings

_T = TypeVar("_T")

MAX_IDEMPOTENCY_KEY = 255
POLL_S = 0.1  # how often a long-poll or an idle event stream looks at the store
STORE_OUTAGE_S = 30.0  # an event stream waits this long for the store to answer again
HEARTBEAT_S = 15.0  # an SSE comment this often keeps idle proxies from closing the stream


class JobParams(OCRParams):
    """Options of ``POST /v1/jobs``: those of ``/v1/ocr`` (``stream`` aside: a job's pages
    stream from its events URL), and what comes back with the job."""

    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Up to 16 string pairs, returned with the job (a form field: JSON text)",
    )
    webhook_url: str | None = Field(None, description="Called when the job ends")

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_json(cls, value: Any) -> Any:
        if isinstance(value, str):  # a form field
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("metadata must be a JSON object of strings") from None
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
            raise ValueError("metadata: at most 16 keys of 64 characters, values of 512")
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool) -> bool:
        if value:
            raise ValueError("a job's pages stream from GET /v1/jobs/{id}/events")
        return value


class JobsService:
    """The jobs routes' work over ``store``; ``wake`` tells a runner a job was queued;
    ``webhooks`` who may ask for webhooks (by default from ``config`` and the environment:
    the API keys' secrets and the service's)."""

    def __init__(
        self,
        config: AppConfig,
        store: JobStore,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        webhooks: WebhookSettings | None = None,
    ) -> None:
        self.door = Door(config)
        self._config, self._jobs = config.ingress, config.jobs
        self._store = store
        self._sources = Sources(fetch_policy(config.ingress))
        self._wake = wake or (lambda: None)
        self._clock = clock
        if webhooks is None:
            webhooks = webhook_settings(config, key_secrets(config.ingress))
        self._webhooks = webhooks

    async def submit(self, request: Request) -> JSONResponse:
        source, params = await read_ocr_request(request, self._config, JobParams)
        options = self.door.resolve(params.fields())
        if params.webhook_url is not None:
            self._check_webhook(params.webhook_url, access_record(request.scope).caller)
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInputError(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )
        data = await self._sources.read(source)
        # The job runs with what the door resolved now, whatever the defaults are later.
        fields = dataclasses.replace(params.fields(), model=options.model, dpi=options.dpi)
        record = access_record(request.scope)
        record.model = options.model
        spec = JobSpec(fields, owner=record.caller, idempotency_key=key,
                       webhook_url=params.webhook_url, metadata=params.metadata)  # fmt: skip
        try:
            job, created = await _stored(self._store.submit, spec, data,
                                         self._jobs.max_queued_per_key)  # fmt: skip
        except IdempotencyConflictError as conflict:
            raise IdempotencyKeyReusedError(
                f"Idempotency-Key {key!r} was used for job {conflict.job_id} with a different "
                "request (document or options); use a new key for a new request"
            ) from None
        except QueueFullError as full:
            raise TooManyQueuedJobsError(
                f"{full.queued} of your jobs are queued (at most "
                f"{self._jobs.max_queued_per_key}); submit more as they start"
            ) from None
        record.job_id = job.id
        if created:
            self._wake()
        body = await self._job_body(request, job)
        return JSONResponse(body, status_code=202 if created else 200,
                            headers={"Location": body["urls"]["self"]})  # fmt: skip

    def _check_webhook(self, url: str, caller: str | None) -> None:
        """Refuse a webhook this service will not call: the caller has no signing secret (its
        API key's own, or the service's without keys), or the URL is refused before its host
        is resolved (its addresses are checked on each call)."""
        if not self._webhooks.signers.of(caller):
            raise InvalidInputError(_no_webhook_secret(caller), param="webhook_url")
        try:
            check_url(url, self._webhooks.policy)
        except ClientError as refused:
            raise type(refused)(refused.message, param="webhook_url") from None

    async def status(self, request: Request, job_id: str, wait: float | None) -> dict[str, Any]:
        """The job; with ``wait``, once it changed (a page stored, a new state) or ``wait``
        seconds passed, whichever is first."""
        job = await self._visible(request, job_id)
        if wait:
            deadline = asyncio.get_running_loop().time() + min(wait, self._jobs.max_wait_s)
            seen = (job.state, job.pages_done)
            while not job.state.final and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(POLL_S)
                job = await self._visible(request, job_id)
                if (job.state, job.pages_done) != seen:
                    break
        return await self._job_body(request, job)

    async def listing(
        self, request: Request, status: JobState | None, limit: int, offset: int
    ) -> dict[str, Any]:
        owner = access_record(request.scope).caller
        jobs = await _stored(self._store.list_jobs, owner, status, limit + 1, offset)
        now = self._clock()
        base = request.scope.get("root_path", "")
        data = [job_json(job, now, base=base) for job in jobs[:limit]]
        return {"object": "list", "data": data, "has_more": len(jobs) > limit}

    async def events(self, request: Request, job_id: str, after: int | None) -> Response:
        """The stored pages after the first ``after`` (or ``Last-Event-ID``), then each page as
        it is stored, then the job; SSE for ``Accept: text/event-stream``, else NDJSON."""
        await self._visible(request, job_id)
        sse = "text/event-stream" in request.headers.get("accept", "")
        start = after if after is not None else _last_event_id(request)
        stream = self._events(request, job_id, start, sse)
        media = "text/event-stream" if sse else "application/x-ndjson"
        return StreamingResponse(stream, media_type=media, headers={"Cache-Control": "no-cache"})

    async def _events(
        self, request: Request, job_id: str, sent: int, sse: bool
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        outage_since: float | None = None
        while True:
            try:
                job = await _stored(self._store.get, job_id)
                if job is None or job.expired_at is not None:
                    error = _missing(job_id) if job is None else _expired(job_id)
                    yield _event(sse, "error", {"object": "error", **error.to_body()})
                    return
                # The state was read first: pages stored before it ended are all in this read.
                stored = await _stored(self._store.pages, job_id, sent)
                outage_since = None
            except JobStoreUnavailableError as outage:  # a blip: the stream waits it out
                outage_since = outage_since or loop.time()
                if loop.time() - outage_since > STORE_OUTAGE_S:
                    yield _event(sse, "error", {"object": "error", **outage.to_body()})
                    return
                await asyncio.sleep(1.0)
                continue
            except JobDataLostError as lost:
                yield _event(sse, "error", {"object": "error", **lost.to_body()})
                return
            for page in stored:
                sent += 1
                yield _event(sse, "page", page.page, event_id=sent)
                quiet_since = loop.time()
            if job.state.final:
                yield _event(sse, "job", await self._job_body(request, job))
                return
            if sse and loop.time() - quiet_since >= HEARTBEAT_S:
                yield ": keep-alive\n\n"
                quiet_since = loop.time()
            if not stored:
                await asyncio.sleep(POLL_S)

    async def result(self, request: Request, job_id: str, format: str) -> Response:
        job = await self._visible(request, job_id)
        pages = [stored.page for stored in await _stored(self._store.pages, job_id)]
        if format == "markdown":
            return PlainTextResponse(result_markdown(pages), media_type="text/markdown")
        if format == "zip":
            dpi = job.spec.fields.dpi or 72
            data = await asyncio.to_thread(result_zip, job, pages, dpi)
            headers = {"Content-Disposition": f'attachment; filename="{job.id}.zip"'}
            return Response(data, media_type="application/zip", headers=headers)
        return JSONResponse(result_json(job, pages))

    async def page(self, request: Request, job_id: str, number: int) -> dict[str, Any]:
        job = await self._visible(request, job_id)
        page = await _stored(self._store.page, job_id, number)
        if page is not None:
            return page
        if job.selected is not None and number not in job.selected:
            raise PageNotFoundError(f"page {number} is not one of the job's pages")
        raise PageNotFoundError(f"page {number} is not done yet (the job is {job.state.value})")

    async def cancel(self, request: Request, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job: its runner stops and its engine work is aborted;
        the pages done stay. A finished job is answered as it is."""
        await self._visible(request, job_id)
        job = await _stored(self._store.cancel, job_id)
        if job is None:
            raise _missing(job_id)
        return await self._job_body(request, job)

    async def delete(self, request: Request, job_id: str) -> dict[str, Any]:
        await self._visible(request, job_id, expired_ok=True)
        await _stored(self._store.delete, job_id)
        return {"id": job_id, "object": "job.deleted", "deleted": True}

    async def _visible(self, request: Request, job_id: str, expired_ok: bool = False) -> Job:
        """The job, if the caller may see it.

        Raises:
            JobNotFoundError: No such job, or another key's.
            JobExpiredError: Its results were freed.
        """
        access_record(request.scope).job_id = job_id
        job = await _stored(self._store.get, job_id)
        if job is None or job.spec.owner != access_record(request.scope).caller:
            raise _missing(job_id)
        if job.expired_at is not None and not expired_ok:
            raise _expired(job_id)
        return job

    async def _job_body(self, request: Request, job: Job) -> dict[str, Any]:
        position = None
        if job.state is JobState.QUEUED:
            position = await _stored(self._store.queue_position, job)
        body = job_json(job, self._clock(), position, base=request.scope.get("root_path", ""))
        if job.spec.webhook_url is not None:
            body["webhook"] = await _stored(self._store.delivery_state, job.id)
        return body


ResultFormat = Literal["json", "markdown", "zip"]


def _no_webhook_secret(caller: str | None) -> str:
    """Why ``caller`` may not ask for webhooks, and how it gets them."""
    if caller is None:
        return ("this service sends no webhooks (no signing secret is configured); follow the "
                "job's events URL instead")  # fmt: skip
    return ("this API key has no webhook signing secret: the operator gives it one (python -m "
            "serve_app.api.auth rotate, on the key's entry) and hands you the secret; follow "
            "the job's events URL meanwhile")  # fmt: skip


def _missing(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"no job {job_id!r}")


def _expired(job_id: str) -> JobExpiredError:
    return JobExpiredError(f"job {job_id!r} expired: its results were freed")


async def _stored(call: Callable[..., _T], *args: Any) -> _T:
    """A store call off the event loop; its outages and lost data as the service's errors.

    Raises:
        JobStoreUnavailableError: The store did not answer (503, retry).
        JobDataLostError: A stored page's body is gone (500).
    """
    try:
        return await asyncio.to_thread(call, *args)
    except StoreUnavailableError as error:
        raise JobStoreUnavailableError(f"the job store did not answer ({error})") from None
    except PageBodyMissingError as error:
        raise JobDataLostError(str(error)) from None


def _last_event_id(request: Request) -> int:
    value = request.headers.get("last-event-id", "0").strip() or "0"
    if not value.isdigit():
        raise InvalidInputError("Last-Event-ID must be the id of an event this stream sent")
    return int(value)


def _event(sse: bool, kind: str, payload: dict[str, Any], event_id: int | None = None) -> str:
    """One event: an SSE event (its ``id`` counts the pages sent), or one JSON line."""
    data = json.dumps(payload)
    if not sse:
        return data + "\n"
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"
