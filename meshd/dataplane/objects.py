"""The kernel objects the data plane reasons about, as plain comparable values.

Pure data shared by the model (``model.py``), the backends (``backends/``) and the applying side
(``apply.py``, ``reconciler.py``): no clock, no sockets. Each kernel object is keyed the way the
kernel keys it (a route by ``dst``, a neighbour by ``dst``, an FDB entry by MAC and ``dst``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Underlay:
    """The device peers are reached through, and this node's address on it."""

    ifname: str
    ifindex: int
    ip: str
    prefixlen: int
    mtu: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.ip}/{self.prefixlen}", strict=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ifname": self.ifname,
            "ifindex": self.ifindex,
            "ip": self.ip,
            "prefixlen": self.prefixlen,
            "mtu": self.mtu,
        }


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """A main-table IPv4 route with meshd's protocol; keyed by ``dst``."""

    dst: str
    gateway: str  # "" for none (a route straight into a layer-3 device: wireguard)
    dev: str
    onlink: bool = False

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.dst}{via} dev {self.dev}" + (" onlink" if self.onlink else "")


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
    addresses: tuple[str, ...]  # IPv4 CIDRs
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
