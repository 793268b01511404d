"""Traces and metrics of the real Serve graph: spans from every replica, Ray's endpoint."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.otlp import CollectedSpan, Collector
from serve_app.testing.serve import metrics_url, start_app, stop_apps, with_env
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

pytestmark = pytest.mark.serve

APP = "ocr-telemetry"
PDF = text_pdf(3, size=(300, 400))
PNG = encode(noise_rgb(200, 150, seed=3))
STAGES = ("preprocess", "engine", "postprocess")


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


@pytest.fixture(scope="module")
def client(collector: Collector) -> Iterator[httpx.Client]:
    # Every 4th engine request fails; one request at a time, none waiting: a second is a 429.
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"fail_every": 4, "first_token_latency_s": 0.3}}},
         "ingress": {"max_working_requests": 1, "max_waiting_requests": 0}}
    )  # fmt: skip
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": "ocr-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    options = with_env(env, config, {"OCRIngress": {"max_ongoing_requests": 16}})
    url = start_app(config, name=APP, options=options)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http
    stop_apps()


def ocr(client: httpx.Client, data: bytes, name: str) -> httpx.Response:
    kind = "application/pdf" if name.endswith(".pdf") else "image/png"
    return client.post("/v1/ocr", files={"file": (name, data, kind)}, data={"mode": "tiny"})


def wait_for(collector: Collector, trace_id: str, count: int) -> list[CollectedSpan]:
    deadline = time.monotonic() + 30
    while len(spans := collector.trace(trace_id)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return spans


@pytest.fixture(scope="module")
def traced(client: httpx.Client, collector: Collector) -> tuple[httpx.Response, list[Any]]:
    """The first request: a 3-page PDF, every page answered (engine requests 1-3)."""
    r = ocr(client, PDF, "three.pdf")
    header = r.headers.get("traceresponse", "")
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", header)
    assert match, f"no traceresponse header: {dict(r.headers)}"
    return r, wait_for(collector, match.group(1), 1 + 3 * len(STAGES))


def test_one_trace_through_every_replica(traced: tuple[httpx.Response, list[Any]]) -> None:
    response, spans = traced
    assert response.status_code == 200 and len(response.json()["pages"]) == 3
    (root,) = [s for s in spans if not s.parent_id]
    assert root.name == "POST /v1/ocr"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["ocr.document_kind"] == "pdf"
    assert root.attributes["ocr.pages"] == 3
    assert root.attributes["ocr.request_id"] == response.json()["id"]
    assert root.resource["service.name"] == "ocr-under-test"
    assert root.resource["ocr.component"] == "ingress"

    by_stage = {stage: [s for s in spans if s.name == stage] for stage in STAGES}
    for stage, stage_spans in by_stage.items():
        assert sorted(s.attributes["ocr.page"] for s in stage_spans) == [1, 2, 3], stage
        assert {s.parent_id for s in stage_spans} == {root.span_id}, stage
        assert {s.resource["ocr.component"] for s in stage_spans} == {stage}
    assert len(spans) == 1 + 3 * len(STAGES)

    pre = by_stage["preprocess"][0].attributes
    assert pre["ocr.mode"] == "tiny" and pre["ocr.grid"] == "1x1"
    assert pre["ocr.image_tokens"] == 73 and pre["ocr.render_s"] > 0
    engine = by_stage["engine"][0].attributes
    assert engine["ocr.finish_reason"] == "stop" and engine["ocr.attempts"] == 1
    assert engine["ocr.prompt_tokens"] > 73 and engine["ocr.completion_tokens"] > 0
    assert "ocr.regions" in by_stage["postprocess"][0].attributes


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """This application's series on Ray's endpoint: (name, labels) -> value."""
    series: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in httpx.get(metrics_url(), timeout=10).text.splitlines():
        match = re.fullmatch(r"(ray_ocr_\w+)\{(.*)\} (\S+)", line)
        if not match or f'application="{APP}"' not in match.group(2):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        series[(match.group(1), labels)] = float(match.group(3))
    return series


def total(series: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, got), v in series.items() if n == name and want <= got)


def test_metrics_count_pages_answers_and_tokens(
    client: httpx.Client, traced: tuple[httpx.Response, list[Any]]
) -> None:
    # Engine request 4 fails: one failed page of this PDF, two answered.
    failed_one = ocr(client, PDF, "again.pdf")
    assert failed_one.status_code == 200
    assert [p.get("error", {}).get("code") for p in failed_one.json()["pages"]].count(
        "generation_failed"
    ) == 1
    # Two at once with room for one: one answer (engine request 7) and one 429.
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(ocr(client, PNG, "a.png")))
    first.start()
    time.sleep(0.15)
    with httpx.Client(base_url=str(client.base_url), timeout=60) as other:
        answers.append(ocr(other, PNG, "b.png"))
    first.join()
    assert sorted(r.status_code for r in answers) == [200, 429]

    ok = [traced[0], failed_one, *[r for r in answers if r.status_code == 200]]
    prompt = sum(r.json()["usage"]["prompt_tokens"] for r in ok)
    completion = sum(r.json()["usage"]["completion_tokens"] for r in ok)
    expected = {
        ("ray_ocr_pages_total", "outcome", "ok"): 6.0,
        ("ray_ocr_pages_total", "outcome", "failed"): 1.0,
        ("ray_ocr_pages_total", "code", "generation_failed"): 1.0,
        ("ray_ocr_responses_total", "status", "200"): 3.0,
        ("ray_ocr_responses_total", "status", "429"): 1.0,
        ("ray_ocr_responses_total", "code", "rate_limited"): 1.0,
        ("ray_ocr_stage_seconds_count", "stage", "preprocess"): 7.0,
        ("ray_ocr_stage_seconds_count", "stage", "postprocess"): 6.0,
        ("ray_ocr_request_seconds_count", "route", "/v1/ocr"): 4.0,
        ("ray_ocr_prompt_tokens_total", "mode", "tiny"): float(prompt),
        ("ray_ocr_completion_tokens_total", "mode", "tiny"): float(completion),
        ("ray_ocr_pages_in_flight", "application", APP): 0.0,
    }
    deadline = time.monotonic() + 60  # Ray exports every few seconds
    while True:
        series = scrape()
        found = {key: total(series, key[0], **{key[1]: key[2]}) for key in expected}
        gauge_seen = any(name == "ray_ocr_pages_in_flight" for name, _ in series)
        if (found == expected and gauge_seen) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert gauge_seen, "the pages-in-flight gauge was never exported"  # else its 0 is vacuous
    assert found == expected
