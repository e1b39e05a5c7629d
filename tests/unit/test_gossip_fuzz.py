"""Property tests: whatever arrives, receive_datagram never raises and a rejected datagram never
changes the member table."""

from __future__ import annotations

import random

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.node import GossipNode
from meshd.sim import make_record

ME, A, B = make_record(0), make_record(1), make_record(2)


def fresh() -> GossipNode:
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0)
    n.join([], 0.0)
    for rec in (A, B):
        n.receive_datagram(m.pack_datagram([m.encode(m.Alive(rec))]), A.addr, 0.5)
    n.receive_datagram(m.pack_datagram([m.encode(m.Suspect(0, "n2", "n1"))]), A.addr, 0.6)
    return n


VALID = [
    m.pack_datagram([m.encode(x)])
    for x in (
        m.Ping(1, "n0", "n1", A.addr),
        m.IndirectPing(2, "n2", B.addr, "n1", A.addr, True),
        m.Ack(3),
        m.Suspect(0, "n1", "n2"),
        m.Alive(make_record(5)),
        m.Dead(0, "n1", "n2"),
        m.PushPull(
            make_record(6),
            1,
            False,
            0,
            1,
            (m.PushPullEntry(make_record(7), MemberState.DEAD, 0),),
            (m.KeyOp(b"o" * 16, "use", b"kid1", "n1", 3),),
        ),
        m.KeyOp(b"i" * 16, "install", b"k" * 32, "n2", 7),
    )
] + [m.pack_datagram([m.encode(m.Ack(9)), m.encode(m.Alive(make_record(8)))])]


def snapshot(n: GossipNode) -> list[tuple[str, bytes, str, int]]:
    return sorted(
        (x.record.name, x.record.node_id, x.state.value, x.record.incarnation) for x in n.members()
    )


def check(data: bytes) -> None:
    n = fresh()
    before = snapshot(n)
    msgs_before = sum(v for k, v in n.counters.items() if k.startswith("msg."))
    drops_before = sum(v for k, v in n.counters.items() if k.startswith("drop."))
    n.receive_datagram(data, ("192.0.2.1", 7950), 1.0)
    msgs_after = sum(v for k, v in n.counters.items() if k.startswith("msg."))
    if msgs_after == msgs_before:  # rejected as a whole: nothing may have changed
        assert snapshot(n) == before
        assert sum(v for k, v in n.counters.items() if k.startswith("drop.")) == drops_before + 1
    # Whatever happened, the node still works.
    n.handle_timer(n.get_timer() or 1.0)
    for out, _, _ in n.datagrams_to_send():
        assert len(out) <= GossipConfig().max_datagram - m.ENVELOPE_RESERVE


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_valid_datagrams(base: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(base)
    for pos, val in edits:
        data[pos % len(data)] = val
    check(bytes(data))


@FUZZ
@given(st.sampled_from(VALID), st.integers(0, 200))
def test_truncated_valid_datagrams(base: bytes, cut: int) -> None:
    check(base[: max(0, len(base) - 1 - cut)])


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.just(1.5)
    | st.text(max_size=70)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=12),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10), st.lists(msgpack_values, max_size=11))
def test_structurally_plausible_messages(msg_type: int, fields: list[object]) -> None:
    check(msgpack.packb([1, [[msg_type, *fields]]], use_bin_type=True))


BAD_SECOND = {
    "range": msgpack.packb([m.MsgType.ACK, -1]),
    "record": msgpack.packb([m.MsgType.ALIVE, [b"not a record"]]),
    "unknown_type": msgpack.packb([250]),
    "name": msgpack.packb([m.MsgType.SUSPECT, 1, "bad name!", "n1"]),
}


def test_datagram_with_a_bad_second_message_changes_nothing() -> None:
    """All or nothing: the valid news before the bad message is not applied either."""
    for reason, bad in BAD_SECOND.items():
        n = fresh()
        n.datagrams_to_send()
        n.pop_events()
        before = snapshot(n)
        news = make_record(9)
        data = m.pack_datagram(
            [m.encode(m.Alive(news)), bad, m.encode(m.Ping(4, "n0", "n1", A.addr))]
        )
        n.receive_datagram(data, A.addr, 1.0)
        assert n.counters[f"drop.{reason}"] == 1, (reason, dict(n.counters))
        assert snapshot(n) == before, reason
        assert news.name not in {x.record.name for x in n.members()}
        assert n.pop_events() == [] and n.datagrams_to_send() == [], reason  # not even the ack
    # the same datagram without the bad message is applied whole
    n = fresh()
    n.receive_datagram(
        m.pack_datagram([m.encode(m.Alive(news)), m.encode(m.Ping(4, "n0", "n1", A.addr))]),
        A.addr,
        1.0,
    )
    assert news.name in {x.record.name for x in n.members()}
    assert any(addr == A.addr for _, addr, _ in n.datagrams_to_send())
