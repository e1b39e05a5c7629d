"""Gossip messages: append-only type numbers, the msgpack wire form, and validation of every field.

A datagram payload (what the transport seals) is the msgpack array
``[PROTOCOL_MAJOR, [message, message, ...], PROTOCOL_MINOR]`` (the minor left out when it is 0):
every datagram is a compound of one or more messages, so piggybacking broadcasts on a probe costs
no extra framing. A message is an array whose first element is its type number. Decoders ignore
trailing elements a later revision may append, and reject anything missing, mistyped or out of
range; one bad message rejects the whole datagram, so a datagram is applied either completely or
not at all.

Versioning (docs/protocol.md, "Versions"): a node accepts datagrams of its own major whose minor is
within MINOR_WINDOW of its own. From a newer minor it also skips message types it does not know
(``skip.unknown_type``); from its own or an older minor an unknown type is an error. Another major,
or a minor further away, is dropped and counted (``drop.protocol_major``, ``drop.protocol_minor``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, NamedTuple, cast

import msgpack

from meshd.gossip.events import MemberState
from meshd.gossip.record import _NAME_RE, NodeRecord, RecordError, unicast_ip6

PROTOCOL_MAJOR = 1
"""The payload's first element. A receiver drops datagrams of any other major
(``drop.protocol_major``): a new major is a change older nodes cannot ignore."""
PROTOCOL_MINOR = 2
"""What this build speaks: the payload's third element (absent: 0, the layout before minors were
sent; meshd 0.2.0 is 1.1; 1.2 added `Resend`). A new minor may only append elements (to the
payload, a message, a record, a push-pull entry) and add message types: what a node of the
previous minor ignores."""
MINOR_WINDOW = 1
"""Minors accepted on either side of our own: the previous one (a fleet is upgraded node by node)
and the next one (the upgraded nodes talk to us meanwhile). Symmetric, so two nodes either both
accept each other or both refuse; an upgrade goes one minor at a time."""
MAX_MINOR = 127
"""Largest minor on the wire (a positive fixint, one byte)."""
PROTOCOL_VERSION = PROTOCOL_MAJOR
"""The older name of the payload's first element."""

ENVELOPE_RESERVE = 53
"""Bytes the transport adds around a payload: security.OVERHEAD (version 1, key hint 2, nonce 12,
sender node id 16, recipient hint 2, timestamp 4, AEAD tag 16; the full key id and recipient id
are authenticated without being sent)."""

DATAGRAM_OVERHEAD = 6
"""Bytes of compound framing around the messages: fixarray(3) + major + array16 header + minor."""

MAX_SEQ = 2**32 - 1
MAX_INCARNATION = 2**63 - 1
MAX_CHUNKS = 65535
MAX_LTIME = 2**63 - 1
KEY_OP_ID_LEN = 16
KEY_LEN = 32
"""An AES-256 key (security.KEY_LEN)."""
KEY_ID_LEN = 16
"""security.key_id(key): the first 16 bytes of SHA-256(key)."""
RECORD_CACHE_MAX = 1 << 16
"""Validated records and names remembered by the decoder (cleared when full)."""
MAX_KEY_OP_LOG = 32
"""Most key ops a push-pull may carry (we send keyops.LOG_SIZE); more rejects the datagram."""
DIGEST_LEN = 16
"""A SyncDigest's hash of the sender's view (pushpull.view_digest)."""
MAX_CRL_LEN = 1200
"""Largest revocation list (DER) a Crl message carries: it must fit one datagram."""


class MsgType(IntEnum):
    # Append-only: these numbers are on the wire. Never renumber or reuse one; add new types at
    # the end and bump the minor (nodes of an older minor skip types they do not know, but only
    # in datagrams of a newer minor; nodes before minors existed drop the datagram).
    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    NACK = 3
    SUSPECT = 4
    ALIVE = 5
    DEAD = 6
    PUSH_PULL = 7
    KEY_OP = 8
    SYNC_DIGEST = 9
    CRL = 10
    RESEND = 11


