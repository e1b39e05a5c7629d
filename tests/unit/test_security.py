from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from unittest import mock

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.gossip import messages
from meshd.gossip import security as sec
from meshd.gossip.security import (
    ANY,
    HEADER_LEN,
    MAX_KEYS,
    OVERHEAD,
    KeyFormatError,
    Keyring,
    Opened,
    OpenError,
    Sealer,
    decode_key,
    generate_key,
    key_id,
)

NOW = 1_800_000_000.0
ME, PEER, OTHER = (bytes([i]) * 16 for i in (1, 2, 3))


def ring(*keys: bytes) -> Keyring:
    return Keyring(tuple(keys))


def sealer(*keys: bytes, me: bytes = ME, **kw: float) -> Sealer:
    return Sealer(ring(*keys), me, **kw)  # type: ignore[arg-type]


K1, K2 = os.urandom(32), os.urandom(32)


def reason(s: Sealer, data: bytes, now: float = NOW) -> str:
    with pytest.raises(OpenError) as exc:
        s.open(data, now)
    return exc.value.reason


def test_roundtrip_overhead_and_header() -> None:
    d = sealer(K1, me=PEER).seal(b"payload", NOW, ME)
    assert len(d) == len(b"payload") + OVERHEAD
    assert OVERHEAD == messages.ENVELOPE_RESERVE == 53 and HEADER_LEN == 33
    # version 2 | key hint 2 | nonce 12 | sender 16 | recipient hint 2 (the full key id and
    # recipient id are in the associated data, not on the wire)
    assert d[0] == 2 and d[1:3] == key_id(K1)[:2] == hashlib.sha256(K1).digest()[:2]
    assert d[15:31] == PEER and d[31:33] == ME[:2]
    assert sealer(K1).open(d, NOW + 1) == Opened(b"payload", PEER, False, int(NOW))
    assert messages.KEY_ID_LEN == sec.KEY_ID_LEN == 16


def test_recipient_is_bound_any_is_anyone_and_self_is_dropped() -> None:
    d = sealer(K1, me=PEER).seal(b"for me", NOW, ME)
    # Addressed to ME: another member, holding the same key, drops it before any decryption.
    assert reason(sealer(K1, me=OTHER), d) == "misaddressed"
    with mock.patch.object(AESGCM, "decrypt", side_effect=AssertionError("decrypted")):
        assert reason(sealer(K1, me=OTHER), d) == "misaddressed"
    anyone = sealer(K1, me=PEER).seal(b"hello", NOW, b"")
    assert anyone[0] == 0x82 and anyone[31:33] == ANY[:2] == bytes(2)
    assert sealer(K1, me=OTHER).open(anyone, NOW) == Opened(b"hello", PEER, True, int(NOW))
    assert sealer(K1).open(anyone, NOW).to_any
    # Our own datagram coming back (a reflected "any", or our id forged): dropped.
    assert reason(sealer(K1, me=PEER), anyone) == "self"


def test_sender_and_recipient_are_authenticated() -> None:
    d = bytearray(sealer(K1, me=PEER).seal(b"x", NOW, ME))
    forged_sender = bytes(d[:15] + OTHER + d[31:])
    assert reason(sealer(K1), forged_sender) == "auth"
    # Readdressing to "any" (so anyone would take it) breaks the tag as well.
    to_any = bytes([d[0] | 0x80]) + bytes(d[1:31]) + ANY[:2] + bytes(d[33:])
    assert reason(sealer(K1, me=OTHER), to_any) == "auth"
    # A member whose id shares our hint gets past the hint, not past the tag: the full
    # recipient id is authenticated.
    twin = ME[:2] + bytes(14)
    assert reason(sealer(K1, me=twin), bytes(d)) == "auth"


def test_seal_refuses_a_bad_recipient_and_sealer_a_bad_id() -> None:
    with pytest.raises(ValueError):
        sealer(K1).seal(b"x", NOW, b"short")
    with pytest.raises(ValueError):
        Sealer(ring(K1), ANY)
    with pytest.raises(ValueError):
        Sealer(ring(K1), b"\x01" * 4)


def test_wrong_key_is_unknown_and_tamper_fails_auth() -> None:
    d = sealer(K1, me=PEER).seal(b"x" * 40, NOW, ME)
    assert reason(sealer(K2), d) == "unknown_key"
    for i in (0, 3, 10, 20, 30, 50, 70, len(d) - 1):
        bad = bytearray(d)
        bad[i] ^= 0x01
        assert reason(sealer(K1), bytes(bad)) in ("auth", "version", "unknown_key", "misaddressed")


