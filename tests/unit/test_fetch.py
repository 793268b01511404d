"""serve_app.documents.fetch: URL downloads without SSRF, against small HTTP servers on 127.0.0.1.

The servers run on the test's own event loop (``asyncio.start_server``) on ephemeral ports; a
policy reaches one only because it allowlists ``127.0.0.1:<its port>``. Nothing leaves the
machine: names are resolved by a stand-in for :func:`serve_app.documents.fetch.resolve`.
"""

from __future__ import annotations

import asyncio
import datetime
import doctest
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from serve_app.core import addresses
from serve_app.core.addresses import parse_allowlist, refusal_reason
from serve_app.documents import fetch
from serve_app.documents.fetch import (
    Fetched,
    FetchPolicy,
    UrlFetchError,
    UrlNotAllowedError,
    UrlTimeoutError,
    fetch_url,
)
from serve_app.documents.sources import Sources, UrlSource
from serve_app.errors import ClientError, InvalidInputError, PayloadTooLargeError

T = TypeVar("T")
Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]
PUBLIC = ipaddress.ip_address("93.184.215.14")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Origin:
    """A running test server: its port and the requests it saw (target, lowercased headers)."""

    port: int
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str = "/ok", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def allow(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def serve(
    routes: dict[str, Handler],
    tls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[Origin]:
    """An HTTP/1.1 server on ``host`` (a loopback address): one request per connection,
    answered by ``routes``."""
    origin = Origin(port=port)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            target = request_line.split(" ")[1]
            headers = dict(line.split(": ", 1) for line in lines if line)
            origin.requests.append((target, {k.lower(): v for k, v in headers.items()}))
            await routes.get(target, respond(404, b"not found"))(writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, host, port, ssl=tls)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        server.close()


def respond(status: int, body: bytes, content_type: str = "application/pdf") -> Handler:
    async def handle(writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return handle


def redirect(location: str, status: int = 302) -> Handler:
    async def handle(writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status} Found\r\nLocation: {location}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()

    return handle


def policy(*origins: Origin, **options: Any) -> FetchPolicy:
    options = {"connect_timeout_s": 2, "read_timeout_s": 2, "total_timeout_s": 5} | options
    allow = tuple(o.allow for o in origins) + tuple(options.pop("allowlist", ()))
    return FetchPolicy(allowlist=allow, **options)


def fake_resolver(
    table: dict[str, list[str]], calls: list[str] | None = None
) -> Callable[[str, int], Awaitable[list[fetch.IPAddress]]]:
    async def resolve(host: str, port: int) -> list[fetch.IPAddress]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


def assert_url_error(error: ClientError, kind: type[ClientError], *fragments: str) -> None:
    assert isinstance(error, kind)
    assert error.param == "url"
    for fragment in fragments:
        assert fragment in error.message


# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.5", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("100.64.0.1", "a shared address space (carrier-grade NAT) address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fd00::1", "a unique-local address"),
        ("fec0::1", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped IPv6 address of 127.0.0.1, a loopback address"),
        ("::ffff:10.0.0.1", "an IPv4-mapped IPv6 address of 10.0.0.1, a private address"),
        ("2002:7f00:1::1", "a 6to4 address embedding 127.0.0.1, a loopback address"),
        ("2002:a9fe:a9fe::", "a 6to4 address embedding 169.254.169.254, a link-local address"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address embedding 169.254.169.254, a link-local address"),
        ("64:ff9b::7f00:1", "a NAT64 address embedding 127.0.0.1, a loopback address"),
        ("64:ff9b:1::808:808", "a local-use NAT64 address"),
        # Teredo, client 127.0.0.1 stored inverted (RFC 4380), server 8.8.8.8
        ("2001:0:808:808::80ff:fffe", "a Teredo address embedding 127.0.0.1, a loopback address"),
        ("::7f00:1", "a reserved address"),  # IPv4-compatible (deprecated)
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_doctests() -> None:
    result = doctest.testmod(addresses)
    assert result.failed == 0 and result.attempted >= 4


# --- allowlist and policy ----------------------------------------------------------------


def test_parse_allowlist_kinds() -> None:
    allowed = parse_allowlist(
        ["10.1.0.0/16", "fd00::1", " 127.0.0.1:8080 ", "[::1]:8443", "Docs.Internal:443"]
    )
    ip = ipaddress.ip_address
    assert allowed.permits("x", ip("10.1.200.3"), 1)
    assert not allowed.permits("x", ip("10.2.0.1"), 80)
    assert allowed.permits("x", ip("fd00::1"), 9)
    assert allowed.permits("x", ip("127.0.0.1"), 8080)
    assert not allowed.permits("x", ip("127.0.0.1"), 8081)
    assert allowed.permits("x", ip("::1"), 8443) and not allowed.permits("x", ip("::1"), 8080)
    assert allowed.permits("docs.internal", ip("10.9.9.9"), 443)
    assert not allowed.permits("docs.internal", ip("10.9.9.9"), 80)
    assert not allowed.permits("other.internal", ip("10.9.9.9"), 443)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "must not be empty"),
        ("10.1.0.0/33", "not a valid network"),
        ("10.1.2.3/16", "not a valid network: 10.1.2.3/16 has host bits set"),
        ("docs.internal", "a host name needs a port"),
        ("docs.internal:0", "the port must be a number from 1 to 65535"),
        ("docs.internal:99999", "the port must be a number from 1 to 65535"),
        ("docs.internal:http", "the port must be a number from 1 to 65535"),
        ("bad_host!:80", "'bad_host!' is not a valid host name"),
        ("*.example.com:443", "is not a valid host name"),
        ("[::1]", "write an IPv6 port as [address]:port"),
        ("[nonsense]:80", "write an IPv6 port as [address]:port"),
    ],
)
def test_parse_allowlist_errors(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_allowlist([entry])


def test_policy_validation() -> None:
    assert FetchPolicy(allowlist=("10.0.0.0/8",)).allowed.networks
    bad_options: list[dict[str, Any]] = [
        {"allowed_schemes": ("ftp",)},
        {"max_bytes": 0},
        {"read_timeout_s": 0},
        {"max_redirects": -1},
        {"allowlist": ("nope",)},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError):  # noqa: PT011 - the messages are tested above
            FetchPolicy(**bad)


def test_error_classes() -> None:
    assert (UrlNotAllowedError.status_code, UrlNotAllowedError.code) == (400, "url_not_allowed")
    assert (UrlFetchError.status_code, UrlFetchError.code) == (422, "url_fetch_failed")
    assert (UrlTimeoutError.status_code, UrlTimeoutError.code) == (422, "url_timeout")
    assert issubclass(UrlTimeoutError, UrlFetchError) and issubclass(UrlFetchError, ClientError)


# --- URLs refused before any connection ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("file:///etc/passwd", ["the scheme 'file' is not allowed"]),
        ("gopher://example.com:70/_x", ["the scheme 'gopher' is not allowed"]),
        ("ftp://example.com/a.pdf", ["the scheme 'ftp' is not allowed"]),
        ("http://user:secret@example.com/a.pdf", ["credentials (user:password@)"]),
        ("http://example.com:0/", ["port 0 is not allowed"]),
        ("http://2130706433/", ["http://2130706433/ names 127.0.0.1, a loopback address"]),
        ("http://0x7f.1/", ["names 127.0.0.1, a loopback address"]),
        ("http://0x7f.0.0.1/", ["names 127.0.0.1, a loopback address"]),
        ("http://017700000001/", ["names 127.0.0.1, a loopback address"]),
        ("http://127.1/", ["names 127.0.0.1, a loopback address"]),
        ("http://[::1]/", ["names ::1, a loopback address"]),
        ("http://[::ffff:127.0.0.1]/", ["an IPv4-mapped IPv6 address of 127.0.0.1"]),
        ("http://[::ffff:7f00:1]/", ["an IPv4-mapped IPv6 address of 127.0.0.1"]),
        (
            "http://169.254.169.254/latest/meta-data/",
            [
                "http://169.254.169.254/latest/meta-data/ names 169.254.169.254, a link-local "
                "address; only public addresses may be fetched"
            ],
        ),
        ("https://[fd00::1]/", ["a unique-local address"]),
    ],
)
def test_refused_without_a_server(
    url: str, fragments: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even a resolver that answers a public address cannot rescue a literal refused address.
    monkeypatch.setattr(fetch, "resolve", fake_resolver({}))
    with pytest.raises(UrlNotAllowedError) as caught:
        run(fetch_url(url, FetchPolicy()))
    assert_url_error(caught.value, UrlNotAllowedError, *fragments)
    assert "secret" not in caught.value.message


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0x7f.0.0.1", "017700000001"])
def test_the_system_resolver_normalizes_numeric_hosts(host: str) -> None:
    assert run(fetch.resolve(host, 80)) == [ipaddress.ip_address("127.0.0.1")]


def test_not_a_url() -> None:
    with pytest.raises(InvalidInputError) as caught:
        run(fetch_url("http://exa mple.com:x/", FetchPolicy()))
    assert caught.value.param == "url"


def test_name_resolving_to_private_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "resolve", fake_resolver({"internal.example": ["10.0.0.5"]}))
    with pytest.raises(UrlNotAllowedError) as caught:
        run(fetch_url("https://internal.example/doc.pdf?sig=SECRET", FetchPolicy()))
    assert_url_error(
        caught.value,
        UrlNotAllowedError,
        "https://internal.example/doc.pdf resolves to 10.0.0.5, a private address; "
        "only public addresses may be fetched",
    )
    assert "SECRET" not in caught.value.message


def test_any_refused_address_refuses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"mixed.example": [str(PUBLIC), "169.254.169.254"]}
    monkeypatch.setattr(fetch, "resolve", fake_resolver(table))
    with pytest.raises(UrlNotAllowedError) as caught:
        run(fetch_url("http://mixed.example/", FetchPolicy()))
    assert "resolves to 169.254.169.254, a link-local address" in caught.value.message


