"""Cluster-wide key ops: wire form, validation, deduplication, the ordering rule, and spreading
through gossip and push-pull in whole meshes."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import msgpack
import pytest

from meshd.gossip import keyops
from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.node import GossipNode
from meshd.gossip.security import Keyring, key_id
from meshd.sim import Network, make_record

ME, A = make_record(0), make_record(1)
K0, K1, K2 = (bytes([i]) * 32 for i in (10, 11, 12))
ID0, ID1, ID2 = key_id(K0), key_id(K1), key_id(K2)


def op(kind: m.KeyOpKind, arg: bytes, ltime: int, origin: str = "n1", n: int = 0) -> m.KeyOp:
    return m.KeyOp((ltime * 256 + n).to_bytes(16, "big"), kind, arg, origin, ltime)


def node() -> GossipNode:
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0)
    n.join([], 0.0)
    n.receive_datagram(m.pack_datagram([m.encode(m.Alive(A))]), A.addr, 0.0)
    return n


def feed(n: GossipNode, *msgs: m.Message, now: float = 1.0) -> None:
    n.receive_datagram(m.pack_datagram([m.encode(x) for x in msgs]), A.addr, now)


def popped(n: GossipNode) -> list[tuple[str, bytes, int]]:
    return [(x.op, x.key, x.ltime) for x in n.pop_key_ops()]


# --- wire form ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kop", [op("install", K1, 1), op("use", ID1, 2), op("remove", ID0, 2**63 - 1)]
)
def test_key_op_roundtrips(kop: m.KeyOp) -> None:
    assert m.decode(m.pack_datagram([m.encode(kop)])) == [kop]


def test_push_pull_carries_key_ops_in_its_first_chunk_only() -> None:
    ops = [op("install", K1, 1), op("use", ID1, 2)]
    entries = [m.PushPullEntry(make_record(i), MemberState.ALIVE, 0) for i in range(2, 40)]
    budget = 1400 - m.ENVELOPE_RESERVE - m.DATAGRAM_OVERHEAD
    wire = [m.encode_entry(*e) for e in entries]
    chunks = m.encode_push_pull(ME, 5, False, wire, budget, [m.encode(x) for x in ops])
    assert len(chunks) > 1 and all(len(c) <= budget for c in chunks)
    decoded = [m.decode(m.pack_datagram([c]))[0] for c in chunks]
    assert [pp.key_ops for pp in decoded] == [tuple(ops)] + [()] * (len(chunks) - 1)  # type: ignore[union-attr]
    assert [e for pp in decoded for e in pp.entries] == entries  # type: ignore[union-attr]
    # Without ops the chunk is the 7-element form older nodes know.
    (plain,) = m.encode_push_pull(ME, 5, False, [], budget)
    assert plain[0] == 0x97


def bad(obj: object) -> str:
    with pytest.raises(m.DecodeError) as exc:
        m.decode(msgpack.packb([1, [obj], m.PROTOCOL_MINOR], use_bin_type=True))
    return exc.value.reason


def test_malformed_key_ops_are_rejected() -> None:
    good = [8, b"i" * 16, 0, K1, "n1", 3]
    assert m.decode(msgpack.packb([1, [good], m.PROTOCOL_MINOR], use_bin_type=True))[0] == m.KeyOp(
        b"i" * 16, "install", K1, "n1", 3
    )
    variants = [
        good[:5],  # missing ltime
        [8, b"i" * 15, 0, K1, "n1", 3],  # short id
        [8, "i" * 16, 0, K1, "n1", 3],  # id not bytes
        [8, b"i" * 16, 3, K1, "n1", 3],  # unknown op code
        [8, b"i" * 16, True, K1, "n1", 3],  # a bool is no op code
        [8, b"i" * 16, 0, ID1, "n1", 3],  # install with a key id
        [8, b"i" * 16, 1, K1, "n1", 3],  # use with a whole key
        [8, b"i" * 16, 2, b"abc", "n1", 3],  # remove with a short key id
        [8, b"i" * 16, 1, ID1, "bad name!", 3],
        [8, b"i" * 16, 1, ID1, "n1", -1],
        [8, b"i" * 16, 1, ID1, "n1", 2**63],
        [8, b"i" * 16, 1, ID1, "n1", 1.0],
    ]
    for v in variants:
        assert bad(v) == "key_op", v
    pp = [7, ME.to_wire(), 1, False, 0, 1, [], [good, variants[1]]]
    assert bad(pp) == "key_op"
    assert bad([7, ME.to_wire(), 1, False, 0, 1, [], "x"]) == "key_op"
    assert bad([7, ME.to_wire(), 1, False, 0, 1, [], [good] * 33]) == "key_op"


def test_malformed_key_op_is_dropped_and_counted_by_a_node() -> None:
    n = node()
    raw = msgpack.packb([1, [[8, b"i" * 16, 0, ID1, "n1", 3]], m.PROTOCOL_MINOR], use_bin_type=True)
    n.receive_datagram(raw, A.addr, 1.0)
    assert n.counters["drop.key_op"] == 1
    assert n.pop_key_ops() == [] and n.counters["msg.key_op"] == 0


# --- one node -----------------------------------------------------------------------------------


def test_own_op_is_handed_back_and_gossiped() -> None:
    n = node()
    op_id = n.broadcast_key_op("install", K1, 1.0)
    assert len(op_id) == 16
    (mine,) = n.pop_key_ops()
    assert (mine.id, mine.op, mine.key, mine.origin, mine.ltime) == (op_id, "install", K1, "n0", 1)
    out: list[m.Message] = []
    t = 1.0
    while not any(isinstance(x, m.KeyOp) for x in out) and t < 5:
        t = n.get_timer() or t
        n.handle_timer(t)
        out += [x for d, _, _ in n.datagrams_to_send() for x in m.decode(d)]
    assert mine in out
    assert n.pop_key_ops() == []


def test_broadcast_refuses_malformed_ops() -> None:
    n = node()
    for kind, arg in (("rotate", K1), ("install", ID1), ("use", K1), ("remove", b"")):
        with pytest.raises(ValueError):
            n.broadcast_key_op(kind, arg, 1.0)
    assert n.pop_key_ops() == []


def test_received_op_is_handed_out_once_and_regossiped() -> None:
    n = node()
    kop = op("install", K1, 4)
    feed(n, kop)
    feed(n, kop, now=1.1)
    feed(n, kop, kop, now=1.2)
    assert n.pop_key_ops() == [kop]
    assert n.counters["keyop.new"] == 1 and n.counters["keyop.duplicate"] == 3
    assert n.counters["msg.key_op"] == 4
    # Our next op is stamped after what we have seen (Lamport clock).
    n.broadcast_key_op("use", ID1, 2.0)
    assert popped(n) == [("use", ID1, 5)]


def test_late_install_does_not_follow_its_remove() -> None:
    n = node()
    feed(n, op("remove", ID1, 7))
    feed(n, op("install", K1, 5))
    assert popped(n) == [("remove", ID1, 7)]
    assert n.counters["keyop.stale"] == 1
    # A later install of the same key (a re-install) does go through.
    feed(n, op("install", K1, 9))
    assert popped(n) == [("install", K1, 9)]


def test_ops_in_one_datagram_are_taken_in_stamp_order() -> None:
    n = node()
    feed(n, op("remove", ID0, 3), op("use", ID1, 2), op("install", K1, 1))
    # (after the remove, the install again: it may have been refused for want of room)
    assert popped(n) == [
        ("install", K1, 1),
        ("use", ID1, 2),
        ("remove", ID0, 3),
        ("install", K1, 1),
    ]


# --- bounds against a hostile key holder --------------------------------------------------------


def test_a_use_at_the_maximum_lamport_time_cannot_pin_the_primary() -> None:
    n = node()
    feed(n, op("install", K1, 1), op("install", K2, 2))
    popped(n)
    pin = op("use", ID1, m.MAX_LTIME)
    feed(n, pin)
    assert popped(n) == [] and n.counters["drop.key_op_ltime"] == 1
    # Nor through a push-pull log.
    n.receive_datagram(
        m.pack_datagram([m.encode(m.PushPull(A, 1, False, 0, 1, (), (pin,)))]),
        A.addr,
        1.0,
        A.node_id,
    )
    assert n.counters["drop.key_op_ltime"] == 2
    # The operator's next use goes through, and so does a bounded jump.
    feed(n, op("use", ID2, 3))
    feed(n, op("use", ID1, 3 + keyops.MAX_LTIME_JUMP))
    assert popped(n) == [("use", ID2, 3), ("use", ID1, 3 + keyops.MAX_LTIME_JUMP)]
    assert n._keyops.clock == 3 + keyops.MAX_LTIME_JUMP


def test_a_fresh_node_takes_its_first_push_pull_log_whatever_the_clock() -> None:
    # The clock is not persisted: a restarted node must catch up with an old mesh.
    ops = keyops.KeyOps(Counter())
    far = 10 * keyops.MAX_LTIME_JUMP
    first = [op("install", K1, far), op("use", ID1, far + 1)]
    assert [o.ltime for o in ops.accept(first, logged=True, joining=True)]
    assert ops.clock == far + 1
    assert ops.accept([op("use", ID2, far + 2 + keyops.MAX_LTIME_JUMP)], logged=True) == []


def test_a_synced_node_without_ops_bounds_a_push_pull_log() -> None:
    # A mesh that never saw a key op: every member is at "no op yet". A key holder's push-pull
    # log with a use at the maximum must not pin the primary there (only a joiner catches up).
    n = node()  # synced: no seeds
    pin = op("use", ID1, m.MAX_LTIME, origin="zz")
    n.receive_datagram(
        m.pack_datagram([m.encode(m.PushPull(A, 1, True, 0, 1, (), (pin,)))]),
        A.addr,
        1.0,
        A.node_id,
    )
    assert n.counters["drop.key_op_ltime"] == 1 and n._keyops.clock == 0
    feed(n, op("install", K2, 1), op("use", ID2, 2))
    assert popped(n) == [("install", K2, 1), ("use", ID2, 2)]


def test_install_into_a_full_ring_is_refused_and_retried_after_a_remove() -> None:
    full = Keyring(tuple(bytes([i]) * 32 for i in range(1, 5)))
    change = keyops.apply_to_keyring(full, [op("install", K1, 5)])
    assert change.keyring == full and [o for _, o in change.outcomes] == ["full"]
    # In the core: the install is handed out again after the next remove, in stamp order.
    n = node()
    feed(n, op("install", K1, 5), op("install", K2, 6))
    ring = keyops.apply_to_keyring(full, n.pop_key_ops()).keyring
    assert ring == full
    feed(n, op("remove", key_id(bytes([2]) * 32), 7))
    change = keyops.apply_to_keyring(ring, n.pop_key_ops())
    assert [o for _, o in change.outcomes] == ["removed", "installed", "full"]
    assert change.keyring.keys == (*full.keys[:1], *full.keys[2:], K1)


def test_older_use_never_brings_back_an_older_primary() -> None:
    n = node()
    feed(n, op("use", ID2, 8))
    feed(n, op("use", ID1, 6))
    assert popped(n) == [("use", ID2, 8)]
    # Same Lamport time from two origins: the origin name breaks the tie, everywhere alike.
    feed(n, op("use", ID1, 8, origin="n9", n=1))
    assert popped(n) == [("use", ID1, 8)]


def test_use_before_its_install_is_handed_out_again_after_it() -> None:
    n = node()
    feed(n, op("use", ID1, 2))
    feed(n, op("install", K1, 1))
    assert popped(n) == [("use", ID1, 2), ("install", K1, 1), ("use", ID1, 2)]
    assert n.counters["keyop.redelivered"] == 1


def test_remove_refused_as_primary_is_repeated_after_the_next_use() -> None:
    n = node()
    feed(n, op("remove", ID0, 3))  # K0 may still be this node's primary: the daemon refuses
    feed(n, op("install", K1, 1))
    feed(n, op("use", ID1, 2))
    assert popped(n) == [
        ("remove", ID0, 3),
        ("install", K1, 1),
        ("use", ID1, 2),
        ("remove", ID0, 3),
    ]


def test_memory_is_bounded() -> None:
    k = keyops.KeyOps(Counter())
    for i in range(keyops.SEEN_IDS + 50):
        k.accept([m.KeyOp(i.to_bytes(16, "big"), "install", i.to_bytes(32, "big"), "n1", i)])
    assert len(k._seen) == keyops.SEEN_IDS
    assert len(k._keys) == keyops.KEY_REGISTERS
    assert [x.ltime for x in k.log()] == list(range(keyops.SEEN_IDS + 42, keyops.SEEN_IDS + 50))
    assert k.clock == keyops.SEEN_IDS + 49


# --- whole meshes -------------------------------------------------------------------------------


def mesh(n: int, seed: int, loss: float, cfg: GossipConfig | None = None) -> Network:
    net = Network(cfg, seed=seed, loss=loss, record_events=False)
    net.converged([make_record(i) for i in range(n)])
    net.run_for(5)
    return net


def drain(net: Network, got: dict[int, list[m.KeyOp]]) -> None:
    for i, x in enumerate(net.nodes):
        got.setdefault(i, []).extend(x.pop_key_ops())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_op_reaches_all_ten_nodes_once_under_loss(seed: int) -> None:
    net = mesh(10, seed, 0.1)
    op_id = net.broadcast_key_op(3, "install", K1)
    got: dict[int, list[m.KeyOp]] = {}
    for _ in range(40):
        net.run_for(0.25)
        drain(net, got)
    assert all([x.id for x in ops] == [op_id] for ops in got.values()), got
    assert sum(x.counters["keyop.duplicate"] for x in net.nodes) > 0  # suppressed, not absent
    # A malformed op (an install carrying a key id) from a member is dropped and counted there.
    bad = msgpack.packb(
        [1, [[8, b"m" * 16, 0, ID1, "n2", 99]], m.PROTOCOL_MINOR], use_bin_type=True
    )
    net.nodes[5].receive_datagram(bad, net.addrs[2], net.now)
    assert net.nodes[5].counters["drop.key_op"] == 1 and net.nodes[5].pop_key_ops() == []
    net.run_for(5)
    drain(net, got)
    assert all(len(ops) == 1 for ops in got.values())


def test_partitioned_node_gets_the_op_through_push_pull_on_heal() -> None:
    cfg = replace(GossipConfig(), push_pull_interval=10.0)
    net = mesh(10, 4, 0.0, cfg)
    net.isolate(6)
    op_id = net.broadcast_key_op(0, "install", K2)
    # Until the broadcast has run its course everywhere it could reach.
    assert net.run_until_true(
        lambda: not any(f"keyop:{op_id.hex()}" in x._queue for x in net.nodes), 10, step=0.1
    )
    net.heal()
    got: dict[int, list[m.KeyOp]] = {}

    def isolated_node_has_it() -> bool:
        drain(net, got)
        return [x.id for x in got[6]] == [op_id]

    assert net.run_until_true(isolated_node_has_it, 60)
    assert net.nodes[6].counters["msg.key_op"] == 0  # not from gossip: from a push-pull log
    assert all([x.id for x in ops] == [op_id] for ops in got.values())


@pytest.mark.parametrize(("seed", "at_once"), [(5, False), (6, False), (5, True), (6, True)])
def test_rotation_from_three_nodes_converges_under_loss(seed: int, at_once: bool) -> None:
    """install K1 (node 1), use K1 (node 2), remove K0 (node 3): each issued as soon as the
    previous op reached its issuer, or all at the same instant (no causality between them at
    all). Under 20% loss the others get them in any order; every keyring ends as [K1]."""
    net = mesh(10, seed, 0.2, replace(GossipConfig(), push_pull_interval=5.0))
    rings = [Keyring((K0,)) for _ in net.nodes]

    def step() -> None:
        # What the daemon does with the ops a node hands out (service.py).
        net.run_for(0.02)
        for i, x in enumerate(net.nodes):
            rings[i] = keyops.apply_to_keyring(rings[i], x.pop_key_ops()).keyring

    net.broadcast_key_op(1, "install", K1)
    while not at_once and K1 not in rings[2].keys:
        step()
    net.broadcast_key_op(2, "use", ID1)
    while not at_once and rings[3].keys[0] != K1:
        step()
    net.broadcast_key_op(3, "remove", ID0)
    for _ in range(1500):
        step()
    assert [r.keys for r in rings] == [(K1,)] * 10
    if at_once:  # some node got the use before the install, or the remove before the use
        assert sum(x.counters["keyop.redelivered"] for x in net.nodes) > 0


# --- apply_to_keyring: the daemon's (pure) side of a key op -------------------------------------


def test_keyring_install_use_remove_rotates_the_primary() -> None:
    ring = Keyring((K0,))
    ops = [op("install", K1, 1), op("use", ID1, 2), op("remove", ID0, 3)]
    change = keyops.apply_to_keyring(ring, ops)
    assert change.keyring.keys == (K1,)
    assert [o for _, o in change.outcomes] == ["installed", "primary", "removed"]
    assert change.changed
    assert ring.keys == (K0,)  # the input is not touched


def test_keyring_ops_are_idempotent() -> None:
    ring = Keyring((K0, K1))
    ops = [op("install", K1, 1), op("use", ID0, 2), op("remove", ID2, 3)]
    change = keyops.apply_to_keyring(ring, ops)
    assert change.keyring is ring
    assert [o for _, o in change.outcomes] == ["unchanged"] * 3
    assert not change.changed
    again = keyops.apply_to_keyring(Keyring((K0,)), [op("install", K1, 1)] * 2)
    assert again.keyring.keys == (K0, K1)
    assert [o for _, o in again.outcomes] == ["installed", "unchanged"]


def test_keyring_refuses_to_remove_the_primary_and_to_use_an_unknown_key() -> None:
    ring = Keyring((K0, K1))
    change = keyops.apply_to_keyring(ring, [op("remove", ID0, 1), op("use", ID2, 2)])
    assert change.keyring.keys == (K0, K1)
    assert [o for _, o in change.outcomes] == ["refused", "unknown"]
    assert not change.changed


def test_keyring_follows_the_order_given() -> None:
    # What KeyOps hands out after a refused remove: use, then the remove again.
    ring = Keyring((K0, K1))
    ops = [op("remove", ID0, 1), op("use", ID1, 2), op("remove", ID0, 1)]
    change = keyops.apply_to_keyring(ring, ops)
    assert change.keyring.keys == (K1,)
    assert [o for _, o in change.outcomes] == ["refused", "primary", "removed"]
