"""Bad options are answered at the door: a 4xx JSON naming the field, before any page work."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from serve_app.testing.synthetic import text_pdf

pytestmark = pytest.mark.serve

PDF = text_pdf(3)
PDF_URL = "data:application/pdf;base64," + base64.b64encode(PDF).decode()

# Form fields of /v1/ocr on a 3-page PDF -> (status, code, param)
BAD_OCR = [
    ({"task": "locate"}, 400, "invalid_input", "text"),
    ({"task": "document", "text": "total"}, 400, "invalid_input", "text"),
    ({"task": "summarise"}, 400, "invalid_input", "task"),
    ({"mode": "huge"}, 400, "invalid_input", "mode"),
    ({"mode": "gundam", "max_crops": "12"}, 400, "invalid_input", "mode"),
    ({"mode": "small", "max_crops": "4"}, 400, "invalid_input", "mode"),
    ({"pages": "3-1"}, 400, "invalid_page_range", "pages"),
    ({"pages": "1,x"}, 400, "invalid_page_range", "pages"),
    ({"pages": "7"}, 400, "invalid_page_range", None),  # past the end: known once opened
    ({"dpi": "1200"}, 400, "invalid_input", "dpi"),
    ({"max_tokens": "9000"}, 400, "invalid_input", "max_tokens"),
    ({"model": "gpt-4o"}, 404, "model_not_found", "model"),
]

# Chat requests with the same PDF as a file part -> (status, code, param)
BAD_CHAT = [
    ({"task": "locate"}, "", 400, "invalid_input", "text"),
    ({"mode": "huge"}, "Free OCR.", 400, "invalid_input", "mode"),
    ({}, "p" * 2001, 400, "invalid_input", "prompt"),
    ({"max_tokens": 9000}, "Free OCR.", 400, "invalid_input", "max_tokens"),
    ({"pages": "2-1"}, "Free OCR.", 400, "invalid_page_range", "pages"),
    ({"model": "gpt-4o"}, "Free OCR.", 404, "model_not_found", "model"),
]


def counters() -> dict[str, int]:
    from ray import serve

    work: dict[str, int] = {}
    for name in ("PreprocessDeployment", "EngineDeployment-deepseek-ocr"):
        handle = serve.get_deployment_handle(name, app_name="ocr-test")
        work.update(handle.counters.remote().result())
    return work


def assert_error(r: httpx.Response, status: int, code: str, param: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(("fields", "status", "code", "param"), BAD_OCR)
def test_ocr_options_are_checked_before_any_page(
    fake_app: httpx.Client, fields: dict[str, str], status: int, code: str, param: str | None
) -> None:
    before = counters()
    r = fake_app.post("/v1/ocr", files={"file": ("d.pdf", PDF, "application/pdf")}, data=fields)
    assert_error(r, status, code, param)
    after = counters()
    assert after["pages_prepared"] == before["pages_prepared"]
    assert after["pages_recognized"] == before["pages_recognized"]
    # Only a range past the end needs the document opened (its page count), nothing rendered.
    assert after["documents_opened"] - before["documents_opened"] == (fields == {"pages": "7"})


@pytest.mark.parametrize(("extra", "text", "status", "code", "param"), BAD_CHAT)
def test_chat_options_are_checked_before_any_page(
    fake_app: httpx.Client,
    extra: dict[str, Any],
    text: str,
    status: int,
    code: str,
    param: str | None,
) -> None:
    parts: list[dict[str, Any]] = [{"type": "file", "file": {"file_data": PDF_URL}}]
    if text:
        parts.append({"type": "text", "text": text})
    before = counters()
    r = fake_app.post("/v1/chat/completions",
                      json={"model": "deepseek-ocr", "messages": [{"role": "user", "content": parts}],
                            **extra})  # fmt: skip
    assert_error(r, status, code, param)
    assert counters() == before


def test_a_good_request_is_counted_and_carries_its_id(fake_app: httpx.Client) -> None:
    before = counters()
    r = fake_app.post(
        "/v1/ocr",
        files={"file": ("d.pdf", PDF, "application/pdf")},
        data={"pages": "1-2", "mode": "tiny"},
        headers={"x-request-id": "client-42"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "client-42" and r.json()["id"] == "ocr-client-42"
    after = counters()
    assert after["pages_prepared"] - before["pages_prepared"] == 2
    assert after["pages_recognized"] - before["pages_recognized"] == 2
    # Its one log line, in the ingress replica's Serve log.
    line = wait_for_log_line("request_id=ocr-client-42 ")
    assert "route=/v1/ocr status=200 model=deepseek-ocr outcome=ok pages=2 pages_failed=0" in line
    assert "engine_s=" in line and "preprocess_s=" in line


def log_lines(needle: str) -> list[str]:
    """The ingress replicas' Serve log lines that contain ``needle``."""
    import glob

    found = []
    for path in glob.glob("/tmp/rt-ocr/session_latest/logs/serve/replica_*OCRIngress*.log"):
        with open(path, errors="replace") as f:
            found += [line for line in f if needle in line]
    return found


