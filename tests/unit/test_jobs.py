"""Jobs in the embedded store and their runner: leases, idempotency, resume after a runner
dies without running a stored page again, cancellation, expiry."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from serve_app.config import AppConfig, EngineConfig, FakeEngineConfig
from serve_app.documents.door import Door, RequestFields
from serve_app.documents.messages import LocalPage, PageTask
from serve_app.documents.run import DocumentRunner
from serve_app.documents.stages import LocalStages
from serve_app.engine.recognize import PageGeneration
from serve_app.jobs.blobs import LocalBlobs
from serve_app.jobs.model import JobSpec, JobState
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.jobs.store import IdempotencyConflictError, JobStats, JobStore
from serve_app.testing.synthetic import text_pdf

TINY = RequestFields(mode="tiny")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Stores of one kind over the same data (replicas sharing it), on ``clock``: every
    test here is the contract both stores keep."""
    prefix = f"{{test-{uuid.uuid4().hex[:8]}}}:"

    def make(clock: Callable[[], float] = time.time) -> JobStore:
        if request.param == "sqlite":
            return SqliteJobStore(tmp_path / "jobs.db", clock=clock)
        url = request.getfixturevalue("redis_url")
        return RedisJobStore(url, LocalBlobs(tmp_path / "blobs"), prefix=prefix, clock=clock)

    return make


def test_a_job_is_stored_and_an_idempotent_submit_returns_it(make_store: StoreFactory) -> None:
    jobs = make_store()
    first, created = jobs.submit(JobSpec(TINY, owner="k1", idempotency_key="abc"), b"%PDF")
    again, created_again = jobs.submit(JobSpec(TINY, owner="k1", idempotency_key="abc"), b"%PDF")
    other, created_other = jobs.submit(JobSpec(TINY, owner="k2", idempotency_key="abc"), b"y")
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id != other.id
    for changed in (JobSpec(TINY, owner="k1", idempotency_key="abc"),
                    JobSpec(RequestFields(mode="small"), owner="k1", idempotency_key="abc")):  # fmt: skip
        with pytest.raises(IdempotencyConflictError) as conflict:
            jobs.submit(changed, b"%PDF" if changed.fields != TINY else b"%PDF-other")
        assert conflict.value.job_id == first.id
    assert jobs.upload(first.id) == b"%PDF"  # no repeat replaced the document
    assert first.state is JobState.QUEUED and first.spec.fields == TINY
    assert [j.id for j in jobs.list_jobs("k1")] == [first.id]  # a key sees only its own
    assert [j.id for j in jobs.list_jobs(None)] == []


def test_a_claim_is_exclusive_and_a_lapsed_lease_is_claimed_again(make_store: StoreFactory) -> None:
    clock = Clock()
    a, b = make_store(clock), make_store(clock)  # two replicas, one file
    job, _ = a.submit(JobSpec(TINY), b"%PDF")
    claimed = a.claim("runner-a", lease_s=30)
    assert claimed is not None and claimed.id == job.id and claimed.lease_owner == "runner-a"
    assert claimed.lease_token == 1
    assert b.claim("runner-b", lease_s=30) is None
    assert not b.save_page(job.id, 2, 1, {"page": 1}, failed=False)  # no such claim
    assert a.save_page(job.id, 1, 1, {"page": 1}, failed=False)
    assert a.save_page(job.id, 1, 1, {"page": 1, "again": True}, failed=False)
    clock.now += 31  # runner-a stopped renewing: it died
    taken = b.claim("runner-b", lease_s=30)
    assert taken is not None and taken.id == job.id and taken.pages_done == 1  # stored once
    assert (taken.lease_token, taken.lapses) == (2, 1)
    assert not a.renew(job.id, 1, 30) and b.renew(job.id, 2, 30)
    assert not a.save_page(job.id, 1, 2, {"page": 2}, failed=False)  # the lapsed claim
    assert not a.finish(job.id, 1, JobState.SUCCEEDED)
    assert [p.page for p in b.pages(job.id)] == [{"page": 1}]


