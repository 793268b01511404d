"""Download a URL a client names instead of uploading the file, without SSRF.

A client of the OCR API may send ``"url": "https://..."`` for an image or PDF. Fetching it from
inside the cluster must not let the client reach what only the cluster can reach (the cloud
metadata service at 169.254.169.254, the Ray dashboard, other pods). So :func:`fetch_url`:

* accepts only http(s) URLs without credentials, on ports 80 and 443 unless the policy's
  allowlist names another;
* resolves the host itself and refuses it if *any* of its addresses is not public
  (:func:`~serve_app.core.addresses.refusal_reason`), unless the allowlist names that address;
* connects to an address it checked, not to the name again, so a second DNS answer cannot
  swap in an internal address (DNS rebinding);
* follows redirects itself, checking every hop the same way, and never from https to http;
* bounds the time (connect, each read, the whole fetch) and the bytes it reads.

Every refusal is a :class:`~serve_app.errors.ClientError` with ``param="url"`` whose message
says exactly what happened, for the log; :mod:`serve_app.documents.sources` decides how much of
it a client sees. Messages name the URL without its query string, which often carries a
signature (presigned URLs). No Ray or FastAPI here.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from serve_app.core.addresses import Allowlist, IPAddress, parse_allowlist, refusal_reason
from serve_app.errors import ClientError, InvalidInputError, PayloadTooLargeError

SUPPORTED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
WEB_PORTS = frozenset(DEFAULT_PORTS.values())
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "deepseek-ocr-serve (url fetch)"
T = TypeVar("T")


class UrlNotAllowedError(ClientError):
    """The URL's scheme, credentials, port or an address its host resolves to is refused."""

    code = "url_not_allowed"


class AddressNotAllowedError(UrlNotAllowedError):
    """An address the URL's host names or resolves to is not public and not allowlisted."""


class UrlFetchError(ClientError):
    """The URL is allowed but could not be fetched: the name does not resolve, the connection
    fails, the origin answers an error status or redirects too often."""

    # 422: the request is well-formed but names something we cannot get. Not 5xx: retrying
    # the same request will not help until the client or the origin changes something.
    status_code = 422
    code = "url_fetch_failed"


class UrlTimeoutError(UrlFetchError):
    """The origin was too slow: to connect, between two reads or for the whole download."""

    # 422 like any fetch failure, not 408: 408 says the *client* was slow sending its own
    # request, and HTTP clients may silently resend on 408. Here the client's request arrived
    # whole; the origin it named was slow, so the code alone tells the two failures apart.
    code = "url_timeout"


@dataclass(frozen=True)
class FetchPolicy:
    """What :func:`fetch_url` may fetch and how long and how much it may read.

    Attributes:
        allowed_schemes: A subset of ``http`` and ``https``.
        max_bytes: Larger bodies are refused (413), by ``Content-Length`` or while reading.
        connect_timeout_s: To open a connection (TCP and TLS), per address tried.
        read_timeout_s: The longest wait for the next bytes from the origin.
        total_timeout_s: For the whole fetch: resolving, every redirect and the body.
        max_redirects: How many redirects are followed; one more is refused.
        allowlist: Entries for :func:`parse_allowlist`, checked when the policy is made.
        ca_file: PEM file of the certificate authorities to trust instead of certifi's
            (a private CA); environment variables are never consulted.
    """

    allowed_schemes: tuple[str, ...] = ("http", "https")
    max_bytes: int = 50 * 2**20
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 60.0
    max_redirects: int = 3
    allowlist: tuple[str, ...] = ()
    ca_file: str | None = None
    allowed: Allowlist = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schemes = tuple(s.lower() for s in self.allowed_schemes)
        if not schemes or not set(schemes) <= SUPPORTED_SCHEMES:
            raise ValueError(f"allowed_schemes must be a subset of http, https: {schemes}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive: {self.max_bytes}")
        timeouts = (self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s)
        if min(timeouts) <= 0:
            raise ValueError(f"timeouts must be positive: {timeouts}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must not be negative: {self.max_redirects}")
        object.__setattr__(self, "allowed_schemes", schemes)
        object.__setattr__(self, "allowlist", tuple(self.allowlist))
        object.__setattr__(self, "allowed", parse_allowlist(self.allowlist))


