"""API keys: every route but the probes needs a configured key; keys never reach the logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest

from serve_app.api.auth import ApiKeys, hash_key, load_hashes, parse_hashes
from serve_app.config import AppConfig
from serve_app.testing.synthetic import encode, noise_rgb
from tests.support import LoopThread, LoopTransport, local_api

KEY = "ocr-test-key-0123456789"
OTHER = "ocr-another-key"
PNG = encode(noise_rgb(64, 48, seed=5))
PROTECTED = [
    ("POST", "/v1/ocr"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    runner = LoopThread()
    config = AppConfig.model_validate({"models": {"deepseek-ocr": {"kind": "fake"}}})
    keys = ApiKeys((hash_key(OTHER), hash_key(KEY)))
    transport = LoopTransport(local_api(runner, config, keys=keys), runner)
    with httpx.Client(transport=transport, base_url="http://test") as http:
        yield http
    runner.close()


def call(client: httpx.Client, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if path == "/v1/ocr":
        return client.post(path, files={"file": ("p.png", PNG, "image/png")},
                           data={"mode": "tiny"}, headers=headers)  # fmt: skip
    if path == "/v1/chat/completions":
        body = {"model": "deepseek-ocr", "messages": [{"role": "user", "content": "hi"}]}
        return client.post(path, json=body, headers=headers)
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_only_a_configured_key_passes_and_no_key_is_logged(
    client: httpx.Client, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        missing = call(client, method, path, None)
        wrong = call(client, method, path, KEY + "x")
        basic = client.request(method, path, headers={"Authorization": f"Basic {KEY}"})
        right = call(client, method, path, KEY)
    for r in (missing, wrong, basic):
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"].startswith('Bearer realm="deepseek-ocr"')
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    # The chat request has no image: past the door it is a 400, not a 401.
    assert right.status_code == (400 if path == "/v1/chat/completions" else 200), right.text
    assert "status=401 outcome=invalid_api_key" in caplog.text
    assert KEY not in caplog.text and hash_key(KEY) not in caplog.text


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_stay_open(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_hashes_from_a_file_and_the_environment(tmp_path: pytest.TempPathFactory) -> None:
    file = tmp_path / "keys"  # type: ignore[operator]
    file.write_text(f"# team a\n{hash_key('a')}  # rotated 2026-11\n\n")
    env = {
        "OCR_API_KEY_HASHES": f"{hash_key('b')},{hash_key('c').upper().replace('SHA256', 'sha256')}"
    }
    keys = ApiKeys(load_hashes(str(file), "OCR_API_KEY_HASHES", env))
    assert [keys.check(k) for k in ("a", "b", "c", "d")] == [True, True, True, False]
    assert not ApiKeys(load_hashes(None, "OCR_API_KEY_HASHES", {})).enabled


def test_a_raw_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="entry 2 is not") as caught:
        parse_hashes(f"{hash_key('a')}\n{KEY}")
    assert KEY not in str(caught.value)


def test_a_websocket_is_refused_when_keys_are_on(client: httpx.Client) -> None:
    """The API has no websocket; with keys on, one is closed before it is accepted rather
    than passed through unchecked."""
    app = client._transport._inner.app  # type: ignore[attr-defined]
    sent: list[dict[str, object]] = []
    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/ocr", "headers": [], "query_string": b"",
             "scheme": "ws", "server": ("test", 80), "client": ("c", 1), "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
