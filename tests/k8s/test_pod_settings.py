"""Settings every Ray container reads: tracing from a ConfigMap, API key hashes from a Secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.k8s.conftest import rayservice, render


def ray_containers(overlay: Path) -> Iterator[dict[str, Any]]:
    cluster = rayservice(render(overlay))["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        yield from group["template"]["spec"]["containers"]


def test_every_ray_container_reads_the_tracing_settings(overlay: Path) -> None:
    objects = render(overlay)
    (settings,) = [o for o in objects if o["metadata"]["name"] == "deepseek-ocr-telemetry"]
    assert settings["kind"] == "ConfigMap"
    assert settings["data"]["OTEL_TRACES_EXPORTER"] == "none"  # off unless an operator asks
    for container in ray_containers(overlay):
        refs = [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])]
        assert refs == ["deepseek-ocr-telemetry"], container["name"]


def test_every_ray_container_reads_the_api_key_hashes_from_an_optional_secret(
    overlay: Path,
) -> None:
    for container in ray_containers(overlay):
        (entry,) = [e for e in container["env"] if e["name"] == "OCR_API_KEY_HASHES"]
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "deepseek-ocr-api-keys", "key": "hashes", "optional": True}
