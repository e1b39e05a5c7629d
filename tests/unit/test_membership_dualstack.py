"""meshd/membership.py with an allocator per family: each family moves on its own, subnet.env
waits until every allocated subnet settled, and the state dir keeps both."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

from meshd.allocator import Allocator
from meshd.dataplane.allocation import Pool
from meshd.dataplane.model import PeerView
from meshd.gossip.config import GossipConfig
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord
from meshd.membership import Membership
from meshd.sim import make_record
from meshd.statestore import StateStore

NET4, NET6 = "10.244.0.0/22", "fd00:10:244::/62"  # 4 subnets of /24, 4 of /64


class Sink:
    def __init__(self) -> None:
        self.locals: list[tuple[tuple[str, ...], bool]] = []

    def set_peers(self, peers: object, synced: bool, now: float) -> None:
        pass

    def set_local(self, local: NodeRecord, settled: bool = True) -> None:
        self.locals.append((local.subnets, settled))

    def peer_flags(self) -> dict[str, str]:
        return {}


def rec(i: int, subnet: str, subnet6: str | None, since: int = 100) -> NodeRecord:
    return replace(make_record(i), subnet=subnet, subnet6=subnet6, since=since)


def test_each_family_moves_alone_and_settles_together(tmp_path: Path) -> None:
    a4 = Allocator(Pool(NET4, 24), 600.0, "vxlan", (NET4, NET6), (), random.Random(1))
    a6 = Allocator(Pool(NET6, 64), 600.0, "vxlan", (NET4, NET6), (), random.Random(2))
    me = rec(0, "10.244.1.0/24", "fd00:10:244:1::/64", since=200)
    node = GossipNode(me, GossipConfig(), random.Random(1), 0.0)
    node.join([], 0.0)  # alone: synced
    sink = Sink()
    m = Membership(
        node, StateStore(tmp_path), sink, None, 30.0, lambda: None, asyncio.Event(), None,
        [a4, a6],
    )  # fmt: skip
    assert m.allocators == (a4, a6) and m.allocator is a4 and not m.settled
    m.reallocate(a4, [])
    assert a4.settled and not m.settled and sink.locals[-1][1] is False  # IPv6 not yet
    m.reallocate(a6, [])
    assert m.settled and sink.locals[-1] == (me.subnets, True)
    # An older claim on our IPv6 subnet: only the IPv6 subnet moves.
    other = PeerView(rec(1, "10.244.3.0/24", "fd00:10:244:1::/64", since=100), "alive", 0.0)
    m.reallocate(a4, [other])
    assert node.local.subnet == "10.244.1.0/24" and a4.moves == 0
    m.reallocate(a6, [other])
    moved = node.local
    assert moved.subnet == "10.244.1.0/24" and a6.moves == 1
    assert moved.subnet6 not in (None, "fd00:10:244:1::/64")
    state = StateStore(tmp_path).load()
    assert (state.subnet, state.subnet6) == ("10.244.1.0/24", moved.subnet6)


class Nat:
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail

    async def apply(self, subnet: str, *, force: bool = False) -> bool:
        self.calls.append((subnet, force))
        if self.fail:
            from meshd.errors import DataplaneError

            raise DataplaneError(self.fail)
        return True


def test_each_masquerade_follows_the_subnet_of_its_family() -> None:
    me = rec(0, "10.244.1.0/24", "fd00:10:244:1::/64")
    node = GossipNode(me, GossipConfig(), random.Random(1), 0.0)
    nat4, nat6 = Nat(), Nat(fail="masquerade: nft: no ip6 table support")
    m = Membership(
        node, None, None, None, 30.0, lambda: None, asyncio.Event(),  # type: ignore[arg-type]
        masquerade=nat4, masquerade6=nat6,
    )  # fmt: skip
    asyncio.run(m.update_masquerade(force=True))
    assert nat4.calls == [("10.244.1.0/24", True)]
    assert nat6.calls == [("fd00:10:244:1::/64", True)]
    assert m._mq_error == "masquerade: nft: no ip6 table support"  # the IPv4 one still applied
    nat6.fail = None
    asyncio.run(m.update_masquerade())
    assert m._mq_error is None and nat6.calls[-1] == ("fd00:10:244:1::/64", False)
