"""Inputs named by URL on /v1/ocr and in chat, fetched by the ingress (see test_fetch for SSRF)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.synthetic import encode, noise_rgb
from tests.support import LoopThread, LoopTransport, local_api

PNG = encode(noise_rgb(320, 240, seed=7))


HITS: list[str] = []  # every path the origin was asked for


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            HITS.append(self.path)
            if self.path == "/elsewhere":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def client(origin: str) -> Iterator[httpx.Client]:
    runner = LoopThread()
    config = AppConfig.model_validate(
        {
            "models": {"deepseek-ocr": {"kind": "fake"}},
            "ingress": {"url_fetch": {"enabled": True, "allowlist": [origin]}},
        }
    )
    with httpx.Client(transport=LoopTransport(local_api(runner, config), runner),
                      base_url="http://test") as http:  # fmt: skip
        yield http
    runner.close()


def test_ocr_reads_a_url_from_json_form_or_query(client: httpx.Client, origin: str) -> None:
    url = f"http://{origin}/page.png"
    answers = [
        client.post("/v1/ocr", json={"url": url, "mode": "tiny"}),
        client.post("/v1/ocr", data={"url": url, "mode": "tiny"}),
        client.post("/v1/ocr", params={"url": url, "mode": "tiny"}),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        (page,) = r.json()["pages"]
        assert (page["width"], page["height"]) == (320, 240)


def test_chat_fetches_an_http_image_url(client: httpx.Client, origin: str) -> None:
    image = {"type": "image_url", "image_url": {"url": f"http://{origin}/page.png"}}
    body = {"model": "deepseek-ocr", "messages": [{"role": "user", "content": [image]}],
            "mode": "tiny"}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("http://{origin}/elsewhere", 400, "url_not_allowed"),  # redirect to cloud metadata
        ("http://127.0.0.1:1/page.png", 400, "url_not_allowed"),  # loopback, not allowlisted
        ("file:///etc/passwd", 400, "url_not_allowed"),
        ("not a url", 400, "url_not_allowed"),
    ],
)
def test_refused_urls_are_4xx_naming_the_url(
    client: httpx.Client, origin: str, target: str, status: int, code: str
) -> None:
    r = client.post("/v1/ocr", json={"url": target.format(origin=origin)})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == "url"


def test_a_file_and_a_url_together_are_refused(client: httpx.Client, origin: str) -> None:
    r = client.post("/v1/ocr", files={"file": ("p.png", PNG, "image/png")},
                    data={"url": f"http://{origin}/page.png"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "url"


BAD_OPTIONS = [
    {"mode": "bogus"},
    {"task": "summarise"},
    {"dpi": "1200"},
    {"dpi": "10"},
    {"task": "locate"},
    {"max_tokens": "9000"},
    {"model": "gpt-4o"},
]


@pytest.mark.parametrize("fields", BAD_OPTIONS)
def test_bad_options_download_nothing(
    client: httpx.Client, origin: str, fields: dict[str, str]
) -> None:
    """Options, model and limits are checked before the URL is fetched: the origin, which
    counts its hits, receives none."""
    before = len(HITS)
    url = f"http://{origin}/page.png"
    for r in (
        client.post("/v1/ocr", json={"url": url, **fields}),
        client.post("/v1/ocr", data={"url": url, **fields}),
        client.post("/v1/ocr", params={"url": url, **fields}),
    ):
        assert r.status_code in (400, 404), r.text
    chat_fields = {k: v for k, v in fields.items() if k in ("mode", "task", "model")}
    if "max_tokens" in fields:
        chat_fields["max_tokens"] = int(fields["max_tokens"])
    if chat_fields:
        image = {"type": "image_url", "image_url": {"url": url}}
        body = {"model": "deepseek-ocr", "messages": [{"role": "user", "content": [image]}],
                **chat_fields}  # fmt: skip
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code in (400, 404), r.text
    assert len(HITS) == before


def test_url_inputs_are_off_unless_enabled() -> None:
    runner = LoopThread()
    config = AppConfig.model_validate({"models": {"deepseek-ocr": {"kind": "fake"}}})
    with httpx.Client(transport=LoopTransport(local_api(runner, config), runner),
                      base_url="http://test") as http:  # fmt: skip
        r = http.post("/v1/ocr", json={"url": "https://example.org/page.png"})
    runner.close()
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "url_not_allowed"
    assert "does not fetch URLs" in r.json()["error"]["message"]
