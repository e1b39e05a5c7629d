from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import msgpack
import pytest

from meshd.gossip import messages as m
from meshd.gossip.events import MemberState
from meshd.gossip.record import NodeRecord
from meshd.sim import make_record

REC = make_record(7)


def roundtrip(msg: m.Message) -> m.Message:
    out = m.decode(m.pack_datagram([m.encode(msg)]))
    assert len(out) == 1
    return out[0]


@pytest.mark.parametrize(
    "msg",
    [
        m.Ping(1, "n1", "n2", ("172.16.0.2", 7950)),
        m.IndirectPing(2**32 - 1, "n1", ("10.0.0.1", 1), "n2", ("10.0.0.2", 65535), True),
        m.Ack(0),
        m.Nack(5),
        m.Suspect(3, "n1", "n2"),
        m.Alive(REC),
        m.Dead(2**63 - 1, "n1", "n1"),
        m.PushPull(REC, 9, True, 0, 1, (m.PushPullEntry(make_record(1), MemberState.LEFT, 4),)),
    ],
)
def test_every_message_type_roundtrips(msg: m.Message) -> None:
    assert roundtrip(msg) == msg


def test_compound_carries_several_messages_in_order() -> None:
    parts = [m.encode(m.Ack(1)), m.encode(m.Alive(REC)), m.encode(m.Nack(2))]
    assert m.decode(m.pack_datagram(parts)) == [m.Ack(1), m.Alive(REC), m.Nack(2)]


def test_compound_header_of_16_and_more_messages() -> None:
    parts = [m.encode(m.Ack(i)) for i in range(40)]
    data = m.pack_datagram(parts)
    assert len(data) <= sum(map(len, parts)) + m.DATAGRAM_OVERHEAD
    assert m.decode(data) == [m.Ack(i) for i in range(40)]


def test_type_numbers_are_append_only() -> None:
    # On the wire: changing these breaks every deployed node.
    assert [t.value for t in m.MsgType] == list(range(12))
    assert [t.name for t in m.MsgType] == [
        "PING",
        "INDIRECT_PING",
        "ACK",
        "NACK",
        "SUSPECT",
        "ALIVE",
        "DEAD",
        "PUSH_PULL",
        "KEY_OP",
        "SYNC_DIGEST",
        "CRL",
        "RESEND",
    ]
    assert m.KEY_OPS == ("install", "use", "remove")


def test_trailing_fields_from_a_newer_revision_are_ignored() -> None:
    raw = msgpack.packb([1, [[int(m.MsgType.ACK), 7, "future"]], m.PROTOCOL_MINOR])
    assert m.decode(raw) == [m.Ack(7)]


def bad(obj: object) -> str:
    """Why ``obj`` framed as a datagram is refused; a two-element datagram is given our minor."""
    if isinstance(obj, list) and len(obj) == 2:
        obj = [*obj, m.PROTOCOL_MINOR]
    with pytest.raises(m.DecodeError) as exc:
        m.decode(msgpack.packb(obj, use_bin_type=True))
    return exc.value.reason


def test_invalid_datagrams_are_rejected_with_a_reason() -> None:
    assert bad(5) == "malformed"
    assert bad([2, [[2, 1]]]) == "protocol_major"
    assert bad([True, [[2, 1]]]) == "malformed"
    assert bad([1, [[2, 1]], m.PROTOCOL_MINOR + 2]) == "protocol_minor"
    assert bad([1, [[2, 1]], m.PROTOCOL_MINOR - 2]) == "protocol_minor"
    assert bad([1, [[2, 1]], -1]) == "malformed"
    assert bad([1, [[2, 1]], "1"]) == "malformed"
    assert bad([1, []]) == "malformed"
    assert bad([1, [[99, 1]]]) == "unknown_type"
    assert bad([1, [[2]]]) == "malformed"
    assert bad([1, [[2, -1]]]) == "range"
    assert bad([1, [[2, 2**32]]]) == "range"
    assert bad([1, [[2, True]]]) == "range"
    assert bad([1, [[4, 1, "bad name!", "n2"]]]) == "name"
    assert bad([1, [[4, 1, "n1", 5]]]) == "name"
    assert bad([1, [[0, 1, "n1", "n2", b"\0\0\0\0", 1]]]) == "addr"
    assert bad([1, [[0, 1, "n1", "n2", b"\xe0\0\0\1", 1]]]) == "addr"
    assert bad([1, [[0, 1, "n1", "n2", b"\1\2\3", 1]]]) == "addr"
    assert bad([1, [[0, 1, "n1", "n2", b"\1\2\3\4", 0]]]) == "range"
    assert bad([1, [[1, 1, "n1", b"\1\2\3\4", 1, "n2", b"\1\2\3\4", 2, 1]]]) == "malformed"
    assert bad([1, [[5, ["n1"]]]]) == "record"
    wire = REC.to_wire()
    wire[3] = 0  # port
    assert bad([1, [[5, wire]]]) == "record"
    wire = REC.to_wire()
    wire[8] = True  # incarnation must be an int, not a bool
    assert bad([1, [[5, wire]]]) == "record"
    # One bad message rejects the whole datagram.
    assert bad([1, [[2, 1], [3, -1]]]) == "range"


