"""A 300-page PDF streams back complete and in order (memory figures: bench/memory.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps
from serve_app.testing.synthetic import text_pdf

pytestmark = pytest.mark.serve


def test_300_pages_in_order_none_missing() -> None:
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"fail_every": 97}}},
         "ingress": {"max_pages": 300, "pages_in_flight": 8}}
    )  # fmt: skip
    url = start_app(config, name="ocr-long")
    try:
        lines = []
        with httpx.Client(base_url=url, timeout=600) as client, client.stream(
            "POST", "/v1/ocr", params={"stream": "true", "mode": "tiny", "dpi": "72"},
            content=text_pdf(300), headers={"content-type": "application/pdf"},
        ) as r:  # fmt: skip
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line]
    finally:
        stop_apps()
    pages, summary = lines[:-1], lines[-1]
    assert [p["page"] for p in pages] == list(range(1, 301))
    failed = [p["page"] for p in pages if "error" in p]
    assert len(failed) == 3 and summary["pages_failed"] == 3  # injected: every 97th request
    assert all(p["markdown"].startswith("# Page 595x842") for p in pages if "error" not in p)
