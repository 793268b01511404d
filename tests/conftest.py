"""Shared test settings: where fixtures and the shared samples live; the one engine slot."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browsers import launched_chromium
from tests.support import EngineSlot, LoopThread

# One Ray auth mode for every Ray cluster of the run (local ones, the batch tests', the
# multi-node cluster's): a process keeps the mode of its first Ray session, and Ray 2.60 turns
# tokens on for a cluster it starts once ~/.ray/auth_token exists.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "model-outputs"


def shared_samples() -> list[Path]:
    """The public model outputs in ../shared (absent outside this workplace)."""
    return sorted(SHARED_SAMPLES.glob("*.txt")) if SHARED_SAMPLES.is_dir() else []


@pytest.fixture
def require_shared_samples() -> None:
    if not SHARED_SAMPLES.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI expects the shared samples at {SHARED_SAMPLES}")
        pytest.skip(f"shared samples not found at {SHARED_SAMPLES}")


_ENGINE_SLOT = EngineSlot()


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    """One event loop on a thread for the run's in-process engines."""
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server for the run (``redis-server`` from the distribution; ``make test``
    installs it)."""
    from serve_app.testing.redis import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def engine_slot() -> EngineSlot:
    """The run's only live engine (in this process or in a Serve app); see :class:`EngineSlot`."""
    return _ENGINE_SLOT


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Shut the engine down unless a test ahead may use it: one of this module, or of the next
    module needing an engine in this folder (a start is a minute or more on CPU; an idle engine
    costs the engine-free modules between, rapidocr's, a quarter of a core)."""
    if nextitem is None or not _engine_may_be_used_ahead(item):
        _ENGINE_SLOT.release()


def _engine_may_be_used_ahead(item: pytest.Item) -> bool:
    items = item.session.items
    for later in items[items.index(item) + 1 :]:
        if later.path.parent != item.path.parent:
            return False
        if later.path == item.path or later.get_closest_marker("engine") is not None:
            return True
    return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright (see tests/browsers.py). Per module: while
    Playwright's sync API runs, its event loop is this thread's, and ``asyncio.run`` in any
    later test would fail."""
    yield from launched_chromium()
