"""Addresses as an SSRF guard must read them: every textual form an OS accepts, the
embedded IPv4 of IPv6 transition forms, the IANA special-purpose registries, cloud metadata
endpoints. Pure (the standard library only), so the Keel server and the edge policy use it
without the SDK's HTTP stack; ``keel_client.http``'s SSRF-safe transport is built on it.
"""

from __future__ import annotations

import ipaddress
import socket
import unicodedata
import urllib.parse
from collections.abc import Callable, Sequence

__all__ = [
    "BLOCKED_HOSTNAMES",
    "CLOUD_METADATA_ADDRESSES",
    "IPAddress",
    "Resolver",
    "blocked_reason",
    "default_resolver",
    "embedded_ipv4",
    "normalize_host",
    "parse_ip_literal",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port)`` returns the host's addresses as strings.
Resolver = Callable[[str, int], Sequence[str]]

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

#: Cloud instance-metadata endpoints: the classic SSRF target, so they get their own reason and
#: are refused even inside an allowed network unless allowed by their exact address.
CLOUD_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.169.253",  # AWS VPC DNS
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server (a public address!)
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)
#: Host names that are loopback or metadata by definition (RFC 6761, cloud docs).
BLOCKED_HOSTNAMES = (
    "localhost",
    "*.localhost",
    "localhost.localdomain",
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
)

# IANA IPv4 Special-Purpose Address Registry, plus multicast and the broadcast address.
_IPV4_BLOCKED: tuple[tuple[_V4, str], ...] = tuple(
    (ipaddress.IPv4Network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    )
)
# IANA IPv6 Special-Purpose Address Registry. Anything outside 2000::/3 (global unicast) is
# refused as well, after the embedded-IPv4 forms below have been decoded.
_IPV6_BLOCKED: tuple[tuple[_V6, str], ...] = tuple(
    (ipaddress.IPv6Network(network), reason)
    for network, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "private (local-use NAT64)"),
        ("100::/64", "reserved (discard-only)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("2001::/23", "reserved (IETF protocol assignments, Teredo)"),
        ("3fff::/20", "reserved (documentation)"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
# Unicode dots that IDNA (UTS #46) maps to ".", so "127。0。0。1" is 127.0.0.1 to a resolver.
_DOTS = ("\u3002", "\uff0e", "\uff61")


def normalize_host(host: str) -> str:
    """Lower-case, percent-decoded, NFKC-folded host without brackets or trailing dots."""
    text = urllib.parse.unquote(host)
    text = unicodedata.normalize("NFKC", text)
    for dot in _DOTS:
        text = text.replace(dot, ".")
    text = text.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text.rstrip(".") if ":" not in text else text


def _parse_ipv4_loose(text: str) -> ipaddress.IPv4Address | None:
    """Parse ``text`` exactly as BSD/glibc ``inet_aton`` does, or return ``None``.

    One to four parts; each decimal, octal (leading ``0``) or hex (``0x``); the last part
    fills the remaining bytes. So ``127.1``, ``0x7f.1``, ``017700000001`` and ``2130706433``
    are all 127.0.0.1, as they are to ``getaddrinfo``.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if not part or not part.isascii():
            return None
        if part.startswith(("0x", "0X")):
            digits, base = part[2:] or "0", 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        try:
            values.append(int(digits, base))
        except ValueError:
            return None
        if digits.startswith(("+", "-", "_")) or "_" in digits:
            return None
    *head, last = values
    if any(value > 0xFF for value in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for value in head:
        number = (number << 8) | value
    number = (number << (8 * (4 - len(head)))) | last
    return ipaddress.IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any textual form, or ``None`` for a host name.

    Handles brackets, IPv6 zone IDs (``fe80::1%eth0``, ``%25eth0``), trailing dots,
    percent-encoding, full-width digits and dots, and every ``inet_aton`` IPv4 form.

    Example::

        >>> parse_ip_literal("0x7f.1")
        IPv4Address('127.0.0.1')
    """
    text = normalize_host(host)
    if ":" in text:
        text = text.split("%", 1)[0]
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _parse_ipv4_loose(text)


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and how: mapped, compatible, NAT64, 6to4..."""
    number = int(address)
    if address in _IPV4_MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(number & 0xFFFFFFFF)
    if address in _IPV4_TRANSLATED:
        return "IPv4-translated", ipaddress.IPv4Address(number & 0xFFFFFFFF)
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(number & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return "6to4", ipaddress.IPv4Address((number >> 80) & 0xFFFFFFFF)
    if address in _TEREDO:
        # RFC 4380: the client's address is stored inverted in the last 32 bits.
        return "Teredo", ipaddress.IPv4Address(~number & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and number > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(number & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why the default rules refuse ``address`` (``None``: a public address, allowed).

    Example::

        >>> blocked_reason(ipaddress.ip_address("::ffff:169.254.169.254"))
        'IPv4-mapped 169.254.169.254: cloud metadata'
    """
    if address in CLOUD_METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(address, ipaddress.IPv4Address):
        for network, reason in _IPV4_BLOCKED:
            if address in network:
                return reason
        return None
    if address.ipv4_mapped is None and address in _IPV4_COMPATIBLE and int(address) <= 1:
        return "unspecified" if int(address) == 0 else "loopback"
    embedded = embedded_ipv4(address)
    if embedded is not None:
        kind, inner = embedded
        inner_reason = blocked_reason(inner)
        if inner_reason is not None:
            return f"{kind} {inner}: {inner_reason}"
        if kind in ("IPv4-mapped", "IPv4-translated", "IPv4-compatible", "NAT64"):
            # The IPv4 address itself, spelt in IPv6 (NAT64 translates to it): judged as such.
            return None
    for network6, reason in _IPV6_BLOCKED:
        if address in network6:
            return reason
    if address not in _GLOBAL_UNICAST:
        return "reserved (not global unicast)"
    return None


def default_resolver(host: str, port: int) -> list[str]:
    """The system resolver (``getaddrinfo``), distinct addresses in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
