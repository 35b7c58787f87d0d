"""Who is calling the heartbeat: client IP resolution, allowlists and token checks."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from django_dataflows.exceptions import MalformedForwardedFor

if TYPE_CHECKING:
    from django.http import HttpRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: str) -> IPAddress:
    """Parse an address, unwrapping IPv4-mapped IPv6 (``::ffff:10.0.0.1``) to IPv4."""
    address = ipaddress.ip_address(value.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(value: str) -> IPNetwork:
    """An address or CIDR network (``10.0.0.0/8``, ``2001:db8::/32``); host bits must be zero."""
    return ipaddress.ip_network(value.strip(), strict=True)


@lru_cache(maxsize=32)
def parse_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(parse_network(entry) for entry in entries)


def invalid_network_entries(entries: object) -> list[str]:
    """The entries of a settings list that are not addresses or networks (for the checks)."""
    if not isinstance(entries, list | tuple):
        return [repr(entries)]
    bad = []
    for entry in entries:
        try:
            parse_network(entry)
        except (TypeError, ValueError, AttributeError):
            bad.append(repr(entry))
    return bad


def ip_in(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(request: HttpRequest, trusted_proxies: tuple[str, ...]) -> IPAddress:
    """The address of the client, believing ``X-Forwarded-For`` only from trusted proxies.

    The chain is walked from the right (the entry our own proxy appended) past every
    trusted proxy; the first untrusted address is the client. A peer that is not a
    trusted proxy is the client, whatever headers it sends.
    """
    peer = parse_ip(request.META.get("REMOTE_ADDR", ""))
    proxies = parse_networks(trusted_proxies)
    if not proxies or not ip_in(peer, proxies):
        return peer
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    address = peer
    for hop in reversed(hops):
        try:
            address = parse_ip(hop)
        except ValueError:
            raise MalformedForwardedFor(hop) from None
        if not ip_in(address, proxies):
            return address
    return address


def presented_token(request: HttpRequest) -> str | None:
    """The token sent as ``Authorization: Bearer …`` or ``X-Heartbeat-Token``."""
    authorization = str(request.META.get("HTTP_AUTHORIZATION", ""))
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    header = str(request.META.get("HTTP_X_HEARTBEAT_TOKEN", "")).strip()
    return header or None


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty expected token matches nothing."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
