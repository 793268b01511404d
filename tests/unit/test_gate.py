"""The priority gate: interactive callers take freed turns before batch ones, cancelled
waiters give up their place (or pass on a turn handed to them)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.core.gate import PriorityGate


def test_a_freed_turn_goes_to_the_interactive_caller_first() -> None:
    async def go() -> list[str]:
        gate = PriorityGate(1)
        order: list[str] = []

        async def work(name: str, batch: bool) -> None:
            async with gate.turn(batch):
                order.append(name)
                await asyncio.sleep(0.01)

        await gate.acquire(batch=True)  # a job page at work
        waiting = [asyncio.create_task(work(f"job-{n}", True)) for n in range(3)]
        await asyncio.sleep(0)
        waiting.append(asyncio.create_task(work("person", False)))
        await asyncio.sleep(0)
        assert gate.waiting == (1, 3)
        gate.release()
        await asyncio.gather(*waiting)
        return order

    assert asyncio.run(go()) == ["person", "job-0", "job-1", "job-2"]


def test_a_cancelled_waiter_leaves_and_its_turn_is_never_lost() -> None:
    async def go() -> int:
        gate = PriorityGate(2)
        await gate.acquire()
        await gate.acquire()
        gone = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert gate.waiting == (0, 0)
        handed = asyncio.create_task(gate.acquire(batch=True))
        await asyncio.sleep(0)
        gate.release()  # handed to the waiter ...
        handed.cancel()  # ... which is cancelled before it runs: the turn goes back
        await asyncio.gather(handed, return_exceptions=True)
        gate.release()
        for _ in range(2):  # both turns are free again
            await asyncio.wait_for(gate.acquire(), timeout=1)
        return 0

    assert asyncio.run(go()) == 0


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        PriorityGate(0)
