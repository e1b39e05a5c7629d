"""Full state exchanges (push-pull): join, anti-entropy, dead probes, and knowing we are synced.

Timers this module owns (the node dispatches them here):

    push_pull    every push_pull_interval (scaled with N): anti-entropy with a member. It opens
                 with a SyncDigest, a 16-byte hash of our view, riding on the next probe's ping
                 (the answer rides on the ack); a member whose view hashes
                 the same answers with its own digest and that is all, otherwise it starts a full
                 exchange. A converged mesh so spends ~100 bytes per round instead of two full
                 tables (memberlist always sends both).
    dead_probe   every dead_probe_interval: a small push-pull to one random dead member, telling it
                 it is considered dead; if it is reachable again it refutes and answers
    join         until synced: push-pull to the seeds again, with exponential backoff

Every push-pull also carries the recent key ops (keyops.py) in its first chunk, and a full state
goes with the revocation list in force (certificate mode) as a Crl message in a datagram of its
own, sent first: joiners and healed partitions learn it before they merge the state.

Who gets a full state (amplification stays at most 1, docs/security.md):

* A joiner that knows a seed only by address sends it a push-pull addressed to "any", padded to a
  full datagram. The seed answers with its own record only (no entries, no key ops), which fits
  in the request's size; the joiner then asks again, addressed to the seed's node id, and that
  request is answered with the seed's whole state. Replaying the first request to other members
  gets each one answer no larger than the replay.
* Full states go to a member's record address: the push-pull's sender record (its envelope
  sender must be that record's node id), or for a digest, the member the digest names (whose
  node id must be the envelope's sender) -- never to the datagram's source; a digest from no
  member we know is dropped (``drop.unknown_source``).
* At most one full state per peer per ``push_pull_min_interval`` (``drop.push_pull_rate``).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.keyops import KeyOps
from meshd.gossip.messages import (
    DIGEST_LEN,
    MAX_RESEND,
    Addr,
    PushPull,
    Resend,
    SyncDigest,
    encode,
    encode_push_pull,
    pad_push_pull,
)
from meshd.gossip.record import NodeRecord
from meshd.gossip.state import Membership

ANSWERED_MEMORY = 256
"""Push-pull requests remembered as answered: a request cut into chunks gets one reply."""

TIMERS = ("push_pull", "dead_probe", "join", "resend")

RESEND_TRIES = 3
"""Resend requests per answer: the requester asks at most this often for what is still missing,
and the answerer serves at most this many for one answer."""
ANSWER_TTL = 10.0
"""Seconds an answer's chunks are kept for Resend requests."""
ANSWER_MEMORY_BYTES = 1 << 21
"""Encoded chunks kept for resends, all answers together (oldest forgotten first): a full state
of 10,000 members is ~550 KB."""
ASKED_MEMORY = 64
"""Our own full requests whose answers are tracked for completeness."""
JOIN_MAX_DELAY = 8.0
"""Probe intervals between join rounds at most (they start 2 apart and double): a seed that
was down is found again within seconds, not push_pull_interval."""

FULL_STATE_MEMORY = 4096
"""Peers whose last full state from us is remembered (for push_pull_min_interval)."""
ANY_MEMORY = 64
"""Sync ids of our requests to "any" awaiting a seed's short answer."""

JOIN_SETTLE = 2.0
"""Probe intervals from the first full sync to the first anti-entropy round (see _note_sync)."""


class _Answer:
    """Chunks of an answer we sent, kept for the requester's Resend."""

    __slots__ = ("at", "chunks", "size", "served")

    def __init__(self, at: float, chunks: list[bytes]) -> None:
        self.at, self.chunks, self.served = at, chunks, 0
        self.size = sum(len(c) for c in chunks)


class _Asked:
    """A full request of ours: which chunks of its answer arrived."""

    __slots__ = ("addr", "at", "count", "got", "node_id", "tries")

    def __init__(self, addr: Addr, node_id: bytes, at: float) -> None:
        self.addr, self.node_id, self.at = addr, node_id, at
        self.count = 0
        self.got: set[int] = set()
        self.tries = 0


