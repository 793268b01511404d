"""Running stored jobs: claim one, run its document, store each page as it finishes.

A :class:`JobRunner` runs documents the one way the service does
(:class:`~serve_app.documents.run.DocumentRunner`), without an HTTP request or a deadline. It
holds the job's lease while it works, renewing it on a timer; once it no longer holds it (the
job was cancelled, or its lease ran out and another runner took it) it stops and its engine
work is cancelled. Every store call it makes names its claim's fencing token, so a runner
that lost its job cannot change it, whatever it still believes. A job taken over from a
runner that died resumes at its first page not stored: a stored page is never sent to an
engine again.

Store outages are ridden out: a page save or a renewal that meets an unavailable store is
retried with backoff for ``store_retry_s`` (the pages wait meanwhile); a lease that could not
be renewed before it ran out stops the work (another runner may hold the job by then).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from contextlib import aclosing, suppress
from enum import StrEnum
from typing import Any, TypeVar

from serve_app.core.document import PageFailure
from serve_app.core.pdf import page_spec
from serve_app.documents.door import Door
from serve_app.documents.messages import OCROptions
from serve_app.documents.results import page_json
from serve_app.documents.run import DocumentRunner
from serve_app.errors import ClientError, OCRError
from serve_app.jobs.model import Job, JobState
from serve_app.jobs.store import JobStore, StoreUnavailableError
from serve_app.telemetry import tracing

logger = logging.getLogger("ray.serve")

_T = TypeVar("_T")


class LeaseLostError(Exception):
    """This runner no longer holds the job: it was cancelled or taken over."""


class StoreOutageError(Exception):
    """The store stayed unavailable for longer than the runner retries."""


class Outcome(StrEnum):
    """How a runner's turn with a job ended."""

    ENDED = "ended"  # the job is in a final state
    STOPPED = "stopped"  # the lease was lost (cancelled, taken over) or the store stayed down
    BUSY = "busy"  # the service was full: the job went back to the queue


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """A wait before try ``attempt + 1`` (0-based): random up to ``base_s * 2**attempt``,
    capped at ``max_s`` ("full jitter": runners that failed together do not retry together).

    >>> 0 <= backoff(3, 1.0, 5.0) <= 5.0
    True
    """
    return random.uniform(0, min(max_s, base_s * 2.0**attempt))


@dataclasses.dataclass
class _Claim:
    """The job this runner holds: its id and the fencing token of the claim."""

    job_id: str
    token: int


