"""Offline validation of custom resources against their CRD's OpenAPI v3 schema.

Mimics what the API server does before validating: it applies schema defaults and prunes null
values. ``strict`` rejects unknown fields (the API server would silently drop them, hiding
typos such as ``workerGroupSpec``). Not covered: CEL transition rules and admission webhooks.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml


def load_schema(crd_path: Path, version: str = "v1", strict: bool = True) -> dict[str, Any]:
    crd = yaml.safe_load(crd_path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    _prepare(schema, strict)
    return schema


def _prepare(schema: dict[str, Any], strict: bool) -> None:
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        schema.pop("type", None)
    closed = (
        strict
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    )
    if closed:
        schema["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for child in schema.get(key, {}).values():
            _prepare(child, strict)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _prepare(schema[key], strict)
    for key in ("anyOf", "allOf", "oneOf"):
        for child in schema.get(key, []):
            _prepare(child, strict)


def _defaulted(value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` with nulls pruned and schema defaults filled in, as the API server does."""
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            child = props.get(key, extra if isinstance(extra, Mapping) else {})
            out[key] = _defaulted(item, child)
        for key, child in props.items():
            if key not in out and "default" in child:
                out[key] = copy.deepcopy(child["default"])
        return out
    if isinstance(value, list):
        return [_defaulted(item, schema.get("items", {})) for item in value if item is not None]
    return value


def errors(resource: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every schema violation in ``resource``, as ``path: message`` lines (empty if valid)."""
    instance = _defaulted(resource, schema)
    validator = jsonschema.Draft7Validator(schema)
    found = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in found]


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_START_RESOURCE_KEYS = ("num-cpus", "num-gpus", "memory", "resources")
UPGRADE_TYPES = ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")


def kuberay_rule_errors(service: Mapping[str, Any]) -> list[str]:
    """Checks the KubeRay operator makes beyond the schema (a subset of ValidateRayServiceSpec
    and ValidateRayServiceMetadata in ray-operator/controllers/ray/utils/validation.go)."""
    found = []
    name = service["metadata"]["name"]
    if not _DNS1035.match(name) or len(name) > 63:
        found.append(f"metadata.name {name!r} is not a DNS-1035 label")
    timeout = service["metadata"].get("annotations", {}).get("ray.io/initializing-timeout")
    if timeout is not None and not (
        (timeout.isdigit() and int(timeout) > 0) or _GO_DURATION.match(timeout)
    ):
        found.append(f"ray.io/initializing-timeout {timeout!r} is not a duration or seconds")
    spec = service["spec"]
    upgrade = spec.get("upgradeStrategy", {}).get("type")
    if upgrade is not None and upgrade not in UPGRADE_TYPES:
        found.append(f"upgradeStrategy.type {upgrade!r} is not one of {UPGRADE_TYPES}")
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    if head.get("headService", {}).get("metadata", {}).get("name"):
        found.append("headGroupSpec.headService.metadata.name must not be set")
    groups = {"head": head} | {g["groupName"]: g for g in cluster.get("workerGroupSpecs", [])}
    for group_name, group in groups.items():
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(params.get(k) for k in _START_RESOURCE_KEYS):
            found.append(f"{group_name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            found.append(f"{group_name}: rayStartParams.labels is not supported")
        if not group["template"]["spec"].get("containers"):
            found.append(f"{group_name}: no containers")
        if group.get("minReplicas", 0) > group.get("maxReplicas", 2**31 - 1):
            found.append(f"{group_name}: minReplicas > maxReplicas")
    if "gcsFaultToleranceOptions" in cluster:
        head_env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
        if "redis-password" in head.get("rayStartParams", {}):
            found.append("head: redis-password in rayStartParams with gcsFaultToleranceOptions")
        for var in sorted(head_env & {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS"}):
            found.append(f"head: env {var} conflicts with gcsFaultToleranceOptions")
    return found
