"""The layout's import rule, read from the code's own imports (every ``import`` statement,
function-level and ``TYPE_CHECKING`` ones included): a module imports only its own layer and
the layers below it, no two modules import each other (directly or round a cycle), and
FastAPI, Ray and vLLM stay in the layers that own them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serve_app", "deployments", "batch")

# Bottom to top, as serve_app/__init__.py states it.
LAYERS = (
    "serve_app.errors",
    "serve_app.core",
    "serve_app.config",
    "serve_app.telemetry",
    "serve_app.checkpoint",
    "serve_app.engine",
    "serve_app.documents",
    "serve_app.jobs",
    "serve_app.api",
    "deployments",
    "batch",
    "serve_app.tooling",
    "serve_app.testing",
)
# Third-party packages only some layers may import.
OWNED = {
    "fastapi": ("serve_app.api",),
    "starlette": ("serve_app.api",),
    "ray": (
        "deployments",
        "batch",
        "serve_app.tooling",
        "serve_app.testing",
        "serve_app.engine.vllm_engine",
    ),
    "vllm": ("serve_app.engine",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports, absolute, with its line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, node.lineno
            for alias in node.names:  # `from serve_app.core import tiling` imports a module
                yield f"{base}.{alias.name}", node.lineno


def layer_of(module: str) -> int | None:
    for rank, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None


def graph() -> dict[str, dict[str, int]]:
    """Our modules, each with the modules of ours it imports (and the line)."""
    modules = source_modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges[name] = {}
        for target, line in imports(path, name):
            if target in modules and target != name:
                edges[name].setdefault(target, line)
    return edges


def upward_imports(edges: dict[str, dict[str, int]]) -> list[str]:
    found = []
    for name, targets in edges.items():
        own = layer_of(name)
        for target, line in targets.items():
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{name}:{line} imports {target} ({LAYERS[theirs]} is above "
                             f"{LAYERS[own]})")  # fmt: skip
    return found


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [name for name in source_modules() if layer_of(name) is None]
    assert unplaced == ["serve_app"]  # the package's own __init__, which states the rule


def test_no_module_imports_a_layer_above_it() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("package", sorted(OWNED))
def test_frameworks_stay_in_the_layers_that_own_them(package: str) -> None:
    allowed = OWNED[package]
    misplaced = [
        f"{name}:{line}"
        for name, path in source_modules().items()
        if not any(name == a or name.startswith(a + ".") for a in allowed)
        for target, line in imports(path, name)
        if target == package or target.startswith(package + ".")
    ]
    assert misplaced == []


def test_each_folder_says_what_lives_there_and_what_it_may_import() -> None:
    for package in sorted({path.parent for path in source_modules().values()}):
        init = package / "__init__.py"
        assert init.exists(), f"{package} has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc.splitlines()) >= 2, init


def test_the_rule_catches_an_upward_import_and_a_cycle() -> None:
    """The checks bite: an engine module importing the API, and two modules importing each
    other, are each reported."""
    edges = {
        "serve_app.engine.fake": {"serve_app.api.app": 7},
        "serve_app.documents.run": {"serve_app.documents.results": 3},
        "serve_app.documents.results": {"serve_app.documents.run": 5},
    }
    assert upward_imports(edges) == [
        "serve_app.engine.fake:7 imports serve_app.api.app (serve_app.api is above "
        "serve_app.engine)"
    ]
    assert cycles(edges) == [["serve_app.documents.results", "serve_app.documents.run"]]
