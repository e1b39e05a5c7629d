"""Keyring and AEAD framing of every datagram (bytes -> bytes; the caller passes ``now``).

Envelope version 2 (all integers big-endian)::

    +-----------+----------+--------+-----------+-----------+-----------------------------------+
    | version   | key hint | nonce  | sender id | recipient | AES-256-GCM( timestamp u32 s |     |
    | 1 B = 2   | 2 B      | 12 B   | 16 B      | hint 2 B  |   payload ) + 16-byte tag         |
    | (+0x80:   |          |        |           |           |                                   |
    |  to any)  |          |        |           |           |                                   |
    +-----------+----------+--------+-----------+-----------+-----------------------------------+

The associated data is the clear header (33 bytes) followed by the full 16-byte key id and the
full 16-byte node id of the recipient (all zeros for "any"), which the receiver knows without
reading them off the wire: version, key, nonce, sender and recipient are all authenticated, at 32
bytes less per datagram than sending both ids (a quarter of an idle probe's bytes). The hints
are their first two bytes: the recipient hint lets a member drop a datagram addressed to another
before any decryption (``misaddressed``), the key hint selects the key without trial decryption
(a keyring refuses two keys sharing an id or a hint). A datagram is accepted only by its
addressee: re-sent to another member it fails there, so a captured datagram cannot be replayed
across members. "Any" (the high bit of the version byte) is used only for a joiner's first
contact with a seed whose node id it does not know. Overhead: 33 + 4 + 16 = 53 bytes
(messages.ENVELOPE_RESERVE).

Checks, in order, the cheap ones first (each failure is ``OpenError(reason)``, the counter
``drop.<reason>``): ``short``, ``too_big`` (larger than anything a member seals: refused before any
decryption), ``version``, ``misaddressed`` (recipient hint neither ours nor any), ``self`` (our
own node id as sender: our datagram reflected back), ``unknown_key``, ``auth`` (also a datagram
for another member whose id shares our hint), ``stale``, ``replay``.

Replay protection: a datagram whose sealed timestamp (whole seconds) is further than ``window``
seconds from ``now`` is rejected (``stale``); within the window every nonce is remembered, and a
nonce seen before is rejected (``replay``). Nonces are 96 random bits, so a collision between
honest senders is negligible. The nonce cache is bounded (NONCE_CACHE_MAX); when it is full the
oldest nonce is forgotten and the accepted window shrinks behind it (nothing sealed in or before
the second of a forgotten nonce is accepted), so overload costs freshness, never replay
protection. Nothing is parsed before authentication succeeds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENVELOPE_VERSION = 2
TO_ANY = 0x80
"""Set in the version byte: the datagram is addressed to any member (ANY), not by node id."""
HINT_LEN = 2
"""Bytes of the key id and of the recipient's node id sent in the clear (their first bytes)."""
KEY_LEN = 32
KEY_ID_LEN = 16
NONCE_LEN = 12
NODE_ID_LEN = 16
TAG_LEN = 16
ANY = bytes(NODE_ID_LEN)
"""The recipient id of a datagram any member may open (a joiner's first contact with a seed)."""
MAX_KEYS = 4
"""Keys a ring may hold: the primary, the next one during a rotation, and room for a rotation
that overlaps another. Every key costs a cipher and is a key an attacker may hold."""
_HEADER = struct.Struct("!B2s12s16s2s")
_TS = struct.Struct("!I")
HEADER_LEN = _HEADER.size
OVERHEAD = _HEADER.size + _TS.size + TAG_LEN
REPLAY_WINDOW = 60.0
"""Seconds of clock skew tolerated between members; nonces are cached for twice this."""
NONCE_CACHE_MAX = 65_536
"""Upper bound on remembered nonces, so a flood cannot grow memory without bound. Measured at
150-175 bytes per entry (an OrderedDict of 12-byte nonces; benchmarks/bench_envelope.py): 10-11 MiB
when full, enough for 546 datagrams/s sustained over the 120 s a nonce is kept -- over ten times
what a member of a 10,000-node mesh receives. Beyond it the window shrinks (module docstring)."""


class KeyFormatError(ValueError):
    """A key or keyring is malformed (not 32 bytes of base64, too many keys, an id collision)."""


class OpenError(Exception):
    """A datagram was rejected; ``reason`` is the counter name (auth, replay, stale, ...).
    A ``stale`` one was authentic: ``sender`` and ``sent_at`` say who sealed it and when, by
    their clock (what ``meshd doctor`` reports as that member's clock skew)."""

    def __init__(self, reason: str, sender: bytes = b"", sent_at: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sender = sender
        self.sent_at = sent_at


@dataclass(frozen=True, slots=True)
class Opened:
    """An authenticated datagram: its payload, its sender's node id, and whether it was
    addressed to any member rather than to us by node id."""

    payload: bytes
    sender: bytes
    to_any: bool
    sent_at: int = 0  # the sealed timestamp: unix seconds by the sender's clock


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:KEY_ID_LEN]


def generate_key() -> str:
    """A fresh cluster key, base64, as `meshd keygen` prints it."""
    return base64.b64encode(os.urandom(KEY_LEN)).decode()


