"""What a crash can and cannot make the service do: the quarantine rules, one name per replica,
unknown names, replicas that could not take a page, co-batched innocents, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from serve_app.config import FakeEngineConfig, IngressConfig
from serve_app.core.document import PageFailure, PageResult
from serve_app.documents.faults import EngineFaults, EngineGate, FaultPolicy
from serve_app.documents.messages import LocalPage, OCROptions, PageReport, PageTask
from serve_app.documents.pipeline import OCRPipeline
from serve_app.documents.quarantine import Quarantine
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import (
    EngineCrashedError,
    EngineUnavailableError,
    PageQuarantinedError,
)
from tests.unit.test_pipeline import POISON, TINY, stages

TASK = PageTask("req", 1, "pdf", OCROptions())
DONE = PageGeneration("ok", "stop", False, 1, 10, 2, (), None)


def policy(**options: object) -> FaultPolicy:
    return FaultPolicy(backoff_s=0.001, **options)  # type: ignore[arg-type]


def script(*outcomes: BaseException | None) -> Callable[[], Awaitable[PageGeneration]]:
    """A send that raises the next error, or answers on ``None``."""
    pending = list(outcomes)

    async def send() -> PageGeneration:
        outcome = pending.pop(0)
        if outcome is not None:
            raise outcome
        return DONE

    return send


def crash(replica: str | None) -> EngineCrashedError:
    return EngineCrashedError("died", replica=replica)


def recognize(
    faults: EngineFaults, send: Callable[[], Awaitable[PageGeneration]]
) -> tuple[PageGeneration | BaseException, list[str]]:
    died: list[str] = []

    async def go() -> PageGeneration:
        return await faults.recognize(send, TASK, "upload:1", died)

    try:
        return asyncio.run(go()), died
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return error, died


def test_crashing_alone_on_two_named_replicas_quarantines_the_page() -> None:
    faults = EngineFaults(policy())
    outcome, died = recognize(faults, script(crash("A"), crash("B"), crash("C")))
    assert isinstance(outcome, PageQuarantinedError)
    assert died == ["A", "B", "C"]  # A: in company (its first send); B and C: alone
    assert faults.quarantined("upload:1")


def test_one_replica_dying_many_times_never_quarantines() -> None:
    """The ingress names a dead process and the engine names its dead core by the same
    actor id: however often one replica is reported dead, it is one replica."""
    faults = EngineFaults(policy())
    outcome, died = recognize(faults, script(*[crash("A")] * 4))
    assert isinstance(outcome, EngineCrashedError) and died == ["A"] * 4
    assert not faults.quarantined("upload:1")


def test_an_unknown_replica_never_counts_as_a_new_one() -> None:
    faults = EngineFaults(policy())
    outcome, died = recognize(faults, script(crash(None), crash("A"), crash(None), crash(None)))
    assert isinstance(outcome, EngineCrashedError)
    assert died == ["unnamed", "A", "unnamed", "unnamed"]
    assert not faults.quarantined("upload:1")


def test_a_replica_that_could_not_take_the_page_is_not_a_crash() -> None:
    unavailable = EngineUnavailableError("the engine of this replica has died")
    faults = EngineFaults(policy())
    outcome, died = recognize(faults, script(unavailable, unavailable, None))
    assert outcome == DONE and died == []
    refused, _ = recognize(EngineFaults(policy(unavailable_retries=2)), script(*[unavailable] * 3))
    assert isinstance(refused, EngineUnavailableError)


def test_config_that_could_never_quarantine_is_refused() -> None:
    with pytest.raises(ValueError, match="could never be quarantined"):
        IngressConfig(crash_retries=2, quarantine_after_crashes=3)
    assert IngressConfig(crash_retries=2, quarantine_after_crashes=2).crash_retries == 2


def test_an_alone_send_waits_for_the_shared_ones_and_holds_back_new_ones() -> None:
    async def go() -> list[str]:
        gate, order = EngineGate(), []

        async def shared(name: str, hold: float) -> None:
            async with gate.shared():
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")

        async def alone() -> None:
            async with gate.alone():
                order.append("alone in")
                await asyncio.sleep(0.02)
                order.append("alone out")

        first = asyncio.create_task(shared("a", 0.05))
        await asyncio.sleep(0.01)
        solo = asyncio.create_task(alone())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(shared("b", 0.0))
        await asyncio.gather(first, solo, late)
        return order

    assert asyncio.run(go()) == ["a in", "a out", "alone in", "alone out", "b in", "b out"]


class BatchDeath:
    """Stages whose engine dies with every page in flight when the poison page (600 px wide)
    runs, as a real engine's batch does; each death is a new replica."""

    def __init__(self) -> None:
        self._inner = stages(FakeEngineConfig(first_token_latency_s=0.2))
        self.store = self._inner.store
        self.inspect = self._inner.inspect
        self.prepare = self._inner.prepare
        self.postprocess = self._inner.postprocess
        self.deaths = 0
        self._in_flight: set[asyncio.Future[None]] = set()

    async def recognize(self, page: LocalPage, task: PageTask) -> PageGeneration:
        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(died)
        try:
            if page.header.width == 600:
                await asyncio.sleep(0.05)  # the others join its batch
                self.deaths += 1
                for other in self._in_flight:
                    if not other.done():
                        other.set_result(None)
            work = asyncio.ensure_future(self._inner.recognize(page, task))
            await asyncio.wait({work, died}, return_when=asyncio.FIRST_COMPLETED)
            if died.done():
                work.cancel()
                raise EngineCrashedError("the engine died", replica=f"r{self.deaths}")
            return work.result()
        finally:
            self._in_flight.discard(died)


def test_an_innocent_page_in_the_poison_pages_batch_is_not_quarantined() -> None:
    batch = BatchDeath()
    pipeline = OCRPipeline(batch, pages_in_flight=3, faults=policy())  # type: ignore[arg-type]

    async def go() -> list[PageReport]:
        _, pages = await pipeline.run(POISON, OCROptions(mode=TINY), "req", "upload-2")
        return [r async for r in pages]

    reports = asyncio.run(go())
    assert [type(r.outcome) for r in reports] == [PageResult, PageFailure, PageResult]
    poison = reports[1].outcome
    assert isinstance(poison, PageFailure) and poison.code == "page_quarantined"
    assert reports[1].engine_crashes == 3  # in company once, then alone on two replicas
    assert [reports[0].engine_crashes, reports[2].engine_crashes] == [1, 1]  # its batch


def test_a_quarantine_forgets_after_its_ttl_and_drops_the_oldest_when_full() -> None:
    now = [0.0]
    quarantine = Quarantine(ttl_s=10.0, max_entries=2, clock=lambda: now[0])
    quarantine.add("a")
    now[0] = 5.0
    quarantine.add("b")
    quarantine.add("c")  # full: "a", the oldest, goes
    assert ("a" in quarantine, "b" in quarantine, "c" in quarantine) == (False, True, True)
    now[0] = 15.0
    assert ("b" in quarantine, "c" in quarantine) == (False, False)
