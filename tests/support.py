"""Test helpers: an event loop on a thread, so sync tests can share one async engine, and
the slot that keeps one engine alive at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running on a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 900) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class EngineSlot:
    """At most one engine alive in a test run: acquiring another shuts the current one down.

    On two cores an idle vLLM engine still costs a quarter of a core, and two engines' memory
    adds up; tests that need the same engine share it (``key``), in whatever order they run.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._value: Any = None
        self._stop: Callable[[Any], None] | None = None

    @property
    def key(self) -> str | None:
        return self._key

    def acquire(self, key: str, start: Callable[[], T], stop: Callable[[T], None]) -> T:
        if self._key == key:
            return self._value  # type: ignore[no-any-return]
        self.release()
        value = start()
        self._key, self._value, self._stop = key, value, stop
        return value

    def release(self) -> None:
        stop, value = self._stop, self._value
        self._key, self._value, self._stop = None, None, None
        if stop is not None:
            stop(value)


class LoopTransport(httpx.BaseTransport):
    """An ``httpx`` transport over an ASGI app whose coroutines run on ``runner``'s loop, so a
    sync client drives the app without Ray or a server."""

    def __init__(self, app: Any, runner: LoopThread) -> None:
        self._inner = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._runner = runner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def go() -> httpx.Response:
            response = await self._inner.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return self._runner.run(go())


def local_api(runner: LoopThread, config: Any, **api_options: Any) -> Any:
    """The HTTP API over in-process stages, with a started engine per model of ``config``
    (fake or rapidocr: no Ray)."""
    from serve_app.api.admission import Admission
    from serve_app.api.app import create_api
    from serve_app.api.service import OCRService
    from serve_app.documents.run import DocumentRunner
    from serve_app.documents.stages import LocalStages

    stages = runner.run(LocalStages.started(config))
    api_options.setdefault("ready", always_ready)
    admission = Admission(4, 4)
    documents = DocumentRunner.from_config(config.ingress, stages)
    return create_api(OCRService(config, documents), admission, **api_options)


async def always_ready() -> None:
    pass
