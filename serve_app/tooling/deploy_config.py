"""Per-environment Serve configs: ``serve_config.yaml`` plus an overlay's documented overrides.

The Kubernetes overlays never hold a hand-edited copy of the Serve config. Each overlay has a
``serve-overrides.yaml`` (what differs, and why) and a generated ``serve-config.yaml`` patch that
carries the merged config as the RayService's ``serveConfigV2``:

    python -m serve_app.tooling.deploy_config          # rewrite each overlay's serve-config.yaml
    python -m serve_app.tooling.deploy_config --check  # fail if one is stale (so do the tests)

Overrides are a merge patch (RFC 7386): mappings merge, ``null`` deletes, anything else replaces.
``applications`` and ``deployments`` are lists in the Serve config; in overrides they are
mappings keyed by ``name``, and a name that does not exist adds an item. The merged config must
name exactly the deployments its application's graph has (one engine deployment per model), so
a misspelled name is an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "serve_config.yaml"
OVERLAYS = ROOT / "k8s" / "overlays"
OVERRIDES_FILE = "serve-overrides.yaml"
GENERATED_FILE = "serve-config.yaml"
RAYSERVICE_NAME = "deepseek-ocr"

# Lists in the Serve config whose items are identified by their "name".
_NAMED_LISTS = ("applications", "deployments")

Path_ = tuple[str, ...]


class OverrideError(ValueError):
    """An override leaves the config with deployments its application does not have, or
    without ones it has."""


def merge(config: Any, patch: Any, path: Path_ = ()) -> Any:
    """``config`` with ``patch`` applied (a new object; neither argument is modified)."""
    if not isinstance(patch, Mapping):
        return patch
    if not isinstance(config, Mapping):
        config = {}
    merged = dict(config)
    for key, value in patch.items():
        here = (*path, str(key))
        if value is None:
            merged.pop(key, None)
        elif key in _NAMED_LISTS and isinstance(merged.get(key), list):
            merged[key] = _merge_named(merged[key], value, here)
        else:
            merged[key] = merge(merged.get(key), value, here)
    return merged


def _merge_named(items: list[Any], patch: Any, path: Path_) -> list[Any]:
    if not isinstance(patch, Mapping):
        raise OverrideError(f"{'.'.join(path)}: give a mapping keyed by name, not {patch!r}")
    by_name = {item["name"]: item for item in items}
    merged = [
        merge(item, patch[item["name"]], (*path, item["name"])) if item["name"] in patch else item
        for item in items
        if not (item["name"] in patch and patch[item["name"]] is None)
    ]
    added = [
        {"name": name, **merge({}, value, (*path, name))}
        for name, value in patch.items()
        if name not in by_name and value is not None
    ]
    return merged + added


def check_graph(config: Mapping[str, Any]) -> None:
    """Every application names exactly the deployments its graph has.

    Raises:
        OverrideError: Naming the deployments that are extra (a misspelling) or missing.
    """
    from deployments.app import deployment_names
    from serve_app.config import AppConfig

    for app in config.get("applications", []):
        graph = deployment_names(AppConfig.model_validate(app.get("args") or {}))
        named = [d["name"] for d in app.get("deployments", [])]
        extra, missing = sorted(set(named) - set(graph)), sorted(set(graph) - set(named))
        if extra or missing:
            raise OverrideError(
                f"application {app.get('name')}: deployments not in its graph: "
                f"{', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'} "
                f"(the graph has {', '.join(graph)})"
            )


def _keyed(value: Any) -> Any:
    """Named lists become mappings by name, so paths and diffs are stable under reordering."""
    if not isinstance(value, Mapping):
        return value
    keyed = {}
    for key, item in value.items():
        if key in _NAMED_LISTS and isinstance(item, list):
            keyed[key] = {
                entry["name"]: _keyed({k: v for k, v in entry.items() if k != "name"})
                for entry in item
            }
        else:
            keyed[key] = _keyed(item)
    return keyed


def diff_paths(before: Any, after: Any) -> set[Path_]:
    """The paths whose value differs between two configs (added, removed or changed).

    A removed mapping counts as one path, an added one as its leaves (as an override that adds
    it spells them out), as does any non-mapping value."""

    def walk(a: Any, b: Any, path: Path_) -> set[Path_]:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed: set[Path_] = set()
            for key in a.keys() | b.keys():
                if key not in b:
                    changed.add((*path, str(key)))
                elif key not in a:
                    changed |= override_paths(b[key], (*path, str(key)))
                else:
                    changed |= walk(a[key], b[key], (*path, str(key)))
            return changed
        return set() if a == b else {path}

    return walk(_keyed(before), _keyed(after), ())


def override_paths(overrides: Any, path: Path_ = ()) -> set[Path_]:
    """The paths an overrides document sets or deletes (its leaves), under ``path``."""
    if isinstance(overrides, Mapping) and overrides:
        return set().union(*(override_paths(v, (*path, str(k))) for k, v in overrides.items()))
    return {path}


def unknown_serve_keys(config: Mapping[str, Any]) -> list[str]:
    """Keys of a Serve config that Ray's schema does not know (Ray ignores them silently).

    ``args`` are not checked here: the application's own config model rejects unknown keys."""
    from ray.serve.schema import ServeDeploySchema

    return _unknown_keys(config, ServeDeploySchema, "")


