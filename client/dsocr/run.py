"""Reading many documents: several at once, each through ``/v1/ocr?stream=true`` or, past a
page threshold, as a job; what is done is kept in the state record, so a rerun does only the
rest and resumes running jobs by id."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from dsocr.api import Api, ApiError
from dsocr.inputs import Input, page_count
from dsocr.outputs import document, write_outputs
from dsocr.state import Entry, State, options_key, sha256


@dataclass(frozen=True)
class RunOptions:
    """``params``: the service's options (model, task, mode, pages, dpi, include_figures)."""

    params: dict[str, str] = field(default_factory=dict)
    concurrency: int = 4
    job_threshold: int = 20
    retry_failed: bool = False


@dataclass
class Outcome:
    input: Input
    status: str  # done, failed, skipped (done before), kept (failed before, not retried)
    pages: int = 0
    pages_failed: int = 0
    via: str = "-"  # stream, job
    seconds: float = 0.0
    error: str | None = None
    job_id: str | None = None


class Reporter(Protocol):
    def started(self, item: Input, pages: int) -> None: ...
    def total(self, item: Input, pages: int) -> None: ...
    def page(self, item: Input) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


class DocumentFailedError(Exception):
    """The service answered, but no page of the document succeeded (or its job failed)."""


async def run_batch(
    api: Api,
    inputs: list[Input],
    out: Path,
    options: RunOptions,
    reporter: Reporter,
    stopping: asyncio.Event | None = None,
) -> list[Outcome]:
    """Read every input, ``options.concurrency`` at the service at a time; the outcome of
    each. A document's file is read and checked before its turn and its outputs written
    after it, so the turns go to the service's work; twice as many documents as turns are
    held at once, at most. Once ``stopping`` is set (Ctrl-C) no document starts, and one
    whose call fails meanwhile is left as it was recorded (a job stays ``running``), not
    recorded as failed: the run ends cancelled."""
    state = State(out)
    held, turns = asyncio.Semaphore(2 * options.concurrency), Turns(options.concurrency)
    stopping = stopping or asyncio.Event()

    async def one(index: int, item: Input) -> Outcome:
        try:
            async with held:
                if stopping.is_set():
                    raise asyncio.CancelledError
                return await read_one(api, item, out, options, state, reporter,
                                      turns.take(index), stopping)  # fmt: skip
        finally:
            turns.pass_over(index)

    return list(await asyncio.gather(*(one(index, item) for index, item in enumerate(inputs))))