def test_unresolvable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "resolve", fake_resolver({}))
    with pytest.raises(UrlFetchError) as caught:
        run(fetch_url("http://nowhere.example/", FetchPolicy()))
    assert_url_error(caught.value, UrlFetchError, "nowhere.example could not be resolved")


# --- fetching from local servers ----------------------------------------------------------


def test_good_fetch() -> None:
    async def go() -> tuple[Fetched, Origin]:
        async with serve({"/ok?x=1": respond(200, b"%PDF-1.7 body")}) as origin:
            return await fetch_url(origin.url("/ok?x=1#page=2"), policy(origin)), origin

    result, origin = run(go())
    assert result == Fetched(b"%PDF-1.7 body", origin.url("/ok?x=1"), "application/pdf")
    [(target, headers)] = origin.requests
    assert target == "/ok?x=1"  # the fragment stays on the client
    assert headers["host"] == f"127.0.0.1:{origin.port}"
    assert headers["accept-encoding"] == "identity"
    assert "cookie" not in headers and "authorization" not in headers


def test_not_allowlisted_loopback_server_is_refused() -> None:
    async def go() -> Origin:
        async with serve({"/ok": respond(200, b"x")}) as origin:
            with pytest.raises(UrlNotAllowedError, match="resolves to 127.0.0.1, a loopback"):
                await fetch_url(origin.url(host="localhost"), policy())
            return origin

    assert run(go()).requests == []


