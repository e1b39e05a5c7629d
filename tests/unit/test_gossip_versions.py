"""The wire version rule (docs/protocol.md, "Versions"): a node of minor N takes N-1 and N+1 of
its major, what it knows of them and nothing else; another major, or a minor further away, is
dropped and counted, and never changes state or raises."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgpack
import pytest

from meshd.control import format as fmt
from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.node import GossipNode
from meshd.sim import Network, make_record

N = m.PROTOCOL_MINOR
ME, A, B = make_record(0), make_record(1), make_record(2)


def packb(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def wire(msg: m.Message) -> Any:
    """A message as the msgpack structure it travels as (to append fields to it)."""
    return msgpack.unpackb(m.encode(msg), raw=False)


def node(minor: int = N) -> GossipNode:
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0, protocol_minor=minor)
    n.join([], 0.0)
    return n


def names(n: GossipNode) -> dict[str, MemberState]:
    return {x.record.name: x.state for x in n.members()}


# --- the wire form ----------------------------------------------------------------------------


def test_this_release_sends_its_minor_as_a_third_element() -> None:
    parts = [m.encode(m.Ack(7))]
    assert msgpack.unpackb(m.pack_datagram(parts)) == [m.PROTOCOL_MAJOR, [[2, 7]], N]
    assert N >= 1 and m.MINOR_WINDOW == 1


def test_minor_zero_is_the_form_before_minors_byte_for_byte() -> None:
    parts = [m.encode(m.Ack(7)), m.encode(m.Alive(A))]
    assert m.pack_datagram(parts, 0) == packb([1, [wire(m.Ack(7)), wire(m.Alive(A))]])


def test_framing_overhead_is_what_pack_datagram_adds() -> None:
    parts = [m.encode(m.Ack(i)) for i in range(20)]  # past 15: the array16 header
    body = sum(len(p) for p in parts)
    assert len(m.pack_datagram(parts)) - body == m.DATAGRAM_OVERHEAD
    assert len(m.pack_datagram(parts, 0)) - body == m.DATAGRAM_OVERHEAD - 1


@pytest.mark.parametrize(
    ("major", "minor", "ok"),
    [(1, N - 1, True), (1, N, True), (1, N + 1, True), (1, N + 2, False), (2, N, False)],
)
def test_accepts_is_the_window_of_one_minor_within_the_major(
    major: int, minor: int, ok: bool
) -> None:
    assert m.accepts(major, minor) is ok


# --- N-1: the previous minor ------------------------------------------------------------------


def test_previous_minor_datagrams_are_taken_whole() -> None:
    n = node()
    data = m.pack_datagram([m.encode(m.Alive(A)), m.encode(m.Alive(B))], N - 1)
    n.receive_datagram(data, A.addr, 1.0)
    assert names(n) == {"n0": MemberState.ALIVE, "n1": MemberState.ALIVE, "n2": MemberState.ALIVE}
    assert n.counters["msg.alive"] == 2
    assert not [k for k in n.counters if k.startswith(("drop.", "skip."))]


def test_an_unknown_type_from_our_own_or_an_older_minor_still_rejects_the_datagram() -> None:
    # A sender of our minor or older cannot have a type we lack: it is garbage, not the future.
    for minor in (N - 1, N):
        n = node()
        n.receive_datagram(packb([1, [wire(m.Alive(A)), [99, 1]], minor]), A.addr, 1.0)
        assert n.counters["drop.unknown_type"] == 1
        assert "n1" not in names(n)


# --- N+1: the next minor, partly understood ---------------------------------------------------


def future_datagram() -> bytes:
    """What a node of minor N+1 might send: a type we do not know, fields appended to a
    message, to a record, to a push-pull entry, and to the payload itself."""
    ping = wire(m.Ping(5, "n0", "n1", A.addr)) + ["a later field"]
    alive = wire(m.Alive(B))
    defaults: list[Any] = [0, 0, b"", b"", b"", b"", b""]  # fields 10..16 at their defaults
    alive[1] = alive[1] + defaults[len(alive[1]) - 10 :] + [b"record field 17"]
    pp = wire(m.PushPull(A, 9, False, 0, 1, (m.PushPullEntry(B, MemberState.ALIVE, 0),)))
    pp[6][0].append(0)  # age (known), then an element after it (not known)
    pp[6][0].append({"later": True})
    return packb([1, [[200, b"new type"], ping, alive, [201], pp], N + 1, "payload field"])


def test_next_minor_is_decoded_for_what_we_know_and_the_rest_skipped() -> None:
    counters: Counter[str] = Counter()
    msgs = m.decode(future_datagram(), N, counters)
    assert [type(x) for x in msgs] == [m.Ping, m.Alive, m.PushPull]
    assert counters == {"skip.unknown_type": 2}
    assert msgs[0] == m.Ping(5, "n0", "n1", A.addr)
    assert msgs[1] == m.Alive(B)


def test_a_node_applies_a_next_minor_datagram_and_answers_it() -> None:
    n = node()
    n.receive_datagram(future_datagram(), A.addr, 1.0, sender=A.node_id)
    assert names(n) == {"n0": MemberState.ALIVE, "n1": MemberState.ALIVE, "n2": MemberState.ALIVE}
    assert n.counters["skip.unknown_type"] == 2
    assert not [k for k in n.counters if k.startswith("drop.")]
    sent = n.datagrams_to_send()
    acks = [
        msg for data, addr, _ in sent if addr == A.addr for msg in m.decode(data) if msg == m.Ack(5)
    ]
    assert acks, "the ping of a newer minor was not acked"


def test_next_minor_carrying_only_unknown_types_changes_nothing() -> None:
    n = node()
    before = names(n)
    n.receive_datagram(packb([1, [[200], [201, 1, 2]], N + 1]), A.addr, 1.0)
    assert names(n) == before and n.counters["skip.unknown_type"] == 2
    assert not [k for k in n.counters if k.startswith("drop.")]


def test_a_known_message_of_the_next_minor_is_still_validated() -> None:
    n = node()
    bad_ping = wire(m.Ping(5, "n0", "n1", A.addr))
    bad_ping[4] = b"\x7f\0\0\1"  # loopback: never a member's address
    n.receive_datagram(packb([1, [wire(m.Alive(A)), [200], bad_ping], N + 1]), A.addr, 1.0)
    assert n.counters["drop.addr"] == 1 and "n1" not in names(n)
    assert n.counters["skip.unknown_type"] == 0  # all or nothing: not even counted


# --- refused: another major, a minor too far --------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason", "version"),
    [
        ([2, [[2, 1]]], "protocol_major", "2.0"),
        ([0, [[2, 1]], N], "protocol_major", f"0.{N}"),
        ([2, [[200, "anything"]], 5], "protocol_major", "2.5"),
        ([1, [[2, 1]], N + 2], "protocol_minor", f"1.{N + 2}"),
        ([1, [[2, 1]], 127], "protocol_minor", "1.127"),
    ],
)
def test_another_version_is_dropped_counted_and_shown(
    payload: list[Any], reason: str, version: str
) -> None:
    n = node()
    n.receive_datagram(m.pack_datagram([m.encode(m.Alive(A))]), A.addr, 0.5)
    n.datagrams_to_send()
    before = (names(n), n.local)
    payload[1].insert(0, wire(m.Alive(B)))  # news that must not be believed
    n.receive_datagram(packb(payload), ("10.0.0.9", 7950), 1.0, sender=b"\xab" * 16)
    assert (names(n), n.local) == before
    assert n.counters[f"drop.{reason}"] == 1
    assert n.protocol_status() == {
        "version": f"1.{N}",
        "accepts": f"1.{N - 1}-1.{N + 1}",
        "last_refused": {
            "version": version,
            "reason": reason,
            "addr": "10.0.0.9:7950",
            "sender": "ab" * 16,
        },
    }
    assert n.datagrams_to_send() == []  # not even an ack


def test_two_minors_apart_refuse_each_other_both_ways() -> None:
    net = Network(seed=5)
    a, b = make_record(0), make_record(1)
    net.add_node(a, seeds=[b.addr], protocol_minor=N - 1)  # each joins through the other
    net.add_node(b, seeds=[a.addr], protocol_minor=N + 1)
    net.run_for(10)
    assert set(net.view(0)) == {"n0"} and set(net.view(1)) == {"n1"}
    assert net.nodes[0].counters["drop.protocol_minor"] >= 1
    assert net.nodes[1].counters["drop.protocol_minor"] >= 1
    assert net.nodes[0].refused_version is not None
    assert net.nodes[0].refused_version["version"] == f"1.{N + 1}"


@pytest.mark.parametrize("seed", range(30))
def test_random_version_fields_never_raise_anything_but_a_drop(seed: int) -> None:
    rng = random.Random(seed)
    n = node()
    junk: list[Any] = [None, True, -1, 2**63, 1.0, "1", b"\x01", [], {}, 0, 1, 2, 127, 128]
    for _ in range(50):
        payload = [rng.choice(junk), [wire(m.Ack(1))]] + [rng.choice(junk)] * rng.randint(0, 2)
        n.receive_datagram(packb(payload), A.addr, 1.0)
    drops = sum(v for k, v in n.counters.items() if k.startswith("drop."))
    taken = n.counters["msg.ack"]
    assert drops + taken == 50 and drops > 0


# --- a mixed mesh, upgraded node by node (the simulator) ---------------------------------------


def test_a_rolling_upgrade_keeps_every_member_alive_and_learns_a_newcomer_midway() -> None:
    """Six nodes of the previous minor; each in turn stops and comes back as this release (same
    record, a higher incarnation, its members remembered, as the daemon restarts); halfway
    through, a newcomer of this release joins through a node of the previous one. Nobody is
    ever suspected or declared dead, everyone learns everyone, and no datagram is refused."""
    net = Network(seed=11)
    recs = [make_record(i) for i in range(6)]
    for r in recs:
        net.add_node(r, seeds=[] if r is recs[0] else [recs[0].addr], protocol_minor=N - 1)
    assert net.run_until_true(net.fully_converged, 30)
    assert net.log is not None
    net.log.clear()
    current = list(range(6))  # index in net.nodes of each record's running node
    for i, rec in enumerate(recs):
        old = net.nodes[current[i]]
        known = [x.record for x in old.members() if x.record.name != rec.name]
        net.crash(current[i])
        back = rec.with_incarnation(old.local.incarnation + 1)
        seed = recs[(i + 1) % len(recs)].addr
        current[i] = net.add_node(back, known=known, seeds=[seed], protocol_minor=N)
        assert net.run_until_true(net.fully_converged, 30), f"after upgrading {rec.name}"
        net.run_for(3)
        if i == 2:  # a mixed mesh: 3 upgraded, 3 not; the newcomer's seed is not upgraded
            assert net.nodes[current[4]].protocol_minor == N - 1
            net.add_node(make_record(6), seeds=[recs[4].addr], protocol_minor=N)
            assert net.run_until_true(net.fully_converged, 30), "the newcomer was not learnt"
    assert all(net.nodes[i].protocol_minor == N for i in net.live())
    assert len(net.live()) == 7 and net.fully_converged()
    bad = [e for e in net.log if e[2] in ("suspect", "dead")]
    assert bad == []
    refused = {
        k: v for i in net.live() for k, v in net.nodes[i].counters.items() if k.startswith("drop.")
    }
    assert refused == {}


def test_status_shows_the_version_spoken_and_the_last_refusal() -> None:
    n = node()
    assert fmt.protocol(n.protocol_status()) == [f"protocol  1.{N}, accepts 1.{N - 1}-1.{N + 1}"]
    n.receive_datagram(packb([2, [[2, 1]]]), ("10.0.0.9", 7950), 1.0, sender=b"\xab" * 16)
    (line,) = fmt.protocol(n.protocol_status())
    assert line.endswith(
        "; refused 2.0 from 10.0.0.9:7950 (protocol_major: a node of an incompatible release)"
    ), line
    assert fmt.protocol({}) == []  # a daemon before 0.2.0 says nothing of it
