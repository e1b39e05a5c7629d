"""vxlan: one VTEP device; per peer a neighbour, an FDB entry and a route.

Device ``meshd.<vni>``: kind vxlan, VNI (default 1), UDP port (default 8472), nolearning,
local = this node's underlay IP, link = underlay, MTU = underlay MTU - 50, MAC = this node's VTEP
MAC (derived from its node id, so stable with no store; set at creation), address
``<this node's subnet network address>/32``, up.
Per peer, in this order (flannel's; the route last, or the kernel ARPs for the gateway):
  1. neighbour  ``<peer.subnet network address> lladdr <peer.vtep_mac> nud permanent``
  2. FDB        ``<peer.vtep_mac> dst <peer.public_ip> self permanent``
  3. route      ``<peer.subnet> via <peer.subnet network address> dev meshd.<vni> onlink``
Removed in the reverse order. Neighbours and FDB entries are meshd's because the device is;
routes carry proto 109. Deleting the underlay device makes the kernel delete the VTEP: the
reconciler recreates it.
Refuses: a peer announcing no VTEP MAC, an all-zero, broadcast or multicast one
(``prefix.mac_problem``), or the MAC of a peer already programmed (``refused``).
MTU overhead: 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14). Kernel module: ``vxlan``.
Firewall: UDP to the configured port.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.dataplane import prefix
from meshd.dataplane.backends.base import Backend, Encapsulation, PeerEntries, Refusal, Site
from meshd.dataplane.objects import FLAG_REFUSED, DeviceSpec, Fdb, Neigh, Route
from meshd.gossip.record import NodeRecord, vtep_mac_for


def device_name(vni: int) -> str:
    return f"meshd.{vni}"


class Vxlan(Backend):
    name = "vxlan"
    overhead = 50
    kernel_module = "vxlan"
    peer_objects = ("neigh", "fdb", "route")

    def device(self, site: Site) -> DeviceSpec:
        return DeviceSpec(
            name=device_name(site.vni),
            kind="vxlan",
            mtu=site.underlay.mtu - self.overhead,
            mac=site.local.vtep_mac or vtep_mac_for(site.local.node_id),
            addresses=(f"{prefix.network_address(site.local.subnet)}/32",),
            params=(
                ("vxlan_id", site.vni),
                ("vxlan_local", site.underlay.ip),
                ("vxlan_link", site.underlay.ifindex),
                ("vxlan_port", site.port),
                ("vxlan_learning", 0),
            ),
        )

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        assert peer.vtep_mac is not None  # refuse() let only peers with a MAC through
        gw = prefix.network_address(peer.subnet)
        dev = device.name if device is not None else device_name(site.vni)
        return PeerEntries(
            Route(peer.subnet, gw, dev, onlink=True),
            Neigh(gw, peer.vtep_mac),
            Fdb(peer.vtep_mac, peer.public_ip),
        )

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        out: dict[str, Refusal] = {}
        seen: dict[str, str] = {}  # MAC -> the peer that has it
        for p in peers:
            mac = p.vtep_mac or ""
            problem = prefix.mac_problem(mac)
            if problem is not None:
                out[p.name] = Refusal(FLAG_REFUSED, problem)
            elif mac in seen:
                out[p.name] = Refusal(FLAG_REFUSED, f"VTEP MAC {mac} is also {seen[mac]}'s")
            else:
                seen[mac] = p.name
        return out

    def encapsulation(self, port: int) -> Encapsulation:
        return Encapsulation("udp", port)

    def vtep_mac(self, node_id: bytes) -> str:
        return vtep_mac_for(node_id)


BACKEND = Vxlan()
