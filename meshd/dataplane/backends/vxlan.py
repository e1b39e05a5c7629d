"""vxlan: one VTEP device carrying both overlay families; per peer subnet a neighbour and a
route, per peer one FDB entry.

Device ``meshd.<vni>``: kind vxlan, VNI (default 1), UDP port (default 8472), nolearning,
local = this node's underlay IP (``vxlan_local``, or ``vxlan_local6`` on an IPv6 underlay: the
device sends over the family gossip uses), link = underlay, MTU = underlay MTU - 50 (IPv6
underlay: - 70), MAC = this node's VTEP MAC (derived from its node id, so stable with no store;
set at creation), addresses ``<subnet network address>/32`` and ``<subnet6 network
address>/128`` (the subnets this node has), up.
Per peer, in this order (flannel's; the route last, or the kernel ARPs / solicits for the
gateway):
  1. neighbours  ``<peer subnet network address> lladdr <peer.vtep_mac> nud permanent``, one per
     subnet (IPv6: ``fd00:2:: lladdr ...``)
  2. FDB         ``<peer.vtep_mac> dst <peer's underlay address of the device's family> self
     permanent`` (an IPv6 dst on an IPv6 underlay)
  3. routes      ``<peer subnet> via <its network address> dev meshd.<vni> onlink``, one per subnet
Removed in the reverse order. Neighbours and FDB entries are meshd's because the device is;
routes carry proto 109. Deleting the underlay device makes the kernel delete the VTEP: the
reconciler recreates it.
Refuses: a peer announcing no VTEP MAC, an all-zero, broadcast or multicast one
(``prefix.mac_problem``), the MAC of a peer already programmed, or no underlay address of the
device's family (``refused``).
MTU overhead: 50 (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14); 70 over IPv6 (outer
header 40). Kernel module: ``vxlan``. Firewall: UDP to the configured port.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.dataplane import prefix
from meshd.dataplane.backends.base import (
    Backend,
    Encapsulation,
    PeerEntries,
    Refusal,
    Site,
    device_addresses,
    network_address,
    peer_subnets,
)
from meshd.dataplane.objects import FLAG_REFUSED, DeviceSpec, Fdb, Neigh, Route, canonical
from meshd.gossip.record import NodeRecord, vtep_mac_for


def device_name(vni: int) -> str:
    return f"meshd.{vni}"


class Vxlan(Backend):
    name = "vxlan"
    overhead = 50
    overhead6 = 70
    kernel_module = "vxlan"
    peer_objects = ("neigh", "fdb", "route")

    def device(self, site: Site) -> DeviceSpec:
        ul = site.underlay
        local = ("vxlan_local6", canonical(ul.ip)) if ul.version == 6 else ("vxlan_local", ul.ip)
        return DeviceSpec(
            name=device_name(site.vni),
            kind="vxlan",
            mtu=ul.mtu - self.overhead_for(ul.version),
            mac=site.local.vtep_mac or vtep_mac_for(site.local.node_id),
            addresses=device_addresses(site.local),
            params=(
                ("vxlan_id", site.vni),
                local,
                ("vxlan_link", ul.ifindex),
                ("vxlan_port", site.port),
                ("vxlan_learning", 0),
            ),
        )

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        mac = peer.vtep_mac
        dst = peer.underlay_of(site.underlay.version)
        assert mac is not None and dst is not None  # refuse() let only such peers through
        dev = device.name if device is not None else device_name(site.vni)
        fdb = Fdb(mac, canonical(dst) if ":" in dst else dst)
        subs = peer_subnets(peer)
        if len(subs) == 1:  # the common case, at thousands of peers: no lists
            sub = subs[0][1]
            gw = network_address(sub)
            return PeerEntries((Route(sub, gw, dev, onlink=True),), (Neigh(gw, mac),), fdb)
        routes: list[Route] = []
        neighs: list[Neigh] = []
        for _, sub in subs:
            gw = network_address(sub)
            neighs.append(Neigh(gw, mac))
            routes.append(Route(sub, gw, dev, onlink=True))
        return PeerEntries(tuple(routes), tuple(neighs), fdb)

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        out = self.underlay_refusals(peers, site)
        seen: dict[str, str] = {}  # MAC -> the peer that has it
        for p in peers:
            if p.name in out:
                continue
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
