"""API keys: every route but the probes needs a configured key; keys never reach the logs; a
key's entry carries its own webhook secrets, which the key tool makes and rotates."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from serve_app.api.auth import (
    ApiKeys,
    KeyEntry,
    hash_key,
    key_secrets,
    load_entries,
    load_hashes,
    main,
    parse_entries,
    parse_hashes,
)
from serve_app.config import AppConfig, IngressConfig
from serve_app.jobs.webhooks import secret_key
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
    messages: list[dict[str, object]] = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/ocr", "headers": [], "query_string": b"",
             "scheme": "ws", "server": ("test", 80), "client": ("c", 1), "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


NEW, OLD, OTHER_SECRET = whsec(b"n" * 32), whsec(b"o" * 24), whsec(b"x" * 32)
A, B = hash_key("a"), hash_key("b")


def test_an_entry_carries_its_keys_webhook_secrets(tmp_path: pytest.TempPathFactory) -> None:
    """``sha256:<hex>``, then the secret that signs and the one it replaces, if any: in the
    file and the environment variable, beside entries without one."""
    file = tmp_path / "keys"  # type: ignore[operator]
    file.write_text(f"{hash_key('a')} {NEW} {OLD}  # rotating since 2026-12\n{hash_key('b')}\n")
    env = {"OCR_API_KEY_HASHES": f"{hash_key('c')}  {OTHER_SECRET}, {hash_key('a')} {NEW} {OLD}"}
    assert load_entries(str(file), "OCR_API_KEY_HASHES", env) == (
        KeyEntry(hash_key("a"), (NEW, OLD)),
        KeyEntry(hash_key("b")),
        KeyEntry(hash_key("c"), (OTHER_SECRET,)),
    )
    config = IngressConfig(api_keys_file=str(file))
    assert key_secrets(config, env) == {
        hash_key("a"): (NEW, OLD), hash_key("b"): (), hash_key("c"): (OTHER_SECRET,)
    }  # fmt: skip
    keys = ApiKeys(load_hashes(str(file), "OCR_API_KEY_HASHES", env))
    assert [keys.check(k) for k in ("a", "b", "c", "d")] == [True, True, True, False]


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        (f"{A} {whsec(b'k' * 23)}", "entry 1: a webhook secret is 23 bytes; at least 24"),
        (f"{A} whsec_", "entry 1: a webhook secret is 0 bytes"),
        (f"{A} {NEW[:-2]}!!", "entry 1: a webhook secret's part after 'whsec_' is not"),
        (f"{A} {KEY}", "entry 1: a webhook secret is 'whsec_' and base64"),
        (f"{A} {NEW} {OLD} {OTHER_SECRET}", "entry 1 has 3 webhook secrets; at most 2"),
        (f"{A} {NEW}\n{B} {NEW}", "entry 2 has a webhook secret of another"),
        (f"{A} {NEW}, {A} {OLD}", "entry 2 repeats an earlier entry's key"),
    ],
)
def test_a_bad_webhook_secret_is_refused_without_echoing_it(entries: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        parse_entries(entries)
    for secret in (KEY, NEW, OLD, OTHER_SECRET, NEW[:-2]):
        assert secret.removeprefix("whsec_") not in str(caught.value)


def test_the_key_tool_makes_a_key_with_its_own_webhook_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["new"]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    values = {name.split(" (")[0]: value.strip() for name, value in printed.items()}
    key, secret = values["key"], values["webhook secret"]
    assert values["hash"] == hash_key(key) and len(secret_key(secret)) == 32
    assert parse_entries(values["entry"]) == (KeyEntry(hash_key(key), (secret,)),)


def rotate(entry: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["rotate", entry])
    out, err = capsys.readouterr()
    return code, out, err


def test_rotate_signs_with_a_new_secret_and_keeps_the_current_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = rotate(f"{hash_key('a')} {OLD}", capsys)
    assert code == 0
    entry = out.splitlines()[-1].split(": ", 1)[1].strip()
    (rotated,) = parse_entries(entry)
    new, kept = rotated.webhook_secrets
    assert rotated.hash == hash_key("a") and kept == OLD and new != OLD
    assert f"webhook secret (give to the client): {new}" in out
    assert "drop the old one" in err

    code, out, err = rotate(entry, capsys)  # not finished: both are still configured
    assert code == 2 and out == ""
    assert "a rotation is under way" in err and new not in err and OLD not in err

    code, out, err = rotate(hash_key("b"), capsys)  # a key without a secret gets its first
    (first,) = parse_entries(out.splitlines()[-1].split(": ", 1)[1])
    assert code == 0 and len(first.webhook_secrets) == 1 and err == ""


def test_rotate_reads_the_entry_from_stdin_and_never_echoes_a_raw_key() -> None:
    command = [sys.executable, "-m", "serve_app.api.auth", "rotate"]
    done = subprocess.run(command, input=f"{hash_key('a')} {OLD}\n", capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout.splitlines()[-1].endswith(f" {OLD}")
    refused = subprocess.run(command, input=KEY, capture_output=True, text=True)
    assert refused.returncode == 2 and "is not 'sha256:'" in refused.stderr
    assert KEY not in refused.stderr + refused.stdout