class Turns:
    """``concurrency`` turns at the service, handed out in the inputs' order: with one turn
    the documents go one after another as listed, and a run stopped early has done a prefix
    of them, whichever file was quicker to read. Every index is taken or passed over once
    (passing over a taken one does nothing); the next index waits until those before it
    have."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._next = 0
        self._passed: set[int] = set()
        self._due: dict[int, asyncio.Event] = defaultdict(asyncio.Event)

    @contextlib.asynccontextmanager
    async def take(self, index: int) -> AsyncIterator[None]:
        if index != self._next:
            await self._due[index].wait()
        async with self._slots:
            self.pass_over(index)
            yield

    def pass_over(self, index: int) -> None:
        if index < self._next:  # taken already
            return
        self._passed.add(index)
        while self._next in self._passed:
            self._passed.discard(self._next)
            self._due.pop(self._next, None)
            self._next += 1
        self._due[self._next].set()


async def read_one(
    api: Api,
    item: Input,
    out: Path,
    options: RunOptions,
    state: State,
    reporter: Reporter,
    turn: contextlib.AbstractAsyncContextManager[None],
    stopping: asyncio.Event,
) -> Outcome:
    data = await asyncio.to_thread(item.path.read_bytes)
    digest, opts = sha256(data), options_key(options.params)
    entry = state.get(item.key, digest, opts)
    if entry is not None and entry.status == "done":
        outcome = Outcome(item, "skipped", entry.pages_done, job_id=entry.job_id)
        reporter.finished(outcome)
        return outcome
    if entry is not None and entry.status == "failed" and not options.retry_failed:
        outcome = Outcome(item, "kept", error=entry.error, job_id=entry.job_id)
        reporter.finished(outcome)
        return outcome
    pages = page_count(data, item.content_type)
    resume = entry.job_id if entry is not None and entry.status == "running" else None
    via = "job" if resume or pages >= options.job_threshold else "stream"
    outcome = Outcome(item, "failed", via=via)
    answer: dict[str, Any] | None = None
    async with turn:
        reporter.started(item, pages)
        start = time.perf_counter()
        try:
            if via == "job":
                running = Entry(item.key, digest, opts, "running")
                answer, outcome.job_id = await _as_job(api, item, data, options, state, resume,
                                                       running, submit_key(state.run_id, running),
                                                       reporter)  # fmt: skip
            else:
                answer = await _streamed(api, item, data, options, reporter)
        except (ApiError, DocumentFailedError, httpx.HTTPError) as error:
            if stopping.is_set():  # the interrupt, arriving as a broken call
                raise asyncio.CancelledError from error
            outcome.error = str(error) or type(error).__name__
    if answer is not None:
        try:
            await asyncio.to_thread(write_outputs, out, item.stem, answer)
            outcome.status = "done"
            outcome.pages = int(answer["pages_processed"])
            outcome.pages_failed = int(answer["pages_failed"])
        except OSError as error:
            outcome.error = f"writing the outputs: {error}"
    outcome.seconds = time.perf_counter() - start
    state.put(Entry(item.key, digest, opts, outcome.status, outcome.job_id, outcome.pages,
                    outcome.error))  # fmt: skip
    reporter.finished(outcome)
    return outcome


def submit_key(run_id: str, entry: Entry) -> str:
    """The job's ``Idempotency-Key``: the same for a rerun of the run (one that died between
    submitting and recording the job id finds its job again), another for another run (a
    fresh output folder: the document is read again)."""
    run = f"{run_id}\n{entry.input}\n{entry.sha256}\n{entry.options}"
    return "dsocr-" + hashlib.sha256(run.encode()).hexdigest()[:40]


async def _streamed(
    api: Api, item: Input, data: bytes, options: RunOptions, reporter: Reporter
) -> dict[str, Any]:
    pages: list[dict[str, Any]] = []
    summary: dict[str, Any] | None = None
    async for line in api.ocr_stream(data, item.content_type, options.params):
        kind = line.get("object")
        if kind == "ocr.page":
            pages.append(line)
            reporter.page(item)
        elif kind == "ocr.result":
            summary = line
            reporter.total(item, int(line["pages_processed"]))
        elif kind == "error":
            error = line["error"]
            raise ApiError(200, error.get("code", "error"), error["message"])
    if summary is None:
        raise DocumentFailedError("the stream ended without its summary")
    if pages and summary["pages_failed"] == len(pages):
        raise DocumentFailedError(f"no page succeeded: {pages[0]['error']['message']}")
    return document(summary, pages)


async def _as_job(
    api: Api,
    item: Input,
    data: bytes,
    options: RunOptions,
    state: State,
    job_id: str | None,
    entry: Entry,
    key: str,
    reporter: Reporter,
) -> tuple[dict[str, Any], str]:
    """Submit (or resume) the job and follow its events; its result."""
    if job_id is None:
        job = await api.submit(data, item.content_type, options.params, key=key)
        job_id = str(job["id"])
        entry.job_id = job_id
        state.put(entry)  # a rerun resumes this job instead of submitting again
    final: dict[str, Any] | None = None
    async for event in api.events(job_id):
        kind = event.get("object")
        if kind == "ocr.page":
            reporter.page(item)
        elif kind == "job":
            final = event
        elif kind == "error":
            error = event["error"]
            raise ApiError(200, error.get("code", "error"), error["message"])
    if final is None:
        raise DocumentFailedError(f"job {job_id}: its events ended early")
    if final["pages"]["total"] is not None:
        reporter.total(item, int(final["pages"]["total"]))
    if final["status"] not in ("succeeded", "partial"):
        why = (final.get("error") or {}).get("message") or "no page succeeded"
        raise DocumentFailedError(f"job {job_id} {final['status']}: {why}")
    return await api.result(job_id), job_id
