"""serve_config.yaml builds the app; a misspelled key fails at deploy time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from deployments.app import build_app, deployment_names
from serve_app.config import AppConfig, EngineConfig

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
    from serve_app.tooling.deploy_config import unknown_serve_keys

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
    names = [d["name"] for d in app["deployments"]]
    assert names == [
        "OCRIngress",
        "PreprocessDeployment",
        "EngineDeployment-rapidocr",
        "EngineDeployment-deepseek-ocr",
        "PostprocessDeployment",
        "JobRunnerDeployment",
    ]
    assert tuple(names) == deployment_names(AppConfig.model_validate(app["args"]))
    for deployment in app["deployments"]:
        assert "autoscaling_config" in deployment and "max_ongoing_requests" in deployment


def test_the_cpu_engine_is_the_default_and_the_tiny_checkpoint_is_served_beside_it() -> None:
    config = AppConfig.model_validate(app_args())
    assert config.default_model_name == "rapidocr"
    assert config.default_engine.kind == "rapidocr" and config.default_engine.reads == "page"
    tiny = config.models["deepseek-ocr"]
    assert (tiny.kind, tiny.model, tiny.reads) == ("vllm", "tiny", "views")


def test_three_models_in_one_app() -> None:
    """DeepSeek-OCR, DeepSeek-OCR-2 and the CPU engine together: one engine deployment each."""
    args = {**app_args(), "default_model": "deepseek-ocr-2", "models": {
        "deepseek-ocr": {"kind": "vllm", "model": "deepseek-ai/DeepSeek-OCR", "profile": "gpu"},
        "deepseek-ocr-2": {"kind": "vllm", "model": "deepseek-ai/DeepSeek-OCR-2",
                           "family": "deepseek-ocr-2", "profile": "gpu"},
        "rapidocr": {"kind": "rapidocr"},
    }}  # fmt: skip
    config = AppConfig.model_validate(args)
    assert config.default_model_name == "deepseek-ocr-2"
    assert deployment_names(config)[2:5] == (
        "EngineDeployment-deepseek-ocr",
        "EngineDeployment-deepseek-ocr-2",
        "EngineDeployment-rapidocr",
    )
    build_app(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_model": "gpt-4"}, "default_model 'gpt-4' is not among models"),
        ({"models": {"deepseek ocr": {"kind": "fake"}}}, "model id 'deepseek ocr'"),
        ({"models": {"a/b": {"kind": "fake"}}}, "model id 'a/b'"),
        ({"models": {}}, "at least 1 item"),
    ],
)
def test_model_ids_and_the_default_are_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AppConfig.model_validate({**app_args(), **change})


@pytest.mark.parametrize(
    "typo",
    [
        {"models": {"deepseek-ocr": {"modle": "tiny"}}},
        {"ingres": {}},
        {"ingress": {"pages_in_flite": 3}},
        {"models": {"rapidocr": {"kind": "rapidocr", "rapidocr": {"max_sied": 900}}}},
    ],
)
def test_misspelled_keys_fail(typo: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_app({**app_args(), **typo})


def test_rapidocr_is_not_retried_at_other_temperatures() -> None:
    """Its output does not depend on temperature: a truncated page would come back the same."""
    assert EngineConfig(kind="rapidocr").resolved_retry.temperatures == ()
    assert EngineConfig(kind="vllm").resolved_retry.temperatures == (0.2, 0.5)


def test_the_page_stages_routers_poll_for_a_free_slot_often() -> None:
    """A page of tens of ms is done long before Serve's default router backoff (0.5 s) ends:
    with many documents in flight the preprocess replica idled (bench/in_flight.py)."""
    (app,) = yaml.safe_load(CONFIG.read_text())["applications"]
    by_name = {d["name"]: d for d in app["deployments"]}
    for name in ("PreprocessDeployment", "PostprocessDeployment"):
        assert by_name[name]["request_router_config"]["max_backoff_s"] <= 0.05
