"""IPv4 prefixes and addresses as integers, each distinct string parsed once; and the address
policy (special-purpose ranges, unicast public IPs and VTEP MACs, an overlap index).

IPv6 (dual-stack) has its own spans (``span6``: 128-bit ints) and ranges (``SPECIAL6``);
``family_span`` and ``underlay_problem`` take either family. A span is only ever compared with
spans of its own family: the two are separate address spaces.

The model checks every peer's subnet and address on every pass. ``ipaddress`` objects cost
~10 us each to build and compare, which at thousands of peers made the pure model the slowest
part of a pass over a converged kernel. The same strings come back pass after pass, so they are
parsed once (``lru_cache``) into plain ints; canonical dotted quads take a fast path through
``inet_pton`` and anything else goes through ``ipaddress``, so what is accepted is exactly what
``ipaddress.IPv4Network`` / ``IPv4Address`` accept.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterable
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


# --- address policy ------------------------------------------------------------------------------
# What a peer may announce, whatever the gossip layer let through: the data plane must be safe on
# its own (a record that passed every check upstream still never puts these into the kernel).

SPECIAL: tuple[tuple[str, tuple[int, int]], ...] = tuple(
    (name, s)
    for name, c in (
        ("this-network 0.0.0.0/8", "0.0.0.0/8"),
        ("loopback 127.0.0.0/8", "127.0.0.0/8"),
        ("link-local 169.254.0.0/16", "169.254.0.0/16"),  # cloud metadata services live here
        ("multicast 224.0.0.0/4", "224.0.0.0/4"),
        ("reserved 240.0.0.0/4", "240.0.0.0/4"),  # holds the limited broadcast 255.255.255.255
    )
    if (s := span(c)) is not None
)
"""IANA special-purpose IPv4 ranges no container subnet may touch (RFC 6890): any overlap counts,
so a /1 claim that merely contains one of them is refused too."""

NOT_UNICAST: tuple[tuple[str, tuple[int, int]], ...] = tuple(
    (name, s) for name, s in SPECIAL if not name.startswith("link-local")
)
"""Where a public (underlay) IP cannot be: it is a route gateway, an FDB destination and an
nftables allow-set element. Link-local addresses are unicast and may be a real underlay."""


def special_range(net: tuple[int, int]) -> str | None:
    """The special-purpose range ``net`` overlaps (its name), or None."""
    for name, s in SPECIAL:
        if overlaps(net, s):
            return name
    return None


@lru_cache(maxsize=CACHE)
def unicast_problem(ip: str) -> str | None:
    """Why ``ip`` cannot be a peer's public IP (one line), or None when it is a unicast IPv4
    address: not the unspecified address, not in 0/8, loopback, multicast, 240/4 or broadcast."""
    value = address(ip)
    if value is None:
        return f"{ip!r} is not an IPv4 address"
    if value == 0:
        return f"{ip} is the unspecified address"
    if value == ALL:
        return f"{ip} is the broadcast address"
    for name, (first, last) in NOT_UNICAST:
        if first <= value <= last:
            return f"{ip} is in {name}"
    return None


def mac_problem(mac: str | None) -> str | None:
    """Why ``mac`` cannot be a peer's VTEP MAC (one line), or None: it must be six octets,
    unicast (the first octet's low bit clear: that bit marks multicast, broadcast included) and
    not all zero."""
    if not mac:
        return "announces no VTEP MAC"
    try:
        raw = bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6 or len(mac) != 17:
        return f"VTEP MAC {mac!r} is not a MAC address"
    if raw == bytes(6):
        return f"VTEP MAC {mac} is all zero"
    if raw == b"\xff" * 6:
        return f"VTEP MAC {mac} is the broadcast address"
    if raw[0] & 1:
        return f"VTEP MAC {mac} is a multicast address"
    return None


@lru_cache(maxsize=CACHE)
def span6(cidr: str, strict: bool = True) -> tuple[int, int] | None:
    """(first, last) address of an IPv6 prefix as 128-bit ints, or None when it is not one, as
    ``ipaddress.IPv6Network(cidr, strict)`` decides."""
    try:
        net = ipaddress.IPv6Network(cidr, strict=strict)
    except ValueError:
        return None
    return int(net.network_address), int(net.broadcast_address)


def version(text: str) -> int:
    """4 or 6: the family an address or prefix is written in (IPv6 has a colon)."""
    return 6 if ":" in text else 4


def family_span(cidr: str, strict: bool = True) -> tuple[int, tuple[int, int]] | None:
    """(IP version, span) of an IPv4 or IPv6 prefix, or None when it is neither."""
    if ":" in cidr:
        s = span6(cidr, strict)
        return None if s is None else (6, s)
    s = span(cidr, strict)
    return None if s is None else (4, s)


SPECIAL6: tuple[tuple[str, tuple[int, int]], ...] = tuple(
    (name, s)
    for name, c in (
        ("unspecified ::/128", "::/128"),
        ("loopback ::1/128", "::1/128"),
        ("IPv4-mapped ::ffff:0:0/96", "::ffff:0:0/96"),
        ("link-local fe80::/10", "fe80::/10"),
        ("multicast ff00::/8", "ff00::/8"),
    )
    if (s := span6(c)) is not None
)
"""IPv6 ranges no container subnet may touch: any overlap counts, so ::/0 (and ::/1, which holds
::1) is refused like 128.0.0.0/1 is for IPv4."""


def special_range_of(ver: int, net: tuple[int, int]) -> str | None:
    """The special-purpose range of family ``ver`` that ``net`` overlaps (its name), or None."""
    for name, s in SPECIAL if ver == 4 else SPECIAL6:
        if overlaps(net, s):
            return name
    return None


@lru_cache(maxsize=CACHE)
def unicast6_problem(ip: str) -> str | None:
    """Why ``ip`` cannot be a peer's IPv6 underlay address (one line), or None: not the
    unspecified address, loopback, multicast, link-local (it needs a zone) or IPv4-mapped."""
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return f"{ip!r} is not an IPv6 address"
    if addr.scope_id is not None:
        return f"{ip} has a zone: a peer's address must be global or unique-local"
    for name, (first, last) in SPECIAL6:
        if first <= int(addr) <= last:
            return f"{ip} is in {name}"
    return None


def underlay_problem(ip: str) -> str | None:
    """Why ``ip`` cannot be a peer's underlay address, IPv4 (``unicast_problem``) or IPv6
    (``unicast6_problem``), or None."""
    return unicast6_problem(ip) if ":" in ip else unicast_problem(ip)


class Spans:
    """A fixed set of prefixes (possibly nested or overlapping) that answers "does this span
    overlap any of them, and which" in O(log n): a host may carry thousands of routes."""

    def __init__(self, items: Iterable[tuple[tuple[int, int], str]]) -> None:
        ordered = sorted(items)
        self._starts = [s[0] for s, _ in ordered]
        self._items = ordered
        # _reach[i]: the index among items[:i+1] whose span ends last.
        self._reach: list[int] = []
        best = -1
        for i, (s, _) in enumerate(ordered):
            if best < 0 or s[1] > ordered[best][0][1]:
                best = i
            self._reach.append(best)

    def __len__(self) -> int:
        return len(self._items)

    def overlapping(self, net: tuple[int, int]) -> str | None:
        """The label of one item overlapping ``net``, or None."""
        i = bisect.bisect_right(self._starts, net[1]) - 1
        if i < 0:
            return None
        j = self._reach[i]
        s, label = self._items[j]
        return label if s[1] >= net[0] else None
