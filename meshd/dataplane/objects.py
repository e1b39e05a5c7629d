"""The kernel objects the data plane reasons about, as plain comparable values.

Pure data shared by the model (``model.py``), the backends (``backends/``) and the applying side
(``apply.py``, ``reconciler.py``): no clock, no sockets. Each kernel object is keyed the way the
kernel keys it (a route by ``dst``, a neighbour by ``dst``, an FDB entry by MAC and ``dst``).
Addresses are strings of either family (IPv6 in ``ipaddress``'s compressed form, which is what
``inet_ntop`` prints too); an object's family is its ``dst``'s (``version``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1 << 16)
def version(addr: str) -> int:
    """4 or 6: the family of an address or a prefix (by its spelling; 0 when it is neither)."""
    if ":" in addr:
        return 6
    return 4 if "." in addr else 0


@lru_cache(maxsize=1 << 16)
def canonical(cidr: str) -> str:
    """An address or prefix in ``ipaddress``'s form (IPv6 compressed, lower case): the form the
    kernel's answers decode to, so desired and observed keys compare equal."""
    if ":" not in cidr:
        return cidr
    if "/" in cidr:
        return str(ipaddress.IPv6Network(cidr, strict=False))
    return str(ipaddress.IPv6Address(cidr))


@lru_cache(maxsize=1 << 16)
def span_any(cidr: str, strict: bool = True) -> tuple[int, int, int] | None:
    """(version, first, last) of an IPv4 or IPv6 prefix, or None when it is not one: spans of
    the two families never compare as overlapping once the version is checked first."""
    try:
        net = ipaddress.ip_network(cidr, strict=strict)
    except ValueError:
        return None
    return net.version, int(net.network_address), int(net.broadcast_address)


@lru_cache(maxsize=1 << 16)
def address_any(ip: str) -> tuple[int, int] | None:
    """(version, value) of an IPv4 or IPv6 address, or None."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return a.version, int(a)


def spans_overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return a[0] == b[0] and a[1] <= b[2] and b[1] <= a[2]


@dataclass(frozen=True, slots=True)
class Underlay:
    """The device peers are reached through, and this node's address on it: ``ip`` is the one
    gossip uses (IPv4 or IPv6); ``ip6`` a second, IPv6 one on a dual-stack underlay."""

    ifname: str
    ifindex: int
    ip: str
    prefixlen: int
    mtu: int
    ip6: str | None = None
    prefixlen6: int = 0

    @property
    def version(self) -> int:
        """The family of ``ip``: the one the mesh device's encapsulation uses."""
        return version(self.ip)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.ip}/{self.prefixlen}", strict=False)

    def address_of(self, family: int) -> str | None:
        """This node's underlay address of ``family`` (4 or 6), if it has one."""
        if version(self.ip) == family:
            return self.ip
        return self.ip6 if family == 6 else None

    def cidrs(self) -> tuple[str, ...]:
        """This node's underlay addresses with their prefix lengths."""
        out = (f"{self.ip}/{self.prefixlen}",)
        return out + ((f"{self.ip6}/{self.prefixlen6}",) if self.ip6 else ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ifname": self.ifname,
            "ifindex": self.ifindex,
            "ip": self.ip,
            "prefixlen": self.prefixlen,
            "mtu": self.mtu,
            **({"ip6": self.ip6, "prefixlen6": self.prefixlen6} if self.ip6 else {}),
        }


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """A main-table route with meshd's protocol; keyed by ``dst``. Its family is ``dst``'s; an
    IPv4 route may have an IPv6 gateway (RFC 5549, ``via inet6``), never the other way round.

    ``encap6``: the outer IPv6 destination of a lightweight-tunnel encapsulation (``encap ip6
    dst <encap6>``, into an ``external`` ip6tnl device: ipip over an IPv6 underlay), "" for
    none. Such a route has no gateway; the destination is part of its identity, so a route
    whose encapsulation points elsewhere is replaced."""

    dst: str
    gateway: str  # "" for none (a route straight into a layer-3 device: wireguard)
    dev: str
    onlink: bool = False
    encap6: str = ""

    def __str__(self) -> str:
        inet6 = "inet6 " if version(self.gateway) != version(self.dst) else ""
        via = f" via {inet6}{self.gateway}" if self.gateway else ""
        encap = f" encap ip6 dst {self.encap6}" if self.encap6 else ""
        return f"{self.dst}{via}{encap} dev {self.dev}" + (" onlink" if self.onlink else "")


@dataclass(frozen=True, slots=True, order=True)
class Neigh:
    """A permanent neighbour on the mesh device; keyed by ``dst``."""

    dst: str
    lladdr: str

    def __str__(self) -> str:
        return f"{self.dst} lladdr {self.lladdr} permanent"


@dataclass(frozen=True, slots=True, order=True)
class Fdb:
    """A permanent FDB entry on the mesh device (``bridge fdb ... self permanent``)."""

    lladdr: str
    dst: str

    def __str__(self) -> str:
        return f"{self.lladdr} dst {self.dst} self permanent"


@dataclass(frozen=True, slots=True, order=True)
class WgPeer:
    """A WireGuard peer on the mesh device; keyed by ``public_key`` (base64, as ``wg`` prints
    it). ``allowed_ips``: sorted networks, as the device reports them."""

    public_key: str
    endpoint: str  # ip:port
    allowed_ips: tuple[str, ...]

    def __str__(self) -> str:
        ips = ",".join(self.allowed_ips)
        return f"peer {self.public_key} endpoint {self.endpoint} allowed-ips {ips}"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device meshd ensures. ``owned``: meshd may recreate it and drop foreign addresses
    (the mesh device); otherwise it only creates it if missing and adds its address (the bridge)."""

    name: str
    kind: str
    mtu: int | None
    mac: str | None
    addresses: tuple[str, ...]
    params: tuple[tuple[str, Any], ...] = ()  # pyroute2 linkinfo names, fixed at creation
    owned: bool = True
    retired: tuple[str, ...] = ()  # addresses meshd put there and gave up (a moved subnet's)
    settable: bool = False  # ``params`` can change in place (wireguard's port and key)


@dataclass(frozen=True, slots=True)
class ObservedDevice:
    name: str
    index: int
    kind: str
    mtu: int
    mac: str | None
    up: bool
    addresses: tuple[str, ...]  # CIDRs of both families (IPv6 link-local ones left out)
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceOp:
    """One device step. ``action``: create, delete, set-mtu, set-mac, set-up, addr-add, addr-del,
    set-params (a ``settable`` device's: wireguard's listen port and key)."""

    action: str
    device: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.device}" + (f" {self.arg}" if self.arg else "")


# Values of peer_flags(): why a peer has no entries. status() carries the long reason next to each.
FLAG_CONFLICTED = "conflicted"
FLAG_INCOMPATIBLE = "incompatible"
FLAG_REFUSED = "refused"
FLAG_NOT_ON_LINK = "not-on-link"
FLAG_REAPED = "reaped"
FLAG_PARTIAL = "partial"  # programmed, but one of its two subnets cannot be routed from here