def decode_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("key is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise KeyFormatError(f"key must be {KEY_LEN} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class Keyring:
    """The primary key seals; every key in ``keys`` opens. ``keys[0]`` is the primary.

    At most MAX_KEYS keys, and no two with the same key id (KeyFormatError otherwise)."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyFormatError("keyring is empty")
        if len(self.keys) > MAX_KEYS:
            raise KeyFormatError(
                f"keyring holds at most {MAX_KEYS} keys, got {len(self.keys)}: remove old keys"
            )
        ids: set[bytes] = set()
        for k in self.keys:
            if len(k) != KEY_LEN:
                raise KeyFormatError(f"key must be {KEY_LEN} bytes")
            kid = key_id(k)
            if kid in ids:
                raise KeyFormatError(f"two keys share the key id {kid.hex()}")
            if any(other[:HINT_LEN] == kid[:HINT_LEN] for other in ids):
                # A datagram names its key by the first bytes of its id (the envelope's key
                # hint): two such keys in one ring could not be told apart. One rotation in
                # ~20,000 meets this; generate another key.
                raise KeyFormatError(
                    f"key id {kid.hex()} starts like another key's ({kid[:HINT_LEN].hex()}): "
                    "generate another key"
                )
            ids.add(kid)

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    def ids(self) -> list[str]:
        return [key_id(k).hex() for k in self.keys]

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Key file format: one base64 key per line, primary first; '#' starts a comment."""
        keys: list[bytes] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                k = decode_key(line)
            except KeyFormatError as exc:
                raise KeyFormatError(f"line {n}: {exc}") from None
            if k not in keys:
                keys.append(k)
        return cls(tuple(keys))

    def dump(self) -> str:
        lines = ["# meshd keyring: primary key first, others accepted on receipt"]
        lines += [base64.b64encode(k).decode() for k in self.keys]
        return "\n".join(lines) + "\n"

    def with_keys(self, keys: Iterable[bytes]) -> Keyring:
        return Keyring(tuple(keys))


class Sealer:
    """Seals and opens datagrams under a keyring, for one node (``local_id``), with a replay
    window."""

    def __init__(
        self,
        keyring: Keyring,
        local_id: bytes,
        window: float = REPLAY_WINDOW,
        nonce_source: Callable[[int], bytes] = os.urandom,
        max_datagram: int | None = None,
    ) -> None:
        if len(local_id) != NODE_ID_LEN or local_id == ANY:
            raise ValueError(f"local_id must be {NODE_ID_LEN} bytes, not all zero")
        self.local_id = local_id
        self.window = window
        # Nothing a member seals is larger (gossip's max_datagram): a bigger datagram is refused
        # before any decryption work is spent on it.
        self.max_datagram = max_datagram
        self._nonce = nonce_source
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        """nonce -> its sealed timestamp, in arrival order."""
        self._floor = -1.0
        """Sealed timestamps at or below this are refused: a nonce that old was forgotten."""
        self.set_keyring(keyring)

    def set_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._aead = {key_id(k)[:HINT_LEN]: (key_id(k), AESGCM(k)) for k in keyring.keys}
        self._primary_id = key_id(keyring.primary)

    def seal(self, payload: bytes, now: float, recipient: bytes) -> bytes:
        """Seal ``payload`` for the member ``recipient`` (its node id; ANY or b"" for any)."""
        if not recipient:
            recipient = ANY
        if len(recipient) != NODE_ID_LEN:
            raise ValueError(f"recipient must be {NODE_ID_LEN} bytes")
        nonce = self._nonce(NONCE_LEN)
        kid = self._primary_id
        header = _HEADER.pack(
            ENVELOPE_VERSION | (TO_ANY if recipient == ANY else 0),
            kid[:HINT_LEN],
            nonce,
            self.local_id,
            recipient[:HINT_LEN],
        )
        plain = _TS.pack(int(now)) + payload
        _, aead = self._aead[kid[:HINT_LEN]]
        return header + aead.encrypt(nonce, plain, header + kid + recipient)

    def open(self, datagram: bytes, now: float) -> Opened:
        """Return the payload and who sent it, or raise OpenError(reason). Never parses
        unauthenticated bytes beyond the fixed-size header."""
        if len(datagram) < OVERHEAD:
            raise OpenError("short")
        if self.max_datagram is not None and len(datagram) > self.max_datagram:
            raise OpenError("too_big")
        first, hint, nonce, sender, to = _HEADER.unpack_from(datagram)
        if first & ~TO_ANY != ENVELOPE_VERSION:
            raise OpenError("version")
        to_any = bool(first & TO_ANY)
        if to_any:
            if to != ANY[:HINT_LEN]:
                raise OpenError("version")  # not how any sealer writes "any"
            recipient = ANY
        elif to != self.local_id[:HINT_LEN]:
            raise OpenError("misaddressed")
        else:
            recipient = self.local_id
        if sender == self.local_id:
            raise OpenError("self")
        key = self._aead.get(hint)
        if key is None:
            raise OpenError("unknown_key")
        kid, aead = key
        header = datagram[:HEADER_LEN]
        try:
            plain = aead.decrypt(nonce, datagram[HEADER_LEN:], header + kid + recipient)
        except InvalidTag:
            raise OpenError("auth") from None
        (ts,) = _TS.unpack_from(plain)
        if abs(ts - now) > self.window:
            raise OpenError("stale", sender, ts)
        if ts <= self._floor:
            raise OpenError("stale")
        self._expire(now)
        if nonce in self._seen:
            raise OpenError("replay")
        self._seen[nonce] = ts
        if len(self._seen) > NONCE_CACHE_MAX:
            _, forgotten = self._seen.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        return Opened(plain[_TS.size :], sender, to_any, ts)

    def _expire(self, now: float) -> None:
        # A nonce sealed before now - window could only come back stale: forget it. Entries are
        # in arrival order, and each was sealed within a window of its arrival, so none stays
        # longer than 2 * window behind the front.
        horizon = now - self.window
        seen = self._seen
        while seen:
            nonce, ts = next(iter(seen.items()))
            if ts >= horizon:
                break
            del seen[nonce]
