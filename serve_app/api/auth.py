"""Optional API keys: bearer tokens checked against stored SHA-256 hashes.

Keys are random 32-byte tokens (``python -m serve_app.api.auth new``), so a fast hash is enough:
there is nothing to brute-force that a slow hash would protect. Only hashes are configured,
one entry per line of a file or comma-separated in an environment variable (a Kubernetes
Secret fills either). An entry is the key's hash, then optionally the key's webhook signing
secrets: ``sha256:<hex> [whsec_<current> [whsec_<previous>]]``. The first signs its jobs'
webhooks; while it replaces a previous one both sign, so a receiver holding either verifies
(:mod:`serve_app.jobs.webhooks`). With ``api_keys_required`` a replica that finds no hashes
refuses to start; otherwise no hashes means every route is open. A presented key is hashed
and compared with every stored hash in constant time. ``/health`` and
``/ready`` stay open (probes), and metrics are served by Ray, not by this app.

    python -m serve_app.api.auth new              # a new key, its secret and entry to configure
    python -m serve_app.api.auth hash < key.txt   # the hash of an existing key
    python -m serve_app.api.auth rotate < entry   # the entry with a new secret first
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.access_log import access_record
from serve_app.api.errors import error_response
from serve_app.api.routes import OPEN_PATHS
from serve_app.config import IngressConfig
from serve_app.errors import ClientError
from serve_app.jobs.webhooks import new_secret, secret_key

PREFIX = "sha256:"


class AuthenticationError(ClientError):
    """No API key, or one that is not configured (HTTP 401)."""

    status_code = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


def hash_key(key: str) -> str:
    """The stored form of a key.

    >>> hash_key("secret")
    'sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b'
    """
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    """A configured key: its hash and its webhook signing secrets, the current one first (a
    second is the one it replaces, until the key's receivers switched)."""

    hash: str
    webhook_secrets: tuple[str, ...] = ()

    def line(self) -> str:
        """The entry as configured."""
        return " ".join((self.hash, *self.webhook_secrets))


MAX_SECRETS = 2  # the current one and, while it is rotated in, the previous


def parse_entries(text: str) -> tuple[KeyEntry, ...]:
    """Key entries from a file's lines or a comma-separated list; ``#`` starts a comment.

    Raises:
        ValueError: For a hash that is not ``sha256:`` and 64 hex digits (a raw key pasted by
            mistake is refused, and not echoed), a malformed or short secret, more than two
            secrets, a key given twice with other secrets, or a secret on two keys (a tenant
            would verify, and sign, another's calls). No message repeats a key or a secret.
    """
    entries: dict[str, KeyEntry] = {}
    holders: dict[str, str] = {}  # a secret: the hash of the key it was given to
    for number, line in enumerate(text.replace(",", "\n").splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        entry = _entry(number, fields)
        if entries.setdefault(entry.hash, entry) != entry:
            raise ValueError(f"API key hash entry {number} repeats an earlier entry's key with "
                             "other webhook secrets")  # fmt: skip
        for secret in entry.webhook_secrets:
            if holders.setdefault(secret, entry.hash) != entry.hash:
                raise ValueError(f"API key hash entry {number} has a webhook secret of another "
                                 "key's entry: each key needs its own")  # fmt: skip
    return tuple(entries.values())


def _entry(number: int, fields: Sequence[str]) -> KeyEntry:
    """The entry of one line's ``fields``: a hash, then its secrets."""
    digest = fields[0].removeprefix(PREFIX)
    if not fields[0].startswith(PREFIX) or len(digest) != 64 or not _is_hex(digest):
        raise ValueError(f"API key hash entry {number} is not 'sha256:' and 64 hex digits")
    given = tuple(fields[1:])
    if len(given) > MAX_SECRETS:
        raise ValueError(f"API key hash entry {number} has {len(given)} webhook secrets; at "
                         "most 2: the current one, and the one it replaces")  # fmt: skip
    for secret in given:
        try:
            secret_key(secret)
        except ValueError as bad:
            raise ValueError(f"API key hash entry {number}: {bad}") from None
    return KeyEntry(PREFIX + digest.lower(), given)


def parse_hashes(text: str) -> tuple[str, ...]:
    """The keys' hashes of :func:`parse_entries`."""
    return tuple(entry.hash for entry in parse_entries(text))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def load_entries(
    file: str | None, env_var: str, env: Mapping[str, str] = os.environ
) -> tuple[KeyEntry, ...]:
    """The configured entries: the file's (if set) and the environment variable's."""
    text = Path(file).read_text() if file else ""
    return parse_entries(text + "\n" + env.get(env_var, ""))


def load_hashes(
    file: str | None, env_var: str, env: Mapping[str, str] = os.environ
) -> tuple[str, ...]:
    """The configured hashes: the file's (if set) and the environment variable's."""
    return tuple(entry.hash for entry in load_entries(file, env_var, env))


def key_secrets(
    config: IngressConfig, env: Mapping[str, str] = os.environ
) -> dict[str, tuple[str, ...]]:
    """Each configured key's webhook secrets, by its hash (what signs its jobs' webhooks).

    Raises:
        ValueError: For a malformed entry.
    """
    entries = load_entries(config.api_keys_file, config.api_keys_env, env)
    return {entry.hash: entry.webhook_secrets for entry in entries}


class ApiKeys:
    """The configured key hashes; :meth:`check` a presented key against all of them."""

    def __init__(self, hashes: tuple[str, ...]) -> None:
        self._hashes = tuple(h.encode() for h in hashes)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def check(self, key: str) -> bool:
        candidate = hash_key(key).encode()
        found = False
        for stored in self._hashes:  # no early exit: the time does not depend on which matched
            found |= hmac.compare_digest(candidate, stored)
        return found


class MissingApiKeysError(RuntimeError):
    """Keys are required and none are configured: the ingress does not start."""


SECRET = "deepseek-ocr-api-keys"  # the Kubernetes Secret the overlays read the hashes from


def configured_keys(config: IngressConfig, env: Mapping[str, str] = os.environ) -> ApiKeys:
    """The keys ``config`` names (its file and environment variable).

    Raises:
        MissingApiKeysError: Keys are required and there are none, naming where they go.
        ValueError: For a malformed hash entry.
    """
    keys = ApiKeys(load_hashes(config.api_keys_file, config.api_keys_env, env))
    if config.api_keys_required and not keys.enabled:
        where = f"${config.api_keys_env}" + (
            f" or {config.api_keys_file}" if config.api_keys_file else ""
        )
        raise MissingApiKeysError(
            f"API keys are required (ingress.api_keys_required) but {where} holds no key "
            f"hash. On Kubernetes ${config.api_keys_env} comes from the Secret {SECRET} (key "
            f"'hashes'): kubectl -n deepseek-ocr create secret generic {SECRET} "
            "--from-literal=hashes=sha256:... (make one with python -m serve_app.api.auth "
            "new), then restart the pods"
        )
    return keys


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class AuthMiddleware:
    """ASGI middleware: 401 JSON with ``WWW-Authenticate`` unless the request carries a
    configured key (every path but :data:`OPEN_PATHS`; nothing is checked without keys). With
    keys, a websocket is closed before it is accepted (the API has none, and a scope this
    middleware does not check must not pass)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.keys.enabled:
            await receive()  # websocket.connect; closing now refuses the handshake (403)
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or not self.keys.enabled or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and self.keys.check(token):
            access_record(scope).caller = hash_key(token)  # whose jobs it may see
            await self.app(scope, receive, send)
            return
        if token is None:
            error = AuthenticationError("an API key is required: 'Authorization: Bearer <key>'")
            challenge = 'Bearer realm="deepseek-ocr"'
        else:
            error = AuthenticationError("the API key is not valid")
            challenge = 'Bearer realm="deepseek-ocr", error="invalid_token"'
        access_record(scope).outcome = error.code
        response = error_response(error)
        response.headers["WWW-Authenticate"] = challenge
        await response(scope, receive, send)


def rotated(entry: KeyEntry) -> KeyEntry:
    """``entry`` with a new webhook secret first and its current one kept second.

    Raises:
        ValueError: When it holds two already (a rotation not finished).
    """
    if len(entry.webhook_secrets) >= MAX_SECRETS:
        raise ValueError("the entry has two webhook secrets: a rotation is under way. Once the "
                         "key's receivers verify with the first, drop the second from the "
                         "entry, then rotate again")  # fmt: skip
    return KeyEntry(entry.hash, (new_secret(), *entry.webhook_secrets))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="API keys for the OCR service.")
    parser.add_argument("command", choices=["new", "hash", "rotate"])
    parser.add_argument("entry", nargs="?", help="rotate: the key's entry (else from stdin)")
    args = parser.parse_args(argv)
    out = sys.stdout.write
    if args.command == "new":
        key = "ocr-" + secrets.token_urlsafe(32)
        entry = KeyEntry(hash_key(key), (new_secret(),))
        out(f"key (give to the client):            {key}\n")
        out(f"hash:                                {entry.hash}\n")
        out(f"webhook secret (give to the client): {entry.webhook_secrets[0]}\n")
        out(f"entry (configure on the server):     {entry.line()}\n")
    elif args.command == "hash":
        out(hash_key(sys.stdin.read().strip()) + "\n")
    else:
        try:
            entries = parse_entries(args.entry if args.entry is not None else sys.stdin.read())
            if len(entries) != 1:
                raise ValueError(f"rotate takes one entry ({len(entries)} given)")
            entry = rotated(entries[0])
        except ValueError as bad:
            sys.stderr.write(f"error: {bad}\n")
            return 2
        out(f"webhook secret (give to the client): {entry.webhook_secrets[0]}\n")
        out(f"entry (configure on the server):     {entry.line()}\n")
        if len(entry.webhook_secrets) > 1:
            sys.stderr.write("Both secrets sign the key's webhooks. Once its receivers verify "
                             "with the new one, drop the old one (the entry's last) and "
                             "restart.\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
