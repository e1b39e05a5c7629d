"""meshd/allocator.py and the membership loop's use of it: which subnet a daemon starts with,
when it moves, and when its subnet settles."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.allocator import Allocator
from meshd.dataplane.allocation import Pool
from meshd.dataplane.model import PeerView
from meshd.errors import AllocationError
from meshd.gossip.config import GossipConfig
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord
from meshd.membership import Membership
from meshd.sim import make_record
from meshd.statestore import StateStore

NET = "10.244.0.0/22"  # 4 subnets of /24
WALL = 1_800_000_000.0
LEASE = 600.0


def allocator(exclude: tuple[str, ...] = (), seed: int = 1, net: str = NET) -> Allocator:
    return Allocator(Pool(net, 24), LEASE, "vxlan", net, exclude, random.Random(seed))


def rec(i: int, subnet: str, since: int = 100) -> NodeRecord:
    return replace(make_record(i), subnet=subnet, since=since)


def alive(*records: NodeRecord) -> list[PeerView]:
    return [PeerView(r, "alive", 0.0) for r in records]


def test_a_recent_stored_subnet_keeps_its_age_and_a_stale_one_is_claimed_anew() -> None:
    a = allocator()
    assert a.first("10.244.2.0/24", 1234, WALL - 60, [], WALL) == ("10.244.2.0/24", 1234)
    assert a.origin == "kept"
    assert a.first("10.244.2.0/24", 1234, WALL - LEASE - 1, [], WALL) == (
        "10.244.2.0/24",
        int(WALL),
    )
    assert a.origin == "reclaimed"
    # An unknown save time (an older state file) cannot vouch for the age either.
    assert a.first("10.244.2.0/24", 1234, 0.0, [], WALL)[1] == int(WALL)


def test_a_stored_subnet_outside_the_pool_or_on_the_underlay_is_not_used() -> None:
    a = allocator(exclude=("10.244.1.0/24",))
    for stored in ("10.245.0.0/24", "10.244.0.0/25", "10.244.1.0/24", None):
        subnet, since = a.first(stored, 1234, WALL, [], WALL)
        assert subnet != stored and subnet != "10.244.1.0/24" and since == int(WALL)
        assert a.origin == "picked"


def test_the_first_pick_avoids_what_the_state_dir_knows() -> None:
    known = [rec(1, "10.244.0.0/24"), rec(2, "10.244.1.0/24"), rec(3, "10.244.2.0/24")]
    for seed in range(20):
        assert allocator(seed=seed).first(None, 0, 0.0, known, WALL)[0] == "10.244.3.0/24"
    # Known members filling the pool may be stale: pick anyway, the mesh decides.
    full = [*known, rec(4, "10.244.3.0/24")]
    assert allocator().first(None, 0, 0.0, full, WALL)[0] in {r.subnet for r in full}
    # A pool with nothing clear of the underlay is full before anyone is asked.
    with pytest.raises(AllocationError, match=r"10.244.0.0/23 \(2 subnets .*: no subnet is clear"):
        allocator(exclude=("10.244.0.0/16",), net="10.244.0.0/23").first(None, 0, 0.0, [], WALL)


def test_review_moves_only_a_loser_and_only_to_a_free_subnet() -> None:
    a = allocator()
    me = rec(0, "10.244.1.0/24", since=200)
    older = rec(1, "10.244.1.0/24", since=100)
    younger = rec(1, "10.244.1.0/24", since=300)
    assert a.review(me, alive(younger), 0.0) is None  # we hold it: the other one moves
    other = rec(2, "10.244.2.0/24")
    move = a.review(me, alive(older, other), 0.0)
    assert move is not None and move.holder.name == older.name and move.old == me.subnet
    assert move.new in {"10.244.0.0/24", "10.244.3.0/24"}
    # Left members release at once; dead ones hold for the lease.
    gone = [PeerView(older, "left", 0.0)]
    assert a.review(me, gone, 0.0) is None
    dead = [PeerView(older, "dead", 0.0)]
    assert a.review(me, dead, LEASE - 1) is not None
    assert a.review(me, dead, LEASE) is None
    # No free subnet: a move with nowhere to go.
    crowd = alive(older, rec(3, "10.244.0.0/24"), other, rec(4, "10.244.3.0/24"))
    full = a.review(me, crowd, 0.0)
    assert full is not None and full.new is None


class FakeReconciler:
    def __init__(self) -> None:
        self.locals: list[tuple[str, bool]] = []

    def set_peers(self, peers: object, synced: bool, now: float) -> None:
        pass

    def set_local(self, local: NodeRecord, settled: bool = True) -> None:
        self.locals.append((local.subnet, settled))

    def peer_flags(self) -> dict[str, str]:
        return {}


def membership(tmp_path: Path, me: NodeRecord, a: Allocator) -> tuple[Membership, GossipNode]:
    node = GossipNode(me, GossipConfig(), random.Random(1), 0.0)
    node.join([], 0.0)  # alone: synced
    rc = FakeReconciler()
    m = Membership(
        node, StateStore(tmp_path), rc, None, 30.0, lambda: None, asyncio.Event(), None, a
    )
    return m, node


def test_the_loop_moves_announces_saves_and_settles(tmp_path: Path) -> None:
    a = allocator()
    me = rec(0, "10.244.1.0/24", since=200)
    m, node = membership(tmp_path, me, a)
    rc = m.reconciler
    assert isinstance(rc, FakeReconciler)
    m.reallocate(a, [])  # nobody holds it and we are synced: settled
    assert a.settled and rc.locals == [("10.244.1.0/24", True)]
    inc = node.local.incarnation
    m.reallocate(a, alive(rec(1, "10.244.1.0/24", since=100)))
    moved = node.local
    assert moved.subnet != "10.244.1.0/24" and moved.incarnation > inc
    assert rc.locals[-1] == (moved.subnet, True) and a.moves == 1
    assert StateStore(tmp_path).load().subnet == moved.subnet
    # Full, with the whole mesh known: one line naming the network and its size.
    crowd = alive(*(rec(i + 1, f"10.244.{i}.0/24", since=1) for i in range(4)))
    with pytest.raises(AllocationError) as e:
        m.reallocate(a, crowd)
    assert "network 10.244.0.0/22 (4 subnets of /24) is full" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_left_node_forgets_its_allocated_subnet(tmp_path: Path) -> None:
    a = allocator()
    m, node = membership(tmp_path, rec(0, "10.244.1.0/24"), a)
    m.save(force=True)
    assert StateStore(tmp_path).load().subnet == "10.244.1.0/24"
    node.leave(1.0)
    m.save(force=True)
    state = StateStore(tmp_path).load()
    assert state.subnet is None and state.subnet_since == 0


def test_an_ipv6_allocator_moves_only_the_ipv6_subnet() -> None:
    net6 = "fd00:10:244::/62"  # four subnets of /64
    a = Allocator(
        Pool(net6, 64),
        LEASE,
        "vxlan",
        (NET, net6),
        ("10.99.0.0/24", "fd00:99::/64"),
        random.Random(1),
    )
    assert a.version == 6
    holder = replace(rec(2, "10.244.1.0/24", since=50), subnet6="fd00:10:244:1::/64")
    local = replace(rec(1, "10.244.0.0/24", since=100), subnet6="fd00:10:244:1::/64")
    move = a.review(local, alive(holder), 0.0)
    assert move is not None and (move.old, move.version, move.holder) == (
        "fd00:10:244:1::/64",
        6,
        holder,
    )
    assert move.new is not None and move.new != move.old and Pool(net6, 64).contains(move.new)
    # The IPv4 allocator of the same node sees nothing to do: it holds 10.244.0.0/24.
    assert allocator().review(local, alive(holder), 0.0) is None
    # A node with no IPv6 subnet has nothing for the IPv6 allocator to move.
    assert a.review(rec(1, "10.244.0.0/24"), alive(holder), 0.0) is None


def test_an_ipv6_allocator_keeps_out_of_the_hosts_ipv6_prefixes_only() -> None:
    net6 = "fd00:10:244::/63"  # two subnets of /64
    a = Allocator(
        Pool(net6, 64),
        LEASE,
        "vxlan",
        net6,
        ("10.244.0.0/16", "fd00:10:244::/64"),
        random.Random(1),
    )
    assert not a.usable("fd00:10:244::/64")
    assert a.usable("fd00:10:244:1::/64")
    assert a.first(None, 0, 0.0, [], WALL) == ("fd00:10:244:1::/64", int(WALL))
