"""Running stored jobs: claim one, run its document, store each page as it finishes.

A :class:`JobRunner` runs documents the one way the service does
(:class:`~serve_app.documents.run.DocumentRunner`), without an HTTP request or a deadline. It
holds the job's lease while it works, renewing it on a timer; if it cannot (the job was
cancelled, or its lease ran out and another runner took it), it stops and its engine work is
cancelled. A job taken over from a runner that died resumes at its first page not stored:
a stored page is never sent to an engine again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from serve_app.core.document import PageFailure
from serve_app.core.pdf import page_spec
from serve_app.documents.door import Door
from serve_app.documents.messages import OCROptions
from serve_app.documents.results import page_json
from serve_app.documents.run import DocumentRunner
from serve_app.errors import ClientError, OCRError
from serve_app.jobs.model import Job, JobState
from serve_app.jobs.store import JobStore
from serve_app.telemetry import tracing

logger = logging.getLogger("ray.serve")


class LeaseLostError(Exception):
    """This runner no longer holds the job: it was cancelled or taken over."""


class JobRunner:
    """Runs jobs from ``store`` through ``documents`` as ``worker`` (a unique name), renewing
    a job's lease every ``check_s`` (at most a third of ``lease_s``): a cancelled job stops
    within that."""

    def __init__(
        self,
        store: JobStore,
        documents: DocumentRunner[Any, Any],
        door: Door,
        worker: str,
        lease_s: float = 30.0,
        check_s: float | None = None,
    ) -> None:
        self._store, self._documents, self._door = store, documents, door
        self.metrics = documents.metrics
        self.worker = worker
        self.lease_s = lease_s
        self._check_s = min(check_s or lease_s, lease_s / 3)

    @property
    def store(self) -> JobStore:
        return self._store

    async def run_next(self) -> Job | None:
        """Claim a job and run it to its end (or until it is lost); the job as it ended, or
        ``None`` when none was waiting."""
        job = await asyncio.to_thread(self._store.claim, self.worker, self.lease_s)
        if job is None:
            return None
        await self.run(job)
        return await asyncio.to_thread(self._store.get, job.id)

    async def run(self, job: Job) -> None:
        """Run a claimed job, renewing its lease while it runs."""
        work = asyncio.current_task()
        renewing = asyncio.create_task(self._renew(job.id, work))
        logger.info("job %s: %s runs it (%s pages stored before)", job.id, self.worker,
                    job.pages_done)  # fmt: skip
        try:
            with tracing.span(
                "ocr.job", attributes={"ocr.job_id": job.id, "ocr.worker": self.worker}
            ):
                await self._run(job)  # each page's trace links to this span
        except LeaseLostError:
            self._stopped(job)
        except Exception as exc:  # a bug: end the job rather than take it over forever
            logger.exception("job %s failed unexpectedly", job.id)
            error = {"code": "internal_error", "message": f"internal error ({type(exc).__name__})"}
            await asyncio.to_thread(self._store.finish, job.id, self.worker, JobState.FAILED,
                                    error)  # fmt: skip
        except asyncio.CancelledError:
            if not renewing.done() or work is None:  # cancelled from outside: pass it on
                raise
            work.uncancel()  # cancelled by the renewal that found the lease gone
            self._stopped(job)
        finally:
            renewing.cancel()

    def _stopped(self, job: Job) -> None:
        logger.info("job %s: %s stopped: the job was cancelled or taken over",
                    job.id, self.worker)  # fmt: skip

    async def _renew(self, job_id: str, work: asyncio.Task[Any] | None) -> None:
        """Renew the lease every ``check_s``; cancel ``work`` once it is lost."""
        while True:
            await asyncio.sleep(self._check_s)
            held = await asyncio.to_thread(self._store.renew, job_id, self.worker, self.lease_s)
            if not held:
                if work is not None:
                    work.cancel()
                return

    async def _run(self, job: Job) -> None:
        store, worker = self._store, self.worker
        try:
            asked = self._door.resolve(job.spec.fields)
        except ClientError as error:  # the configuration changed since it was submitted
            await self._finish(job, JobState.FAILED, error)
            return
        options: OCROptions | None = asked
        if job.selected is not None:
            stored = await asyncio.to_thread(store.stored_numbers, job.id)
            options = remaining_pages(asked, job.selected, stored)
        if options is None:
            await self._finish(job, None)
            return
        data = await asyncio.to_thread(store.upload, job.id)
        try:
            run = await self._documents.start(job.id, data, options)
        except ClientError as error:  # the document does not open, or no such pages
            await self._finish(job, JobState.FAILED, error)
            return
        except OCRError as error:
            await self._release(job, error)
            return
        if job.selected is None:
            numbers = [index + 1 for index in run.info.selected]
            info = run.info
            await self._hold(store.set_selected, job.id, worker, info.kind, info.page_count,
                             numbers)  # fmt: skip
        try:
            async with aclosing(run.reports()) as reports:  # a lost lease stops the pages too
                async for report in reports:
                    failed = isinstance(report.outcome, PageFailure)
                    page = page_json(report, options)
                    await self._hold(store.save_page, job.id, worker, report.number, page, failed)
                    self.metrics.job_page(failed)
        except OCRError as error:
            await self._release(job, error)
            return
        await self._finish(job, None)

    async def _release(self, job: Job, error: OCRError) -> None:
        """Back to the queue (the service is full): it resumes later at its next page."""
        logger.warning("job %s: %s (%s); it goes back to the queue", job.id, error.message,
                       error.code)  # fmt: skip
        await self._hold(self._store.release, job.id, self.worker)

    async def _hold(self, call: Callable[..., bool], *args: Any) -> None:
        """Make a store call that needs this runner's lease; raise when it lost it."""
        if not await asyncio.to_thread(call, *args):
            raise LeaseLostError(args[0])

    async def _finish(
        self, job: Job, state: JobState | None, error: OCRError | None = None
    ) -> None:
        """End the job: ``state``, or what its stored pages say."""
        if state is None:
            now = await asyncio.to_thread(self._store.get, job.id)
            done, failed = (now.pages_done, now.pages_failed) if now else (0, 0)
            state = JobState.FAILED if done and failed == done else (
                JobState.PARTIAL if failed else JobState.SUCCEEDED
            )  # fmt: skip
        body = {"code": error.code, "message": error.message} if error else None
        await self._hold(self._store.finish, job.id, self.worker, state, body)
        self.metrics.job_ended(state.value)
        logger.info("job %s: %s", job.id, state.value)


