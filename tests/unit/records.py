"""Peer records and an underlay for the data plane's unit tests (one definition for all of them)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshd.dataplane.objects import Underlay
from meshd.gossip.record import NodeRecord, vtep_mac_for

UL = Underlay("eth0", 2, "10.99.0.1", 24, 1500)


def rec(i: int, backend: str = "vxlan", **kw: Any) -> NodeRecord:
    """Node *i*: 10.99.0.i on the underlay, 10.244.i.0/24 for its containers."""
    node_id = bytes([i]) * 16
    base = NodeRecord(
        name=f"n{i}",
        node_id=node_id,
        public_ip=f"10.99.0.{i}",
        port=7950,
        subnet=f"10.244.{i}.0/24",
        backend=backend,
        vtep_mac=vtep_mac_for(node_id) if backend == "vxlan" else None,
        mtu=1500,
    )
    return replace(base, **kw)