def test_push_pull_entries_are_validated() -> None:
    head = [7, REC.to_wire(), 1, False, 0, 1]
    assert bad([1, [[*head, [[REC.to_wire(), 4, 0]]]]]) == "range"
    assert bad([1, [[*head, [[REC.to_wire(), 0]]]]]) == "malformed"
    assert bad([1, [[*head, "x"]]]) == "malformed"
    assert bad([1, [[7, REC.to_wire(), 1, False, 1, 1, []]]]) == "malformed"
    assert bad([1, [[7, REC.to_wire(), 1, False, 0, 0, []]]]) == "range"


def test_garbage_is_a_decode_error() -> None:
    for data in (b"", b"\xc1", b"\x92\x01", b"\x92\x01\x91\x92\x02\x01extra", bytes(range(256))):
        with pytest.raises(m.DecodeError):
            m.decode(data)


def test_push_pull_is_cut_into_chunks_within_budget() -> None:
    entries = [m.PushPullEntry(make_record(i), MemberState.ALIVE, 0) for i in range(300)]
    budget = 1400 - m.ENVELOPE_RESERVE - m.DATAGRAM_OVERHEAD
    chunks = m.encode_push_pull(REC, 42, False, [m.encode_entry(*e) for e in entries], budget)
    assert len(chunks) > 10
    seen: list[NodeRecord] = []
    for i, chunk in enumerate(chunks):
        assert len(chunk) <= budget
        data = m.pack_datagram([chunk])
        assert len(data) <= 1400 - m.ENVELOPE_RESERVE
        (pp,) = m.decode(data)
        assert isinstance(pp, m.PushPull)
        assert (pp.sender, pp.sync_id, pp.reply, pp.index, pp.count) == (
            REC,
            42,
            False,
            i,
            len(chunks),
        )
        seen.extend(e.record for e in pp.entries)
    assert seen == [e.record for e in entries]


def test_empty_state_is_one_chunk() -> None:
    (chunk,) = m.encode_push_pull(REC, 1, True, [], 1000)
    (pp,) = m.decode(m.pack_datagram([chunk]))
    assert isinstance(pp, m.PushPull) and pp.entries == () and pp.count == 1


@pytest.mark.parametrize("junk", [[1, 2], {"a": 1}])
def test_record_with_an_unhashable_field_is_a_record_error(junk: object) -> None:
    # Found by hypothesis: the decoder's record cache hashed the fields before checking them.
    fields = make_record(3).to_wire()
    for i in (0, 10):
        bad = list(fields)
        bad[i] = junk
        data = msgpack.packb([m.PROTOCOL_VERSION, [[int(m.MsgType.ALIVE), bad]], m.PROTOCOL_MINOR])
        with pytest.raises(m.DecodeError) as err:
            m.decode(data)
        assert err.value.reason == "record"


def test_backend_travels_as_code_or_name() -> None:
    # Protocol 1's backends keep their wire codes (older members read them); another travels as
    # its name, and both decode the same way on a cache miss and on a hit.
    assert make_record(4).to_wire()[5] == 2  # vxlan
    named = dataclasses.replace(make_record(4), backend="wireguard", vtep_mac=None)
    assert named.to_wire()[5] == "wireguard"
    for _ in range(2):
        assert roundtrip(m.Alive(named)) == m.Alive(named)
    for bad in (2.0, True, b"vxlan"):
        fields = named.to_wire()
        fields[5] = bad
        data = msgpack.packb(
            [m.PROTOCOL_VERSION, [[int(m.MsgType.ALIVE), fields]], m.PROTOCOL_MINOR]
        )
        with pytest.raises(m.DecodeError) as err:
            m.decode(data)
        assert err.value.reason == "record", bad