def test_connects_to_the_checked_address_with_the_name_as_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name is resolved once; a second answer (DNS rebinding), a live server at another
    allowed address, is never asked for and never receives a request."""
    calls: list[str] = []
    answers = iter([["127.0.0.1"], ["127.0.0.2"]])

    async def rebinding(host: str, port: int) -> list[fetch.IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    monkeypatch.setattr(fetch, "resolve", rebinding)

    async def go() -> tuple[Fetched, Origin, Origin]:
        async with serve({"/ok": respond(200, b"png", "image/png")}) as origin:
            second = {"/ok": respond(200, b"rebound", "image/png")}
            async with serve(second, host="127.0.0.2", port=origin.port) as rebound:
                url = origin.url(host="docs.example")
                allowed = policy(allowlist=["127.0.0.0/8"])
                return await fetch_url(url, allowed), origin, rebound

    result, origin, rebound = run(go())
    assert result.content == b"png" and result.content_type == "image/png"
    assert result.url == f"http://docs.example:{origin.port}/ok"
    assert calls == ["docs.example"]
    assert origin.requests[0][1]["host"] == f"docs.example:{origin.port}"
    assert rebound.requests == []


def test_host_port_allowlist_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "resolve", fake_resolver({"docs.internal": ["127.0.0.1"]}))

    async def go() -> Fetched:
        async with serve({"/ok": respond(200, b"x")}) as origin:
            allow = (f"docs.internal:{origin.port}",)
            with pytest.raises(UrlNotAllowedError):  # the address itself is not allowlisted
                await fetch_url(origin.url(), policy(allowlist=allow))
            return await fetch_url(origin.url(host="docs.internal"), policy(allowlist=allow))

    assert run(go()).content == b"x"


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("http://127.0.0.1:{other}/ok", "names 127.0.0.1, a loopback address"),
        ("http://169.254.169.254/", "names 169.254.169.254, a link-local address"),
        ("http://[::1]:{port}/", "names ::1, a loopback address"),
        ("http://2130706433/", "names 127.0.0.1, a loopback address"),
        ("http://[::ffff:7f00:1]/", "an IPv4-mapped IPv6 address of 127.0.0.1"),
        ("http://0x7f.0.0.1/", "names 127.0.0.1, a loopback address"),
        ("file:///etc/passwd", "the scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:{port}/", "the scheme 'gopher' is not allowed"),
    ],
)
def test_redirects_to_refused_targets(target: str, fragment: str) -> None:
    async def go() -> tuple[UrlNotAllowedError, Origin, Origin]:
        async with serve({"/ok": respond(200, b"secret")}) as other:
            routes: dict[str, Handler] = {}
            async with serve(routes) as first:
                location = target.format(other=other.port, port=first.port)
                routes["/go"] = redirect(location)
                with pytest.raises(UrlNotAllowedError) as caught:
                    await fetch_url(first.url("/go"), policy(first))
                return caught.value, first, other

    error, first, other = run(go())
    assert_url_error(error, UrlNotAllowedError, fragment, f"(redirected from {first.url('/go')})")
    assert other.requests == []


def test_redirect_to_allowlisted_url_is_followed() -> None:
    async def go() -> tuple[Fetched, Origin, Origin]:
        routes: dict[str, Handler] = {"/rel": redirect("go", 307)}
        async with serve({"/doc.pdf": respond(200, b"%PDF")}) as second, serve(routes) as first:
            routes["/go"] = redirect(second.url("/doc.pdf"), 301)
            return await fetch_url(first.url("/rel"), policy(first, second)), first, second

    result, first, second = run(go())
    assert result.content == b"%PDF" and result.url == second.url("/doc.pdf")
    assert [t for t, _ in first.requests] == ["/rel", "/go"]  # "go" resolved against /rel
    assert second.requests[0][1]["host"] == f"127.0.0.1:{second.port}"


def test_redirect_limit() -> None:
    routes: dict[str, Handler] = {f"/r{i}": redirect(f"/r{i + 1}") for i in range(4)}
    routes["/r4"] = respond(200, b"end")

    async def go() -> tuple[Fetched, UrlFetchError]:
        async with serve(routes) as origin:
            ok = await fetch_url(origin.url("/r0"), policy(origin, max_redirects=4))
            with pytest.raises(UrlFetchError) as caught:
                await fetch_url(origin.url("/r0"), policy(origin, max_redirects=3))
            return ok, caught.value

    ok, error = run(go())
    assert ok.content == b"end"
    assert_url_error(error, UrlFetchError, "redirected more than 3 times")


def test_error_status_and_refused_connection() -> None:
    async def go() -> tuple[UrlFetchError, UrlFetchError]:
        async with serve({}) as origin:
            with pytest.raises(UrlFetchError) as not_found:
                await fetch_url(origin.url("/missing"), policy(origin))
        with pytest.raises(UrlFetchError) as refused:  # the server is gone
            await fetch_url(origin.url(), policy(origin))
        return not_found.value, refused.value

    not_found, refused = run(go())
    assert_url_error(not_found, UrlFetchError, "/missing answered HTTP 404")
    assert_url_error(refused, UrlFetchError, "could not connect", "127.0.0.1")


def test_compressed_body_is_refused() -> None:
    async def gzip(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc")
        await writer.drain()

    async def go() -> None:
        async with serve({"/ok": gzip}) as origin:
            await fetch_url(origin.url(), policy(origin))

    with pytest.raises(UrlFetchError, match="Content-Encoding 'gzip'"):
        run(go())


# --- size ---------------------------------------------------------------------------------


def test_declared_oversize_body_is_refused_before_reading() -> None:
    async def huge(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(5)  # the rest never comes; the client must not wait for it

    async def go() -> None:
        async with serve({"/ok": huge}) as origin:
            await fetch_url(origin.url(), policy(origin, max_bytes=4096))

    started = time.monotonic()
    with pytest.raises(PayloadTooLargeError) as caught:
        run(go())
    assert time.monotonic() - started < 1
    assert caught.value.status_code == 413 and caught.value.param == "url"
    assert "is 10000000 bytes (Content-Length); the limit is 4096" in caught.value.message


def test_streamed_oversize_body_is_cut_off() -> None:
    total, block = 64 * 2**20, b"x" * 2**16
    sent: list[int] = []
    done = asyncio.Event

    async def go() -> None:
        finished = done()

        async def endless(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            count = 0
            try:
                while count < total:
                    writer.write(b"%x\r\n%b\r\n" % (len(block), block))
                    count += len(block)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            finally:
                sent.append(count)
                finished.set()

        async with serve({"/ok": endless}) as origin:
            with pytest.raises(PayloadTooLargeError) as caught:
                await fetch_url(origin.url(), policy(origin, max_bytes=100_000))
            assert "sent more than 100000 bytes" in caught.value.message
            await asyncio.wait_for(finished.wait(), 5)

    run(go())
    # What the server got out is what the socket buffers took, far from all of it.
    assert sent and sent[0] < total // 4


# --- time ---------------------------------------------------------------------------------


def test_server_slow_to_answer_times_out() -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async def go() -> None:
        async with serve({"/ok": silent}) as origin:
            await fetch_url(origin.url(), policy(origin, read_timeout_s=0.3))

    started = time.monotonic()
    with pytest.raises(UrlTimeoutError) as caught:
        run(go())
    assert time.monotonic() - started < 1.5
    assert_url_error(caught.value, UrlTimeoutError, "sent nothing for 0.3 s")


def test_trickling_body_hits_the_total_deadline() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def go() -> None:
        async with serve({"/ok": trickle}) as origin:
            await fetch_url(origin.url(), policy(origin, read_timeout_s=0.3, total_timeout_s=0.5))

    started = time.monotonic()
    with pytest.raises(UrlTimeoutError) as caught:
        run(go())
    assert time.monotonic() - started < 1.5
    assert_url_error(caught.value, UrlTimeoutError, "did not finish within 0.5 s")


# --- TLS: connected to the address, verified against the name ------------------------------


def make_certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA (its PEM file) and a certificate for ``name`` it signed (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fetch test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    return paths


def tls_server(directory: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A server context with a certificate for ``name``, and the PEM file of its CA."""
    ca, cert, key = make_certificates(directory, name)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    return ca, server_ctx


