"""ipip backend: one NBMA tunnel device, one route per peer.

Kernel objects:
  - device ``meshd.ipip``: kind ipip, local = this node's underlay IP, link = underlay, ttl 64,
    no remote (NBMA: the outer destination is each route's gateway), MTU = underlay MTU - 20,
    address ``<this node's subnet network address>/32``, up.
  - per peer: route ``<peer.subnet> via <peer.public_ip> dev meshd.ipip onlink proto 109``.

A kernel without the ipip module refuses the device with EOPNOTSUPP ("Unknown device type");
netlink.py turns that into ``MissingKernelFeature("kernel has no ipip support (module ipip): ...")``
and the reconciler reports it in one line instead of retrying forever.
"""

from __future__ import annotations

from meshd.dataplane.hostgw import HostGwBackend


class IpipBackend(HostGwBackend):
    """Per-peer work is exactly host-gw's (one route); only the route's device differs, and the
    model already put ``meshd.ipip`` and ``onlink`` in it."""

    name = "ipip"
