"""Property tests over the signed-record decoder: whatever arrives, only DecodeError comes out;
a signed record survives the wire; any change to a signed record's fields or signature fails
verification."""

from __future__ import annotations

from dataclasses import replace

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.gossip import messages as m
from meshd.gossip.record import NodeRecord
from meshd.sim import SIM_WALL, SimPKI, make_record

PKI = SimPKI(seed=11)
TRUST = PKI.trust.fork()
SIGNED = PKI.signed(replace(make_record(1), public_ip6="2001:db8::7", subnet6="2001:db8:7::/64"))
WIRE = bytes(msgpack.packb(SIGNED.to_wire(), use_bin_type=True))
CERT_AT = WIRE.index(SIGNED.cert)
OUTSIDE_CERT = [i for i in range(len(WIRE)) if not CERT_AT <= i < CERT_AT + len(SIGNED.cert)]
"""The certificate is not a signed field (its CA's signature covers it, certificate.py's tests
mutate it); every other byte is a field, the signature, or framing."""
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

fields = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.sampled_from(SIGNED.to_wire()),
    st.lists(st.integers(), max_size=3),
)


def decode_record(raw: object) -> NodeRecord | None:
    """The decoder as a datagram reaches it (an Alive message); None when refused."""
    try:
        data = m.pack_datagram([bytes(msgpack.packb([int(m.MsgType.ALIVE), raw]))])
    except (TypeError, ValueError, OverflowError):
        return None
    try:
        (msg,) = m.decode(data)
    except m.DecodeError:
        return None
    assert isinstance(msg, m.Alive)
    return msg.record


@FUZZ
@given(st.lists(fields, min_size=0, max_size=18))
def test_random_structures_are_decoded_or_refused(raw: list[object]) -> None:
    rec = decode_record(raw)
    if rec is not None:  # then it is valid and round-trips
        assert decode_record(rec.to_wire()) == rec


@FUZZ
@given(st.integers(min_value=0, max_value=15), fields)
def test_one_field_replaced_never_verifies(index: int, value: object) -> None:
    raw = SIGNED.to_wire()
    raw[index] = value
    rec = decode_record(raw)
    if rec is not None and rec != SIGNED:
        assert TRUST.verify(rec, SIM_WALL)[0] is None


def test_a_signed_record_round_trips_and_verifies() -> None:
    rec = decode_record(SIGNED.to_wire())
    assert rec == SIGNED and rec.sig == SIGNED.sig and rec.cert == SIGNED.cert
    got = TRUST.verify(rec, SIM_WALL)[0]
    assert got is not None and got.claim_rank is not None


@FUZZ
@given(st.sampled_from(OUTSIDE_CERT), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_fails_verification(pos: int, delta: int) -> None:
    data = bytearray(WIRE)
    data[pos] = (data[pos] + delta) % 256
    try:
        raw = msgpack.unpackb(bytes(data), raw=False)
    except Exception:  # noqa: BLE001 - not msgpack any more: refused before any record
        return
    rec = decode_record(raw)
    if rec is not None:
        assert rec != SIGNED or bytes(msgpack.packb(rec.to_wire())) == WIRE
        if rec != SIGNED:
            assert TRUST.verify(rec, SIM_WALL)[0] is None


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_as_a_record(data: bytes) -> None:
    decode_record(data)
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception:  # noqa: BLE001
        return
    decode_record(raw)
