"""The benchmarks start the graph as serve_config.yaml deploys it."""

from __future__ import annotations

from serve_app.config import AppConfig, EngineConfig
from serve_app.testing.serve import deployed_options
from serve_app.tooling.deploy_config import SERVE_CONFIG, load_yaml


def test_options_follow_serve_config_with_fixed_replicas() -> None:
    (application,) = load_yaml(SERVE_CONFIG)["applications"]
    declared = {d["name"]: d for d in application["deployments"]}

    config = AppConfig.model_validate(application["args"])
    options = deployed_options(config, {"PreprocessDeployment": 3})

    assert set(options) == set(declared)
    for name, chosen in options.items():
        assert "autoscaling_config" not in chosen and "name" not in chosen
        assert chosen["max_ongoing_requests"] == declared[name]["max_ongoing_requests"]
        assert chosen["ray_actor_options"] == declared[name]["ray_actor_options"]
    assert options["PreprocessDeployment"]["num_replicas"] == 3
    minimum = declared["OCRIngress"]["autoscaling_config"]["min_replicas"]
    assert options["OCRIngress"]["num_replicas"] == minimum


def test_a_graph_of_fewer_models_keeps_only_its_deployments() -> None:
    config = AppConfig(models={"deepseek-ocr": EngineConfig(kind="fake")})
    options = deployed_options(config)
    assert set(options) == {
        "OCRIngress", "PreprocessDeployment", "EngineDeployment-deepseek-ocr",
        "PostprocessDeployment",
    }  # fmt: skip
    assert options["EngineDeployment-deepseek-ocr"]["max_ongoing_requests"] == 64
