"""Shared test settings: where fixtures and the shared samples live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