class JobLoop:
    """A runner replica's work: up to ``jobs_at_once`` jobs at a time, claimed as they are
    queued (looking every ``poll_s``, or at once when woken), and finished jobs' results
    freed once ``result_ttl_s`` passed (checked every ``expire_every_s``)."""

    def __init__(
        self,
        runner: JobRunner,
        jobs_at_once: int,
        poll_s: float,
        result_ttl_s: float,
        expire_every_s: float = 60.0,
    ) -> None:
        self._runner = runner
        self._jobs_at_once, self._poll_s = jobs_at_once, poll_s
        self._result_ttl_s, self._expire_every_s = result_ttl_s, expire_every_s
        self._woken = asyncio.Event()
        self.running: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Look for queued jobs now (one was submitted)."""
        self._woken.set()

    async def run(self) -> None:
        """Run until cancelled (the replica stops); the jobs in hand are cancelled too and
        their leases lapse, so another replica resumes them."""
        store = self._runner.store
        loop = asyncio.get_running_loop()
        next_expiry = loop.time()
        woken: asyncio.Task[bool] | None = None
        try:
            while True:
                if loop.time() >= next_expiry:
                    await self._expire()
                    next_expiry = loop.time() + self._expire_every_s
                await self._report()
                while len(self.running) < self._jobs_at_once:
                    job = await asyncio.to_thread(
                        store.claim, self._runner.worker, self._runner.lease_s
                    )
                    if job is None:
                        break
                    task = asyncio.create_task(self._runner.run(job), name=job.id)
                    self.running[job.id] = task
                    task.add_done_callback(lambda done: self.running.pop(done.get_name(), None))
                self._woken.clear()
                woken = asyncio.create_task(self._woken.wait())
                await asyncio.wait(
                    {woken, *self.running.values()},
                    timeout=self._poll_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
        finally:
            if woken is not None:
                woken.cancel()
            for task in self.running.values():
                task.cancel()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop the loop running as ``task``: its jobs' engine work is cancelled and their
        leases given back, so another runner resumes them now rather than when they lapse."""
        held = list(self.running.values())
        task.cancel()
        await asyncio.gather(task, *held, return_exceptions=True)
        runner = self._runner
        for job in held:
            released = await asyncio.to_thread(runner.store.release, job.get_name(), runner.worker)
            if released:
                logger.info("job %s: given back to the queue (%s stopped)", job.get_name(),
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