Emit = Callable[[Sequence[bytes], Addr, bytes], None]
Schedule = Callable[[float, str], None]


def push_pull_interval(base: float, num_nodes: int) -> float:
    """memberlist's pushPullScale: beyond 32 members the interval grows with log2(N), so that the
    full-state traffic each node receives stays roughly flat as the mesh grows."""
    if num_nodes <= 32:
        return base
    return base * (math.ceil(math.log2(num_nodes) - math.log2(32)) + 1)


_UP = (MemberState.ALIVE, MemberState.SUSPECT)


def view_digest(state: Membership, keyops: KeyOps) -> bytes:
    """Hash of what anti-entropy must agree on: every member up (alive or suspect: suspicion is
    each node's own clock) by name, node id and incarnation -- a record never changes without a
    new incarnation -- ourselves included, and the key op log. Tombstones are left out: a member
    that left before a node joined is unknown there, harmlessly, and must not force full
    exchanges forever; a member dead here but alive there still differs (it is up on one side)."""
    local = state.local
    up = [(local.name, local.node_id, local.incarnation)]
    up += [(e.record.name, e.record.node_id, e.inc) for e in state.table.values() if e.state in _UP]
    up.sort()
    h = hashlib.blake2b(digest_size=DIGEST_LEN)
    for name, node_id, inc in up:
        h.update(b"%s\0%s%d\0" % (name.encode(), node_id, inc))
    for op in keyops.log():
        h.update(op.id)
    return h.digest()


