from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.gossip.security import (
    OVERHEAD,
    KeyFormatError,
    Keyring,
    OpenError,
    Sealer,
    decode_key,
    generate_key,
    key_id,
)

NOW = 1_800_000_000.0


def ring(*keys: bytes) -> Keyring:
    return Keyring(tuple(keys))


K1, K2 = os.urandom(32), os.urandom(32)


def test_roundtrip_and_overhead() -> None:
    s = Sealer(ring(K1))
    d = s.seal(b"payload", NOW)
    assert len(d) == len(b"payload") + OVERHEAD
    assert d[0] == 1 and d[1:5] == key_id(K1)
    assert Sealer(ring(K1)).open(d, NOW + 1) == b"payload"


def test_wrong_key_is_unknown_and_tamper_fails_auth() -> None:
    d = Sealer(ring(K1)).seal(b"x" * 40, NOW)
    with pytest.raises(OpenError) as e:
        Sealer(ring(K2)).open(d, NOW)
    assert e.value.reason == "unknown_key"
    for i in (0, 3, 10, 20, len(d) - 1):
        bad = bytearray(d)
        bad[i] ^= 0x01
        with pytest.raises(OpenError) as e:
            Sealer(ring(K1)).open(bytes(bad), NOW)
        assert e.value.reason in ("auth", "version", "unknown_key")


def test_replay_and_stale_rejected() -> None:
    s = Sealer(ring(K1))
    d = s.seal(b"hi", NOW)
    r = Sealer(ring(K1), window=60)
    assert r.open(d, NOW) == b"hi"
    with pytest.raises(OpenError, match="replay"):
        r.open(d, NOW + 5)
    with pytest.raises(OpenError, match="stale"):
        Sealer(ring(K1), window=60).open(d, NOW + 61)
    with pytest.raises(OpenError, match="stale"):
        Sealer(ring(K1), window=60).open(d, NOW - 61)


def test_nonce_cache_expires_but_stale_bound_still_protects() -> None:
    r = Sealer(ring(K1), window=10)
    d = Sealer(ring(K1)).seal(b"a", NOW)
    r.open(d, NOW)
    r.open(Sealer(ring(K1)).seal(b"b", NOW + 25), NOW + 25)  # expires the first nonce
    with pytest.raises(OpenError, match="stale"):
        r.open(d, NOW + 25)


def test_rotation_secondary_key_opens_primary_seals() -> None:
    old, new = ring(K1), ring(K2, K1)
    assert Sealer(new).open(Sealer(old).seal(b"a", NOW), NOW) == b"a"
    assert Sealer(new).seal(b"b", NOW)[1:5] == key_id(K2)


def test_keyring_parse() -> None:
    text = f"# comment\n{base64.b64encode(K1).decode()}\n\n{base64.b64encode(K2).decode()} # 2nd\n"
    kr = Keyring.parse(text)
    assert kr.keys == (K1, K2) and kr.primary == K1
    assert Keyring.parse(kr.dump()) == kr
    with pytest.raises(KeyFormatError, match="line 1"):
        Keyring.parse("not-base64!!")
    with pytest.raises(KeyFormatError, match="32 bytes"):
        Keyring.parse(base64.b64encode(b"short").decode())
    with pytest.raises(KeyFormatError, match="empty"):
        Keyring.parse("# nothing\n")
    assert len(decode_key(generate_key())) == 32


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_never_open(data: bytes) -> None:
    r = Sealer(ring(K1))
    with pytest.raises(OpenError):
        r.open(data, NOW)


def test_oversized_datagram_refused_before_decryption() -> None:
    big = Sealer(ring(K1)).seal(b"x" * 2000, NOW)
    assert Sealer(ring(K1)).open(big, NOW) == b"x" * 2000  # authentic, and opens without a limit
    with pytest.raises(OpenError) as exc:
        Sealer(ring(K1), max_datagram=1400).open(big, NOW)
    assert exc.value.reason == "too_big"
    junk = big[:40] + bytes(len(big) - 40)  # garbage after a valid header: no decryption tried
    with pytest.raises(OpenError) as exc:
        Sealer(ring(K1), max_datagram=1400).open(junk, NOW)
    assert exc.value.reason == "too_big"
    fits = Sealer(ring(K1)).seal(b"y" * 1000, NOW)
    assert Sealer(ring(K1), max_datagram=1400).open(fits, NOW) == b"y" * 1000
