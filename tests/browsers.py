"""Headless Chromium from Debian (``/usr/bin/chromium``), driven by Playwright; never a
browser download. ``make browser-deps`` (run by ``.ci/run``) installs it; without it the
browser tests skip outside CI and fail in CI. The ``browser`` fixture is in conftest.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a machine with no network beyond localhost: no background calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS", Path(__file__).parents[1] / "build" / "ui"))


def launched_chromium() -> Iterator[Any]:
    """Chromium for a session of tests, or a skip (a failure in CI) saying how to get it."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = (f"no Chromium at {CHROMIUM}: `make browser-deps` installs Debian's chromium "
                   "(or set CHROMIUM to one)")  # fmt: skip
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Console:
    """What a page logged as errors, and the exceptions it threw."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def wait_for_status(page: Any, prefix: str, timeout_s: float = 60) -> None:
    """Until the page's progress line starts with ``prefix``. A function, not an expression:
    the page's Content-Security-Policy forbids evaluating strings."""
    page.wait_for_function(
        "prefix => document.querySelector('#progress-text').textContent.startsWith(prefix)",
        arg=prefix,
        timeout=timeout_s * 1000,
    )


def box_of(element: Any) -> dict[str, float]:
    """Where ``element`` is drawn on the screen: its ``getBoundingClientRect`` (Playwright's
    ``bounding_box`` adds an SVG shape's stroke)."""
    box: dict[str, float] = element.evaluate(
        "e => { const r = e.getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; }"
    )
    return box
