"""The pure core must not pull in Ray, vLLM, FastAPI or torch (DESIGN.md decision 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import serve_app.core

CORE_MODULES = sorted(
    f"serve_app.core.{p.stem}" for p in Path(serve_app.core.__file__).parent.glob("*.py")
    if p.stem != "__init__"
)  # fmt: skip
FORBIDDEN = ("ray", "vllm", "fastapi", "torch", "starlette")


def test_core_imports_no_heavy_frameworks() -> None:
    code = (
        "import sys\n"
        f"for m in {CORE_MODULES!r}: __import__(m)\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert len(CORE_MODULES) >= 8


def test_the_request_path_imports_no_ray_or_vllm() -> None:
    """The HTTP API, its service and the document run work in-process in tests, without Ray."""
    modules = ["serve_app.api.app", "serve_app.api.service", "serve_app.documents.run",
               "serve_app.documents.pipeline", "serve_app.documents.stages",
               "serve_app.documents.door", "serve_app.documents.messages",
               "serve_app.api.access_log"]  # fmt: skip
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        "print(sorted(m for m in ('ray', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