def test_resend_round_trips_and_is_validated() -> None:
    msg = m.Resend(7, "n1", (0, 3, 65534))
    assert m.decode(m.pack_datagram([m.encode(msg)])) == [msg]
    assert bad([1, [[11, 7, "n1", []]]]) == "malformed"  # asks for nothing
    assert bad([1, [[11, 7, "n1", [1, 1]]]]) == "malformed"  # twice the same chunk
    assert bad([1, [[11, 7, "n1", list(range(m.MAX_RESEND + 1))]]]) == "malformed"
    assert bad([1, [[11, 7, "n1", [65535]]]]) == "range"
    assert bad([1, [[11, 7, "bad name!", [1]]]]) == "name"
    assert bad([1, [[11, 7, "n1"]]]) == "malformed"


def test_a_node_of_the_previous_minor_skips_resend() -> None:
    data = m.pack_datagram([m.encode(m.Ack(1)), m.encode(m.Resend(7, "n1", (2,)))])
    counters: Counter[str] = Counter()
    assert m.decode(data, m.PROTOCOL_MINOR - 1, counters) == [m.Ack(1)]
    assert counters["skip.unknown_type"] == 1


V6 = dataclasses.replace(
    make_record(5), public_ip="2001:db8::5", subnet="fd00:10:244:5::/64", vtep_mac=None
)
DUAL = dataclasses.replace(make_record(6), public_ip6="2001:db8::6", subnet6="fd00:10:244:6::/64")


@pytest.mark.parametrize("rec", [V6, DUAL], ids=["ipv6-only", "dual-stack"])
def test_ipv6_and_dual_stack_records_round_trip(rec: NodeRecord) -> None:
    for _ in range(2):  # a cache miss, then a hit
        assert roundtrip(m.Alive(rec)) == m.Alive(rec)
    assert NodeRecord.from_dict(rec.to_dict()) == rec


def test_ipv6_only_record_on_the_wire() -> None:
    # No IPv4 address or subnet: fields 2 and 4 are zero (a member of 1.2 refuses the record),
    # fields 12 and 13 carry the node's IPv6 underlay address and subnet.
    wire = V6.to_wire()
    assert wire[2] == bytes(4) and wire[4] == bytes(5)
    assert len(wire[12]) == 16 and len(wire[13]) == 17
    assert V6.subnets == ("fd00:10:244:5::/64",) and V6.ip_version == 6
    assert V6.subnet_of(4) is None and V6.subnet_of(6) == "fd00:10:244:5::/64"
    assert V6.underlay_of(4) is None and V6.underlay_of(6) == "2001:db8::5"
    assert V6.addr == ("2001:db8::5", V6.port)


def test_dual_stack_record_keeps_the_ipv4_fields_older_members_read() -> None:
    wire = DUAL.to_wire()
    ipv4_only = make_record(6).to_wire()
    assert wire[: len(ipv4_only)] == ipv4_only  # what a member before dual-stack reads
    assert DUAL.subnets == (DUAL.subnet, "fd00:10:244:6::/64") and DUAL.ip_version == 4
    assert DUAL.underlay_of(6) == "2001:db8::6" and DUAL.underlay_of(4) == DUAL.public_ip
    assert DUAL.subnet_of(4) == DUAL.subnet and ":" not in DUAL.subnet


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"public_ip": "fe80::1"}, "public_ip"),  # link-local: needs a zone
        ({"public_ip": "::1"}, "public_ip"),
        ({"public_ip": "2001:db8::5%eth0"}, "public_ip"),  # a zone means nothing to a peer
        ({"public_ip6": "2001:db8::6%2"}, "public_ip6"),
        ({"public_ip": "::ffff:10.0.0.1"}, "public_ip"),
        ({"public_ip": "2001:db8::5", "public_ip6": "2001:db8::6"}, "public_ip6"),
        ({"subnet": "fd00::/64", "subnet6": "fd00:1::/64"}, "subnet6"),
        ({"subnet6": "10.1.0.0/24"}, "subnet6"),
        ({"subnet": "fd00::1/64"}, "subnet"),
    ],
)
def test_bad_dual_stack_fields_are_refused(changes: dict[str, Any], field: str) -> None:
    from meshd.gossip.record import RecordError, validate

    with pytest.raises(RecordError, match=f"^{field}:"):
        validate(dataclasses.replace(make_record(5), **changes))


def test_ipv6_addresses_in_pings_round_trip_and_are_checked() -> None:
    ping = m.Ping(1, "n1", "n2", ("2001:db8::2", 7950))
    assert roundtrip(ping) == ping
    ind = m.IndirectPing(3, "n1", ("2001:db8::1", 1), "n2", ("10.0.0.2", 2), False)
    assert roundtrip(ind) == ind
    for bad in ("ff02::1", "::1", "fe80::1"):
        data = m.pack_datagram([m.encode(m.Ping(1, "n1", "n2", (bad, 7950)))])
        with pytest.raises(m.DecodeError) as err:
            m.decode(data)
        assert err.value.reason == "addr", bad