@dataclass(frozen=True)
class Fetched:
    """A downloaded body.

    Attributes:
        content: The body as sent (``Accept-Encoding: identity`` is asked for).
        url: The URL the body came from, after redirects, without a fragment.
        content_type: The origin's ``Content-Type`` header, if any.
    """

    content: bytes
    url: str
    content_type: str | None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without repeats.

    The only place this module looks names up (tests replace it). Numeric hosts in any
    notation the C library accepts (``2130706433``, ``0x7f.1``) come back normalized.

    Raises:
        socket.gaierror: When the name does not resolve.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+", re.I)


def _literal_address(host: str) -> IPAddress | None:
    """The address a host written as a number stands for, in any notation ``inet_aton``
    accepts (``127.1``, ``0x7f.0.0.1``, ``2130706433``), or ``None`` for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _display(url: httpx.URL) -> str:
    """``url`` for messages: no credentials, query or fragment."""
    netloc = url.netloc.decode("ascii")
    return f"{url.scheme}://{netloc}{url.path}" if netloc else f"{url.scheme}:{url.path}"


@dataclass(frozen=True)
class _Hop:
    """One URL to fetch, checked for scheme, credentials and port; ``where`` names it in
    messages."""

    url: httpx.URL
    host: str
    port: int
    where: str


def _check_url(url: httpx.URL, policy: FetchPolicy, where: str) -> _Hop:
    """Refuse a scheme, credentials, a missing host or a bad port; drop the fragment.

    Raises:
        UrlNotAllowedError: Naming what is refused.
    """
    scheme = url.scheme
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(policy.allowed_schemes)
        raise UrlNotAllowedError(
            f"{where}: the scheme {scheme!r} is not allowed; only {allowed} URLs may be fetched",
            param="url",
        )
    if url.userinfo:
        raise UrlNotAllowedError(
            f"{where}: URLs with credentials (user:password@) are not accepted", param="url"
        )
    host = url.raw_host.decode("ascii")
    if not host:
        raise UrlNotAllowedError(f"{where}: the URL names no host", param="url")
    port = url.port if url.port is not None else DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise UrlNotAllowedError(f"{where}: port {port} is not allowed", param="url")
    return _Hop(url.copy_with(fragment=None), host, port, where)


def _not_public(where: str, verb: str, address: IPAddress, reason: str) -> UrlNotAllowedError:
    return AddressNotAllowedError(
        f"{where} {verb} {address}, {reason}; only public addresses may be fetched",
        param="url",
    )


def _check_port(hop: _Hop, address: IPAddress, policy: FetchPolicy) -> None:
    """Only the web's own ports, unless the allowlist names the address (or host) and port."""
    if hop.port not in WEB_PORTS and not policy.allowed.permits(hop.host, address, hop.port):
        raise UrlNotAllowedError(
            f"{hop.where}: port {hop.port} is not allowed; only 80 and 443, or a port the "
            "service's allowlist names",
            param="url",
        )


async def _checked_addresses(hop: _Hop, policy: FetchPolicy) -> list[IPAddress]:
    """Every address ``hop``'s host resolves to, once each is allowed (address and port).

    Raises:
        UrlNotAllowedError: If any address or the port is refused and not allowlisted.
        UrlFetchError: If the host does not resolve.
    """
    literal = _literal_address(hop.host)
    if literal is not None and not policy.allowed.permits(hop.host, literal, hop.port):
        reason = refusal_reason(literal)
        if reason is not None:
            raise _not_public(hop.where, "names", literal, reason)
        _check_port(hop, literal, policy)
    try:
        addresses = await resolve(hop.host, hop.port)
    except (socket.gaierror, UnicodeError) as exc:
        detail = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UrlFetchError(
            f"{hop.where}: the host {hop.host} could not be resolved ({detail})", param="url"
        ) from None
    if not addresses:
        raise UrlFetchError(f"{hop.where}: the host {hop.host} has no address", param="url")
    for address in addresses:
        if policy.allowed.permits(hop.host, address, hop.port):
            continue
        reason = refusal_reason(address)
        if reason is not None:
            raise _not_public(hop.where, "resolves to", address, reason)
        _check_port(hop, address, policy)
    return addresses


@functools.lru_cache(maxsize=8)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context (certificate and host name) trusting ``ca_file`` or certifi."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return httpx.create_ssl_context(verify=True, trust_env=False)


