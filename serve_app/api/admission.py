"""Admission control for one ingress replica: a bounded number of requests work, a bounded
number wait for a turn, and the rest are refused at once with a JSON 429 and ``Retry-After``.

Serve's own ``max_queued_requests`` also refuses with 429, but from its HTTP proxy with a
plain-text body; admitting here first keeps every refusal in the API's error format.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.access_log import access_record
from serve_app.api.errors import error_response
from serve_app.api.routes import ADMITTED_PATHS
from serve_app.errors import RateLimitedError


class Admission:
    """At most ``working`` requests hold a slot; at most ``waiting`` more wait for one."""

    def __init__(self, working: int, waiting: int) -> None:
        self._slots = asyncio.Semaphore(working)
        self._max_waiting = waiting
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``.

        Raises:
            RateLimitedError: Every slot is taken and the waiting line is full.
        """
        if self._slots.locked():
            if self.waiting >= self._max_waiting:
                raise RateLimitedError(
                    f"the service is busy ({self.waiting} requests are already waiting); "
                    f"retry in {RateLimitedError.retry_after_s} s"
                )
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()


class AdmissionMiddleware:
    """ASGI middleware: an OCR request (the admitted routes) holds a slot for its whole life,
    streamed body included (released when the response ends or the client goes away). It also
    records the arrival time (:attr:`AccessRecord.arrived`) that the request deadline counts
    from.
    """

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission
        if scope["type"] != "http" or scope["path"] not in ADMITTED_PATHS:
            await self.app(scope, receive, send)
            return
        record = access_record(scope)
        record.arrived = asyncio.get_running_loop().time()
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(admission.slot())
            except RateLimitedError as error:
                record.outcome = error.code
                await error_response(error)(scope, receive, send)
                return
            await self.app(scope, receive, send)
