"""ipip: one NBMA tunnel device, one route per peer.

Device ``meshd.ipip``: kind ipip, local = this node's underlay IP, link = underlay, ttl 64, no
remote (NBMA: the outer destination is each route's gateway), MTU = underlay MTU - 20, address
``<this node's subnet network address>/32``, up.
Per peer:
  1. route  ``<peer.subnet> via <peer.public_ip> dev meshd.ipip onlink proto 109``
Refuses: nothing beyond the model's common rules.
MTU overhead: 20 (the outer IPv4 header). Kernel module: ``ipip``; a kernel without it refuses
the device with EOPNOTSUPP ("Unknown device type"), which netlink.py turns into
``MissingKernelFeature`` and the reconciler reports in one line instead of retrying forever.
Firewall: IP protocol 4.
"""

from __future__ import annotations

from meshd.dataplane import prefix
from meshd.dataplane.backends.base import Backend, Encapsulation, PeerEntries, Site
from meshd.dataplane.objects import DeviceSpec, Route
from meshd.gossip.record import NodeRecord

DEVICE = "meshd.ipip"
TTL = 64  # a fixed TTL makes the kernel set DF and do PMTU discovery on the tunnel
IPPROTO_IPIP = 4


class Ipip(Backend):
    name = "ipip"
    overhead = 20
    kernel_module = "ipip"

    def device(self, site: Site) -> DeviceSpec:
        return DeviceSpec(
            name=DEVICE,
            kind="ipip",
            mtu=site.underlay.mtu - self.overhead,
            mac=None,
            addresses=(f"{prefix.network_address(site.local.subnet)}/32",),
            params=(
                ("ipip_local", site.underlay.ip),
                ("ipip_link", site.underlay.ifindex),
                ("ipip_ttl", TTL),
            ),
        )

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        return PeerEntries(Route(peer.subnet, peer.public_ip, DEVICE, onlink=True))

    def encapsulation(self, port: int) -> Encapsulation:
        return Encapsulation("ip", IPPROTO_IPIP)


BACKEND = Ipip()
