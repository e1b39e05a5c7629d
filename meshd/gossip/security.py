"""Keyring and AEAD framing of every datagram (bytes -> bytes; the caller passes ``now``).

Envelope (all integers big-endian)::

    +---------+-----------+-----------+---------------------------------------------+
    | version | key id    | nonce     | AES-256-GCM( timestamp_ms u64 | payload )   |
    | 1 byte  | 4 bytes   | 12 bytes  | ciphertext + 16-byte tag                    |
    +---------+-----------+-----------+---------------------------------------------+

The first 17 bytes are the associated data, so the version and key id are authenticated too.
The key id is the first 4 bytes of SHA-256(key): it selects the key without trial decryption.
Overhead: 1 + 4 + 12 + 8 + 16 = 41 bytes.

Replay protection: a datagram whose sealed timestamp is further than ``window`` seconds from
``now`` is rejected (``stale``); within the window every nonce is remembered, and a nonce seen
before is rejected (``replay``). Nonces are 96 random bits, so a collision between honest senders
is negligible. Nothing is parsed before authentication succeeds.
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

ENVELOPE_VERSION = 1
KEY_LEN = 32
KEY_ID_LEN = 4
NONCE_LEN = 12
TAG_LEN = 16
_HEADER = struct.Struct("!B4s12s")
_TS = struct.Struct("!Q")
OVERHEAD = _HEADER.size + _TS.size + TAG_LEN
REPLAY_WINDOW = 60.0
"""Seconds of clock skew tolerated between members; nonces are cached for twice this."""
NONCE_CACHE_MAX = 200_000
"""Upper bound on remembered nonces (~10 MB) so a flood cannot grow memory without bound."""


class KeyFormatError(ValueError):
    """A key is malformed (not 32 bytes of base64)."""


class OpenError(Exception):
    """A datagram was rejected; ``reason`` is the counter name (auth, replay, stale, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    """The primary key seals; every key in ``keys`` opens. ``keys[0]`` is the primary."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyFormatError("keyring is empty")
        for k in self.keys:
            if len(k) != KEY_LEN:
                raise KeyFormatError(f"key must be {KEY_LEN} bytes")

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
    """Seals and opens datagrams under a keyring, with a replay window."""

    def __init__(
        self,
        keyring: Keyring,
        window: float = REPLAY_WINDOW,
        nonce_source: Callable[[int], bytes] = os.urandom,
        max_datagram: int | None = None,
    ) -> None:
        self.window = window
        # Nothing a member seals is larger (gossip's max_datagram): a bigger datagram is refused
        # before any decryption work is spent on it.
        self.max_datagram = max_datagram
        self._nonce = nonce_source
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.set_keyring(keyring)

    def set_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._aead = {key_id(k): AESGCM(k) for k in keyring.keys}
        self._primary_id = key_id(keyring.primary)

    def seal(self, payload: bytes, now: float) -> bytes:
        nonce = self._nonce(NONCE_LEN)
        header = _HEADER.pack(ENVELOPE_VERSION, self._primary_id, nonce)
        plain = _TS.pack(int(now * 1000)) + payload
        return header + self._aead[self._primary_id].encrypt(nonce, plain, header)

    def open(self, datagram: bytes, now: float) -> bytes:
        """Return the payload, or raise OpenError(reason). Never parses unauthenticated bytes."""
        if len(datagram) < OVERHEAD:
            raise OpenError("short")
        if self.max_datagram is not None and len(datagram) > self.max_datagram:
            raise OpenError("too_big")
        version, kid, nonce = _HEADER.unpack_from(datagram)
        if version != ENVELOPE_VERSION:
            raise OpenError("version")
        aead = self._aead.get(kid)
        if aead is None:
            raise OpenError("unknown_key")
        header = datagram[: _HEADER.size]
        try:
            plain = aead.decrypt(nonce, datagram[_HEADER.size :], header)
        except InvalidTag:
            raise OpenError("auth") from None
        (ts_ms,) = _TS.unpack_from(plain)
        if abs(ts_ms / 1000 - now) > self.window:
            raise OpenError("stale")
        self._expire(now)
        if nonce in self._seen:
            raise OpenError("replay")
        self._seen[nonce] = now
        if len(self._seen) > NONCE_CACHE_MAX:
            self._seen.popitem(last=False)
        return plain[_TS.size :]

    def _expire(self, now: float) -> None:
        # Entries are inserted in arrival order, so the oldest are at the front.
        horizon = now - 2 * self.window
        while self._seen:
            nonce, seen = next(iter(self._seen.items()))
            if seen >= horizon:
                break
            del self._seen[nonce]
