"""A real Ray Serve app over HTTP, with the fake engine, shared by the tests that use it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps
from tests.support import EngineSlot

# The fake app lives across consecutive modules that use it (test_http_door, test_http_fake,
# test_http_fake_openai: an app start is ~25 s on two cores) and stops before any other test.
_FAKE_APP = EngineSlot()


def _start_fake_app() -> str:
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"fail_every": 5}}},
         "ingress": {"max_pages": 20, "max_upload_bytes": 5_000_000}}
    )  # fmt: skip
    return start_app(config)


@pytest.fixture(scope="module")
def fake_app() -> Iterator[httpx.Client]:
    url = _FAKE_APP.acquire("fake", _start_fake_app, lambda _: stop_apps())
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or "fake_app" not in getattr(nextitem, "fixturenames", ()):
        _FAKE_APP.release()