def test_https_sends_the_name_as_sni_and_verifies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, server_ctx = tls_server(tmp_path, "docs.example")
    server_names: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    table = {"docs.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]}
    monkeypatch.setattr(fetch, "resolve", fake_resolver(table))

    async def go() -> tuple[Fetched, UrlFetchError, Origin]:
        async with serve({"/ok": respond(200, b"tls")}, tls=server_ctx) as origin:
            tls_policy = policy(origin, ca_file=str(ca))
            good = await fetch_url(f"https://docs.example:{origin.port}/ok", tls_policy)
            with pytest.raises(UrlFetchError) as caught:
                await fetch_url(f"https://other.example:{origin.port}/ok", tls_policy)
            return good, caught.value, origin

    good, mismatch, origin = run(go())
    assert good.content == b"tls" and good.url == f"https://docs.example:{origin.port}/ok"
    assert server_names == ["docs.example", "other.example"]
    assert origin.requests[0][1]["host"] == f"docs.example:{origin.port}"
    assert len(origin.requests) == 1  # the mismatched handshake never got to a request
    assert "CERTIFICATE_VERIFY_FAILED" in mismatch.message
    assert "other.example" in mismatch.message


# --- ports, downgrades, and what a client is told -----------------------------------------


def test_only_web_ports_unless_the_allowlist_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "resolve", fake_resolver({"docs.example": [str(PUBLIC)]}))
    for url in ("http://docs.example:8080/a.pdf", "https://docs.example:22/a.pdf",
                f"http://{PUBLIC}:6379/"):  # fmt: skip
        with pytest.raises(UrlNotAllowedError) as caught:
            run(fetch_url(url, FetchPolicy()))
        assert_url_error(caught.value, UrlNotAllowedError, "is not allowed; only 80 and 443")


