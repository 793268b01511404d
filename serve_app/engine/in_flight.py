"""The requests an in-process engine is working on, each with its abort flag."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from serve_app.errors import InvalidInputError


class InFlight:
    """Request ids being generated; :meth:`abort` raises a request's flag, which its
    generator checks between updates."""

    def __init__(self) -> None:
        self._flags: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._flags)

    def ids(self) -> set[str]:
        return set(self._flags)

    @contextmanager
    def running(self, request_id: str) -> Iterator[asyncio.Event]:
        """Holds ``request_id`` while the block runs; yields its abort flag.

        Raises:
            InvalidInputError: If a request of that id is already running.
        """
        if request_id in self._flags:
            raise InvalidInputError(f"request id {request_id!r} is already running")
        flag = self._flags[request_id] = asyncio.Event()
        try:
            yield flag
        finally:
            del self._flags[request_id]

    def abort(self, request_id: str) -> None:
        if request_id in self._flags:
            self._flags[request_id].set()

    def abort_all(self) -> None:
        for flag in self._flags.values():
            flag.set()
