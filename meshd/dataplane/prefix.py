"""IPv4 prefixes and addresses as integers, each distinct string parsed once.

The model checks every peer's subnet and address on every pass. ``ipaddress`` objects cost
~10 us each to build and compare, which at thousands of peers made the pure model the slowest
part of a pass over a converged kernel. The same strings come back pass after pass, so they are
parsed once (``lru_cache``) into plain ints; canonical dotted quads take a fast path through
``inet_pton`` and anything else goes through ``ipaddress``, so what is accepted is exactly what
``ipaddress.IPv4Network`` / ``IPv4Address`` accept.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

CACHE = 1 << 16  # distinct strings remembered: a mesh's subnets and addresses, many times over
ALL = 0xFFFFFFFF


def _quad(ip: str) -> int | None:
    """A canonical dotted quad (no leading zeros: inet_pton is as strict as ipaddress)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


@lru_cache(maxsize=CACHE)
def span(cidr: str, strict: bool = True) -> tuple[int, int] | None:
    """(first, last) address of an IPv4 prefix, or None when it is not one (with ``strict``,
    also when host bits are set), as ``ipaddress.IPv4Network(cidr, strict)`` decides."""
    ip, sep, plen = cidr.partition("/")
    first = _quad(ip) if sep and plen.isdigit() and len(plen) <= 2 else None
    if first is not None and int(plen) <= 32 and not (len(plen) == 2 and plen[0] == "0"):
        size = 1 << (32 - int(plen))
        if first & (size - 1):
            if strict:
                return None
            first &= ~(size - 1) & ALL
        return first, first + size - 1
    try:
        net = ipaddress.IPv4Network(cidr, strict=strict)
    except ValueError:
        return None
    return int(net.network_address), int(net.broadcast_address)


@lru_cache(maxsize=CACHE)
def address(ip: str) -> int | None:
    """An IPv4 address as an int, or None, as ``ipaddress.IPv4Address`` decides."""
    value = _quad(ip)
    if value is not None:
        return value
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:
        return None


@lru_cache(maxsize=CACHE)
def network_address(cidr: str) -> str:
    """``10.244.2.0/24`` -> ``10.244.2.0``; ValueError when ``cidr`` is no strict prefix."""
    s = span(cidr)
    if s is None:
        raise ValueError(f"not an IPv4 network: {cidr!r}")
    return socket.inet_ntoa(s[0].to_bytes(4, "big"))


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def within(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]