def test_pages_queue_listing_cancel_release_and_delete(make_store: StoreFactory) -> None:
    clock = Clock()
    jobs = make_store(clock)
    first, _ = jobs.submit(JobSpec(TINY, owner="k"), b"%PDF-1")
    clock.now += 1
    second, _ = jobs.submit(JobSpec(TINY, owner="k"), b"%PDF-2")
    clock.now += 1
    third, _ = jobs.submit(JobSpec(TINY, owner="k"), b"%PDF-3")
    assert [jobs.queue_position(j) for j in (first, second, third)] == [0, 1, 2]
    assert jobs.stats() == JobStats(queued=3, running=0, oldest_queued_s=2.0)

    claimed = jobs.claim("r", 30)
    assert claimed is not None and claimed.id == first.id and claimed.started_at == clock.now
    token = claimed.lease_token
    assert token is not None and jobs.queue_position(third) == 1
    assert jobs.set_selected(first.id, token, "pdf", 9, [2, 3, 5])
    for number in (5, 2):
        assert jobs.save_page(first.id, token, number, {"page": number}, failed=number == 2)
    assert not jobs.save_page(first.id, token + 1, 3, {"page": 3}, failed=False)
    got = jobs.get(first.id)
    assert got is not None and (got.kind, got.page_count, got.selected) == ("pdf", 9, (2, 3, 5))
    assert (got.pages_done, got.pages_failed, got.pages_total) == (2, 1, 3)
    assert [(p.number, p.page) for p in jobs.pages(first.id)] == [
        (5, {"page": 5}),
        (2, {"page": 2}),
    ]
    assert [p.number for p in jobs.pages(first.id, skip=1)] == [2]
    assert jobs.page(first.id, 2) == {"page": 2} and jobs.page(first.id, 3) is None
    assert jobs.stats() == JobStats(queued=2, running=1, oldest_queued_s=1.0)

    assert jobs.release(first.id, token) and not jobs.release(first.id, token)
    again = jobs.claim("r2", 30)
    assert again is not None and again.id == first.id and again.pages_done == 2
    assert again.lease_token == token + 1 and again.lapses == 0  # a release is no lapse

    cancelled = jobs.cancel(second.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at == clock.now and jobs.cancel("job-none") is None
    assert [j.id for j in jobs.list_jobs("k")] == [third.id, second.id, first.id]
    assert [j.id for j in jobs.list_jobs("k", JobState.CANCELLED)] == [second.id]
    assert [j.id for j in jobs.list_jobs("k", limit=1, offset=1)] == [second.id]

    assert jobs.delete(first.id) and not jobs.delete(first.id)
    assert jobs.get(first.id) is None and jobs.pages(first.id) == []
    with pytest.raises(KeyError):
        jobs.upload(first.id)
    assert not jobs.save_page(first.id, token + 1, 3, {"page": 3}, failed=False)


def test_expiry_frees_the_storage_and_keeps_the_id(make_store: StoreFactory) -> None:
    clock = Clock()
    jobs = make_store(clock)
    job, _ = jobs.submit(JobSpec(TINY), b"%PDF" + b"\0" * 1000)
    claimed = jobs.claim("r", 30)
    assert claimed is not None and claimed.lease_token is not None
    jobs.save_page(job.id, claimed.lease_token, 1, {"page": 1}, failed=False)
    jobs.finish(job.id, claimed.lease_token, JobState.SUCCEEDED)
    assert jobs.expire(older_than_s=86400) == 0
    clock.now += 86401
    assert jobs.expire(older_than_s=86400) == 1
    expired = jobs.get(job.id)
    assert expired is not None and expired.expired_at == clock.now
    assert jobs.pages(job.id) == []
    with pytest.raises(KeyError):
        jobs.upload(job.id)
    assert jobs.get("job-never") is None


class Recording(LocalStages):
    """In-process stages that record which page numbers reached the engine."""

    recognized: list[int]

    async def recognize(self, page: LocalPage, task: PageTask) -> PageGeneration:
        self.recognized.append(task.number)
        return await super().recognize(page, task)


async def stages(latency_s: float) -> tuple[Recording, AppConfig]:
    fake = FakeEngineConfig(first_token_latency_s=latency_s)
    config = AppConfig(
        models={"deepseek-ocr": EngineConfig(kind="fake", fake=fake)},
        ingress={"pages_in_flight": 2},
    )
    base = await LocalStages.started(config)
    recording = Recording(base._pre, base._rec, base._post, max_pages=50)  # type: ignore[attr-defined]
    recording.recognized = []
    return recording, config


def runner(jobs: JobStore, stages: Recording, config: AppConfig, name: str) -> JobRunner:
    documents = DocumentRunner.from_config(config.ingress, stages)
    return JobRunner(jobs, documents, Door(config), worker=name, lease_s=0.6)


def test_a_job_runs_page_by_page_into_the_store(make_store: StoreFactory) -> None:
    async def go() -> tuple[JobState, list[int], list[int]]:
        recording, config = await stages(0.0)
        jobs = make_store()
        job, _ = jobs.submit(JobSpec(TINY), text_pdf(5))
        ended = await runner(jobs, recording, config, "r1").run_next()
        assert ended is not None and ended.selected == (1, 2, 3, 4, 5)
        return ended.state, [p.number for p in jobs.pages(job.id)], recording.recognized

    state, stored, recognized = asyncio.run(go())
    assert state is JobState.SUCCEEDED
    assert stored == [1, 2, 3, 4, 5] and sorted(recognized) == [1, 2, 3, 4, 5]


def test_a_job_whose_runner_died_resumes_without_running_a_stored_page_again(
    make_store: StoreFactory,
) -> None:
    async def go() -> tuple[list[int], list[int], JobState, list[int]]:
        recording, config = await stages(0.1)
        jobs = make_store()
        job, _ = jobs.submit(JobSpec(TINY), text_pdf(10))
        first = asyncio.create_task(runner(jobs, recording, config, "r1").run_next())
        while len(jobs.stored_numbers(job.id)) < 4:
            await asyncio.sleep(0.02)
        first.cancel()  # the runner's replica dies: no finish, no release; its lease lapses
        await asyncio.gather(first, return_exceptions=True)
        stored_before = sorted(jobs.stored_numbers(job.id))
        recognized_before = list(recording.recognized)
        await asyncio.sleep(0.7)  # the lease (0.6 s) runs out
        ended = await runner(jobs, recording, config, "r2").run_next()
        assert ended is not None
        after = recording.recognized[len(recognized_before) :]
        return stored_before, after, ended.state, [p.number for p in jobs.pages(job.id)]

    stored_before, recognized_after, state, pages = asyncio.run(go())
    assert state is JobState.SUCCEEDED
    assert sorted(pages) == list(range(1, 11)) and len(pages) == 10  # each page once
    assert not set(stored_before) & set(recognized_after)  # no stored page ran again
    assert sorted(set(stored_before) | set(recognized_after)) == list(range(1, 11))


def test_a_cancelled_job_stops_its_engine_work(make_store: StoreFactory) -> None:
    async def go() -> tuple[JobState, int, int]:
        recording, config = await stages(0.2)
        jobs = make_store()
        job, _ = jobs.submit(JobSpec(TINY), text_pdf(20))
        running = asyncio.create_task(runner(jobs, recording, config, "r1").run_next())
        while not jobs.stored_numbers(job.id):
            await asyncio.sleep(0.02)
        jobs.cancel(job.id)
        ended = await asyncio.wait_for(running, timeout=5)
        engine = recording._rec["deepseek-ocr"].engine  # type: ignore[index]
        assert ended is not None
        return ended.state, len(jobs.stored_numbers(job.id)), engine.num_unfinished()

    state, stored, unfinished = asyncio.run(go())
    assert state is JobState.CANCELLED
    assert stored < 20 and unfinished == 0


def test_an_ended_job_owes_its_webhook_once_until_it_is_delivered(
    make_store: StoreFactory,
) -> None:
    clock = Clock()
    jobs = make_store(clock)
    hooked = JobSpec(TINY, webhook_url="https://hooks.example.com/ocr")
    done, _ = jobs.submit(hooked, b"%PDF")
    clock.now += 1
    plain, _ = jobs.submit(JobSpec(TINY), b"%PDF")
    clock.now += 1
    cancelled, _ = jobs.submit(hooked, b"%PDF")
    assert jobs.claim_delivery(30) is None
    for job in (done, plain):
        claimed = jobs.claim("r", 30)
        assert claimed is not None and claimed.id == job.id and claimed.lease_token is not None
        assert jobs.finish(job.id, claimed.lease_token, JobState.SUCCEEDED)
    assert jobs.delivery_state(plain.id) is None  # it asked for none

    owed = jobs.claim_delivery(lease_s=30)
    assert owed is not None and owed.id.startswith("msg_")
    assert (owed.job_id, owed.url, owed.state, owed.attempts) == (
        done.id, "https://hooks.example.com/ocr", JobState.SUCCEEDED, 1)  # fmt: skip
    assert owed.created_at == clock.now
    assert jobs.claim_delivery(30) is None  # held by its sender
    jobs.delivery_result(owed.id, delivered=False, retry_at=clock.now + 10, error="HTTP 503")
    assert jobs.delivery_state(done.id) == {"state": "pending", "attempts": 1,
                                            "last_error": "HTTP 503"}  # fmt: skip
    clock.now += 10
    again = jobs.claim_delivery(30)
    assert again is not None and (again.id, again.attempts) == (owed.id, 2)
    jobs.delivery_result(again.id, delivered=True, retry_at=None, error=None)
    assert jobs.delivery_state(done.id) == {"state": "delivered", "attempts": 2,
                                            "last_error": None}  # fmt: skip

    jobs.cancel(cancelled.id)
    assert jobs.cancel(cancelled.id) is not None  # cancelling again owes nothing more
    owed = jobs.claim_delivery(30)
    assert owed is not None and (owed.job_id, owed.state) == (cancelled.id, JobState.CANCELLED)
    jobs.delivery_result(owed.id, delivered=False, retry_at=None, error="HTTP 400")
    assert jobs.delivery_state(cancelled.id) == {"state": "failed", "attempts": 1,
                                                 "last_error": "HTTP 400"}  # fmt: skip
    clock.now += 3600
    assert jobs.claim_delivery(30) is None


def test_each_page_of_a_job_has_a_trace_of_its_own_linked_to_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serve_app.telemetry import tracing

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("test"))

    async def go() -> None:
        recording, config = await stages(0.0)
        jobs = SqliteJobStore(tmp_path / "jobs.db")
        jobs.submit(JobSpec(TINY), text_pdf(3))
        documents = DocumentRunner.from_config(config.ingress, recording, batch=True)
        ended = await JobRunner(jobs, documents, Door(config), "r1").run_next()
        assert ended is not None and ended.state is JobState.SUCCEEDED

    asyncio.run(go())
    spans = exported.get_finished_spans()
    (job,) = [s for s in spans if s.name == "ocr.job"]
    pages = [s for s in spans if s.name == "ocr.page"]
    assert sorted(s.attributes["ocr.page"] for s in pages) == [1, 2, 3]  # type: ignore[index]
    traces = {s.context.trace_id for s in pages}
    assert len(traces) == 3 and job.context.trace_id not in traces
    for page in pages:
        assert page.parent is None
        assert [link.context.span_id for link in page.links] == [job.context.span_id]
    engine = [s for s in spans if s.name == "engine"]
    assert {s.context.trace_id for s in engine} == traces  # the stages' spans are in them
