"""Which network addresses a URL fetch may reach: public ones, and those an operator's
allowlist names. Pure: no I/O (the fetcher resolves names and asks here).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allowlist:
    """Addresses that may be fetched from although :func:`refusal_reason` refuses them.

    Attributes:
        networks: Any port on any address in these networks.
        endpoints: ``(address, port)`` pairs.
        host_ports: ``(host name, port)`` pairs: whatever the name resolves to, on that port
            (the operator trusts that name's DNS).
    """

    networks: tuple[IPNetwork, ...] = ()
    endpoints: frozenset[tuple[IPAddress, int]] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()

    def permits(self, host: str, address: IPAddress, port: int) -> bool:
        """Whether ``address`` (which ``host`` resolved to) may be reached on ``port``."""
        return (
            any(address in network for network in self.networks)
            or (address, port) in self.endpoints
            or (host.lower().rstrip("."), port) in self.host_ports
        )


_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*", re.I)


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"allowlist entry {entry!r}: the port must be a number from 1 to 65535")
    return int(text)


def parse_allowlist(entries: Iterable[str]) -> Allowlist:
    """Parse allowlist entries: a network (``10.1.0.0/16``), an address (``10.1.2.3``,
    ``fd00::1``) or one port of an address or host name (``10.1.2.3:8080``,
    ``[fd00::1]:8080``, ``docs.internal:443``).

    Raises:
        ValueError: Naming the first malformed entry and what is wrong with it.

    >>> parse_allowlist(["10.1.0.0/16", "127.0.0.1:8080"]).permits(
    ...     "localhost", ipaddress.ip_address("127.0.0.1"), 8080)
    True
    """
    networks: list[IPNetwork] = []
    endpoints: set[tuple[IPAddress, int]] = set()
    host_ports: set[tuple[str, int]] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            raise ValueError("allowlist entries must not be empty")
        try:
            networks.append(ipaddress.ip_network(entry))  # a network or a single address
            continue
        except ValueError as exc:
            if "/" in entry:
                raise ValueError(
                    f"allowlist entry {entry!r} is not a valid network: {exc}"
                ) from None
        if entry.startswith("["):
            inside, bracket, port = entry[1:].partition("]:")
            try:
                address = ipaddress.IPv6Address(inside)
            except ValueError:
                address = None
            if not bracket or address is None:
                raise ValueError(f"allowlist entry {entry!r}: write an IPv6 port as [address]:port")
            endpoints.add((address, _parse_port(port, entry)))
            continue
        host, colon, port = entry.rpartition(":")
        if not colon:
            raise ValueError(
                f"allowlist entry {entry!r} is not a network or an address; "
                "a host name needs a port (host:port)"
            )
        number = _parse_port(port, entry)
        try:
            endpoints.add((ipaddress.IPv4Address(host), number))
            continue
        except ValueError:
            pass
        if not _HOST_NAME.fullmatch(host.rstrip(".")):
            raise ValueError(f"allowlist entry {entry!r}: {host!r} is not a valid host name")
        host_ports.add((host.lower().rstrip("."), number))
    return Allowlist(tuple(networks), frozenset(endpoints), frozenset(host_ports))


_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with how it carries it."""
    if address.ipv4_mapped is not None:
        return [("an IPv4-mapped IPv6 address of", address.ipv4_mapped)]
    if address in _NAT64:
        return [("a NAT64 address embedding", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))]
    if address.sixtofour is not None:
        return [("a 6to4 address embedding", address.sixtofour)]
    if address.teredo is not None:
        server, client = address.teredo
        return [("a Teredo address embedding", client), ("a Teredo address embedding", server)]
    return []


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be fetched from, or ``None`` for a public address.

    An IPv6 address that carries an IPv4 address (mapped, NAT64, 6to4, Teredo) is refused
    when the IPv4 address is; a mapped or NAT64 address is otherwise judged by it alone.

    >>> refusal_reason(ipaddress.ip_address("169.254.169.254"))
    'a link-local address'
    >>> refusal_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    'an IPv4-mapped IPv6 address of 127.0.0.1, a loopback address'
    >>> refusal_reason(ipaddress.ip_address("93.184.215.14")) is None
    True
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        for how, inner in embedded:
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{how} {inner}, {reason}"
        # The whole mapped and NAT64 ranges are "reserved" to ipaddress; their IPv4 decides.
        if embedded and (address.ipv4_mapped is not None or address in _NAT64):
            return None
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED_ADDRESS_SPACE:
        return "a shared address space (carrier-grade NAT) address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return "a site-local address"
        if address in _UNIQUE_LOCAL:
            return "a unique-local address"
        if address in _LOCAL_NAT64:
            return "a local-use NAT64 address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None