class Sync:
    """One node's push-pull side; ``synced`` is `GossipNode.synced`."""

    def __init__(
        self,
        state: Membership,
        keyops: KeyOps,
        config: GossipConfig,
        rng: random.Random,
        counters: Counter[str],
        emit: Emit,
        schedule: Schedule,
        budget: int,
        resend: bool = True,
    ) -> None:
        self.synced = False
        self._resend = resend
        """Whether we speak Resend (protocol 1.2): ask for lost chunks, keep answers for it."""
        self.digest_due = False
        """An anti-entropy round is due: the next probe carries its `opening`."""
        self._state = state
        self._now = 0.0  # the latest time we were called with: dead entries carry their age
        self._keyops = keyops
        self._cfg = config
        self._rng = rng
        self._counters = counters
        self._emit = emit
        self._schedule = schedule
        self._budget = budget
        self._answered: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._progress: dict[str, tuple[int, set[int]]] = {}
        self._seeds: list[tuple[Addr, bytes]] = []
        self._any: OrderedDict[int, None] = OrderedDict()
        self._full_at: OrderedDict[bytes, float] = OrderedDict()
        self._join_delay = 0.0
        self._join_rounds = 0
        self._push_pull_at = 0.0
        self._settle = 0.0
        self._dead_full_at = -math.inf
        self._answers: OrderedDict[tuple[bytes, int], _Answer] = OrderedDict()
        self._answer_bytes = 0
        self._asked: OrderedDict[int, _Asked] = OrderedDict()
        self._resend_armed = False
        """After a join, the delay to the next anti-entropy round while our view has not yet
        hashed the same as a member's (doubling up to the interval); 0 once it has."""
        self.crl: bytes | None = None
        """The encoded Crl message in force (node.py sets it), sent beside every full state."""

    def start(self, now: float) -> None:
        """Random phases, so that nodes started together do not sync in lockstep."""
        self._now = now
        self._push_pull_at = now + self._rng.uniform(0, self._cfg.push_pull_interval)
        self._schedule(self._push_pull_at, "push_pull")
        self._schedule(now + self._rng.uniform(0, self._cfg.dead_probe_interval), "dead_probe")

    def join(self, seeds: Sequence[Addr], now: float) -> None:
        self._now = now
        own = self._state.local.addr
        # A seed that is a member we know (from a previous run) is asked by its node id; only
        # the others are asked through "any".
        ids = {e.record.addr: e.record.node_id for e in self._state.table.values()}
        targets: list[tuple[Addr, bytes]] = []
        for addr in [*seeds, *self._state.stale_addrs()]:
            if addr != own and all(addr != t for t, _ in targets):
                targets.append((addr, ids.get(addr, b"")))
        self._seeds = targets
        if not targets:
            self.synced = True
        else:
            self._join_delay = 2 * self._cfg.probe_interval
            self._join_round(now)

    def bootstrapped(self, now: float) -> None:
        """A converged simulation start: synced, and the first push-pull re-phased over the
        interval a mesh of this size uses."""
        self._now = now
        self.synced = True
        interval = push_pull_interval(self._cfg.push_pull_interval, self._state.num_nodes)
        self._push_pull_at = now + self._rng.uniform(0, interval)
        self._schedule(self._push_pull_at, "push_pull")

    def fire(self, kind: str, now: float) -> None:
        self._now = now
        if kind == "push_pull" and now >= self._push_pull_at:
            # The opening rides on the next probe's ping (node.py takes it with `opening`), to
            # whichever member that probes: random enough, and no datagram of its own.
            self.digest_due = True
            interval = push_pull_interval(self._cfg.push_pull_interval, self._state.num_nodes)
            if self._settle:
                interval, self._settle = (
                    min(self._settle, interval),
                    min(2 * self._settle, interval),
                )
            self._push_pull_at = now + interval
            self._schedule(self._push_pull_at, "push_pull")
        elif kind == "dead_probe":
            e = self._state.random_dead()
            if e is not None:
                self._send(e.record, only=e.record.name)
            self._schedule(now + self._cfg.dead_probe_interval, "dead_probe")
        elif kind == "join" and not self.synced:
            self._join_round(now)
        elif kind == "resend":
            self._resend_round(now)

    def receive(self, msg: PushPull, now: float, sender: bytes, to_any: bool) -> None:
        """One push-pull chunk; ``sender``/``to_any`` as the envelope says (see the module
        docstring)."""
        self._now = now
        st = self._state
        if msg.sender.name == st.local.name:
            if msg.sender.node_id == st.local.node_id and not msg.reply:
                # Our own request came back: a seed address is ourselves, so we found the mesh.
                self._counters["push_pull.self"] += 1
                self.synced = True
            else:
                self._counters["drop.name_conflict"] += 1
            return
        if sender and sender != msg.sender.node_id:
            self._counters["drop.sender_mismatch"] += 1
            return
        if not to_any and self._dead_probe(msg):
            return
        # Until synced, a state is learned quietly (Membership.merge): the mesh already has it.
        if not st.merge(msg, now, quiet=not self.synced):
            return
        if msg.key_ops:
            # Anti-entropy for key ops: not gossiped on (the broadcast already reached the rest).
            self._keyops.accept(msg.key_ops, logged=True, joining=not self.synced)
        if msg.reply:
            if msg.sync_id in self._any:
                # A seed's short answer to our request to "any": now we know its node id, ask
                # again, addressed, for its state (once per request, and only while joining).
                del self._any[msg.sync_id]
                if not self.synced:
                    self._counters["push_pull.any_answered"] += 1
                    self._send(msg.sender)
                return
            self._track(msg, now)
            self._note_sync(msg, now)
            return
        if to_any:
            # A joiner that does not know our node id: our record only, within its request's
            # size (it padded it), once per request.
            if msg.index == 0:
                self._counters["push_pull.any_request"] += 1
                short = encode_push_pull(st.local, msg.sync_id, True, [], self._budget)
                self._emit(short, msg.sender.addr, msg.sender.node_id)
            return
        key = (msg.sender.name, msg.sync_id)
        if key in self._answered:
            return
        e = st.table.get(msg.sender.name)
        if e is None or e.record.node_id != msg.sender.node_id:
            self._counters["drop.unknown_source"] += 1
            return
        if not self._may_push(e.record.node_id, now):
            return
        self._answered[key] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        self._send(e.record, reply_to=msg.sync_id)

    def _dead_probe(self, msg: PushPull) -> bool:
        """A dead probe (a request whose only entry says we are dead) gets our whole state at
        most once a probe interval; the others get our record alone, as a request to "any"
        does: a node back
        after many members declared it dead is probed by each of them every dead_probe_interval,
        and answering each with a full state flooded it (N = 3,000: ~25 MB/s out). Merging the
        request refutes the verdict; the prober merges our record and gossips it, and refutes
        what we hold of it if that is not alive; anti-entropy (digests) makes up the rest of the
        two views."""
        st = self._state
        if msg.reply or len(msg.entries) != 1:
            return False
        about = msg.entries[0]
        if about.record.name != st.local.name or about.state is MemberState.ALIVE:
            return False
        if self._now - self._dead_full_at >= self._cfg.probe_interval:
            # One a probe interval gets our whole state, as any request would: the prober
            # learns what we hold of everyone (after a partition: all of them dead, so each
            # refutes in turn), which heals the two views as fast as before.
            self._dead_full_at = self._now
            return False
        if not st.merge(msg, self._now):
            return True
        key = (msg.sender.name, msg.sync_id)
        e = st.table.get(msg.sender.name)
        if key in self._answered or e is None or e.record.node_id != msg.sender.node_id:
            return True
        self._answered[key] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        self._counters["push_pull.dead_probe_answered"] += 1
        # With what we hold of the prober when it is not alive here: after a partition both
        # sides hold the other dead, and the prober learns it must refute.
        theirs = [] if e.state is MemberState.ALIVE else [st.entry(e.record.name) or b""]
        short = encode_push_pull(st.local, msg.sync_id, True, theirs, self._budget)
        self._emit(short, e.record.addr, e.record.node_id)
        return True

    def digest(self) -> bytes:
        return view_digest(self._state, self._keyops)

    def opening(self) -> bytes:
        """The encoded digest that opens a due anti-entropy round (see `fire`)."""
        self.digest_due = False
        self._counters["push_pull.digest_sent"] += 1
        name = self._state.local.name
        return encode(SyncDigest(self._rng.getrandbits(32), False, self.digest(), name))

    def receive_digest(
        self, msg: SyncDigest, sender: bytes, now: float
    ) -> tuple[bytes, NodeRecord] | None:
        """A peer's anti-entropy opening (or our opening's answer, ``reply``). Returns the answer
        and the member it is for when the views hash the same, for the node to piggyback on its
        ack; when they differ, starts the full exchange itself. Answered only when the digest
        names a member whose node id is ``sender`` (the envelope's): its record address gets
        the answer, never the datagram's source."""
        mine = self.digest()
        if msg.digest == mine:
            self._settle = 0.0  # our view is a member's: settled
        if msg.reply:
            self._counters[
                "push_pull.digest_same" if msg.digest == mine else "push_pull.digest_late"
            ] += 1
            return None
        e = self._state.table.get(msg.sender) if msg.sender else None
        if e is None or not sender or e.record.node_id != sender:
            self._counters["drop.unknown_source"] += 1
            return None
        if msg.digest == mine:
            self._counters["push_pull.digest_same"] += 1
            return encode(SyncDigest(msg.sync_id, True, mine, self._state.local.name)), e.record
        # Views differ: a full exchange, which we start (the sender answers with its state).
        self._counters["push_pull.digest_differ"] += 1
        if self._may_push(e.record.node_id, now):
            self._send(e.record)
        return None

    # --- internals ----------------------------------------------------------------------------

    def _join_round(self, now: float) -> None:
        # A member we knew is asked by its node id first; if that went unanswered, through
        # "any" from then on: it may have come back under a new node id (a wiped state dir).
        first, self._join_rounds = self._join_rounds == 0, self._join_rounds + 1
        for addr, node_id in self._seeds:
            if node_id and first:
                self._send_to(addr, node_id)
            else:
                sync_id = self._rng.getrandbits(32)
                self._any[sync_id] = None
                if len(self._any) > ANY_MEMORY:
                    self._any.popitem(last=False)
                self._send_to(addr, b"", sync_id=sync_id)
        self._schedule(now + self._join_delay, "join")
        cap = min(JOIN_MAX_DELAY * self._cfg.probe_interval, self._cfg.push_pull_interval)
        self._join_delay = min(2 * self._join_delay, cap)

    def _may_push(self, node_id: bytes, now: float) -> bool:
        """Whether a full state may go to that peer now (push_pull_min_interval); notes it."""
        last = self._full_at.get(node_id)
        if last is not None and now - last < self._cfg.push_pull_min_interval:
            self._counters["drop.push_pull_rate"] += 1
            return False
        self._full_at[node_id] = now
        self._full_at.move_to_end(node_id)
        if len(self._full_at) > FULL_STATE_MEMORY:
            self._full_at.popitem(last=False)
        return True

    def _send(self, to: NodeRecord, reply_to: int | None = None, only: str | None = None) -> None:
        self._send_to(to.addr, to.node_id, reply_to, only)

    def _send_to(
        self,
        addr: Addr,
        node_id: bytes,
        reply_to: int | None = None,
        only: str | None = None,
        sync_id: int | None = None,
    ) -> None:
        """Our state to ``addr``, the member ``node_id`` (b"": any, padded to full datagrams;
        see the module docstring), cut into datagrams. ``reply_to``: the request's sync id.
        ``only``: send just that member's entry (a dead probe), not the whole table."""
        st = self._state
        if only is not None:
            one = st.entry(only)
            entries = [one] if one is not None else []
        else:
            entries = st.entries(self._now)
            if self.crl is not None and node_id:
                self._emit([self.crl], addr, node_id)
        if reply_to is not None:
            sync_id = reply_to
        elif sync_id is None:
            sync_id = self._rng.getrandbits(32)
        ops = [encode(op) for op in self._keyops.log()]
        chunks = encode_push_pull(
            st.local, sync_id, reply_to is not None, entries, self._budget, ops
        )
        for chunk in chunks:
            if not node_id:
                chunk = pad_push_pull(chunk, self._budget)
            self._emit([chunk], addr, node_id)
        if not node_id or only is not None or not self._resend:
            return
        if reply_to is not None:
            if len(chunks) > 1:
                self._keep_answer(node_id, reply_to, chunks)
        else:
            self._asked[sync_id] = _Asked(addr, node_id, self._now)
            if len(self._asked) > ASKED_MEMORY:
                self._asked.popitem(last=False)

    # --- lost chunks: Resend ------------------------------------------------------------------
    #
    # An answer is cut into datagrams, and at 20 % loss one of a 50-chunk answer arrives whole
    # with probability 1e-5. The requester notes which chunks of the answer to each of its full
    # requests arrived; a probe timeout after the last one, it asks the answerer for the missing
    # ones by index (a Resend, protocol 1.2), up to RESEND_TRIES times, and the answerer sends
    # them again from the chunks it kept (ANSWER_TTL). What still misses is left to the next
    # round (a join round, anti-entropy). Chosen over a TCP stream (memberlist's push-pull):
    # one socket, one envelope and its keys and rate limits, one port in the firewall, and the
    # sans-IO core keeps every byte it sends; a lost chunk costs one datagram more, not the
    # whole exchange again. A node of protocol 1.1 skips Resend (an unknown type of a newer
    # minor): its peers fall back to whole retries, as before.

    def _keep_answer(self, node_id: bytes, sync_id: int, chunks: list[bytes]) -> None:
        key = (node_id, sync_id)
        old = self._answers.pop(key, None)
        if old is not None:
            self._answer_bytes -= old.size
        ans = self._answers[key] = _Answer(self._now, chunks)
        self._answer_bytes += ans.size
        while self._answers and (
            self._answer_bytes > ANSWER_MEMORY_BYTES
            or next(iter(self._answers.values())).at < self._now - ANSWER_TTL
        ):
            _, gone = self._answers.popitem(last=False)
            self._answer_bytes -= gone.size

    def _track(self, msg: PushPull, now: float) -> None:
        """A chunk of the answer to one of our full requests arrived."""
        a = self._asked.get(msg.sync_id)
        if a is None or a.node_id != msg.sender.node_id:
            return
        if a.count != msg.count:
            a.count, a.got = msg.count, set()
        a.got.add(msg.index)
        a.at = now
        if len(a.got) == a.count:
            del self._asked[msg.sync_id]
        elif not self._resend_armed:
            self._resend_armed = True
            self._schedule(now + self._cfg.probe_timeout, "resend")

    def _resend_round(self, now: float) -> None:
        self._resend_armed = False
        wait = self._cfg.probe_timeout
        name = self._state.local.name
        soonest = math.inf
        for sync_id, a in list(self._asked.items()):
            if not a.count:
                if now - a.at > ANSWER_TTL:
                    del self._asked[sync_id]  # never answered: the round's own retry covers it
                continue
            due = a.at + wait  # compared as scheduled: `now - a.at < wait` can hold while
            if due > now:  # `a.at + wait == now` in floats, re-arming at `now` forever
                soonest = min(soonest, due)
                continue
            if a.tries >= RESEND_TRIES:
                del self._asked[sync_id]
                self._counters["push_pull.resend_gave_up"] += 1
                continue
            missing = [i for i in range(a.count) if i not in a.got][:MAX_RESEND]
            a.tries += 1
            a.at = now
            self._counters["push_pull.resend_sent"] += 1
            self._emit([encode(Resend(sync_id, name, tuple(missing)))], a.addr, a.node_id)
            soonest = min(soonest, now + wait)
        if soonest < math.inf:
            self._resend_armed = True
            self._schedule(soonest, "resend")

    def receive_resend(self, msg: Resend, sender: bytes, now: float) -> None:
        """A member asks again for chunks of an answer we sent it: they go to its record
        address, from the chunks kept, at most RESEND_TRIES times per answer."""
        self._now = now
        e = self._state.table.get(msg.sender)
        if e is None or not sender or e.record.node_id != sender:
            self._counters["drop.unknown_source"] += 1
            return
        ans = self._answers.get((sender, msg.sync_id))
        if ans is None or now - ans.at > ANSWER_TTL or ans.served >= RESEND_TRIES:
            self._counters["drop.resend_unknown"] += 1
            return
        ans.served += 1
        for i in msg.indices:
            if i < len(ans.chunks):
                self._counters["push_pull.resent_chunks"] += 1
                self._emit([ans.chunks[i]], e.record.addr, sender)

    def _note_sync(self, msg: PushPull, now: float) -> None:
        """Synced once every chunk of an answer has been merged. Chunks of answers to retries add
        up (merging is idempotent), so a lossy link still completes a large state eventually.

        Once synced, anti-entropy rounds run JOIN_SETTLE probe intervals apart, doubling up to
        push_pull_interval, until our view hashes the same as a member's (`_settle`). The first
        round is brought forward to JOIN_SETTLE probe
        intervals from now: when many nodes join at once, the seed answered with a table that
        misses the ones joining right after us, and their news was gossiped while the senders'
        views were still filling (each broadcast is sent only queue.retransmit_limit
        times), so it can miss us; one digest round shortly after closes that gap (the digests
        differ, a full exchange follows) instead of waiting up to push_pull_interval."""
        if self.synced:
            return
        count, got = self._progress.get(msg.sender.name, (msg.count, set()))
        if count != msg.count:
            got = set()
        got.add(msg.index)
        self._progress[msg.sender.name] = (msg.count, got)
        if len(got) == msg.count:
            self.synced = True
            self._progress.clear()
            self._settle = JOIN_SETTLE * self._cfg.probe_interval
            settle = now + self._settle
            if settle < self._push_pull_at:
                self._push_pull_at = settle
                self._schedule(settle, "push_pull")
