"""The offline batch's RayJob manifests (k8s/batch): valid against the KubeRay RayJob CRD and
the Kubernetes schemas, and their entrypoint is a batch command line that parses, whose
engines fit the cluster it asks for."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batch.run import parse_args
from tests.k8s.conftest import ROOT, require
from tests.k8s.crd import errors, load_schema

RAYJOB_CRD = ROOT.parent / "shared" / "kuberay" / "ray.io_rayjobs.yaml"
MANIFESTS = sorted((ROOT / "k8s" / "batch").glob("rayjob-*.yaml"))


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def rayjob(path: Path) -> dict[str, Any]:
    (job,) = [o for o in objects(path) if o["kind"] == "RayJob"]
    return job


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    require(RAYJOB_CRD.is_file(), f"the KubeRay RayJob CRD {RAYJOB_CRD}")
    return load_schema(RAYJOB_CRD)


def test_there_are_cpu_and_gpu_batch_jobs() -> None:
    assert [p.name for p in MANIFESTS] == ["rayjob-cpu.yaml", "rayjob-gpu.yaml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_the_rayjob_matches_the_crd(path: Path, crd_schema: dict[str, Any]) -> None:
    assert errors(rayjob(path), crd_schema) == []


def test_the_crd_check_catches_a_typo(crd_schema: dict[str, Any]) -> None:
    job = rayjob(MANIFESTS[0])
    job["spec"]["shutdownAfterJobFinish"] = True
    assert any("'shutdownAfterJobFinish' was unexpected" in e for e in errors(job, crd_schema))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_core_objects_match_kubernetes_schemas(path: Path) -> None:
    for obj in objects(path):
        if not obj["apiVersion"].startswith("ray.io/"):
            kubernetes_validate.validate(obj, "1.32.0", strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_the_entrypoint_is_a_batch_whose_engines_fit_the_cluster(path: Path) -> None:
    job = rayjob(path)
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "batch"]
    args = parse_args(command[3:])
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(
        int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["replicas"]
        for g in groups
        for c in g["template"]["spec"]["containers"]
    )
    assert args.engines * args.engine_gpus <= gpus
    assert (gpus > 0) == path.stem.endswith("gpu")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for c in head["containers"] for m in c["volumeMounts"]}
    assert any(str(args.output).startswith(mount) for mount in mounts)  # the driver writes there
    if not str(args.config).startswith("/"):
        assert (ROOT / args.config).is_file()  # shipped in the image (Dockerfile copies it)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_the_batch_config_serves_the_model_the_entrypoint_names(path: Path, tmp_path: Path) -> None:
    from batch.run import load_config

    args = parse_args(shlex.split(rayjob(path)["spec"]["entrypoint"])[3:])
    if str(args.config).startswith("/"):
        (config_map,) = [o for o in objects(path) if o["kind"] == "ConfigMap"]
        (tmp_path / "batch.yaml").write_text(config_map["data"][args.config.name])
        config = load_config(tmp_path / "batch.yaml")
    else:
        config = load_config(ROOT / args.config)
    assert args.model in config.models
