"""Cluster-wide keyring operations (install / use / remove): dedupe, order, and the recent log.

The core carries key ops and decides in which order the daemon sees them; the daemon applies them
to its keyring with `apply_to_keyring` (pure), idempotently: installing a key it has, using the
current primary or removing a key it lacks changes nothing, and it refuses to remove its primary
key.

Ordering rule (Lamport time, last writer wins per register):

* Every node keeps a Lamport clock. Each op it accepts (its own, gossiped, or from a push-pull log)
  moves the clock to ``max(clock, op.ltime)``; an op it issues gets ``clock + 1``. So an op issued
  by a node that had seen op X is stamped later than X: ``install`` then ``use`` then ``remove``,
  however many nodes the operator used, are stamped in that order.
* Ops are totally ordered by their stamp ``(ltime, origin, id)``.
* Two registers decide what is handed out: per key id, the latest ``install``/``remove`` handed
  out; and the latest ``use``. An op whose stamp is not later than its register's is *stale*:
  dropped and counted (``keyop.stale``). So a late ``install`` never follows its ``remove``, and a
  late ``use`` never brings back an older primary.
* Ops that arrive together (one datagram, one push-pull log) are taken in stamp order.
* Late arrivals that the daemon could not have applied are repaired by handing out an op again
  (same id, ``keyop.redelivered``): a ``use`` of a key that was not yet installed follows that
  key's ``install`` once it arrives, and after a ``use`` every key whose register says removed is
  removed again (its removal was refused while it was the primary). Applying is idempotent, so a
  repeat is harmless.

End state, whatever the arrival order: the primary is the key of the latest ``use`` (once that key
is installed), and every other key an op touched is present exactly when its latest
``install``/``remove`` is an install. Keys no op ever named are left as the key file has them.

Bounds against a hostile key holder:

* Lamport jumps: an op stamped more than MAX_LTIME_JUMP above our clock is dropped
  (``drop.key_op_ltime``), so nobody can stamp a ``use`` at the maximum Lamport time and pin the
  primary forever: the clock only ever moves up by a bounded step per accepted op, and an
  operator's next op outranks the jump. One exception: a node that is joining (just started: the
  clock is not persisted) and has accepted no op yet takes the first push-pull log it gets as it
  is, or it could never catch up with a mesh whose clock went past MAX_LTIME_JUMP. Only while
  joining: a mesh that never saw a key op has every member at "no op yet", and a key holder's
  push-pull log carrying a ``use`` at the maximum would otherwise pin the primary on all of them
  (tests/e2e/test_rogue.py). A joiner can still be raced by a key holder; a seed answers first.
* Ring size: `apply_to_keyring` refuses an install into a ring of security.MAX_KEYS keys
  (``full``); the same ops applied to the same ring refuse alike on every node, and an install
  refused for want of room is handed out again, in stamp order, after the next remove. So when a
  remove frees the room, arrival order does not decide whether a node gets the key; only two
  installs racing for the last free place, concurrently with that remove, can end differently on
  different nodes (the control socket refuses an install into a full ring at its origin, so an
  operator never causes that).

Memory is bounded: ``SEEN_IDS`` op ids for deduplication, ``KEY_REGISTERS`` key ids, and the
``LOG_SIZE`` latest ops, which every push-pull carries so a node that missed a broadcast (down or
partitioned at the time) still gets it. The state is not persisted: a restarted node replays the
log, which is harmless for the same reason (and why keys are changed through ops, not by hand).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

from meshd.gossip.messages import (
    KEY_ID_LEN,
    KEY_LEN,
    KEY_OP_ID_LEN,
    KEY_OPS,
    MAX_LTIME,
    KeyOp,
    KeyOpKind,
)
from meshd.gossip.record import _NAME_RE
from meshd.gossip.security import MAX_KEYS, Keyring, key_id

LOG_SIZE = 8
"""Latest ops carried in every push-pull (~75 bytes each)."""
SEEN_IDS = 1024
"""Op ids remembered for deduplication; far more than LOG_SIZE, so a logged op is always known."""
KEY_REGISTERS = 256
"""Key ids whose latest install/remove is remembered (least recently touched forgotten first)."""
MAX_LTIME_JUMP = 1024
"""Most an accepted op's Lamport time may exceed our clock by (see the module docstring); far
more ops than an operator issues between two push-pulls."""

Stamp = tuple[int, str, bytes]


def stamp(op: KeyOp) -> Stamp:
    return (op.ltime, op.origin, op.id)


def op_key_id(op: KeyOp) -> bytes:
    """The key id an op is about (an install carries the key itself)."""
    return key_id(op.key) if op.op == "install" else op.key


class KeyOps:
    """One node's key-op bookkeeping; see the module docstring for the rule."""

    def __init__(self, counters: Counter[str]) -> None:
        self.clock = 0
        self._counters = counters
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._keys: OrderedDict[bytes, KeyOp] = OrderedDict()
        self._use: KeyOp | None = None
        self._log: list[KeyOp] = []
        self._pending: list[KeyOp] = []

    def new(self, kind: str, arg: bytes, origin: str, op_id: bytes) -> KeyOp:
        """An op issued here, stamped with the next Lamport time; ValueError if malformed."""
        if kind not in KEY_OPS:
            raise ValueError(f"key op must be one of {', '.join(KEY_OPS)}, not {kind!r}")
        want = KEY_LEN if kind == "install" else KEY_ID_LEN
        if not isinstance(arg, bytes) or len(arg) != want:
            what = "the key" if kind == "install" else "a key id"
            raise ValueError(f"{kind} takes {want} bytes ({what})")
        if len(op_id) != KEY_OP_ID_LEN or not _NAME_RE.match(origin):
            raise ValueError("bad op id or origin")
        # A hostile peer could push the clock to the top; ops then tie on ltime and the origin
        # name and id break the tie (ordered, but no longer causal). A key holder can do worse.
        return KeyOp(op_id, cast(KeyOpKind, kind), arg, origin, min(self.clock + 1, MAX_LTIME))

    def accept(
        self, ops: Iterable[KeyOp], logged: bool = False, joining: bool = False
    ) -> list[KeyOp]:
        """Take ops that arrived together; returns the new, non-stale ones (handed to the daemon,
        and for the node to gossip on). ``logged``: from a push-pull log, where repeats are the
        norm and not counted as duplicates. ``joining``: the node has not synced yet (the one
        case where a first log is taken whatever its Lamport times)."""
        fresh: list[KeyOp] = []
        first_log = logged and joining and not self._seen
        for op in sorted(ops, key=stamp):
            if op.id in self._seen:
                if not logged:
                    self._counters["keyop.duplicate"] += 1
                continue
            if op.ltime > self.clock + MAX_LTIME_JUMP and not first_log:
                # Not remembered as seen: once our clock gets near it (honestly), it may count.
                self._counters["drop.key_op_ltime"] += 1
                continue
            self._seen[op.id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
            self.clock = max(self.clock, op.ltime)
            self._add_to_log(op)
            if self._is_stale(op):
                self._counters["keyop.stale"] += 1
                continue
            self._counters["keyop.new"] += 1
            fresh.append(op)
            self._hand_out(op)
        return fresh

    @property
    def pending(self) -> bool:
        """Ops are waiting for `pop`."""
        return bool(self._pending)

    def pop(self) -> list[KeyOp]:
        out, self._pending = self._pending, []
        return out

    def log(self) -> list[KeyOp]:
        """The latest ops by stamp, oldest first (what push-pull carries)."""
        return list(self._log)

    # --- internals ----------------------------------------------------------------------------

    def _is_stale(self, op: KeyOp) -> bool:
        s = stamp(op)
        if op.op == "use":
            return self._use is not None and s <= stamp(self._use)
        last = self._keys.get(op_key_id(op))
        return last is not None and s <= stamp(last)

    def _hand_out(self, op: KeyOp) -> None:
        self._pending.append(op)
        if op.op == "use":
            self._use = op
            self._remove_again(op.key)
            return
        kid = op_key_id(op)
        self._keys[kid] = op
        self._keys.move_to_end(kid)
        if len(self._keys) > KEY_REGISTERS:
            self._keys.popitem(last=False)
        if op.op == "install" and self._use is not None and self._use.key == kid:
            # The use of this key arrived first and could not be applied; now it can.
            self._redeliver(self._use)
            self._remove_again(kid)
        elif op.op == "remove":
            # An install refused for want of room (the ring was full) may fit now.
            installs = [last for other, last in self._keys.items() if last.op == "install"]
            for last in sorted(installs, key=stamp):
                self._redeliver(last)

    def _remove_again(self, primary: bytes) -> None:
        for kid, last in self._keys.items():
            if last.op == "remove" and kid != primary:
                self._redeliver(last)

    def _redeliver(self, op: KeyOp) -> None:
        self._pending.append(op)
        self._counters["keyop.redelivered"] += 1

    def _add_to_log(self, op: KeyOp) -> None:
        log = self._log
        if len(log) >= LOG_SIZE and stamp(op) <= stamp(log[0]):
            return
        log.append(op)
        log.sort(key=stamp)
        del log[:-LOG_SIZE]


KeyringOutcome = Literal[
    "installed", "primary", "removed", "unknown", "refused", "full", "unchanged"
]
"""What one op did to a keyring: ``unknown`` is a use of a key not (yet) installed, ``refused``
a removal of the primary, ``full`` an install into a ring of MAX_KEYS keys; ``unchanged`` covers
the idempotent repeats."""


@dataclass(frozen=True, slots=True)
class KeyringChange:
    """The result of `apply_to_keyring`: the new ring and, per op, what it did."""

    keyring: Keyring
    outcomes: tuple[tuple[KeyOp, KeyringOutcome], ...]

    @property
    def changed(self) -> bool:
        return any(o in ("installed", "primary", "removed") for _, o in self.outcomes)


def apply_to_keyring(keyring: Keyring, ops: Iterable[KeyOp]) -> KeyringChange:
    """Apply ops, in the order given (`KeyOps.pop`'s), to a keyring; pure and idempotent.

    install adds a key at the end (accepted on receipt, not used to seal), unless the ring holds
    MAX_KEYS already (``full``: `KeyOps` hands it out again after the next remove); use moves a
    key to the front (the primary seals); remove drops a key, but never the primary: a ring must
    keep a key every member can open, and `KeyOps` hands the remove out again after the next
    use."""
    ring = list(keyring.keys)
    outcomes: list[tuple[KeyOp, KeyringOutcome]] = []
    for op in ops:
        ids = [key_id(k) for k in ring]
        outcome: KeyringOutcome = "unchanged"
        if op.op == "install":
            if op.key not in ring and len(ring) >= MAX_KEYS:
                outcome = "full"
            elif op.key not in ring:
                ring.append(op.key)
                outcome = "installed"
        elif op.key not in ids:
            outcome = "unknown" if op.op == "use" else "unchanged"
        elif op.op == "use":
            if ids.index(op.key) != 0:
                ring.insert(0, ring.pop(ids.index(op.key)))
                outcome = "primary"
        elif ids.index(op.key) == 0:
            outcome = "refused"
        else:
            ring.pop(ids.index(op.key))
            outcome = "removed"
        outcomes.append((op, outcome))
    new = keyring if tuple(ring) == keyring.keys else Keyring(tuple(ring))
    return KeyringChange(new, tuple(outcomes))
