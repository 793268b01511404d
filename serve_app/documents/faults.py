"""What happens to a page whose engine died, or could not take it.

A page in flight on an engine replica that died (the replica's process, or vLLM's engine
core) is sent again. It may be the page that killed the engine, or an innocent that shared
its batch, so it goes alone: while it is in flight no other page of its model leaves this
ingress replica (:class:`EngineGate`). A page that crashes an engine *alone*, on
``quarantine_after`` different replicas, is the poison: quarantined, never sent again while
the quarantine holds its upload's fingerprint. Crashes in company, or on a replica whose name
is unknown, never count towards that; each still uses one of ``retries`` sends.

A replica that could not take the page at all (its engine already dead, or Ray could not reach
it: :class:`~serve_app.errors.EngineUnavailableError`) did not run it: the page is sent again
after a pause, while Serve routes around or replaces that replica, without counting a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from serve_app.documents.messages import PageTask
from serve_app.documents.quarantine import Quarantine
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import EngineCrashedError, EngineUnavailableError, PageQuarantinedError

logger = logging.getLogger("ray.serve")


@dataclass
class FaultPolicy:
    """Sends of a page whose engine died (``retries`` more, ``backoff_s`` longer each time),
    when it is quarantined, and how often a page is sent again to a replica that could not
    take it or prepared again when its data was lost.

    Attributes:
        quarantine_after: Distinct named replicas that died with the page alone on them.
        unavailable_retries: Sends again after an engine replica could not take the page
            (the pause grows to ``max_backoff_s``: about 15 s in all by default, while Serve's
            health check takes the replica out of routing).
        data_retries: Preparations again of a page whose data left the object store.
    """

    retries: int = 3
    quarantine_after: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 2.0
    unavailable_retries: int = 10
    data_retries: int = 2
    quarantine: Quarantine = field(default_factory=lambda: Quarantine(ttl_s=3600.0))

    def pause(self, attempt: int) -> float:
        return min(self.backoff_s * attempt, self.max_backoff_s)


class EngineGate:
    """Pages of one model go to its engines together (shared), or one page alone: an alone
    page waits for the shared ones in flight to finish, and new shared pages wait for it."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._shared = 0
        self._alone = False
        self._waiting_alone = 0

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        async with self._changed:
            self._waiting_alone += 1
            try:
                await self._changed.wait_for(lambda: not self._alone and not self._shared)
            finally:
                self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            async with self._changed:
                self._alone = False
                self._changed.notify_all()


class EngineFaults:
    """Sends pages to their model's engines under a :class:`FaultPolicy` (one gate per model
    for this ingress replica)."""

    def __init__(self, policy: FaultPolicy | None = None) -> None:
        self.policy = policy or FaultPolicy()
        self._gates: defaultdict[str, EngineGate] = defaultdict(EngineGate)

    def quarantined(self, key: str | None) -> bool:
        return key is not None and key in self.policy.quarantine

    async def recognize(
        self,
        send: Callable[[], Awaitable[PageGeneration]],
        task: PageTask,
        key: str | None,
        died: list[str],
    ) -> PageGeneration:
        """``send()`` the page until an engine answers.

        ``died`` collects the replicas that died with the page (``unnamed`` when unknown).

        Raises:
            PageQuarantinedError: It crashed alone on ``quarantine_after`` named replicas.
            EngineCrashedError: Its engines died ``retries`` + 1 times.
            EngineUnavailableError: No replica could take it ``unavailable_retries`` + 1
                times.
        """
        policy, gate = self.policy, self._gates[task.options.model]
        alone_on: set[str] = set()
        unavailable = 0
        while True:
            alone = bool(died)  # after a crash the page goes alone: a crash then is its own
            try:
                async with gate.alone() if alone else gate.shared():
                    return await send()
            except EngineUnavailableError as refused:
                unavailable += 1
                if unavailable > policy.unavailable_retries:
                    raise
                logger.warning("page %s: %s; sending it again", task.page_id, refused.message)
                await asyncio.sleep(policy.pause(unavailable))
                continue
            except EngineCrashedError as crash:
                unavailable = 0  # a pause for each replica that dies, not one for them all
                died.append(crash.replica or "unnamed")
                if alone and crash.replica is not None:
                    alone_on.add(crash.replica)
                if len(alone_on) >= policy.quarantine_after:
                    raise self._quarantine(task, key, died) from None
                if len(died) > policy.retries:
                    raise
            logger.warning("page %s: engine replica %s died with it; sending it again alone "
                           "(%d of %d)", task.page_id, died[-1], len(died),
                           policy.retries)  # fmt: skip
            await asyncio.sleep(policy.pause(len(died)))

    def _quarantine(self, task: PageTask, key: str | None, died: list[str]) -> PageQuarantinedError:
        if key is not None:
            self.policy.quarantine.add(key)
        logger.error("page %s quarantined: engine replicas died with it alone (%s)",
                     task.page_id, ", ".join(died))  # fmt: skip
        return PageQuarantinedError(
            f"page {task.number} crashed engine replicas it was alone on; it is not sent to "
            "an engine again"
        )
