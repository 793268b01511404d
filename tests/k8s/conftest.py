"""Render the kustomize overlays once per session; find the KubeRay CRD beside the repository."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
CRD = ROOT.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip when a tool or file is missing on a developer machine; fail in CI."""
    if not available:
        if IN_CI:
            pytest.fail(f"{what} is missing, and CI must run these tests")
        pytest.skip(f"{what} is missing: skipping (it is required in CI)")


@functools.cache
def _render(overlay: Path) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render(overlay: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders for an overlay (fresh copies)."""
    require(shutil.which("kubectl") is not None, "kubectl (for `kubectl kustomize`)")
    return copy.deepcopy(list(_render(overlay)))


def rayservice(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "RayService"]
    return found


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rayservice(objects)["spec"]["serveConfigV2"])
    return config


@pytest.fixture(params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def overlay(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path
