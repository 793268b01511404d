"""The overlays deploy the application of serve_config.yaml: the same applications,
deployments and args, apart from each overlay's documented overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.app import build_app
from serve_app.config import AppConfig
from serve_app.tooling import deploy_config
from tests.k8s.conftest import OVERLAYS, ROOT, rayservice, render, serve_config

BASE = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
GPU_OVERLAYS = [p for p in OVERLAYS if p.name.startswith("gpu")]


def overrides_of(overlay: Path) -> Any:
    """The overlay's own overrides, or those of the overlay it builds on."""
    own = overlay / deploy_config.OVERRIDES_FILE
    if own.is_file():
        return yaml.safe_load(own.read_text())
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    for resource in kustomization.get("resources", []):
        base = (overlay / resource).resolve()
        if base.parent == overlay.parent:
            return overrides_of(base)
    pytest.fail(f"{overlay.name}: no {deploy_config.OVERRIDES_FILE} here or in its base")


def test_generated_serve_configs_are_up_to_date() -> None:
    assert deploy_config.main(["--check"]) == 0, "run `make k8s-config`"


def test_overlays_differ_from_serve_config_only_by_their_overrides(overlay: Path) -> None:
    deployed = serve_config(render(overlay))
    documented = deploy_config.override_paths(overrides_of(overlay))
    if documented == {()}:  # `{}`: no overrides at all
        documented = set()
    assert deploy_config.diff_paths(BASE, deployed) == documented


def test_overlay_serve_configs_are_valid(overlay: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = serve_config(render(overlay))
    ServeDeploySchema.model_validate(config)
    assert deploy_config.unknown_serve_keys(config) == []
    for app in config["applications"]:
        AppConfig.model_validate(app["args"])
        assert type(build_app(app["args"])).__name__ == "Application"


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    (app,) = config["applications"]
    (found,) = [d for d in app["deployments"] if d["name"] == name]
    return found


@pytest.mark.parametrize("overlay", GPU_OVERLAYS, ids=[p.name for p in GPU_OVERLAYS])
def test_gpu_overlay_gives_each_engine_replica_one_gpu(overlay: Path) -> None:
    objects = render(overlay)
    config = serve_config(objects)
    (app,) = config["applications"]
    # DeepSeek-OCR and DeepSeek-OCR-2 side by side, each with its own engine deployment.
    models = app["args"]["models"]
    assert {name: m["model"] for name, m in models.items()} == {
        "deepseek-ocr": "deepseek-ai/DeepSeek-OCR",
        "deepseek-ocr-2": "deepseek-ai/DeepSeek-OCR-2",
    }
    assert models["deepseek-ocr-2"]["family"] == "deepseek-ocr-2"
    assert all(m["profile"] == "gpu" and m["kind"] == "vllm" for m in models.values())
    engines = [deployment(config, f"EngineDeployment-{name}") for name in models]
    for engine in engines:
        assert engine["ray_actor_options"]["num_gpus"] == 1
    others = [d for d in app["deployments"] if d not in engines]
    assert all(not d.get("ray_actor_options", {}).get("num_gpus") for d in others)
    engine = engines[0]

    cluster = rayservice(objects)["spec"]["rayClusterConfig"]
    (gpu_group,) = [g for g in cluster["workerGroupSpecs"] if has_gpu(g)]
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_group["minReplicas"] == 0  # scales from zero
    assert gpu_group["maxReplicas"] >= engine["autoscaling_config"]["max_replicas"]
    # The accelerator the engine asks for is declared on the group, so the autoscaler can
    # start a pod of it from zero; and the group offers no Ray CPUs to CPU replicas.
    accelerator = f"accelerator_type:{engine['ray_actor_options']['accelerator_type']}"
    assert gpu_group["resources"] == {"CPU": "0", "GPU": "1", accelerator: "1"}
    assert not has_gpu(cluster["headGroupSpec"])
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def has_gpu(group: dict[str, Any]) -> bool:
    containers = group["template"]["spec"]["containers"]
    return any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in containers)


def test_cpu_overlay_runs_the_local_app_with_keys_required_and_the_cluster_job_store() -> None:
    cpu = next(p for p in OVERLAYS if p.name == "cpu")
    jobs = {"store": "redis", "redis_url_env": "OCR_JOBS_REDIS_URL",
            "blob_url_env": "OCR_JOBS_BLOB_URL", "store_path": None}  # fmt: skip
    changes = {"applications": {"deepseek-ocr": {
        "args": {"ingress": {"api_keys_required": True}, "jobs": jobs},
    }}}  # fmt: skip
    assert serve_config(render(cpu)) == deploy_config.merge(BASE, changes)


def test_every_overlay_requires_api_keys_and_make_serve_does_not(overlay: Path) -> None:
    (app,) = serve_config(render(overlay))["applications"]
    assert AppConfig.model_validate(app["args"]).ingress.api_keys_required
    (local,) = BASE["applications"]
    assert not AppConfig.model_validate(local["args"]).ingress.api_keys_required


def test_a_misspelled_or_missing_deployment_is_refused() -> None:
    typo = deploy_config.merge(BASE, {"applications": {"deepseek-ocr": {
        "deployments": {"EngineDeploymnt-rapidocr": {"max_ongoing_requests": 1}}}}})  # fmt: skip
    with pytest.raises(deploy_config.OverrideError, match="not in its graph: EngineDeploymnt"):
        deploy_config.check_graph(typo)
    # A model without its engine deployment: Serve would deploy it with no settings at all.
    added = deploy_config.merge(BASE, {"applications": {"deepseek-ocr": {
        "args": {"models": {"extra": {"kind": "fake"}}}}}})  # fmt: skip
    with pytest.raises(deploy_config.OverrideError, match="missing: EngineDeployment-extra"):
        deploy_config.check_graph(added)
    deploy_config.check_graph(BASE)


def test_diff_sees_changes_additions_and_removals() -> None:
    changed = deploy_config.merge(BASE, {"applications": {"deepseek-ocr": {
        "args": {"models": {"deepseek-ocr": {"profile": "gpu", "sampling": None, "seed": 3}}}}}})  # fmt: skip
    args = ("applications", "deepseek-ocr", "args", "models", "deepseek-ocr")
    assert deploy_config.diff_paths(BASE, changed) == {
        (*args, "profile"), (*args, "sampling"), (*args, "seed")
    }  # fmt: skip
    # An override that sets what is already there is no override: the overlay test flags it.
    same = deploy_config.merge(BASE, {"proxy_location": BASE["proxy_location"]})
    assert deploy_config.diff_paths(BASE, same) == set()
