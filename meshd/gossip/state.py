"""Every member transition lives here: alive / suspect / dead / left, refutation, push-pull merge.

The rules are memberlist's (state.go), keyed by member name:

* Each member has an incarnation that only the member itself raises. A message about a member at a
  lower incarnation than we know is stale and ignored.
* ``alive(rec)`` wins when ``rec.incarnation`` is higher than what we know (so a suspect, dead or
  left member comes back only by announcing a higher incarnation). Entries loaded from the state
  dir (``stale``) also accept the same incarnation, since we never actually saw them alive.
* ``suspect(inc)`` turns an alive member suspect at incarnation ``inc`` or above and starts a
  Lifeguard suspicion; further suspects from other members confirm it (shortening the timeout).
* ``dead(inc)`` ends alive or suspect. A record with ``left`` set means the member left; in
  certificate mode only that (signed by the member) does, while in shared-key mode a dead sent
  by the member itself still means ``left`` (older members announce it that way).
* Suspect and dead messages carry only an incarnation, never a record, so they cannot change a
  member's identity, address or subnet; their incarnation may exceed ours for the member by at
  most MAX_INCARNATION_JUMP (so a forged one cannot pin a member, or us, at the maximum). In
  shared-key mode the bound applies to alive records about up members too (signed records need
  none: only their owner can write them).
* In certificate mode every record is verified (trust.py) before any rule looks at it.
* Messages about ourselves are ignored except to refute: a suspect, dead or outdated alive about us
  makes us raise our incarnation above it and broadcast alive (not while leaving).
* One name, one node id: an alive record with another node id for a name that is alive or suspect
  is refused (``drop.name_conflict``); once the old one is dead or left, the newcomer takes over.
* Push-pull state is merged entry by entry through the same rules; a remote ``dead`` is only taken
  as ``suspect`` (memberlist does the same), so one node's stale verdict cannot kill a member. A
  merged suspicion confirms none we hold and is not gossiped on: the peer is no independent
  suspector (issue 16).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import fields, replace
from operator import attrgetter

from meshd.gossip.config import GossipConfig
from meshd.gossip.events import EventKind, Member, MemberEvent, MemberState
from meshd.gossip.messages import (
    MAX_INCARNATION,
    Alive,
    Dead,
    PushPull,
    PushPullEntry,
    Suspect,
    encode,
    encode_entry,
)
from meshd.gossip.queue import BroadcastQueue
from meshd.gossip.record import NodeRecord
from meshd.gossip.suspicion import Awareness, Suspicion, suspicion_timeout

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
_UP = (ALIVE, SUSPECT)

_record_data = attrgetter(
    *(f.name for f in fields(NodeRecord) if f.name not in ("incarnation", "sig", "claim_rank"))
)
"""What an ``update`` is about: every record field but the incarnation and the signature (a new
certificate is an update: it may change the claim rank)."""

MAX_INCARNATION_JUMP = 1024
"""How far above what we know a suspect or dead message (and, in shared-key mode, an alive about
an up member) may put a member's incarnation. A member raises its own by one per refutation, so
honest messages stay far below; a forged 2^63 - 2 no longer drives anyone to the maximum."""

MAX_EVICTED = 4096
"""Evicted node ids remembered to drop their datagrams; a CRL lists fewer than this."""

CHECK_ASKS = 2
"""Checks of a suspect, a probe interval apart, that must all go unanswered for a verdict
(node.py): at 20 % loss one goes unanswered ~7 % of the time, two in a row ~0.5 %."""
JOIN_GRACE = 3
"""Probe intervals a member that joined here is not probed (`Membership._joined`); a joiner
that crashes at once is detected that much later."""
FRESH_MAX = 4096
"""Members remembered as just joined, at most (a join storm past it is probed as usual)."""
SUSPICION_TIMER = "suspect"
REAP_TIMER = "reap"

Schedule = Callable[[float, str, str], None]
"""``schedule(when, kind, member_name)``: ask the node to call back at ``when``."""
Verify = Callable[[NodeRecord], "NodeRecord | None"]
"""Certificate mode: the record as verified (claim rank set), or None (dropped and counted)."""
Sign = Callable[[NodeRecord], NodeRecord]


def _unsigned(rec: NodeRecord) -> NodeRecord:
    return rec


class Entry:
    """Our view of one member. ``inc`` may exceed ``record.incarnation`` (suspect/dead/left
    messages carry only an incarnation, not a record).

    Every change goes through `Membership._writable` first: it drops the cached wire form and
    gives a node its own copy of a `SharedEntry`."""

    __slots__ = ("record", "state", "since", "last_seen", "inc", "wire")

    def __init__(self, record: NodeRecord, state: MemberState, now: float, inc: int) -> None:
        self.record = record
        self.state = state
        self.since = now
        self.last_seen = now
        self.inc = inc
        self.wire: bytes | None = None
        """This entry as a push-pull item, cached: a full state sends every entry again."""

    def snapshot(self) -> Member:
        return Member(self.record, self.state, self.since, self.last_seen)

    def encoded(self) -> bytes:
        w = self.wire
        if w is None:
            w = self.wire = encode_entry(self.record, self.state, self.inc)
        return w


class SharedEntry(Entry):
    """A read-only entry that many members' tables hold at once (a converged simulation: 10,000
    nodes x 10,000 members would otherwise be 10^8 objects). Writing raises; see `_writable`."""

    __slots__ = ()

    def __init__(self, record: NodeRecord, state: MemberState, now: float, inc: int) -> None:
        for name, value in (
            ("record", record),
            ("state", state),
            ("since", now),
            ("last_seen", now),
            ("inc", inc),
            ("wire", encode_entry(record, state, inc)),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"shared entry is read-only ({name})")


class ConvergedStart:
    """The member table every node of a converged simulation starts from, built once."""

    def __init__(self, records: Iterable[NodeRecord], now: float) -> None:
        self.table: dict[str, Entry] = {}
        for rec in records:
            self.table.setdefault(rec.name, SharedEntry(rec, ALIVE, now, rec.incarnation))
        self.names = list(self.table)


def _remove(names: list[str], name: str) -> None:
    # O(N) search, but only on a state change; swap-pop keeps the removal itself O(1).
    i = names.index(name)
    names[i] = names[-1]
    names.pop()


class Membership:
    """The member table and its transitions; pure state, no I/O, no clock of its own."""

    def __init__(
        self,
        local: NodeRecord,
        config: GossipConfig,
        rng: random.Random,
        queue: BroadcastQueue,
        counters: Counter[str],
        schedule: Schedule,
        verify: Verify | None = None,
        sign: Sign = _unsigned,
    ) -> None:
        self.local = local
        self.verify = verify
        """None: shared-key mode, records believed as they come."""
        self.sign = sign
        self.leaving = False
        self.cfg = config
        self.rng = rng
        self.queue = queue
        self.counters = counters
        self._schedule = schedule
        self.table: dict[str, Entry] = {}
        self.alive: list[str] = []
        """Alive and suspect members except ourselves: probe, gossip and push-pull candidates."""
        self.dead: list[str] = []
        """Dead (not left) members: candidates for dead probes."""
        self._recent_dead: list[tuple[float, str]] = []
        self._stale: set[str] = set()
        self.suspicions: dict[str, Suspicion] = {}
        self.evicted: dict[bytes, None] = {}
        """Node ids of evicted members (insertion-ordered set), whose datagrams are dropped."""
        self.events: list[MemberEvent] = []
        self.awareness = Awareness(config.awareness_max)
        self._order: list[str] = []
        self._order_idx = 0
        self._quiet = False
        """Merging a state learned quietly (see `merge`): news about others is not gossiped."""
        self._fresh: dict[str, float] = {}
        """Members that joined here lately -> until when they are not probed (JOIN_GRACE)."""
        self.watch_joins = False
        """Set by the node once it is synced: before that, members it learns are not new to
        the mesh, only to us."""

    @property
    def num_nodes(self) -> int:
        """Estimated mesh size (alive and suspect, ourselves included)."""
        return len(self.alive) + 1

    # --- bootstrap ----------------------------------------------------------------------------

    def load_known(self, records: Iterable[NodeRecord], now: float) -> None:
        """Members remembered from a previous run: dead tombstones until heard from again."""
        for rec in records:
            if self.verify is not None:
                got = self.verify(rec)
                if got is None:
                    continue
                rec = got
            if len(self.table) >= self.cfg.max_members:
                break
            if rec.name != self.local.name and rec.name not in self.table:
                self._add(rec, DEAD, rec.incarnation, now, quiet=True)
                self._stale.add(rec.name)

    def stale_addrs(self) -> list[tuple[str, int]]:
        return [self.table[n].record.addr for n in sorted(self._stale)]

    def bootstrap(self, start: ConvergedStart) -> None:
        """Take ``start``'s members as alive, without events or broadcasts (a converged
        simulation). An empty table shares ``start``'s entries (copy on write)."""
        me = self.local.name
        if not self.table:
            self.table = dict(start.table)
            self.table.pop(me, None)
            self.alive = start.names.copy()
            if me in start.table:
                self.alive.remove(me)
        else:
            for name, e in start.table.items():
                if name != me and name not in self.table:
                    self.table[name] = e
                    self.alive.append(name)
        self._order_idx = len(self._order)  # a new round at the next probe

    # --- bookkeeping --------------------------------------------------------------------------

    def _add(
        self, rec: NodeRecord, state: MemberState, inc: int, now: float, quiet: bool = False
    ) -> Entry:
        e = Entry(rec, state, now, inc)
        self.table[rec.name] = e
        self.evicted.pop(rec.node_id, None)  # admitted again (a newer CRL, a new certificate)
        if state in _UP:
            self._up(rec.name)
        elif state == DEAD:
            self.dead.append(rec.name)
            if not quiet:
                self._recent_dead.append((now, rec.name))
        if state in (DEAD, LEFT):
            self._schedule(now + self.cfg.tombstone_ttl, REAP_TIMER, rec.name)
        return e

    def _up(self, name: str) -> None:
        self.alive.append(name)
        # The rest of this round's probe order is drawn lazily at random (next_probe_target), so
        # appending puts a newcomer at a random place in it, in O(1) (memberlist's intent).
        self._order.append(name)

    def _joined(self, name: str, now: float) -> None:
        """A member new here, or back: not probed for JOIN_GRACE probe intervals. A joiner
        spends its first seconds taking in the mesh's state (100 members, several full states
        at once when many join); on a busy host its acks then come late, and probing it only
        raised suspicions it refuted (most of the start-up suspicions at N = 100 on 2 cores).
        Members we learn while joining ourselves are not new to the mesh."""
        if self._quiet or not self.watch_joins:
            return
        fresh = self._fresh
        if len(fresh) >= FRESH_MAX:
            for n in [n for n, until in fresh.items() if until <= now]:
                del fresh[n]
            if len(fresh) >= FRESH_MAX:
                return
        fresh[name] = now + JOIN_GRACE * self.cfg.probe_interval

    def _writable(self, e: Entry) -> Entry:
        """Call before changing ``e``: drops its cached wire form; a shared entry is first
        replaced by a copy of our own (returned)."""
        if type(e) is SharedEntry:
            own = Entry(e.record, e.state, e.since, e.inc)
            own.last_seen = e.last_seen
            self.table[e.record.name] = own
            return own
        e.wire = None
        return e

    def _set_state(self, e: Entry, state: MemberState, now: float) -> None:
        """``e`` must be writable (see `_writable`)."""
        old, name = e.state, e.record.name
        if old == state:
            return
        if old in _UP and state not in _UP:
            _remove(self.alive, name)
        elif state in _UP and old not in _UP:
            self._up(name)
        if old == DEAD:
            _remove(self.dead, name)
        if state == DEAD:
            self.dead.append(name)
            self._recent_dead.append((now, name))
        if state != SUSPECT:
            self.suspicions.pop(name, None)
        if state in (DEAD, LEFT):
            self._schedule(now + self.cfg.tombstone_ttl, REAP_TIMER, name)
        e.state = state
        e.since = now

    def _emit(self, kind: EventKind, e: Entry) -> None:
        self.events.append(MemberEvent(kind, e.snapshot()))

    def _broadcast(self, name: str, payload: bytes, join: bool = False) -> None:
        if self._quiet and name != self.local.name:
            self.counters["merge.quiet"] += 1
            return
        self.queue.push(name, payload, join)

    def seen(self, name: str, now: float) -> None:
        e = self.table.get(name)
        if e is not None:
            self._writable(e).last_seen = now

    # --- choosing peers -----------------------------------------------------------------------

    def next_probe_target(self, now: float = -math.inf) -> Entry | None:
        """Round-robin over a random permutation, a new one each round. The permutation is drawn
        lazily (one Fisher-Yates step per probe), so a round costs one list copy, not a shuffle
        of N names up front. A member that joined here less than JOIN_GRACE ago is passed over
        this round (`_joined`)."""
        order = self._order
        fresh = self._fresh
        for _ in range(len(order) + 2):
            i = self._order_idx
            if i >= len(order):
                order = self._order = self.alive.copy()
                i = self._order_idx = 0
                if not order:
                    return None
            j = self.rng.randrange(i, len(order))
            order[i], order[j] = order[j], order[i]
            self._order_idx = i + 1
            e = self.table.get(order[i])
            if e is not None and e.state in _UP:
                if fresh and (until := fresh.get(order[i])) is not None:
                    if now < until:
                        continue
                    del fresh[order[i]]
                return e
        return None  # everyone up joined lately (or, in a fresh order, nobody is up)

    def random_alive(self, k: int, exclude: str | None = None) -> list[Entry]:
        """Up to ``k`` distinct random alive/suspect members, never ``exclude``."""
        n = len(self.alive)
        if n == 0 or k <= 0:
            return []
        picks = self.rng.sample(range(n), min(n, k + 1))
        out = [self.table[self.alive[i]] for i in picks if self.alive[i] != exclude]
        return out[:k]

    def gossip_targets(self, k: int, now: float) -> list[Entry]:
        """Random alive/suspect members, plus members dead for less than gossip_to_the_dead (they
        learn of their death this way and refute it)."""
        recent = self._recently_dead(now)
        n = len(self.alive)
        m = n + len(recent)
        if m == 0:
            return []
        picks = self.rng.sample(range(m), min(m, k))
        return [self.table[self.alive[i] if i < n else recent[i - n]] for i in picks]

    def _recently_dead(self, now: float) -> list[str]:
        rd = self._recent_dead
        cutoff = now - self.cfg.gossip_to_the_dead
        i = 0
        while i < len(rd) and rd[i][0] < cutoff:
            i += 1
        if i:
            del rd[:i]
        out = []
        for since, name in rd:
            e = self.table.get(name)
            if e is not None and e.state == DEAD and e.since == since:
                out.append(name)
        return out

    def random_dead(self) -> Entry | None:
        return self.table[self.rng.choice(self.dead)] if self.dead else None

    # --- transitions --------------------------------------------------------------------------

    def update_local(self, rec: NodeRecord) -> None:
        """New data for ourselves: a higher incarnation than ever announced, broadcast alive."""
        if self.leaving:
            return
        inc = max(rec.incarnation, self.local.incarnation) + 1
        self.local = self.sign(rec.with_incarnation(inc))
        self._broadcast(self.local.name, encode(Alive(self.local)))

    def leave(self) -> None:
        """Announce a graceful leave at a higher incarnation, so it beats every alive of ours in
        flight: our own record with ``left`` set (signed: the only leave certificate mode
        believes) or, in shared-key mode, a dead message about ourselves, which older members
        understand. From now on we refute nothing."""
        if self.leaving:
            return
        self.leaving = True
        local = self.local
        self.local = self.sign(replace(local, incarnation=local.incarnation + 1, left=True))
        name = local.name
        if self.verify is not None:
            self._broadcast(name, encode(Alive(self.local)))
        else:
            self._broadcast(name, encode(Dead(self.local.incarnation, name, name)))

    def refute(self, incarnation: int) -> None:
        """Raise our incarnation above ``incarnation`` and broadcast alive."""
        if incarnation >= MAX_INCARNATION:  # cannot go higher; a hostile peer, ignore
            return
        inc = max(incarnation, self.local.incarnation) + 1
        self.local = self.sign(self.local.with_incarnation(inc))
        self._broadcast(self.local.name, encode(Alive(self.local)))
        # Being suspected hints that we are the slow one (Lifeguard), as memberlist does.
        self.awareness.apply(1)
        self.counters["refute"] += 1

    def _jump(self, inc: int, known: int) -> bool:
        """``inc`` is further above ``known`` than anyone honest gets (counted)."""
        if inc - known > MAX_INCARNATION_JUMP:
            self.counters["drop.incarnation_jump"] += 1
            return True
        return False

    def _full(self) -> bool:
        if len(self.table) >= self.cfg.max_members:
            self.counters["drop.max_members"] += 1
            return True
        return False

    def on_alive(self, rec: NodeRecord, now: float) -> None:
        if self.verify is not None:
            got = self.verify(rec)
            if got is None:
                return
            rec = got
        name = rec.name
        if name == self.local.name:
            if rec.node_id != self.local.node_id:
                self.counters["drop.name_conflict"] += 1
            elif (
                not self.leaving
                and rec.incarnation >= self.local.incarnation
                and (rec != self.local)
                and not self._jump(rec.incarnation, self.local.incarnation)
            ):
                self.refute(rec.incarnation)  # an old or foreign version of our own record
            return
        e = self.table.get(name)
        if rec.left:
            self._on_left(rec, e, now)
            return
        if e is None:
            if self._full():
                return
            e = self._add(rec, ALIVE, rec.incarnation, now)
            self._emit("join", e)
            self._joined(name, now)
            self._broadcast(name, encode(Alive(rec)), join=True)
            return
        if rec.node_id != e.record.node_id:
            if e.state in _UP:
                self.counters["drop.name_conflict"] += 1
                return
            # The old identity is dead or gone: the newcomer takes the name over.
            self._stale.discard(name)
            e = self._writable(e)
            e.record, e.inc, e.last_seen = rec, rec.incarnation, now
            self._set_state(e, ALIVE, now)
            self._emit("join", e)
            self._joined(name, now)
            self._broadcast(name, encode(Alive(rec)), join=True)
            return
        if rec.incarnation < e.inc or (rec.incarnation == e.inc and name not in self._stale):
            return
        if self.verify is None and e.state in _UP and self._jump(rec.incarnation, e.inc):
            return
        self._stale.discard(name)
        old_state, old_rec = e.state, e.record
        e = self._writable(e)
        e.record, e.inc, e.last_seen = rec, rec.incarnation, now
        changed = _record_data(old_rec) != _record_data(rec)
        if old_state != ALIVE:
            self._set_state(e, ALIVE, now)
            self._emit("alive" if old_state == SUSPECT else "join", e)
            if old_state != SUSPECT:
                self._joined(name, now)
            if old_state == SUSPECT:
                self.counters["suspect.refuted"] += 1
            if old_state == SUSPECT and changed:
                self._emit("update", e)
        elif changed:
            self._emit("update", e)
        self._broadcast(name, encode(Alive(rec)), join=old_state in (DEAD, LEFT))

    def _on_left(self, rec: NodeRecord, e: Entry | None, now: float) -> None:
        """The member's own record says it left (signed, in certificate mode)."""
        name = rec.name
        if e is None or e.state == LEFT or rec.incarnation < e.inc:
            return
        if rec.node_id != e.record.node_id:
            if e.state in _UP:
                self.counters["drop.name_conflict"] += 1
            return
        if self.verify is None and e.state in _UP and self._jump(rec.incarnation, e.inc):
            return
        self._stale.discard(name)
        e = self._writable(e)
        e.record, e.inc, e.last_seen = rec, rec.incarnation, now
        self._set_state(e, LEFT, now)
        self._emit("left", e)
        self._broadcast(name, encode(Alive(rec)))

    def evict(self, name: str, now: float) -> None:
        """Forget a member whose certificate was revoked or expired, at once and without a
        tombstone (its records are refused from now on): an ``evicted`` event, then gone."""
        e = self.table.get(name)
        if e is None:
            return
        if e.state in _UP:
            _remove(self.alive, name)
        elif e.state == DEAD:
            _remove(self.dead, name)
        self.suspicions.pop(name, None)
        self._stale.discard(name)
        del self.table[name]
        # Its datagrams are dropped from now on (the envelope names the sender's node id): an
        # evicted member gets no acks, no digests, nothing. Bounded: oldest forgotten first.
        self.evicted[e.record.node_id] = None
        if len(self.evicted) > MAX_EVICTED:
            del self.evicted[next(iter(self.evicted))]
        self.events.append(MemberEvent("evicted", e.snapshot()))
        self.counters["evicted"] += 1

    def _about_self(self, inc: int) -> None:
        if self.leaving or self._jump(inc, self.local.incarnation):
            return
        if inc >= self.local.incarnation:
            self.refute(inc)
        elif self.local.name not in self.queue:
            # Someone still holds a suspicion we already refuted (it missed our alive): announce
            # the current incarnation again, without raising it. Cheap, and it rides on our ack
            # to that very prober (see the buddy system in node.py).
            self._broadcast(self.local.name, encode(Alive(self.local)))
            self.counters["reannounce"] += 1

    def on_suspect(
        self, inc: int, name: str, sender: str, now: float, merged: bool = False
    ) -> None:
        """``sender`` suspects ``name`` at ``inc``. ``merged``: the verdict came in a push-pull
        (``sender`` the peer), which only relays what its owner heard: the peer is no
        independent suspector, so it confirms nothing and we do not gossip it on as one (every
        full state exchange would otherwise add a confirmer of every suspicion in flight, and
        under loss suspicions of healthy members ran down to the minimum timeout while their
        refutations were still spreading). A suspicion it brings starts at the longest
        timeout."""
        if name == self.local.name:
            self._about_self(inc)
            return
        e = self.table.get(name)
        if e is None or inc < e.inc or self._jump(inc, e.inc):
            return
        if e.state != ALIVE:
            if merged:
                return
            s = self.suspicions.get(name)
            if s is not None and s.confirm(sender):
                self._schedule(self.check_at(s), SUSPICION_TIMER, name)
                self._broadcast(name, encode(Suspect(inc, name, sender)))
            return
        e = self._writable(e)
        e.inc = inc
        n = self.num_nodes
        k = int(self.cfg.suspicion_mult) - 2
        if n - 2 < k:  # too few members to ever collect k confirmations
            k = 0
        # Lifeguard local health slows our own verdicts too: a node that is itself degraded
        # (missed acks, lost nacks) gives a suspect longer before declaring it dead. A healthy
        # node (score 0) detects crashes exactly as fast as before.
        lo = self.awareness.scale(
            suspicion_timeout(self.cfg.suspicion_mult, n, self.cfg.probe_interval)
        )
        s = Suspicion(sender, inc, k, lo, self.cfg.suspicion_max_timeout_mult * lo, now)
        self._set_state(e, SUSPECT, now)
        self.suspicions[name] = s
        self._schedule(self.check_at(s), SUSPICION_TIMER, name)
        self._emit("suspect", e)
        self.counters["suspect.raised"] += 1
        if not merged:
            self._broadcast(name, encode(Suspect(inc, name, sender)))

    def check_at(self, s: Suspicion) -> float:
        """When the node asks the suspect itself, before the verdict (node.py): CHECK_ASKS
        probe intervals before the deadline, so that each ask gets an interval to be answered
        and the last answer is in by then."""
        return max(s.start, s.deadline - CHECK_ASKS * self.cfg.probe_interval)

    def suspicion_due(self, name: str, now: float) -> Suspicion | None:
        """The suspicion of ``name`` if its check time has come (None: refuted meanwhile, or an
        earlier timer of a shortened suspicion)."""
        s = self.suspicions.get(name)
        return s if s is not None and now >= self.check_at(s) else None

    def suspicion_expired(self, name: str, now: float) -> None:
        """Our verdict on a suspicion that ran out (node.py checks the member first)."""
        s = self.suspicions.get(name)
        if s is not None:
            self.on_dead(s.incarnation, name, self.local.name, now)

    def on_dead(self, inc: int, name: str, sender: str, now: float) -> None:
        if name == self.local.name:
            self._about_self(inc)
            return
        e = self.table.get(name)
        if e is None or inc < e.inc or self._jump(inc, e.inc):
            return
        left = sender == name
        if left and self.verify is not None:
            # Anyone can write a dead message; only the member's signed record says it left.
            self.counters["drop.unsigned_leave"] += 1
            return
        if e.state == LEFT or (e.state == DEAD and not left):
            return
        self._stale.discard(name)
        e = self._writable(e)
        e.inc = inc
        self._set_state(e, LEFT if left else DEAD, now)
        self._emit("left" if left else "dead", e)
        if not left:
            self.counters["dead.declared"] += 1
        self._broadcast(name, encode(Dead(inc, name, sender)))

    def reap(self, name: str, now: float) -> None:
        """Forget a tombstone once it is older than tombstone_ttl."""
        e = self.table.get(name)
        if e is None or e.state not in (DEAD, LEFT) or now < e.since + self.cfg.tombstone_ttl:
            return
        if e.state == DEAD:
            _remove(self.dead, name)
        del self.table[name]
        self._stale.discard(name)

    # --- push-pull ----------------------------------------------------------------------------

    def entries(self, now: float) -> list[bytes]:
        """Our state for a push-pull, encoded (ourselves excluded: the sender record says it).
        A dead member's entry carries how long it has been dead (not cached: it ages)."""
        stale = self._stale
        out = [
            e.wire or e.encoded()
            for name, e in self.table.items()
            if e.state != DEAD and (not stale or name not in stale)
        ]
        for name in self.dead:
            e = self.table[name]
            if name not in stale:
                out.append(encode_entry(e.record, DEAD, e.inc, int(now - e.since)))
        return out

    def entry(self, name: str) -> bytes | None:
        e = self.table.get(name)
        return None if e is None else e.encoded()

    def merge(self, pp: PushPull, now: float, quiet: bool = False) -> bool:
        """Merge one push-pull chunk; False if the sender is refused (name conflict, or in
        certificate mode not verified). An entry that does not verify is skipped alone: an honest
        relay can carry a record whose certificate just expired.

        ``quiet``: what the entries teach is not gossiped on (the sender's own record still is,
        and so is a refutation of what they say about us). A joiner merges its first full state
        this way: it came from a member of the mesh, which the mesh already agrees with, and
        re-gossiping every member learned cost retransmit_mult * log10(N + 1) sends of N records
        (at 10,000 members, ~11 minutes of full datagrams after each join)."""
        sender = pp.sender
        if self.verify is not None:
            got = self.verify(sender)
            if got is None:
                return False
            sender = got
        e = self.table.get(sender.name)
        if e is not None and e.record.node_id != sender.node_id and e.state in _UP:
            self.counters["drop.name_conflict"] += 1
            return False
        self.on_alive(sender, now)
        self.seen(sender.name, now)
        self._quiet = quiet
        try:
            self._merge_entries(pp, sender.name, now)
        finally:
            self._quiet = False
        return True

    def _merge_entries(self, pp: PushPull, sender: str, now: float) -> None:
        table, stale = self.table, self._stale
        for entry in pp.entries:
            rec = entry.record
            if entry.state is ALIVE:
                # The common case, a member we already know at this incarnation, skipped
                # without two calls; the same test on_alive makes before doing anything.
                e = table.get(rec.name)
                if (
                    e is not None
                    and (
                        rec.incarnation < e.inc
                        or (rec.incarnation == e.inc and (not stale or rec.name not in stale))
                    )
                    and e.record.node_id == rec.node_id
                ):
                    continue
            self._merge_entry(entry, sender, now)

    def _merge_entry(self, en: PushPullEntry, sender: str, now: float) -> None:
        rec, state, name = en.record, en.state, en.record.name
        if state == ALIVE or rec.left:
            self.on_alive(rec, now)  # a left record speaks for itself, whatever the state says
            return
        if self.verify is not None:
            got = self.verify(rec)
            if got is None:
                return  # skip the entry; the rest of the chunk stands
            rec = got
        e = self.table.get(name)
        if e is not None and e.record.node_id != rec.node_id:
            return  # a verdict about another identity of that name says nothing about this one
        if state == LEFT:
            if self.verify is None:
                self.on_dead(en.incarnation, name, name, now)
                return
            # Not self-signed: at most a verdict of death, which a remote one never is here.
            self.counters["drop.unsigned_leave"] += 1
            state = DEAD
        if e is None and name != self.local.name:
            if state == DEAD:
                if self._jump(en.incarnation, rec.incarnation) or self._full():
                    return
                if en.age >= self.cfg.tombstone_ttl:
                    return  # the sender keeps it longer than we would: forgotten here
                # Learn the tombstone quietly (dead probes then find a healed partition), dated
                # by the sender's knowledge of the death: the data plane's reap and a subnet
                # lease run from the death, not from our join.
                self._add(rec, DEAD, en.incarnation, now - en.age, quiet=True)
                return
            self.on_alive(rec, now)
        self.on_suspect(en.incarnation, name, sender, now, merged=True)
