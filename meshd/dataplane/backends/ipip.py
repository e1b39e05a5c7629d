"""ipip: one NBMA tunnel device, one route per peer subnet.

On an IPv4 underlay, device ``meshd.ipip``: kind ipip, local = this node's underlay IP, link =
underlay, ttl 64, no remote (NBMA: the outer destination is each route's gateway), MTU = underlay
MTU - 20, address ``<this node's subnet network address>/32``, up. It carries IPv4 only: a peer's
IPv6 subnet gets no route (the peer is flagged ``partial``).
On an IPv6 underlay, device ``meshd.ip6tnl``: kind ip6tnl, ``external`` (collect_md: the outer
destination comes with each packet, from its route), mode any (IPv4 and IPv6 inside), local =
this node's IPv6 underlay address, link = underlay, no remote, MTU = underlay MTU - 40, the
subnets' network addresses as /32 and /128, up. ip6tnl has no ipip-style NBMA (the kernel
refuses an onlink IPv6 next hop on it), hence the lightweight-tunnel routes below; at most one
external ip6tnl per network namespace. Its ttl and encapsulation-limit settings do not apply
(the kernel takes the hop limit from the route and adds no encapsulation-limit option to a
collect_md device's packets: 40 bytes, not 48), so none are set.
Per peer, for each of its subnets the device carries:
  1. route  IPv4 underlay: ``<peer subnet> via <peer's underlay address> dev meshd.ipip onlink
            proto 109``; IPv6 underlay: ``<peer subnet> encap ip6 dst <peer's IPv6 underlay
            address> hoplimit 64 dev meshd.ip6tnl proto 109`` (IPv4 and IPv6 subnets alike)
Refuses: a peer with no underlay address of the device's family.
MTU overhead: 20 on IPv4, 40 on IPv6 (the outer header). Kernel module: ``ipip`` or
``ip6_tunnel``; a kernel without it refuses the device with EOPNOTSUPP ("Unknown device type"),
which netlink.py turns into ``MissingKernelFeature`` and the reconciler reports in one line
instead of retrying forever.
Firewall: IP protocol 4 (IPv4 inside) and 41 (IPv6 inside).
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.dataplane.backends.base import (
    Backend,
    Encapsulation,
    PeerEntries,
    Refusal,
    Site,
    device_addresses,
    peer_subnets,
)
from meshd.dataplane.objects import DeviceSpec, Route, canonical
from meshd.gossip.record import NodeRecord

DEVICE = "meshd.ipip"
DEVICE6 = "meshd.ip6tnl"
TTL = 64  # a fixed TTL makes the kernel set DF and do PMTU discovery on the tunnel
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41


def device_name(site: Site) -> str:
    return DEVICE6 if site.underlay.version == 6 else DEVICE


class Ipip(Backend):
    name = "ipip"
    overhead = 20
    overhead6 = 40
    kernel_module = "ipip"

    def device(self, site: Site) -> DeviceSpec:
        ul = site.underlay
        if ul.version == 6:
            return DeviceSpec(
                name=DEVICE6,
                kind="ip6tnl",
                mtu=ul.mtu - self.overhead6,
                mac=None,
                addresses=device_addresses(site.local),
                params=(
                    ("ip6tnl_collect_metadata", True),  # external: outer dst from each route
                    ("ip6tnl_local", canonical(ul.ip)),
                    ("ip6tnl_link", ul.ifindex),  # received packets must be addressed to it
                    ("ip6tnl_proto", 0),  # any: IPv4 and IPv6 inside
                ),
            )
        return DeviceSpec(
            name=DEVICE,
            kind="ipip",
            mtu=ul.mtu - self.overhead,
            mac=None,
            addresses=device_addresses(site.local, (4,)),
            params=(
                ("ipip_local", ul.ip),
                ("ipip_link", ul.ifindex),
                ("ipip_ttl", TTL),
            ),
        )

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        fam = site.underlay.version
        outer = canonical(peer.underlay_of(fam) or peer.public_ip)  # refuse() made sure
        dev = device.name if device is not None else device_name(site)
        routes: list[Route] = []
        missing = None
        for v, sub in peer_subnets(peer):
            if fam == 6:
                routes.append(Route(sub, "", dev, encap6=outer))
            elif v == 6:
                missing = f"no route to {sub}: ipip over an IPv4 underlay carries IPv4 only"
            else:
                routes.append(Route(sub, outer, dev, onlink=True))
        return PeerEntries(tuple(routes), missing=missing)

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        return self.underlay_refusals(peers, site)

    def encapsulation(self, port: int) -> Encapsulation:
        return Encapsulation("ip", IPPROTO_IPIP)


BACKEND = Ipip()
