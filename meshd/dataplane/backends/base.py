"""What a backend is: the interface every module of this package implements.

A backend only *describes*; it never calls netlink. For one node it says which device the mesh
needs (``device``), which kernel objects each programmed peer gets (``entries``) and in which order
they are added (``peer_objects``; removed in the reverse order), which peers it cannot serve and
why (``refuse``), how many bytes its encapsulation costs (``overhead``), what its packets look like
on the underlay (``encapsulation``, for the firewall), and which kernel module it needs.

Both families: a node has up to two container subnets (an IPv4 and an IPv6 one, ``rec.subnets``)
and an underlay of one family or both. A programmed peer gets a route per subnet (and, on vxlan, a
neighbour per subnet); the encapsulating backends carry both overlay families over the one
underlay family of their device (``Underlay.version``, the family gossip uses), and their MTU
overhead depends on it (``overhead_for``). What cannot be routed from here (an IPv6 subnet behind
an IPv4-only next hop, say) is left out with one line (``PeerEntries.missing``): the peer keeps
its other route and is flagged ``partial``.

``model.py`` turns that into a desired state and a plan; ``apply.py`` executes any plan, one step
kind at a time in the plan's order, whatever the backend. So a new backend whose per-peer objects
are routes, neighbours, FDB entries or WireGuard peers is one module here plus one line in
``__init__.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from meshd.dataplane import prefix
from meshd.dataplane.objects import (
    FLAG_REFUSED,
    DeviceSpec,
    Fdb,
    Neigh,
    Route,
    Underlay,
    WgPeer,
    canonical,
)
from meshd.gossip.record import NodeRecord

PEER_OBJECTS = ("neigh", "fdb", "wgpeer", "route")
"""The per-peer object kinds the model, the diff and ``apply.py`` know."""

# Plan step kinds (``model.Plan`` fields) per object kind: (when added, when removed).
_STEPS = {
    "route": (("route_add", "route_replace"), ("route_del",)),
    "neigh": (("neigh_set",), ("neigh_del",)),
    "fdb": (("fdb_set",), ("fdb_del",)),
    "wgpeer": (("wgpeer_set",), ("wgpeer_del",)),
}


@dataclass(frozen=True, slots=True)
class Site:
    """The node-local facts a backend decides with."""

    local: NodeRecord
    underlay: Underlay
    onlink: tuple[tuple[int, int, int], ...] = ()  # underlay prefixes: (version, first, last)
    vni: int = 1  # vxlan network identifier
    port: int = 8472  # vxlan's UDP port
    wg_port: int = 51820  # wireguard's UDP port (every member listens on the same one)


class PeerEntries(NamedTuple):
    """The kernel objects one programmed peer gets: a route per subnet (at least one), the
    others per backend. ``missing``: why one of its subnets gets no route (one line), if so."""

    routes: tuple[Route, ...]
    neighs: tuple[Neigh, ...] = ()
    fdb: Fdb | None = None
    wgpeer: WgPeer | None = None
    missing: str | None = None


class Refusal(NamedTuple):
    flag: str  # objects.FLAG_*
    reason: str  # one line, for status and the log


class Encapsulation(NamedTuple):
    """What the backend's packets look like on the underlay, for the firewall."""

    protocol: str  # "udp" (number = destination port) or "ip" (number = IP protocol)
    number: int


class Backend:
    """Base of every backend: the defaults are host-gw's (no device, nothing to refuse)."""

    name: ClassVar[str]
    overhead: ClassVar[int] = 0
    """Bytes the encapsulation adds to each packet on an IPv4 underlay: the mesh MTU is the
    underlay's minus this."""
    overhead6: ClassVar[int] = 0
    """The same on an IPv6 underlay (its header is 20 bytes longer)."""
    kernel_module: ClassVar[str | None] = None
    """The module the device needs; a kernel without it answers EOPNOTSUPP on create."""
    peer_objects: ClassVar[tuple[str, ...]] = ("route",)
    """Per-peer objects in the order they are added (removals run in the reverse order)."""

    def overhead_for(self, version: int) -> int:
        """The encapsulation's bytes on an underlay of ``version`` (4 or 6)."""
        return self.overhead6 if version == 6 else self.overhead

    def device(self, site: Site) -> DeviceSpec | None:
        """The mesh device this node needs, with everything fixed at creation."""
        return None

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        """The kernel objects for one programmed ``peer``."""
        raise NotImplementedError

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        """Peers (by name) this backend cannot serve from this node. ``peers`` passed every
        backend-independent check, in the model's order; rules may depend on earlier peers
        (vxlan refuses a second peer with the same MAC)."""
        return {}

    def underlay_refusals(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        """An encapsulating backend's rule: its device sends over one underlay family (this
        node's gossip family), so a peer with no underlay address of that family is refused."""
        fam = site.underlay.version
        out: dict[str, Refusal] = {}
        for p in peers:
            if p.underlay_of(fam) is None:
                out[p.name] = Refusal(
                    FLAG_REFUSED,
                    f"announces no IPv{fam} underlay address; this node's {self.name} device "
                    f"sends over IPv{fam}",
                )
        return out

    def encapsulation(self, port: int) -> Encapsulation | None:
        """The underlay packets the firewall filters; ``port`` is the configured UDP port."""
        return None

    def vtep_mac(self, node_id: bytes) -> str | None:
        """The MAC this node announces in its record, if the backend uses one."""
        return None

    def steps(self) -> tuple[str, ...]:
        """Plan step kinds in the order ``apply.py`` runs them: removals first (a freed subnet
        may be claimed again in the same plan), in the reverse of ``peer_objects``, then
        additions in its order."""
        dels = tuple(s for kind in reversed(self.peer_objects) for s in _STEPS[kind][1])
        adds = tuple(s for kind in self.peer_objects for s in _STEPS[kind][0])
        return dels + adds

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


def device_addresses(local: NodeRecord, families: tuple[int, ...] = (4, 6)) -> tuple[str, ...]:
    """The mesh device's addresses: each of this node's subnets' network address as a host
    prefix (``10.244.1.0/32``, ``fd00:1::/128``), for the families the device carries."""
    out: list[str] = []
    for sub in local.subnets:
        fam = 6 if ":" in sub else 4
        if fam in families:
            out.append(f"{network_address(sub)}/{32 if fam == 4 else 128}")
    return tuple(out)


def network_address(cidr: str) -> str:
    """A subnet's network address, either family (the gateway a peer's route goes via)."""
    if ":" not in cidr:
        return prefix.network_address(cidr)
    return canonical(cidr).partition("/")[0]


def peer_subnets(peer: NodeRecord) -> tuple[tuple[int, str], ...]:
    """(version, canonical subnet) of each of the peer's subnets, IPv4 first."""
    if peer.subnet6 is None and ":" not in peer.subnet:
        return ((4, peer.subnet),)  # IPv4 only: the common case, at thousands of peers
    return tuple((6 if ":" in s else 4, canonical(s)) for s in peer.subnets)


def endpoint(ip: str, port: int) -> str:
    """``ip:port``, an IPv6 address in brackets (as ``wg`` and the UAPI print it)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