def test_replay_and_stale_rejected() -> None:
    d = sealer(K1, me=PEER).seal(b"hi", NOW, ME)
    r = sealer(K1, window=60)
    assert r.open(d, NOW).payload == b"hi"
    assert reason(r, d, NOW + 5) == "replay"
    assert reason(sealer(K1, window=60), d, NOW + 61) == "stale"
    assert reason(sealer(K1, window=60), d, NOW - 61) == "stale"
    # An authentic but stale datagram says who sealed it and when (doctor's clock skew).
    with pytest.raises(OpenError) as exc:
        sealer(K1, window=60).open(d, NOW + 61)
    assert (exc.value.sender, exc.value.sent_at) == (PEER, NOW)


def test_nonce_cache_expires_but_stale_bound_still_protects() -> None:
    r = sealer(K1, window=10)
    d = sealer(K1, me=PEER).seal(b"a", NOW, ME)
    r.open(d, NOW)
    r.open(sealer(K1, me=PEER).seal(b"b", NOW + 25, ME), NOW + 25)  # expires the first nonce
    assert reason(r, d, NOW + 25) == "stale"


def test_full_nonce_cache_shrinks_the_window_instead_of_forgetting_replays() -> None:
    peer = sealer(K1, me=PEER)
    r = sealer(K1)
    with mock.patch.object(sec, "NONCE_CACHE_MAX", 3):
        first = peer.seal(b"0", NOW, ME)
        r.open(first, NOW)
        for i in range(1, 4):
            r.open(peer.seal(b"%d" % i, NOW + i, ME), NOW + i)
        assert len(r._seen) == 3  # the first nonce was forgotten...
        assert reason(r, first, NOW + 4) == "stale"  # ...and cannot come back
        # Sealed no later than the forgotten one: refused too, although never seen.
        assert reason(r, peer.seal(b"late", NOW - 1, ME), NOW + 4) == "stale"
        assert r.open(peer.seal(b"new", NOW + 4, ME), NOW + 4).payload == b"new"


def test_nonce_cache_memory_is_what_the_docstring_says() -> None:
    # The documented ~11 MiB at NONCE_CACHE_MAX: measure a tenth of it and scale.
    r = sealer(K1)
    n = sec.NONCE_CACHE_MAX // 10
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        r._seen[os.urandom(sec.NONCE_LEN)] = NOW + i / 1000
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per_entry = used / n
    assert 120 < per_entry < 230, per_entry  # docstring: 150-175 bytes
    assert per_entry * sec.NONCE_CACHE_MAX < 16 * 2**20


def test_rotation_secondary_key_opens_primary_seals() -> None:
    old, new = Sealer(ring(K1), PEER), Sealer(ring(K2, K1), ME)
    assert new.open(old.seal(b"a", NOW, ME), NOW).payload == b"a"
    assert new.seal(b"b", NOW, PEER)[1:3] == key_id(K2)[:2]


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


def test_keyring_holds_at_most_max_keys() -> None:
    keys = [os.urandom(32) for _ in range(MAX_KEYS + 1)]
    assert len(Keyring(tuple(keys[:MAX_KEYS])).keys) == MAX_KEYS == 4
    with pytest.raises(KeyFormatError, match="at most 4 keys, got 5") as exc:
        Keyring(tuple(keys))
    assert "\n" not in str(exc.value)
    with pytest.raises(KeyFormatError, match="at most 4"):
        Keyring.parse("\n".join(base64.b64encode(k).decode() for k in keys))


def test_keyring_refuses_two_keys_with_one_id() -> None:
    # A real collision of 128-bit ids cannot be produced; make key_id collide.
    with (
        mock.patch.object(sec, "key_id", lambda k: b"\0" * 16),
        pytest.raises(KeyFormatError, match="share the key id"),
    ):
        Keyring((K1, K2))


def test_keyring_refuses_two_keys_with_one_hint() -> None:
    # Datagrams name their key by its id's first two bytes: two such keys cannot share a ring.
    with (
        mock.patch.object(sec, "key_id", lambda k: b"\xab\xcd" + k[:14]),
        pytest.raises(KeyFormatError, match="starts like another key's \\(abcd\\)"),
    ):
        Keyring((K1, K2))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_never_open(data: bytes) -> None:
    r = sealer(K1)
    with pytest.raises(OpenError):
        r.open(data, NOW)


def test_oversized_datagram_refused_before_decryption() -> None:
    peer = sealer(K1, me=PEER)
    big = peer.seal(b"x" * 2000, NOW, ME)
    assert sealer(K1).open(big, NOW).payload == b"x" * 2000  # authentic; no limit set
    assert reason(sealer(K1, max_datagram=1400), big) == "too_big"
    junk = big[:HEADER_LEN] + bytes(len(big) - HEADER_LEN)  # garbage after a valid header
    with mock.patch.object(AESGCM, "decrypt", side_effect=AssertionError("decrypted")):
        assert reason(sealer(K1, max_datagram=1400), junk) == "too_big"
        assert reason(sealer(K1, max_datagram=1400), bytes(65000)) == "too_big"
    fits = peer.seal(b"y" * 1000, NOW, ME)
    assert sealer(K1, max_datagram=1400).open(fits, NOW).payload == b"y" * 1000