def _client(policy: FetchPolicy) -> httpx.AsyncClient:
    """A fresh client for one hop: no redirects, proxies, environment or shared cookies."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        verify=_ssl_context(policy.ca_file),
        timeout=httpx.Timeout(
            connect=policy.connect_timeout_s,
            read=policy.read_timeout_s,
            write=policy.read_timeout_s,
            pool=policy.connect_timeout_s,
        ),
    )


async def _read_body(response: httpx.Response, hop: _Hop, limit: int) -> bytes:
    """The body, refused once it is known or seen to exceed ``limit`` bytes.

    At most ``limit`` bytes plus one network read are held.

    Raises:
        PayloadTooLargeError: Past ``limit``.
        UrlFetchError: For a compressed body (identity was asked for; decompressing would
            defeat the limit).
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"{hop.where} is {int(declared)} bytes (Content-Length); the limit is {limit}",
            param="url",
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UrlFetchError(
            f"{hop.where} answered with Content-Encoding {encoding!r}; "
            "only uncompressed bodies are accepted",
            param="url",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"{hop.where} sent more than {limit} bytes; the limit is {limit}", param="url"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _get(hop: _Hop, address: IPAddress, policy: FetchPolicy) -> Fetched | httpx.URL:
    """GET ``hop`` from ``address``: the body, or the URL a redirect points to.

    The request goes to the address, with the URL's own ``Host`` header. For https the
    ``sni_hostname`` extension makes httpcore hand the *name* to the TLS handshake
    (``server_hostname`` in ``httpcore/_async/connection.py``, then anyio's ``TLSStream.wrap``
    and ``SSLContext.wrap_bio``), so the name is sent as SNI and the certificate is verified
    against the name (``check_hostname``), though the socket connects to the address.
    """
    target, extensions = _pinned(hop, address)
    headers = {
        "Host": hop.url.netloc.decode("ascii"),
        "User-Agent": USER_AGENT,
        "Accept": "image/*, application/pdf, */*;q=0.5",
        "Accept-Encoding": "identity",
    }
    async with (
        _client(policy) as client,
        client.stream("GET", target, headers=headers, extensions=extensions) as response,
    ):
        status = response.status_code
        if status in REDIRECT_STATUSES and "location" in response.headers:
            try:
                return hop.url.join(response.headers["location"])
            except httpx.InvalidURL as exc:
                raise UrlFetchError(
                    f"{hop.where} redirected to an invalid URL ({exc})", param="url"
                ) from None
        if not 200 <= status < 300:
            raise UrlFetchError(
                f"{hop.where} answered HTTP {status} {response.reason_phrase}".rstrip(),
                param="url",
            )
        content = await _read_body(response, hop, policy.max_bytes)
        return Fetched(content, str(hop.url), response.headers.get("content-type"))


def _pinned(hop: _Hop, address: IPAddress) -> tuple[httpx.URL, dict[str, Any]]:
    """The URL to request ``hop`` from ``address``, and the extensions that keep TLS on the
    name (a host written as an address gets no SNI; TLS then verifies the address itself)."""
    target = hop.url.copy_with(host=str(address))
    extensions = {} if _literal_address(hop.host) is not None else {"sni_hostname": hop.host}
    return target, extensions


async def _from_any(
    hop: _Hop,
    addresses: list[IPAddress],
    policy: FetchPolicy,
    attempt: Callable[[IPAddress], Awaitable[T]],
) -> T:
    """``attempt`` on the first of ``hop``'s checked addresses that accepts a connection.

    Raises:
        UrlTimeoutError: When the origin is too slow.
        UrlFetchError: When no address accepts a connection or the exchange fails.
    """
    failures: list[str] = []
    timed_out = True
    for address in addresses:
        try:
            return await attempt(address)
        except httpx.ConnectTimeout:
            failures.append(f"{address}: no connection within {policy.connect_timeout_s:g} s")
        except httpx.ConnectError as exc:
            timed_out = False
            failures.append(f"{address}: {_describe(exc)}")
        except httpx.TimeoutException:
            raise UrlTimeoutError(
                f"{hop.where} sent nothing for {policy.read_timeout_s:g} s", param="url"
            ) from None
        except httpx.HTTPError as exc:
            raise UrlFetchError(
                f"{hop.where}: the exchange failed ({_describe(exc)})", param="url"
            ) from None
    error = UrlTimeoutError if timed_out else UrlFetchError
    raise error(f"{hop.where}: could not connect ({'; '.join(failures)})", param="url")


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


async def _follow(first: _Hop, policy: FetchPolicy) -> Fetched:
    hop = first
    for _ in range(policy.max_redirects + 1):
        addresses = await _checked_addresses(hop, policy)
        attempt = functools.partial(_get, hop, policy=policy)
        result = await _from_any(hop, addresses, policy, attempt)
        if isinstance(result, Fetched):
            return result
        where = f"{_display(result)} (redirected from {_display(hop.url)})"
        if hop.url.scheme == "https" and result.scheme != "https":
            raise UrlNotAllowedError(
                f"{where}: a redirect from https to {result.scheme} is not followed",
                param="url",
            )
        hop = _check_url(result, policy, where)
    raise UrlFetchError(
        f"{_display(first.url)} redirected more than {policy.max_redirects} times", param="url"
    )


async def fetch_url(url: str, policy: FetchPolicy) -> Fetched:
    """Download ``url`` under ``policy``, following redirects.

    Raises:
        InvalidInputError: When ``url`` is not a URL.
        UrlNotAllowedError: For a refused scheme, credentials, port or address, on any hop,
            or a redirect from https to http.
        UrlFetchError: When the host does not resolve, no connection can be made, the origin
            answers an error status or redirects more than ``policy.max_redirects`` times.
        UrlTimeoutError: When connecting, a read or the whole fetch takes too long.
        PayloadTooLargeError: For a body larger than ``policy.max_bytes``.
    """
    first = _parsed(url, policy)
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            return await _follow(first, policy)
    except TimeoutError:
        raise UrlTimeoutError(
            f"{first.where} did not finish within {policy.total_timeout_s:g} s", param="url"
        ) from None


def _parsed(url: str, policy: FetchPolicy) -> _Hop:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInputError(f"'url' is not a valid URL ({exc})", param="url") from None
    return _check_url(parsed, policy, _display(parsed))


def check_url(url: str, policy: FetchPolicy) -> None:
    """Refuse a URL :func:`fetch_url` or :func:`post_url` would refuse before resolving its
    host (not a URL, scheme, credentials, port 0). Its addresses are checked when it is used.

    Raises:
        InvalidInputError: When ``url`` is not a URL.
        UrlNotAllowedError: For a refused scheme or credentials.
    """
    _parsed(url, policy)


@dataclass(frozen=True)
class Posted:
    """The answer to a POST: its status and at most the first bytes of its body.

    Attributes:
        content: The body as sent (not decoded), cut at the caller's limit.
    """

    status_code: int
    content: bytes


async def post_url(
    url: str,
    policy: FetchPolicy,
    body: bytes,
    headers: Mapping[str, str],
    max_answer_bytes: int = 4096,
) -> Posted:
    """POST ``body`` to ``url``, checked as :func:`fetch_url` checks it (scheme, port, every
    address public or allowlisted, the connection pinned to a checked address); a redirect is
    answered, not followed. The answer's status and at most ``max_answer_bytes`` of its body:
    the rest is never read, the connection is closed (one network read past the limit at
    most is held).

    Raises:
        InvalidInputError: When ``url`` is not a URL.
        UrlNotAllowedError: For a refused scheme, credentials, port or address.
        UrlFetchError: When the host does not resolve or no address takes a connection.
        UrlTimeoutError: When connecting or the answer takes too long.
    """
    hop = _parsed(url, policy)
    sent = {"Host": hop.url.netloc.decode("ascii"), "User-Agent": USER_AGENT, **headers}

    async def post(address: IPAddress) -> Posted:
        target, extensions = _pinned(hop, address)
        async with _client(policy) as client:
            call = client.stream("POST", target, content=body, headers=sent, extensions=extensions)
            async with call as response:
                return Posted(response.status_code, await _read_start(response, max_answer_bytes))

    try:
        async with asyncio.timeout(policy.total_timeout_s):
            return await _from_any(hop, await _checked_addresses(hop, policy), policy, post)
    except TimeoutError:
        raise UrlTimeoutError(
            f"{hop.where} did not answer within {policy.total_timeout_s:g} s", param="url"
        ) from None


async def _read_start(response: httpx.Response, limit: int) -> bytes:
    """The body's first ``limit`` bytes; what follows is left unread."""
    chunks: list[bytes] = []
    size = 0
    if limit > 0:
        async for chunk in response.aiter_raw():
            chunks.append(chunk[: limit - size])
            size += len(chunks[-1])
            if size >= limit:
                break
    return b"".join(chunks)
