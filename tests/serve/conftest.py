"""A real Ray Serve app over HTTP, with the fake engine, shared by the module's tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps


@pytest.fixture(scope="module")
def fake_app() -> Iterator[httpx.Client]:
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"fail_every": 5}}},
         "ingress": {"max_pages": 20, "max_upload_bytes": 5_000_000}}
    )  # fmt: skip
    url = start_app(config)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    stop_apps()