class JobRunner:
    """Runs jobs from ``store`` through ``documents`` as ``worker`` (a name for logs),
    renewing a job's lease every ``check_s`` (at most a third of ``lease_s``): a cancelled job
    stops within that. A job whose runner died with it ``max_attempts`` times is failed by the
    store instead of claimed again. Store calls that meet an outage are retried for up to
    ``store_retry_s``."""

    def __init__(
        self,
        store: JobStore,
        documents: DocumentRunner[Any, Any],
        door: Door,
        worker: str,
        lease_s: float = 30.0,
        check_s: float | None = None,
        max_attempts: int = 3,
        store_retry_s: float = 120.0,
    ) -> None:
        self._store, self._documents, self._door = store, documents, door
        self.metrics = documents.metrics
        self.worker = worker
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self._check_s = min(check_s or lease_s, lease_s / 3)
        self._store_retry_s = store_retry_s

    @property
    def store(self) -> JobStore:
        return self._store

    def claim(self) -> Job | None:
        """Claim the next job (blocking: run it in a thread)."""
        return self._store.claim(self.worker, self.lease_s, self.max_attempts)

    async def run_next(self) -> Job | None:
        """Claim a job and run it to its end (or until it is lost); the job as it ended, or
        ``None`` when none was waiting."""
        job = await asyncio.to_thread(self.claim)
        if job is None:
            return None
        await self.run(job)
        return await asyncio.to_thread(self._store.get, job.id)

    async def run(self, job: Job) -> Outcome:
        """Run a claimed job, renewing its lease while it runs."""
        assert job.lease_token is not None, "run a job this runner claimed"
        held = _Claim(job.id, job.lease_token)
        work = asyncio.current_task()
        renewing = asyncio.create_task(self._renew(held, work))
        logger.info("job %s: %s runs it (claim %d, %d pages stored before, %d lapsed runs)",
                    job.id, self.worker, held.token, job.pages_done, job.lapses)  # fmt: skip
        try:
            with tracing.span(
                "ocr.job", attributes={"ocr.job_id": job.id, "ocr.worker": self.worker}
            ):
                return await self._run(job, held)  # each page's trace links to this span
        except LeaseLostError:
            self._stopped(job)
        except StoreOutageError as outage:
            logger.error("job %s: the store stayed unavailable (%s); giving it back", job.id,
                         outage)  # fmt: skip
            await self._give_back(held)
        except Exception as exc:  # a bug: end the job rather than take it over forever
            logger.exception("job %s failed unexpectedly", job.id)
            error = {"code": "internal_error", "message": f"internal error ({type(exc).__name__})"}
            try:
                await self._hold(self._store.finish, held, JobState.FAILED, error)
                return Outcome.ENDED
            except (LeaseLostError, StoreOutageError):
                pass
        except asyncio.CancelledError:
            if not renewing.done() or work is None:  # cancelled from outside: pass it on
                raise
            work.uncancel()  # cancelled by the renewal that found the lease gone
            self._stopped(job)
        finally:
            renewing.cancel()
        return Outcome.STOPPED

    def _stopped(self, job: Job) -> None:
        logger.info("job %s: %s stopped: the job was cancelled or taken over",
                    job.id, self.worker)  # fmt: skip

    async def _give_back(self, held: _Claim) -> None:
        with suppress(StoreUnavailableError):  # else its lease lapses
            await asyncio.to_thread(self._store.release, held.job_id, held.token)

    async def _renew(self, held: _Claim, work: asyncio.Task[Any] | None) -> None:
        """Renew the lease every ``check_s``, through store outages while it lasts; cancel
        ``work`` once it is lost or ran out unrenewed."""
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        failures = 0
        while True:
            await asyncio.sleep(self._check_s if not failures else backoff(failures, 0.2, 2.0))
            try:
                held_still = await asyncio.to_thread(
                    self._store.renew, held.job_id, held.token, self.lease_s
                )
            except StoreUnavailableError as error:
                failures += 1
                if loop.time() - renewed_at < self.lease_s:
                    logger.warning("job %s: renewing its lease failed (%s); retrying",
                                   held.job_id, error)  # fmt: skip
                    continue
                logger.error("job %s: its lease ran out unrenewed (%s)", held.job_id, error)
                held_still = False
            except Exception:
                logger.exception("job %s: renewing its lease failed unexpectedly", held.job_id)
                held_still = False
            if not held_still:
                if work is not None:
                    work.cancel()
                return
            renewed_at, failures = loop.time(), 0

    async def _retrying(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` in a thread, retried with backoff while the store is unavailable.

        Raises:
            StoreOutageError: It stayed unavailable for ``store_retry_s``.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._store_retry_s
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(call, *args)
            except StoreUnavailableError as error:
                if loop.time() >= give_up_at:
                    raise StoreOutageError(str(error)) from error
                if attempt == 0:
                    logger.warning("job store unavailable (%s); retrying", error)
                await asyncio.sleep(backoff(attempt, 0.2, 5.0))
                attempt += 1

    async def _hold(self, call: Callable[..., bool], held: _Claim, *args: Any) -> None:
        """Make a store call that needs this runner's claim; raise when it lost it."""
        if not await self._retrying(call, held.job_id, held.token, *args):
            raise LeaseLostError(held.job_id)

    async def _run(self, job: Job, held: _Claim) -> Outcome:
        store = self._store
        try:
            asked = self._door.resolve(job.spec.fields)
        except ClientError as error:  # the configuration changed since it was submitted
            return await self._finish(held, JobState.FAILED, error)
        options: OCROptions | None = asked
        if job.selected is not None:
            stored = await self._retrying(store.stored_numbers, job.id)
            options = remaining_pages(asked, job.selected, stored)
        if options is None:
            return await self._finish(held, None)
        try:
            data = await self._retrying(store.upload, job.id)
        except KeyError:  # deleted meanwhile
            raise LeaseLostError(job.id) from None
        try:
            run = await self._documents.start(job.id, data, options)
        except ClientError as error:  # the document does not open, or no such pages
            return await self._finish(held, JobState.FAILED, error)
        except OCRError as error:
            return await self._release(held, error)
        if job.selected is None:
            info = run.info
            numbers = [index + 1 for index in info.selected]
            await self._hold(store.set_selected, held, info.kind, info.page_count, numbers)
        try:
            async with aclosing(run.reports()) as reports:  # a lost lease stops the pages too
                async for report in reports:
                    failed = isinstance(report.outcome, PageFailure)
                    page = page_json(report, options)
                    await self._hold(store.save_page, held, report.number, page, failed)
                    self.metrics.job_page(failed)
        except OCRError as error:
            return await self._release(held, error)
        return await self._finish(held, None)

    async def _release(self, held: _Claim, error: OCRError) -> Outcome:
        """Back to the queue (the service is full): it resumes later at its next page."""
        logger.warning("job %s: %s (%s); it goes back to the queue", held.job_id,
                       error.message, error.code)  # fmt: skip
        await self._hold(self._store.release, held)
        return Outcome.BUSY

    async def _finish(
        self, held: _Claim, state: JobState | None, error: OCRError | None = None
    ) -> Outcome:
        """End the job: ``state``, or what its stored pages say."""
        if state is None:
            now = await self._retrying(self._store.get, held.job_id)
            done, failed = (now.pages_done, now.pages_failed) if now else (0, 0)
            state = JobState.FAILED if done and failed == done else (
                JobState.PARTIAL if failed else JobState.SUCCEEDED
            )  # fmt: skip
        body = {"code": error.code, "message": error.message} if error else None
        await self._hold(self._store.finish, held, state, body)
        self.metrics.job_ended(state.value)
        logger.info("job %s: %s", held.job_id, state.value)
        return Outcome.ENDED


class JobLoop:
    """A runner replica's work: up to ``jobs_at_once`` jobs at a time, claimed as they are
    queued (looking every ``poll_s``, or at once when woken), and finished jobs' results
    freed once ``result_ttl_s`` passed (checked every ``expire_every_s``). A job given back
    because the service was full holds further claims back for a random wait that doubles
    while it stays full (from ``busy_backoff_s`` up to ``max_busy_backoff_s``); a store error
    holds them back the same way, and the loop goes on."""

    def __init__(
        self,
        runner: JobRunner,
        jobs_at_once: int,
        poll_s: float,
        result_ttl_s: float,
        expire_every_s: float = 60.0,
        busy_backoff_s: float = 1.0,
        max_busy_backoff_s: float = 30.0,
    ) -> None:
        self._runner = runner
        self._jobs_at_once, self._poll_s = jobs_at_once, poll_s
        self._result_ttl_s, self._expire_every_s = result_ttl_s, expire_every_s
        self._busy_backoff_s, self._max_busy_backoff_s = busy_backoff_s, max_busy_backoff_s
        self._woken = asyncio.Event()
        self.running: dict[str, asyncio.Task[Outcome]] = {}
        self._tokens: dict[str, int] = {}
        self._setbacks = 0  # full services and store errors in a row
        self._not_before = 0.0

    def wake(self) -> None:
        """Look for queued jobs now (one was submitted)."""
        self._woken.set()

    async def run(self) -> None:
        """Run until cancelled (the replica stops); the jobs in hand are cancelled too and
        their leases lapse, so another replica resumes them."""
        loop = asyncio.get_running_loop()
        next_expiry = loop.time()
        woken: asyncio.Task[bool] | None = None
        try:
            while True:
                if loop.time() >= next_expiry:
                    await self._expire()
                    next_expiry = loop.time() + self._expire_every_s
                await self._report()
                if loop.time() >= self._not_before:
                    await self._claim_jobs()
                self._woken.clear()
                woken = asyncio.create_task(self._woken.wait())
                wait = self._poll_s
                if self._not_before > loop.time():
                    wait = max(self._not_before - loop.time(), 0.01)
                await asyncio.wait(
                    {woken, *self.running.values()},
                    timeout=wait,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
        finally:
            if woken is not None:
                woken.cancel()
            for task in self.running.values():
                task.cancel()

    async def _claim_jobs(self) -> None:
        """Claim and start jobs while there is room; a store error backs off."""
        while len(self.running) < self._jobs_at_once:
            try:
                job = await asyncio.to_thread(self._runner.claim)
            except Exception as error:
                if isinstance(error, StoreUnavailableError):
                    logger.warning("claiming a job failed: %s", error)
                else:
                    logger.exception("claiming a job failed unexpectedly")
                self._set_back()
                return
            if job is None or job.lease_token is None:
                return
            stale = self.running.get(job.id)
            if stale is not None:  # its lease lapsed and this replica took it back: run it once
                stale.cancel()
            task = asyncio.create_task(self._runner.run(job), name=job.id)
            self.running[job.id] = task
            self._tokens[job.id] = job.lease_token
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Outcome]) -> None:
        job_id = task.get_name()
        if self.running.get(job_id) is task:  # not a later run of the same job
            del self.running[job_id]
            self._tokens.pop(job_id, None)
        if task.cancelled() or task.exception() is not None:
            return
        if task.result() is Outcome.BUSY:
            self._set_back()
        elif task.result() is Outcome.ENDED:
            self._setbacks = 0

    def _set_back(self) -> None:
        wait = backoff(self._setbacks, self._busy_backoff_s, self._max_busy_backoff_s)
        self._not_before = asyncio.get_running_loop().time() + wait
        self._setbacks += 1

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop the loop running as ``task``: its jobs' engine work is cancelled and their
        leases given back, so another runner resumes them now rather than when they lapse."""
        held = dict(self._tokens)
        jobs = list(self.running.values())
        task.cancel()
        await asyncio.gather(task, *jobs, return_exceptions=True)
        runner = self._runner
        for job_id, token in held.items():
            try:
                released = await asyncio.to_thread(runner.store.release, job_id, token)
            except StoreUnavailableError:
                continue  # its lease lapses instead
            if released:
                logger.info("job %s: given back to the queue (%s stopped)", job_id,
                            runner.worker)  # fmt: skip

    async def _report(self) -> None:
        try:
            stats = await asyncio.to_thread(self._runner.store.stats)
        except Exception:
            logger.exception("reading the job queue's size failed")
            return
        self._runner.metrics.jobs(stats.queued, stats.running, stats.oldest_queued_s)

    async def _expire(self) -> None:
        try:
            freed = await asyncio.to_thread(self._runner.store.expire, self._result_ttl_s)
        except Exception:
            logger.exception("freeing expired job results failed")
            return
        if freed:
            logger.info("freed the results of %d expired jobs", freed)


def remaining_pages(
    options: OCROptions, selected: tuple[int, ...], stored: set[int]
) -> OCROptions | None:
    """``options`` for the selected pages not stored yet; ``None`` when there are none."""
    remaining = [number for number in selected if number not in stored]
    if not remaining:
        return None
    if len(remaining) == len(selected):
        return options
    return dataclasses.replace(options, pages=page_spec(remaining))
