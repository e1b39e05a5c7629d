"""host-gw: plain routes to peers on the same L2 segment.

Device: none.
Per peer, one route per subnet of the peer (only through a next hop that is on-link on the
underlay device):
  1. route  ``<peer.subnet> via <peer.public_ip> dev <underlay> proto 109``  (main table)
  2. route  ``<peer.subnet6> via <peer's IPv6 underlay address> dev <underlay> proto 109``
An IPv4 subnet goes via the peer's IPv4 underlay address when both nodes have one, else via its
IPv6 one (``via inet6``, RFC 5549: an IPv6-only underlay carries IPv4 containers). An IPv6 subnet
needs IPv6 on the underlay of both nodes: the kernel refuses an IPv6 route via an IPv4 gateway,
so such a subnet gets no route, the peer keeps its IPv4 one and is flagged ``partial`` with one
line saying why.
Refuses: a peer none of whose next hops is inside a prefix of the underlay device, of its
family (``not-on-link``): the kernel could not resolve it as a gateway, and a route via a router
would leak container traffic to it unencapsulated.
MTU overhead: 0 (nothing is encapsulated). Kernel module: none. Firewall: nothing to filter.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshd.dataplane.backends.base import Backend, PeerEntries, Refusal, Site, peer_subnets
from meshd.dataplane.objects import (
    FLAG_NOT_ON_LINK,
    DeviceSpec,
    Route,
    address_any,
    canonical,
)
from meshd.gossip.record import NodeRecord


def next_hop(peer: NodeRecord, site: Site, version: int) -> str | None:
    """The peer's underlay address a route to its subnet of ``version`` goes via, if any: the
    same family when both nodes have it; an IPv6 one for an IPv4 subnet (RFC 5549)."""
    ul = site.underlay
    same = peer.underlay_of(version)
    if same is not None and ul.address_of(version) is not None:
        return canonical(same)
    v6 = peer.underlay_of(6)
    if version == 4 and v6 is not None and ul.address_of(6) is not None:
        return canonical(v6)
    return None


def _onlink(ip: str, site: Site) -> bool:
    a = address_any(ip)
    if a is None:
        return False
    version, value = a
    return any(net[0] == version and net[1] <= value <= net[2] for net in site.onlink)


class HostGw(Backend):
    name = "host-gw"

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        subs = peer_subnets(peer)
        if len(subs) == 1:  # its one next hop passed refuse(): on-link
            gw = next_hop(peer, site, subs[0][0])
            if gw is not None:
                return PeerEntries((Route(subs[0][1], gw, site.underlay.ifname),))
        routes: list[Route] = []
        missing: list[str] = []
        for fam, sub in subs:
            gw = next_hop(peer, site, fam)
            if gw is None:
                missing.append(
                    f"no route to {sub}: host-gw needs IPv6 on the underlay of both nodes "
                    "(the kernel refuses an IPv6 route via an IPv4 gateway)"
                    if fam == 6
                    else f"no route to {sub}: no underlay address of a family both nodes have"
                )
            elif not _onlink(gw, site):
                missing.append(f"no route to {sub}: {gw} is not on-link on {site.underlay.ifname}")
            else:
                routes.append(Route(sub, gw, site.underlay.ifname))
        return PeerEntries(tuple(routes), missing="; ".join(missing) or None)

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        out: dict[str, Refusal] = {}
        for p in peers:
            subs = peer_subnets(p)
            if len(subs) == 1:
                gw = next_hop(p, site, subs[0][0])
                if gw is not None and _onlink(gw, site):
                    continue
                hops = {gw} - {None}
            else:
                hops = {next_hop(p, site, fam) for fam, _ in subs} - {None}
            if not any(_onlink(gw, site) for gw in hops if gw is not None):
                shown = ", ".join(sorted(h for h in hops if h is not None)) or p.public_ip
                out[p.name] = Refusal(
                    FLAG_NOT_ON_LINK,
                    f"{shown} is not on-link on {site.underlay.ifname}; host-gw needs one L2",
                )
        return out


BACKEND = HostGw()
