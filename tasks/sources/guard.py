"""The address guard (against server-side request forgery): a URL is fetched only over http(s), from a host that
is not a cloud metadata endpoint and that resolves only to public addresses, unless its source allows private
networks. The fetcher checks every hop before it connects and the address it connected to once it has.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from tasks.sources.errors import GuardRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Instance-metadata endpoints hand out cloud credentials; no source needs them, so they are refused
# even for sources that allow private networks.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(address) for address in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254",
))
METADATA_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})
METADATA_REFUSAL = "a cloud metadata address"
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address really reaches (IPv4-mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, allow_private_network: bool) -> str | None:
    """Why the crawler must not connect to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        address = _embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return METADATA_REFUSAL
    if allow_private_network:
        return None
    for reason, matches in (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a private address", address.is_private),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
    ):
        if matches:
            return reason
    return None if address.is_global else "not a public address"


def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal resolves to itself without DNS)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_url(source: str, url: httpx.URL, allow_private_network: bool) -> None:
    """Refuse (GuardRefusedError) a URL of source `source` that is not http(s), has no host, names a metadata
    host or resolves to an address the source may not reach."""
    if url.scheme not in ("http", "https"):
        raise GuardRefusedError(source, str(url), f"scheme {url.scheme!r} is not http(s)")
    host = url.host.lower().rstrip(".")
    if not host:
        raise GuardRefusedError(source, str(url), "the URL has no host")
    if host in METADATA_HOSTNAMES:
        raise GuardRefusedError(source, str(url), f"{host} is a cloud metadata host")
    for address in resolve_addresses(host, url.port or (443 if url.scheme == "https" else 80)):
        check_address(source, url, address, allow_private_network, f"{host} resolves to {address}")


def check_address(source: str, url: httpx.URL, address: IPAddress, allow_private_network: bool, what: str) -> None:
    """Refuse (GuardRefusedError) connecting to `address` for `url`; `what` says where the address came from."""
    reason = address_refusal(address, allow_private_network)
    if reason is not None:
        hint = "" if reason == METADATA_REFUSAL else "; set allow_private_network: true on the source to allow it"
        raise GuardRefusedError(source, str(url), f"refused: {what}, {reason}{hint}")