def test_a_redirect_from_https_to_http_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, server_ctx = tls_server(tmp_path, "docs.example")
    monkeypatch.setattr(fetch, "resolve", fake_resolver({"docs.example": ["127.0.0.1"]}))

    async def go() -> tuple[UrlNotAllowedError, Origin]:
        async with serve({"/ok": respond(200, b"plain")}) as plain:
            down = redirect(f"http://docs.example:{plain.port}/ok")
            async with serve({"/doc": down}, tls=server_ctx) as secure:
                url = f"https://docs.example:{secure.port}/doc"
                with pytest.raises(UrlNotAllowedError) as caught:
                    await fetch_url(url, policy(plain, secure, ca_file=str(ca)))
                return caught.value, plain

    refused, plain = run(go())
    assert_url_error(refused, UrlNotAllowedError, "a redirect from https to http is not followed")
    assert plain.requests == []


def test_a_client_is_told_a_url_failed_but_not_why(caplog: pytest.LogCaptureFixture) -> None:
    """Refused, timed out or any status: one code and message for the client (no port or
    network scan through error messages); the log line keeps the detail."""

    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)

    async def go() -> list[ClientError]:
        errors = []
        async with serve({"/missing": respond(404, b"no"), "/slow": slow}) as origin:
            sources = Sources(policy(origin, read_timeout_s=0.3))
            for path in ("/missing", "/slow"):
                with pytest.raises(ClientError) as caught:
                    await sources.read(UrlSource(origin.url(path)))
                errors.append(caught.value)
        with pytest.raises(ClientError) as refused:  # the server is gone
            await sources.read(UrlSource(origin.url("/missing")))
        return [*errors, refused.value]

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        errors = run(go())
    assert [(e.code, e.status_code, e.message, e.param) for e in errors] == [
        ("url_fetch_failed", 422, "the URL could not be fetched", "url")
    ] * 3
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "answered HTTP 404" in logged and "sent nothing for 0.3 s" in logged
    assert "could not connect" in logged


def test_a_client_is_not_told_which_address_a_name_resolves_to(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fetch, "resolve", fake_resolver({"db.internal": ["10.1.2.3"]}))
    with (
        caplog.at_level(logging.WARNING, logger="ray.serve"),
        pytest.raises(UrlNotAllowedError) as caught,
    ):
        run(Sources(FetchPolicy()).read(UrlSource("http://db.internal/x.pdf")))
    assert "10.1.2.3" not in caught.value.message and "not a public address" in caught.value.message
    assert "resolves to 10.1.2.3, a private address" in caplog.text
