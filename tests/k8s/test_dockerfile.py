"""The serving image is pinned like the local setup and runs as a non-root user (Docker cannot
build here, so these read the Dockerfile)."""

from __future__ import annotations

import re
import sys
import tomllib

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.k8s.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"ARG {name}=... not found"
    return match.group(1)


def test_same_uv_and_python_as_make_setup() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert f"UV_VERSION := {arg('UV_VERSION')}" in makefile
    python = Version(arg("PYTHON_VERSION"))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python in SpecifierSet(requires)
    assert (python.major, python.minor) == sys.version_info[:2]  # what the tests run on


def test_packages_come_from_the_lock_file() -> None:
    syncs = re.findall(r"^RUN uv sync (.*)$", DOCKERFILE, re.MULTILINE)
    assert syncs and all("--locked" in s and "--extra ${VLLM_EXTRA}" in s for s in syncs)
    assert "pip install" not in DOCKERFILE.replace("pip install --no-cache-dir uv==", "")
    assert arg("VLLM_EXTRA") == "gpu"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"cpu", "gpu"} <= set(project["optional-dependencies"])


def test_runs_as_the_non_root_user_the_pods_expect() -> None:
    (user,) = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert user == "1000:1000"
    for manifest in (ROOT / "k8s").rglob("*.yaml"):
        for context in re.findall(r"securityContext: \{(.*)\}", manifest.read_text()):
            assert "runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000" in context, manifest
