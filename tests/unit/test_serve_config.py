"""serve_config.yaml builds the app; a misspelled key fails at deploy time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from deployments.app import build_app
from serve_app.config import AppConfig

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def app_args() -> dict[str, Any]:
    (app,) = yaml.safe_load(CONFIG.read_text())["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    return dict(app["args"])


def test_serve_config_builds_the_graph() -> None:
    app = build_app(app_args())
    assert type(app).__name__ == "Application"


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))


def test_serve_config_has_no_keys_ray_would_ignore() -> None:
    from serve_app.deploy_config import unknown_serve_keys

    config = yaml.safe_load(CONFIG.read_text())
    assert unknown_serve_keys(config) == []
    config["applications"][0]["deployments"][0]["max_ongoing_request"] = 8
    config["applications"][0]["deployments"][0]["autoscaling_config"]["min_replica"] = 0
    assert unknown_serve_keys(config) == [
        "applications[deepseek-ocr].deployments[OCRIngress].max_ongoing_request",
        "applications[deepseek-ocr].deployments[OCRIngress].autoscaling_config.min_replica",
    ]


def test_ingress_admits_before_serve_queues() -> None:
    """Our JSON 429 must come before Serve's plain-text one: Serve lets a replica hold more
    requests than the ingress admits (working + waiting)."""
    (app,) = yaml.safe_load(CONFIG.read_text())["applications"]
    (ingress,) = [d for d in app["deployments"] if d["name"] == "OCRIngress"]
    limits = AppConfig.model_validate(app["args"]).ingress
    admitted = limits.max_working_requests + limits.max_waiting_requests
    assert ingress["max_ongoing_requests"] > admitted


def test_serve_config_names_every_deployment() -> None:
    (app,) = yaml.safe_load(CONFIG.read_text())["applications"]
    names = {d["name"] for d in app["deployments"]}
    assert names == {
        "OCRIngress",
        "PreprocessDeployment",
        "EngineDeployment",
        "PostprocessDeployment",
    }
    for deployment in app["deployments"]:
        assert "autoscaling_config" in deployment and "max_ongoing_requests" in deployment


@pytest.mark.parametrize(
    "typo",
    [{"engine": {"modle": "tiny"}}, {"ingres": {}}, {"ingress": {"pages_in_flite": 3}}],
)
def test_misspelled_keys_fail(typo: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_app({**app_args(), **typo})
