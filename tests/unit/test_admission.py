"""Admission: bounded working and waiting requests, an immediate 429 beyond them."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.api.admission import Admission
from serve_app.errors import RateLimitedError


async def hold(admission: Admission, release: asyncio.Event, log: list[str], name: str) -> None:
    async with admission.slot():
        log.append(name)
        await release.wait()


def test_requests_beyond_the_waiting_line_are_refused_at_once() -> None:
    async def go() -> None:
        admission = Admission(working=2, waiting=1)
        release = asyncio.Event()
        log: list[str] = []
        tasks = [asyncio.ensure_future(hold(admission, release, log, n)) for n in "abc"]
        await asyncio.sleep(0.01)
        assert log == ["a", "b"] and admission.waiting == 1  # c waits for a slot
        with pytest.raises(RateLimitedError, match="1 requests are already waiting") as refused:
            async with admission.slot():
                pass
        assert refused.value.status_code == 429 and refused.value.retry_after_s
        release.set()
        await asyncio.gather(*tasks)
        assert log == ["a", "b", "c"] and admission.waiting == 0

    asyncio.run(go())


def test_a_cancelled_waiter_leaves_the_line_and_frees_nothing() -> None:
    async def go() -> None:
        admission = Admission(working=1, waiting=1)
        release = asyncio.Event()
        log: list[str] = []
        holder = asyncio.ensure_future(hold(admission, release, log, "a"))
        waiter = asyncio.ensure_future(hold(admission, release, log, "b"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert admission.waiting == 0
        # The slot is still held by "a": a new request waits rather than running.
        late = asyncio.ensure_future(hold(admission, release, log, "c"))
        await asyncio.sleep(0.01)
        assert log == ["a"]
        release.set()
        await asyncio.gather(holder, late)
        assert log == ["a", "c"]

    asyncio.run(go())
