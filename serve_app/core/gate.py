"""A fixed number of turns at some work, handed to interactive callers before batch ones.

A stage replica holds pages of ``/v1/ocr`` requests and pages of jobs; when they wait for a
turn (a preprocess thread, the CPU engine), a request's page goes first, so a queue of job
pages does not stand between a person and their answer. A page already at work is not
stopped. Within each class, first come first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """``slots`` turns; :meth:`acquire` waits for one, :meth:`release` hands it on."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, not {slots}")
        self._free = slots
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {False: deque(), True: deque()}

    @property
    def waiting(self) -> tuple[int, int]:
        """Interactive and batch callers waiting."""
        return len(self._waiting[False]), len(self._waiting[True])

    async def acquire(self, batch: bool = False) -> None:
        if self._free and not any(self._waiting.values()):
            self._free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting[batch].append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a turn just as it gave up: pass it on
            elif turn in self._waiting[batch]:
                self._waiting[batch].remove(turn)
            raise

    def release(self) -> None:
        for batch in (False, True):
            queue = self._waiting[batch]
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._free += 1

    @asynccontextmanager
    async def turn(self, batch: bool = False) -> AsyncIterator[None]:
        await self.acquire(batch)
        try:
            yield
        finally:
            self.release()