# Member states in push-pull entries; the index is the wire code (append-only too).
WIRE_STATES = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT)
_STATE_CODE = {s: i for i, s in enumerate(WIRE_STATES)}

KEY_OPS = ("install", "use", "remove")
"""Key op kinds; the index is the wire code (append-only)."""
_KEY_OP_CODE = {k: i for i, k in enumerate(KEY_OPS)}
KeyOpKind = Literal["install", "use", "remove"]

Addr = tuple[str, int]


class DecodeError(ValueError):
    """A datagram failed validation; ``reason`` becomes the ``drop.<reason>`` counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VersionError(DecodeError):
    """A well-formed datagram of a protocol version we do not speak (``protocol_major`` or
    ``protocol_minor``); ``version`` is what it carried, e.g. "2.0"."""

    def __init__(self, reason: str, major: int, minor: int) -> None:
        super().__init__(reason)
        self.version = f"{major}.{minor}"


def accepts(major: int, minor: int, own_minor: int = PROTOCOL_MINOR) -> bool:
    """Whether a node speaking ``PROTOCOL_MAJOR.own_minor`` takes datagrams of major.minor."""
    return major == PROTOCOL_MAJOR and abs(minor - own_minor) <= MINOR_WINDOW


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    """Name of the node the sender believes it is pinging; a mismatch is not acked."""
    source: str
    source_addr: Addr
    """Where the ack goes (the sender's record address)."""


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    target_addr: Addr
    source: str
    source_addr: Addr
    nack: bool
    """Ask the intermediary to send a nack if the target stays silent (Lifeguard)."""


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class Alive:
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class Dead:
    """``sender == node`` means the node left gracefully."""

    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class KeyOp:
    """A cluster-wide keyring operation, spread like a broadcast and carried by push-pull.

    The order in which a node hands these to its daemon is keyops.py's rule (Lamport time)."""

    id: bytes
    """16 bytes from the originating node's RNG; duplicates are recognised by it."""
    op: KeyOpKind
    key: bytes
    """``install``: the 32-byte key. ``use``, ``remove``: the key's 16-byte id."""
    origin: str
    """Name of the node that issued it."""
    ltime: int
    """Lamport time of the issuing node when it issued the op."""


MAX_AGE = 2**32 - 1
"""Largest tombstone age on the wire (seconds)."""


class PushPullEntry(NamedTuple):
    # A tuple rather than a dataclass: a 10,000-member push-pull decodes 10,000 of these.
    record: NodeRecord
    state: MemberState
    incarnation: int
    """The sender's incarnation for this member; above ``record.incarnation`` after a leave."""
    age: int = 0
    """Seconds the sender has known a dead member dead (a fourth element, appended; 0 for
    other states and from older nodes): a joiner dates a tombstone it learns by it, so a dead
    member's subnet lease runs on the mesh's clock, not from whenever a node joined."""


@dataclass(frozen=True, slots=True)
class PushPull:
    """One chunk of a full state exchange; chunks are merged independently as they arrive."""

    sender: NodeRecord
    sync_id: int
    reply: bool
    """False: a request, answer with your state. True: the answer (never answered again)."""
    index: int
    count: int
    entries: tuple[PushPullEntry, ...]
    key_ops: tuple[KeyOp, ...] = ()
    """The sender's recent key ops (keyops.KeyOps.log); only in chunk 0."""


@dataclass(frozen=True, slots=True)
class SyncDigest:
    """The periodic anti-entropy round's opening: a hash of the sender's view. A receiver whose
    own view hashes the same answers with its digest (``reply``) and nothing more; otherwise it
    starts a full push-pull with the sender, which answers with its whole state."""

    sync_id: int
    reply: bool
    digest: bytes
    sender: str = ""
    """The sender's name (a fifth element, appended): the answer goes to that member's record
    address, never to the datagram's source. Empty from a node predating it: not answered."""


@dataclass(frozen=True, slots=True)
class Crl:
    """The cluster CA's revocation list (X.509 CRL, DER), spread like a broadcast and sent beside
    every full-state push-pull; the highest CRL number wins (trust.py)."""

    der: bytes


@dataclass(frozen=True, slots=True)
class Resend:
    """Asks the sender of a push-pull answer for the chunks of it that did not arrive (protocol
    1.2): ``indices`` of the answer to our request ``sync_id``; ``sender`` is our name (the
    chunks go to that member's record address)."""

    sync_id: int
    sender: str
    indices: tuple[int, ...]


MAX_RESEND = 128
"""Chunk indices one Resend may ask for."""
RESEND_SINCE = 2
"""The minor that added Resend: a node speaking an older one neither sends nor knows it."""

Message = (
    Ping
    | IndirectPing
    | Ack
    | Nack
    | Suspect
    | Alive
    | Dead
    | PushPull
    | KeyOp
    | SyncDigest
    | Crl
    | Resend
)


# --- encoding -------------------------------------------------------------------------------

_packb = functools.partial(msgpack.packb, use_bin_type=True)


@functools.lru_cache(maxsize=4096)
def _pack_ip(ip: str) -> bytes:
    """4 bytes for IPv4, 16 for IPv6 (a node on an IPv6 underlay; a member of protocol 1.2
    refuses those, and could not reach the address anyway)."""
    if ":" in ip:
        return ipaddress.IPv6Address(ip).packed
    return bytes(int(x) for x in ip.split("."))


@functools.lru_cache(maxsize=1 << 16)
def encode_record(rec: NodeRecord) -> bytes:
    """msgpack of ``rec.to_wire()``; cached because the same records go out again and again."""
    return bytes(_packb(rec.to_wire()))


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


def encode(msg: Message) -> bytes:
    """One message (not a datagram); see `pack_datagram`."""
    if isinstance(msg, Ping):
        ip, port = msg.source_addr
        return bytes(_packb([MsgType.PING, msg.seq, msg.target, msg.source, _pack_ip(ip), port]))
    if isinstance(msg, IndirectPing):
        (tip, tport), (sip, sport) = msg.target_addr, msg.source_addr
        return bytes(
            _packb(
                [
                    MsgType.INDIRECT_PING,
                    msg.seq,
                    msg.target,
                    _pack_ip(tip),
                    tport,
                    msg.source,
                    _pack_ip(sip),
                    sport,
                    msg.nack,
                ]
            )
        )
    if isinstance(msg, Ack):
        return bytes(_packb([MsgType.ACK, msg.seq]))
    if isinstance(msg, Nack):
        return bytes(_packb([MsgType.NACK, msg.seq]))
    if isinstance(msg, Suspect):
        return bytes(_packb([MsgType.SUSPECT, msg.incarnation, msg.node, msg.sender]))
    if isinstance(msg, Dead):
        return bytes(_packb([MsgType.DEAD, msg.incarnation, msg.node, msg.sender]))
    if isinstance(msg, Alive):
        return b"\x92" + bytes(_packb(int(MsgType.ALIVE))) + encode_record(msg.record)
    if isinstance(msg, KeyOp):
        return bytes(
            _packb([MsgType.KEY_OP, msg.id, _KEY_OP_CODE[msg.op], msg.key, msg.origin, msg.ltime])
        )
    if isinstance(msg, SyncDigest):
        named = [msg.sender] if msg.sender else []
        return bytes(_packb([MsgType.SYNC_DIGEST, msg.sync_id, msg.reply, msg.digest, *named]))
    if isinstance(msg, Crl):
        return bytes(_packb([MsgType.CRL, msg.der]))
    if isinstance(msg, Resend):
        return bytes(_packb([MsgType.RESEND, msg.sync_id, msg.sender, list(msg.indices)]))
    entries = [
        encode_entry(
            e.record, e.state, e.incarnation, e.age if e.state is MemberState.DEAD else None
        )
        for e in msg.entries
    ]
    chunks = encode_push_pull(
        msg.sender, msg.sync_id, msg.reply, entries, 1 << 30, [encode(op) for op in msg.key_ops]
    )
    return chunks[0]


def pack_datagram(parts: Sequence[bytes], minor: int = PROTOCOL_MINOR) -> bytes:
    """Frame already-encoded messages as one compound datagram payload of version
    ``PROTOCOL_MAJOR.minor`` (minor 0: the two-element form nodes before minors sent)."""
    body = bytes([PROTOCOL_MAJOR]) + _array_header(len(parts)) + b"".join(parts)
    if not minor:
        return b"\x92" + body
    return b"\x93" + body + bytes([minor])


def encode_entry(
    record: NodeRecord, state: MemberState, incarnation: int, age: int | None = None
) -> bytes:
    """One push-pull entry, ``[record, state, incarnation]``, or with ``age`` (dead members)
    ``[record, state, incarnation, age]``."""
    inc = bytes(_packb(incarnation))
    body = encode_record(record) + bytes([_STATE_CODE[state]]) + inc
    if age is None:
        return b"\x93" + body
    return b"\x94" + body + bytes(_packb(min(max(int(age), 0), MAX_AGE)))


def encode_push_pull(
    sender: NodeRecord,
    sync_id: int,
    reply: bool,
    entries: Sequence[bytes],
    budget: int,
    key_ops: Sequence[bytes] = (),
) -> list[bytes]:
    """Encode a full state as push-pull messages of at most ``budget`` bytes each.

    ``entries`` come from `encode_entry` (the member table caches them). Every chunk repeats the
    sender's record so that it can be merged on its own; the member list is cut greedily by encoded
    size. ``key_ops`` (encoded `KeyOp` messages) ride in chunk 0 as an eighth element, which nodes
    predating it ignore.
    """
    sender_b = encode_record(sender)
    # Worst-case header: 7-element array, type, sender, uint32 id, bool, two uint16, array16 header.
    head_max = 1 + 1 + len(sender_b) + 5 + 1 + 3 + 3 + 3
    room = budget - head_max
    ops_b = _array_header(len(key_ops)) + b"".join(key_ops) if key_ops else b""
    groups: list[list[bytes]] = [[]]
    group = groups[0]
    used = len(ops_b)
    if used > room // 2:  # pragma: no cover - keyops.LOG_SIZE ops take ~700 bytes at most
        raise ValueError("key op log too large for a push-pull")
    for item in entries:
        size = len(item)
        if used + size > room:
            if size > room:  # pragma: no cover - a record is ~130 bytes at most
                raise ValueError("push-pull budget smaller than one record")
            if group:
                group = []
                groups.append(group)
                used = 0
        group.append(item)
        used += size
    if len(groups) > MAX_CHUNKS:  # pragma: no cover - millions of members
        raise ValueError("state too large for one push-pull")
    out = []
    for i, group in enumerate(groups):
        tail = ops_b if i == 0 else b""
        out.append(
            (b"\x98" if tail else b"\x97")
            + bytes(_packb(int(MsgType.PUSH_PULL)))
            + sender_b
            + bytes(_packb(sync_id))
            + bytes(_packb(reply))
            + bytes(_packb(i))
            + bytes(_packb(len(groups)))
            + _array_header(len(group))
            + b"".join(group)
            + tail
        )
    return out


def pad_push_pull(chunk: bytes, size: int) -> bytes:
    """A push-pull message from `encode_push_pull` grown to ``size`` bytes (when it is smaller)
    by a trailing padding element, which decoders ignore (a ninth element; an empty key-op list
    takes the eighth place if it was absent). A joiner pads what it sends to "any", so that a
    seed's answer, bounded by the request's size, has room for the seed's record."""
    if chunk[0] == 0x97:  # no key ops: an empty list keeps the positions
        head, rest = 0x99, chunk[1:] + b"\x90"
    elif chunk[0] == 0x98:
        head, rest = 0x99, chunk[1:]
    else:
        raise ValueError("not an encode_push_pull message")
    room = size - 1 - len(rest)
    if room < 2:
        return chunk
    if room - 2 < 256:
        pad = b"\xc4" + bytes([room - 2]) + bytes(room - 2)  # bin8
    else:
        pad = b"\xc5" + (room - 3).to_bytes(2, "big") + bytes(room - 3)  # bin16
    return bytes([head]) + rest + pad


# --- decoding -------------------------------------------------------------------------------


def decode(
    data: bytes, minor: int = PROTOCOL_MINOR, counters: Counter[str] | None = None
) -> list[Message]:
    """Decode and validate a whole datagram payload as a node speaking ``PROTOCOL_MAJOR.minor``;
    raises DecodeError(reason) (VersionError for a version we do not take), nothing else.

    Messages of types we do not know are left out when the datagram's minor is newer than ours
    (``skip.unknown_type`` in ``counters``, once the whole datagram decoded); the list may then
    be empty."""
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception:  # noqa: BLE001 - msgpack raises many kinds; all mean "not msgpack"
        raise DecodeError("decode") from None
    if type(obj) is not list or len(obj) < 2:
        raise DecodeError("malformed")
    major, theirs = obj[0], obj[2] if len(obj) > 2 else 0
    if type(major) is not int or type(theirs) is not int or not 0 <= theirs <= MAX_MINOR:
        raise DecodeError("malformed")
    if major != PROTOCOL_MAJOR:
        raise VersionError("protocol_major", major, theirs)
    if abs(theirs - minor) > MINOR_WINDOW:
        raise VersionError("protocol_minor", major, theirs)
    body = obj[1]
    if type(body) is not list or not body:
        raise DecodeError("malformed")
    if theirs <= minor:
        return [_decode_one(m, minor) for m in body]
    # A newer minor may carry types added after ours: what we know of it is taken, the rest
    # skipped (its known messages are still validated whole, as always).
    out: list[Message] = []
    skipped = 0
    for m in body:
        try:
            out.append(_decode_one(m, minor))
        except DecodeError as exc:
            if exc.reason != "unknown_type":
                raise
            skipped += 1
    if skipped and counters is not None:
        counters["skip.unknown_type"] += skipped
    return out


def _decode_one(m: Any, minor: int = PROTOCOL_MINOR) -> Message:
    """One message, as a node speaking ``minor`` knows them: a type added in a later minor is
    ``unknown_type`` to it, as it is to a build of that minor."""
    if type(m) is not list or not m or type(m[0]) is not int:
        raise DecodeError("malformed")
    t = m[0]
    if t == MsgType.PING:
        _need(m, 6)
        return Ping(_seq(m[1]), _name(m[2]), _name(m[3]), _addr(m[4], m[5]))
    if t == MsgType.INDIRECT_PING:
        _need(m, 9)
        return IndirectPing(
            _seq(m[1]), _name(m[2]), _addr(m[3], m[4]), _name(m[5]), _addr(m[6], m[7]), _bool(m[8])
        )
    if t == MsgType.ACK:
        _need(m, 2)
        return Ack(_seq(m[1]))
    if t == MsgType.NACK:
        _need(m, 2)
        return Nack(_seq(m[1]))
    if t == MsgType.SUSPECT:
        _need(m, 4)
        return Suspect(_incarnation(m[1]), _name(m[2]), _name(m[3]))
    if t == MsgType.ALIVE:
        _need(m, 2)
        return Alive(_record(m[1]))
    if t == MsgType.DEAD:
        _need(m, 4)
        return Dead(_incarnation(m[1]), _name(m[2]), _name(m[3]))
    if t == MsgType.PUSH_PULL:
        return _decode_push_pull(m)
    if t == MsgType.KEY_OP:
        return _decode_key_op(m)
    if t == MsgType.SYNC_DIGEST:
        _need(m, 4)
        digest = m[3]
        if type(digest) is not bytes or len(digest) != DIGEST_LEN:
            raise DecodeError("malformed")
        sender = _name(m[4]) if len(m) > 4 else ""
        return SyncDigest(_seq(m[1]), _bool(m[2]), digest, sender)
    if t == MsgType.CRL:
        _need(m, 2)
        der = m[1]
        if type(der) is not bytes or not 0 < len(der) <= MAX_CRL_LEN:
            raise DecodeError("crl")
        return Crl(der)
    if t == MsgType.RESEND and minor >= RESEND_SINCE:
        _need(m, 4)
        raw = m[3]
        if type(raw) is not list or not 0 < len(raw) <= MAX_RESEND:
            raise DecodeError("malformed")
        indices = tuple(_int(i, 0, MAX_CHUNKS - 1) for i in raw)
        if len(set(indices)) != len(indices):
            raise DecodeError("malformed")
        return Resend(_seq(m[1]), _name(m[2]), indices)
    raise DecodeError("unknown_type")


def _decode_key_op(m: Any) -> KeyOp:
    """Any fault in a key op is ``drop.key_op``, so the daemon can tell them apart."""
    if type(m) is not list or len(m) < 6 or m[0] != MsgType.KEY_OP:
        raise DecodeError("key_op")
    op_id, code, key, origin, ltime = m[1:6]
    if type(op_id) is not bytes or len(op_id) != KEY_OP_ID_LEN:
        raise DecodeError("key_op")
    if type(code) is not int or not 0 <= code < len(KEY_OPS):
        raise DecodeError("key_op")
    kind = KEY_OPS[code]
    if type(key) is not bytes or len(key) != (KEY_LEN if kind == "install" else KEY_ID_LEN):
        raise DecodeError("key_op")
    if type(origin) is not str or not _NAME_RE.match(origin):
        raise DecodeError("key_op")
    if type(ltime) is not int or not 0 <= ltime <= MAX_LTIME:
        raise DecodeError("key_op")
    return KeyOp(op_id, cast(KeyOpKind, kind), key, origin, ltime)


def _decode_push_pull(m: list[Any]) -> PushPull:
    _need(m, 7)
    sender, sync_id, reply = _record(m[1]), _seq(m[2]), _bool(m[3])
    index, count, raw = _int(m[4], 0, MAX_CHUNKS - 1), _int(m[5], 1, MAX_CHUNKS), m[6]
    if index >= count:
        raise DecodeError("malformed")
    if type(raw) is not list:
        raise DecodeError("malformed")
    # The hot loop of a large push-pull: the checks of _int/_incarnation, inlined.
    entries = []
    states, n_states, record = WIRE_STATES, len(WIRE_STATES), _record
    new, entry = tuple.__new__, PushPullEntry  # skips NamedTuple's Python-level __new__
    for e in raw:
        if type(e) is not list or len(e) < 3:
            raise DecodeError("malformed")
        rec, state, inc = e[0], e[1], e[2]
        if type(state) is not int or not 0 <= state < n_states:
            raise DecodeError("range")
        if type(inc) is not int or not 0 <= inc <= MAX_INCARNATION:
            raise DecodeError("range")
        age = e[3] if len(e) > 3 else 0
        if type(age) is not int or not 0 <= age <= MAX_AGE:
            raise DecodeError("range")
        entries.append(new(entry, (record(rec), states[state], inc, age)))
    ops: tuple[KeyOp, ...] = ()
    if len(m) > 7:
        raw_ops = m[7]
        if type(raw_ops) is not list or len(raw_ops) > MAX_KEY_OP_LOG:
            raise DecodeError("key_op")
        ops = tuple(_decode_key_op(op) for op in raw_ops)
    return PushPull(sender, sync_id, reply, index, count, tuple(entries), ops)


def _need(m: list[Any], n: int) -> None:
    if len(m) < n:
        raise DecodeError("malformed")


def _int(v: Any, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise DecodeError("range")
    return v


def _seq(v: Any) -> int:
    return _int(v, 0, MAX_SEQ)


def _incarnation(v: Any) -> int:
    return _int(v, 0, MAX_INCARNATION)


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise DecodeError("malformed")
    return v


_valid_names: set[str] = set()


def _name(v: Any) -> str:
    # Same rule as record.validate, so names in messages match names in records. Names recur in
    # almost every message: remember the valid ones (bounded) instead of matching them again.
    if type(v) is not str:
        raise DecodeError("name")
    if v in _valid_names:
        return v
    if not _NAME_RE.match(v):
        raise DecodeError("name")
    if len(_valid_names) >= RECORD_CACHE_MAX:
        _valid_names.clear()
    _valid_names.add(v)
    return v


def _addr(ip: Any, port: Any) -> Addr:
    # record.unicast_ip4's and unicast_ip6's rules: where an ack or a relayed ping goes is a
    # member's address.
    if type(ip) is bytes and len(ip) == 16:
        text = str(ipaddress.IPv6Address(ip))
        if not unicast_ip6(text):
            raise DecodeError("addr")
        return text, _int(port, 1, 65535)
    if type(ip) is not bytes or len(ip) != 4 or ip[0] in (0, 127) or ip[0] >= 224:
        raise DecodeError("addr")
    return f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}", _int(port, 1, 65535)


_RECORD_TYPES = (
    str, bytes, bytes, int, bytes, (int, str), bytes, int, int, int,
    int, int, bytes, bytes, bytes, bytes, bytes,
)  # fmt: skip
"""Exact msgpack types of the record fields (record.py draws the layout). The backend (index 5)
is a protocol-1 code or, for a backend without one, its name."""
_RECORD_FIELDS = len(_RECORD_TYPES)


_record_cache: dict[tuple[Any, ...], NodeRecord] = {}


def _record(obj: Any) -> NodeRecord:
    """NodeRecord.from_wire behind a cache: the same records arrive over and over (push-pull).

    A hit means the fields are equal to a validated record's. Equal str and bytes fields have the
    same types, but ``True == 1`` and ``1.0 == 1``, so the int fields (and the backend, an int or
    a str) are type-checked on a hit too; a miss checks every type before validating.
    """
    if type(obj) is not list or len(obj) < 10:
        raise DecodeError("record")
    # Record fields are append-only: 10 from the first protocol, the rest optional (trailing
    # defaults are not sent); anything after what we know is ignored.
    head = tuple(obj[:_RECORD_FIELDS])
    try:
        rec = _record_cache.get(head)
    except TypeError:  # a list or map among the fields: unhashable, and no record either
        raise DecodeError("record") from None
    if rec is not None:
        n = len(head)
        if (
            type(head[3]) is int
            and type(head[5]) in (int, str)
            and type(head[7]) is int
            and type(head[8]) is int
            and type(head[9]) is int
            and (n < 11 or type(head[10]) is int)
            and (n < 12 or type(head[11]) is int)
        ):
            return rec
        raise DecodeError("record")
    if not all(
        type(v) in want if isinstance(want, tuple) else type(v) is want
        for v, want in zip(head, _RECORD_TYPES, strict=False)
    ):
        raise DecodeError("record")
    try:
        rec = NodeRecord.from_wire(list(head))
    except (RecordError, ValueError):
        raise DecodeError("record") from None
    if len(_record_cache) >= RECORD_CACHE_MAX:
        _record_cache.clear()  # cheaper than LRU bookkeeping on every hit; refills at once
    _record_cache[head] = rec
    return rec
