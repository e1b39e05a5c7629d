"""ipip: one NBMA tunnel device, one route per peer subnet.

On an IPv4 underlay, device ``meshd.ipip``: kind ipip, local = this node's underlay IP, link =
underlay, ttl 64, no remote (NBMA: the outer destination is each route's gateway), MTU = underlay
MTU - 20, address ``<this node's subnet network address>/32``, up. It carries IPv4 only: a peer's
IPv6 subnet gets no route (the peer is flagged ``partial``).
On an IPv6 underlay, device ``meshd.ip6tnl``: kind ip6tnl, mode any (IPv4 and IPv6 inside),
local = this node's IPv6 underlay address, link = underlay, hop limit 64, ``encaplimit none``, no
remote, MTU =
underlay MTU - 40, the subnets' network addresses as /32 and /128, up.
Per peer, for each of its subnets the device carries:
  1. route  ``<peer subnet> via <peer's underlay address> dev <device> onlink proto 109``
     (an IPv4 subnet over ip6tnl: ``via inet6``)
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
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1  # no encapsulation-limit option: 40 bytes, not 48


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
                    ("ip6tnl_local", canonical(ul.ip)),
                    ("ip6tnl_link", ul.ifindex),
                    ("ip6tnl_ttl", TTL),
                    ("ip6tnl_flags", IP6_TNL_F_IGN_ENCAP_LIMIT),
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
        gw = canonical(peer.underlay_of(fam) or peer.public_ip)  # refuse() made sure
        dev = device.name if device is not None else device_name(site)
        routes: list[Route] = []
        missing = None
        for v, sub in peer_subnets(peer):
            if v == 6 and fam == 4:
                missing = f"no route to {sub}: ipip over an IPv4 underlay carries IPv4 only"
                continue
            routes.append(Route(sub, gw, dev, onlink=True))
        return PeerEntries(tuple(routes), missing=missing)

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        return self.underlay_refusals(peers, site)

    def encapsulation(self, port: int) -> Encapsulation:
        return Encapsulation("ip", IPPROTO_IPIP)


BACKEND = Ipip()
