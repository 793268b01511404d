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
from serve_app.jobs.store import SqliteJobStore

logger = logging.getLogger("ray.serve")


class LeaseLostError(Exception):
    """This runner no longer holds the job: it was cancelled or taken over."""


class JobRunner:
    """Runs jobs from ``store`` through ``documents`` as ``worker`` (a unique name)."""

    def __init__(
        self,
        store: SqliteJobStore,
        documents: DocumentRunner[Any, Any],
        door: Door,
        worker: str,
        lease_s: float = 30.0,
    ) -> None:
        self._store, self._documents, self._door = store, documents, door
        self.worker = worker
        self._lease_s = lease_s

    async def run_next(self) -> Job | None:
        """Claim a job and run it to its end (or until it is lost); the job as it ended, or
        ``None`` when none was waiting."""
        job = await asyncio.to_thread(self._store.claim, self.worker, self._lease_s)
        if job is None:
            return None
        await self.run(job)
        return await asyncio.to_thread(self._store.get, job.id)

    async def run(self, job: Job) -> None:
        """Run a claimed job, renewing its lease while it runs."""
        work = asyncio.current_task()
        renewing = asyncio.create_task(self._renew(job.id, work))
        try:
            await self._run(job)
        except LeaseLostError:
            self._stopped(job)
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
        """Renew the lease every third of it; cancel ``work`` once it is lost."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            held = await asyncio.to_thread(self._store.renew, job_id, self.worker, self._lease_s)
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
            await self._hold(store.set_selected, job.id, worker, numbers)
        try:
            async with aclosing(run.reports()) as reports:  # a lost lease stops the pages too
                async for report in reports:
                    failed = isinstance(report.outcome, PageFailure)
                    page = page_json(report, options)
                    await self._hold(store.save_page, job.id, worker, report.number, page, failed)
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