def _unknown_keys(value: Any, model: type[BaseModel], where: str) -> list[str]:
    if not isinstance(value, Mapping):
        return []
    fields = model.model_fields
    names = {field.alias or name for name, field in fields.items()} | set(fields)
    unknown = [f"{where}{key}" for key in value if key not in names]
    for name, field in fields.items():
        if name == "args" or (field.alias or name) not in value:
            continue
        item = value[field.alias or name]
        nested = _models_in(field.annotation)
        if len(nested) != 1:
            continue
        if isinstance(item, list):
            for entry in item:
                label = entry.get("name", "?") if isinstance(entry, Mapping) else "?"
                unknown += _unknown_keys(entry, nested[0], f"{where}{name}[{label}].")
        else:
            unknown += _unknown_keys(item, nested[0], f"{where}{name}.")
    return unknown


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models named in an annotation (through List, Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) or {}


def overlay_config(overlay: Path, base: Path = SERVE_CONFIG) -> dict[str, Any]:
    """The Serve config an overlay deploys: ``serve_config.yaml`` with its overrides.

    Raises:
        OverrideError: If its deployments do not match its application's graph.
    """
    config: dict[str, Any] = merge(load_yaml(base), load_yaml(overlay / OVERRIDES_FILE))
    check_graph(config)
    return config


def render_patch(config: Mapping[str, Any]) -> str:
    """The kustomize patch that sets the RayService's ``serveConfigV2`` to ``config``."""
    patch = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": RAYSERVICE_NAME},
        "spec": {"serveConfigV2": yaml.safe_dump(dict(config), sort_keys=False)},
    }
    header = (
        "# Generated by `make k8s-config` from serve_config.yaml and serve-overrides.yaml.\n"
        "# Do not edit: change those two files and regenerate.\n"
    )
    return header + yaml.dump(patch, Dumper=_LiteralDumper, sort_keys=False, width=100)


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings as ``|`` blocks, so the generated patch stays readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def overlays(root: Path = OVERLAYS) -> list[Path]:
    """Overlays that carry their own Serve overrides (others inherit from one of these)."""
    return sorted(path.parent for path in root.glob(f"*/{OVERRIDES_FILE}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for overlay in overlays():
        target = overlay / GENERATED_FILE
        text = render_patch(overlay_config(overlay))
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.relative_to(ROOT))
        if not args.check:
            target.write_text(text)
    if stale and args.check:
        print(f"out of date (run `make k8s-config`): {', '.join(map(str, stale))}")  # noqa: T201
        return 1
    for path in stale:
        print(f"wrote {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