def wait_for_log_line(needle: str, timeout_s: float = 10.0) -> str:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := log_lines(needle):
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no log line with {needle!r}")


def test_a_chunked_body_past_the_limit_is_refused_while_it_arrives(fake_app: httpx.Client) -> None:
    """No Content-Length to check first: the body is counted as it arrives (the limit here is
    5 MB) and refused with 413; the service answers the next request as usual."""

    def body() -> Iterator[bytes]:
        for _ in range(16):  # 16 MiB, sent chunked
            yield b"%PDF" + b"\0" * (2**20 - 4)

    r = fake_app.post("/v1/ocr", content=body(), headers={"content-type": "application/pdf"})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and "passed 5000000 bytes" in error["message"]
    ok = fake_app.post("/v1/ocr", files={"file": ("d.pdf", PDF, "application/pdf")},
                       data={"pages": "1", "mode": "tiny"})  # fmt: skip
    assert ok.status_code == 200, ok.text


def test_an_unknown_route_answers_in_the_services_error_shape(fake_app: httpx.Client) -> None:
    missing = fake_app.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = fake_app.get("/v1/ocr")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_a_path_cannot_forge_a_log_line(fake_app: httpx.Client) -> None:
    r = fake_app.get("/x%0Arequest_id=forged%20outcome=ok", headers={"x-request-id": "forger-1"})
    assert r.status_code == 404
    line = wait_for_log_line("request_id=forger-1 ")
    assert "route=/x%0Arequest_id=forged%20outcome=ok status=404 outcome=not_found" in line
    forged = [found for found in log_lines("forged") if "request_id=forger-1 " not in found]
    assert forged == []  # the path wrote no line of its own


def test_two_requests_with_one_client_id_both_succeed(fake_app: httpx.Client) -> None:
    """A client retry reuses its X-Request-ID; the engine's request ids are the server's."""
    pdf = text_pdf(6)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=str(fake_app.base_url), timeout=60) as client:
            return client.post("/v1/ocr", files={"file": ("d.pdf", pdf, "application/pdf")},
                               data={"mode": "tiny"}, headers={"x-request-id": "retry-7"})  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, range(2)))
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "ocr-retry-7" and r.headers["x-request-id"] == "retry-7"
        codes = {p.get("error", {}).get("code") for p in r.json()["pages"]}
        assert codes <= {None, "generation_failed"}  # the fake fails every fifth page


def test_an_ingress_that_requires_keys_and_finds_none_does_not_start(
    fake_app: httpx.Client,
) -> None:
    """A missing or misspelt Secret must not open the service: the replica refuses to start,
    and Serve's status says why."""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.testing.serve import start_app, with_env

    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake"}}, "ingress": {"api_keys_required": True}}
    )
    # One try (Serve's default is three): the refusal is the same each time.
    options = with_env(
        {"OCR_API_KEY_HASHES": ""}, config, {"OCRIngress": {"max_constructor_retry_count": 1}}
    )
    try:
        with pytest.raises(RuntimeError, match="OCRIngress"):
            start_app(config, name="ocr-keys", options=options, route_prefix="/keys")
        status = serve.status().applications["ocr-keys"].deployments["OCRIngress"]
        assert status.status == "DEPLOY_FAILED"
        assert "API keys are required (ingress.api_keys_required)" in status.message
        assert "the Secret deepseek-ocr-api-keys" in status.message
    finally:
        serve.delete("ocr-keys")
    assert fake_app.get("/health").status_code == 200  # the other application is untouched
