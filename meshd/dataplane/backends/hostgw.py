"""host-gw: plain routes to peers on the same L2 segment.

Device: none.
Per peer (only when the peer's underlay IP is on-link on the underlay device):
  1. route  ``<peer.subnet> via <peer.public_ip> dev <underlay> proto 109``  (main table)
Refuses: a peer whose IP is inside no IPv4 prefix of the underlay device (``not-on-link``): the
kernel could not resolve it as a gateway, and a route via a router would leak container traffic
to it unencapsulated.
MTU overhead: 0 (nothing is encapsulated). Kernel module: none. Firewall: nothing to filter.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.dataplane import prefix
from meshd.dataplane.backends.base import Backend, PeerEntries, Refusal, Site
from meshd.dataplane.objects import FLAG_NOT_ON_LINK, DeviceSpec, Route
from meshd.gossip.record import NodeRecord


class HostGw(Backend):
    name = "host-gw"

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        return PeerEntries(Route(peer.subnet, peer.public_ip, site.underlay.ifname))

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        out: dict[str, Refusal] = {}
        for p in peers:
            ip = prefix.address(p.public_ip)
            if ip is None or not any(a <= ip <= b for a, b in site.onlink):
                out[p.name] = Refusal(
                    FLAG_NOT_ON_LINK,
                    f"{p.public_ip} is not on-link on {site.underlay.ifname}; host-gw needs one L2",
                )
        return out


BACKEND = HostGw()
