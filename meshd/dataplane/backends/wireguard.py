"""wireguard: one WireGuard device; per peer a WireGuard peer and a route. Encrypted on the wire.

Device ``meshd.wg``: kind wireguard (the kernel's, where the module exists; else a
``wireguard-go`` process's tun device: ``wgdevice.py`` chooses, and ``status`` says which and
why), listen port ``wireguard_port`` (default 51820, the same on every member), this node's
private key (``<state_dir>/wireguard.key``; its public key rides in the record), MTU = underlay
MTU - 60 (IPv6 underlay: - 80), addresses ``<subnet network address>/32`` and ``<subnet6 network
address>/128`` (the subnets this node has), up.
Per peer, in this order (the peer first: a route into the device before its peer exists sends
packets WireGuard can only drop with "no route to host"):
  1. WireGuard peer  ``<peer.wg_key> endpoint <peer's underlay address>:<port> allowed-ips
     <peer.subnet>,<peer.subnet6>`` (both families; the endpoint of this node's underlay family,
     ``[addr]:port`` for IPv6; the peer's device addresses are its subnets' network addresses)
  2. routes          ``<peer subnet> dev meshd.wg proto 109``, one per subnet (no gateway)
Removed in the reverse order. The device's peers are all meshd's because the device is.
Refuses: a peer announcing no WireGuard key, this node's own key, or the key of a peer already
programmed (WireGuard keys a peer by its public key: two members with one key would steal each
other's traffic), or no underlay address of this node's gossip family.
MTU overhead: 60 (outer IPv4 20 + UDP 8 + WireGuard header 16 + authentication tag 16); 80 on
an IPv6 underlay.
Kernel module: ``wireguard`` (optional: ``wireguard-go`` stands in). Firewall: UDP to the port.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from meshd.dataplane.backends.base import (
    Backend,
    Encapsulation,
    PeerEntries,
    Refusal,
    Site,
    device_addresses,
    endpoint,
    peer_subnets,
)
from meshd.dataplane.objects import FLAG_REFUSED, DeviceSpec, Route, WgPeer, canonical
from meshd.gossip.record import NodeRecord

DEVICE = "meshd.wg"
DEFAULT_PORT = 51820


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


class WireGuard(Backend):
    name = "wireguard"
    overhead = 60
    overhead6 = 80
    kernel_module = "wireguard"
    peer_objects = ("wgpeer", "route")

    def device(self, site: Site) -> DeviceSpec:
        return DeviceSpec(
            name=DEVICE,
            kind="wireguard",
            mtu=site.underlay.mtu - self.overhead_for(site.underlay.version),
            mac=None,
            addresses=device_addresses(site.local),
            params=(
                ("listen_port", site.wg_port),
                ("public_key", b64(site.local.wg_key)),
            ),
            settable=True,
        )

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        subs = peer_subnets(peer)
        ip = peer.underlay_of(site.underlay.version) or peer.public_ip  # refuse() made sure
        return PeerEntries(
            tuple(Route(sub, "", DEVICE) for _, sub in subs),
            wgpeer=WgPeer(
                b64(peer.wg_key),
                endpoint(canonical(ip), site.wg_port),
                tuple(sorted(sub for _, sub in subs)),
            ),
        )

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        out = self.underlay_refusals(peers, site)
        mine = site.local.wg_key
        seen: dict[bytes, str] = {}  # key -> the peer that has it
        for p in peers:
            if p.name in out:
                continue
            if not p.wg_key:
                out[p.name] = Refusal(FLAG_REFUSED, "announces no WireGuard key")
            elif p.wg_key == mine:
                out[p.name] = Refusal(FLAG_REFUSED, "announces this node's WireGuard key")
            elif p.wg_key in seen:
                out[p.name] = Refusal(
                    FLAG_REFUSED, f"WireGuard key {b64(p.wg_key)} is also {seen[p.wg_key]}'s"
                )
            else:
                seen[p.wg_key] = p.name
        return out

    def encapsulation(self, port: int) -> Encapsulation:
        return Encapsulation("udp", port)


BACKEND = WireGuard()
