"""The gossip node: the sans-IO facade that the transport and the simulator drive.

The driver loop (see transport.py, sim.py)::

    node = GossipNode(local, config, random.Random(seed), now, known)
    node.join(seeds, now)
    loop:
        feed node.receive_datagram(data, addr, now, sender, to_any) for every datagram
        call node.handle_timer(now) when now >= node.get_timer()
        send everything in node.datagrams_to_send(); drain node.pop_events()

Every datagram goes to one member: `datagrams_to_send` names its node id, which the envelope
binds (security.py), so only that member accepts it. Only a joiner's first push-pull to a seed
whose node id it does not know goes to "any" (b""); what a node sends in answer to an
any-addressed datagram totals at most that datagram's size (pushpull.py: the seed answers with
its own record, and the joiner asks again, addressed).

What happens on which timer:

    probe        every probe_interval (x Lifeguard health): finish the previous probe (no ack:
                 suspect the target), ping the next member in round-robin order
    probe_timeout    no direct ack yet: ask indirect_checks members to ping the target (with nack)
                 and ping it directly once more
    suspect      a probe interval before a suspicion runs out: ping the suspect (direct and
                 relayed); at the deadline dead unless it answered
    forward      a ping we relay for someone else timed out: send them a nack
    gossip       every gossip_interval while broadcasts are queued: send them to gossip_nodes
                 random members (and recently dead ones); ticks keep one random phase.
                 With eager_gossip, news is sent in a round at once (same call) if the
                 node has a round to spare: rounds are paid from a bucket refilled at one per
                 interval, holding ROUND_BURST. A quiet mesh passes news on at a round trip
                 per hop instead of half an interval; a busy one (loss: suspicions and
                 refutations all the time) runs no more rounds than memberlist's ticker
    push_pull, dead_probe, join    full state exchanges (pushpull.py)
    reap         tombstone expiry (state.py)

A timer run more than STALL_FRACTION * probe_timeout late means our own loop was stalled: it
counts against local health, and no probe is failed in that call.

Certificate mode (``trust`` and ``signer`` given; trust.py): every record we announce is signed,
every record we hear is verified, and the driver feeds the wall time the certificates are judged
at through `advance_wall` (the core reads no clock). Revocation lists arrive through
`install_crl` or as Crl messages; every EXPIRY_CHECK seconds (on any timer) members whose
certificate expired are evicted.

Everything is deterministic given the RNG and the sequence of calls.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence

from meshd.gossip.certificate import Authority
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import PROBE_RTT_BUCKETS, Histogram, Member, MemberEvent, MemberState
from meshd.gossip.keyops import KeyOps
from meshd.gossip.messages import (
    DATAGRAM_OVERHEAD,
    ENVELOPE_RESERVE,
    KEY_OP_ID_LEN,
    MAX_SEQ,
    MINOR_WINDOW,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    RESEND_SINCE,
    Ack,
    Addr,
    Alive,
    Crl,
    Dead,
    DecodeError,
    IndirectPing,
    KeyOp,
    Message,
    Nack,
    Ping,
    PushPull,
    Resend,
    Suspect,
    SyncDigest,
    VersionError,
    decode,
    encode,
    pack_datagram,
)
from meshd.gossip.pushpull import TIMERS as SYNC_TIMERS
from meshd.gossip.pushpull import Sync
from meshd.gossip.queue import BroadcastQueue, DeliveryEstimate
from meshd.gossip.record import NodeRecord, validate
from meshd.gossip.state import CHECK_ASKS, REAP_TIMER, SUSPICION_TIMER, ConvergedStart, Membership
from meshd.gossip.suspicion import Suspicion
from meshd.gossip.trust import REVOKED, Signer, Trust

ROUND_BURST = 30
"""Gossip rounds a node may run back to back when news arrives in a quiet mesh (eager_gossip);
30 rather than 10 since records are signed: a signed record is ~420 bytes, so a datagram carries
three joins instead of twenty, and a 30-node join storm took 2.3 s instead of 0.25 s to spread in
the simulator with a bucket of 10 (0.05 s with 30; the average round rate is unchanged);
refilled at one per gossip_interval, the ticker's own rate."""

DELIVERY_HALF_LIFE = 32.0
"""Probes after which a probe's weight in the delivery estimate (`_delivery`, which scales the
retransmit limit) has halved: about half a minute of probing."""

DELIVERY_MIN_PROBES = 4.0
"""Concluded probes (decayed) before the delivery estimate is believed; until then 1.0."""

MAX_FORWARDS = 256
"""Indirect pings relayed at once; beyond this they are dropped (``drop.busy``), so a flood of
ping requests cannot grow memory."""

MAX_CHECKS = 64
"""Pending asks of suspects (checked verdicts) before the ones no longer needed are dropped."""

HEALTH_TIMER = "health"
"""Heals what our own stalls added to local health, a point per stall-free probe interval."""

STALL_FRACTION = 0.5
"""A timer that runs later than this fraction of probe_timeout after it was due means our own
event loop was stalled (a starved CPU, a paused process): verdicts that rest on "no answer came"
are not drawn from that stretch (see `handle_timer`)."""

EXPIRY_CHECK = 5.0
"""Seconds (driver clock) between checks for expired certificates: an expired member is evicted
within this of its not_after (the check itself is one comparison until something expires)."""

_MSG_COUNTER = {
    Ping: "msg.ping",
    IndirectPing: "msg.indirect_ping",
    Ack: "msg.ack",
    Nack: "msg.nack",
    Suspect: "msg.suspect",
    Alive: "msg.alive",
    Dead: "msg.dead",
    PushPull: "msg.push_pull",
    KeyOp: "msg.key_op",
    SyncDigest: "msg.sync_digest",
    Crl: "msg.crl",
    Resend: "msg.resend",
}


_PROBE_MESSAGES = (Ping, IndirectPing, Ack, Nack)


def _unsigned(rec: NodeRecord) -> NodeRecord:
    return rec


def _key_op_key(op: KeyOp) -> str:
    # Broadcast-queue key; member names cannot contain ":", so it never replaces a member's news.
    return f"keyop:{op.id.hex()}"


class _Probe:
    __slots__ = (
        "seq",
        "retry_seq",
        "target",
        "sent_at",
        "acked",
        "expected_nacks",
        "nacks",
        "relays",
    )

    def __init__(self, seq: int, target: str, sent_at: float) -> None:
        self.seq = seq
        self.retry_seq = -1
        """The seq of the second direct ping sent with the indirect ones (-1: none yet)."""
        self.target = target
        self.sent_at = sent_at
        self.acked = False
        self.expected_nacks = 0
        self.nacks = 0
        self.relays: set[Addr] = set()
        """Members asked to ping the target for us: an ack from one of them is indirect."""


class GossipNode:
    """One member of the mesh. See docs/architecture.md for the contract."""

    def __init__(
        self,
        local: NodeRecord,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        known: Iterable[NodeRecord] = (),
        *,
        trust: Trust | None = None,
        signer: Signer | None = None,
        wall: float = 0.0,
        protocol_minor: int = PROTOCOL_MINOR,
    ) -> None:
        """``trust`` and ``signer`` together switch certificate mode on; ``wall`` is the Unix
        time to judge certificates at until `advance_wall`. TrustError (one line) when our own
        certificate, key or record would not be believed; ValueError for an invalid record.
        ``protocol_minor``: the minor this node speaks (tests and the simulator mix them)."""
        validate(local)
        if (trust is None) != (signer is None):
            raise ValueError("trust and signer come together (certificate mode) or not at all")
        self._trust = trust
        self._signer = signer
        self._wall = wall
        self._expiry_at = now + EXPIRY_CHECK
        self.local_revoked = ""
        """Certificate mode: why every member now refuses our records (``revoked``,
        ``cert_expired``), or "". The daemon logs it and stops announcing."""
        if trust is not None and signer is not None:
            local = trust.check_own(local, signer, wall)
        self.config = config
        self.protocol_minor = protocol_minor
        self.refused_version: dict[str, str] | None = None
        """The last datagram dropped for its protocol version: its ``version``, ``reason``,
        ``addr`` and envelope ``sender`` (node id, hex), for `protocol_status`."""
        self.counters: Counter[str] = Counter()
        self.probe_rtt = Histogram(PROBE_RTT_BUCKETS)
        """Seconds from sending a probe's ping to its direct ack (indirect acks are not timed)."""
        self._rng = rng
        self._timers: list[tuple[float, int, str, str | int]] = []
        self._tseq = 0
        self._queue = BroadcastQueue(config.retransmit_mult, config.retransmit_miss)
        self._state = Membership(
            local,
            config,
            rng,
            self._queue,
            self.counters,
            self._schedule,
            verify=None if trust is None else self._verify,
            sign=signer.sign if signer is not None else _unsigned,
        )
        self._keyops = KeyOps(self.counters)
        self._limit = config.max_datagram - ENVELOPE_RESERVE
        self._budget = self._limit - DATAGRAM_OVERHEAD
        self._outbox: list[tuple[bytes, Addr, bytes]] = []
        self._seq = 0
        self._probe: _Probe | None = None
        self._forwards: dict[int, tuple[int, Addr, bool, bytes]] = {}
        """Relayed pings: our seq -> (their seq, their address, nack wanted, their node id)."""
        self._riders: dict[tuple[Addr, bytes], list[bytes]] = {}
        """Answers that ride on the next datagram to that address (a digest reply on the ack);
        sent on their own if the datagram being handled leaves nothing to ride on."""
        self._sync = Sync(
            self._state,
            self._keyops,
            config,
            rng,
            self.counters,
            self._emit,
            self._schedule,
            self._budget,
            resend=protocol_minor >= RESEND_SINCE,
        )
        self._sender = b""
        """The envelope's sender of the datagram being handled (see receive_datagram)."""
        self._to_any = False
        self._gossip_armed = False
        self._stalled = False
        """True while handle_timer runs timers that came due during a stall of our own loop."""
        self._stall_at = 0.0
        self._health_armed = False
        self._stall_after = STALL_FRACTION * config.probe_timeout
        self._checks: dict[int, str] = {}
        """Seq of a ping asking a suspect itself before the verdict -> the suspect's name."""
        self._gossiped = 0  # the queue's push count at the last gossip round
        self._delivery_estimate = DeliveryEstimate(DELIVERY_HALF_LIFE, DELIVERY_MIN_PROBES)
        self._tokens = float(ROUND_BURST)  # see _after: rounds allowed now
        self._tokens_at = now
        self._news_mark: tuple[bool, int, bytes | None, str] | None = None
        self._start = now
        self._now = now
        self._state.load_known(known, now)
        # Random phases, so that nodes started together do not probe and sync in lockstep.
        self._schedule(now + rng.uniform(0, config.probe_interval), "probe")
        self._sync.start(now)
        self._gossip_phase = now + rng.uniform(0, config.gossip_interval)

    # --- the public API -----------------------------------------------------------------------

    @property
    def local(self) -> NodeRecord:
        """Our current record, incarnation included."""
        return self._state.local

    @property
    def trust(self) -> Trust | None:
        """Certificate mode's authorities and revocations; None in shared-key mode."""
        return self._trust

    def join(self, seeds: Sequence[tuple[str, int]], now: float) -> None:
        """Start a full state exchange with every seed and every member known from a previous run;
        repeated with backoff until one answer is merged. No seeds and no known members: a new mesh.
        """
        self._now = now
        self._sync.join(seeds, now)
        self._after(now)

    def advance_wall(self, wall: float) -> None:
        """The driver's wall clock (Unix seconds), called before every receive and timer in
        certificate mode: certificates are judged at this time. Harmless in shared-key mode."""
        self._wall = wall

    @property
    def crl_der(self) -> bytes | None:
        """The revocation list in force (DER), to persist; None without one."""
        revs = self._trust.revocations if self._trust is not None else None
        return revs.der if revs is not None else None

    def install_crl(self, der: bytes, now: float) -> bool:
        """Take a revocation list (from the operator, the state dir, or a peer) if its CA is ours
        and its CRL number is higher than the one in force: members it revokes are evicted at
        once and it is spread to the mesh. False (counted) otherwise; never raises on bad input."""
        self._now = now
        trust = self._trust
        if trust is None:
            self.counters["drop.crl_unauthenticated"] += 1
            return False
        if not trust.install_crl(der, self.counters):
            return False
        msg = encode(Crl(der))
        self._queue.push("crl:", msg)  # one key: a newer list replaces an older one in the queue
        self._sync.crl = msg
        self._check_certificates(revoked_only=True)
        self._after(now)
        return True

    def protocol_status(self) -> dict[str, object]:
        """The wire version this node speaks, what it accepts, and the last refusal."""
        lo = max(self.protocol_minor - MINOR_WINDOW, 0)
        hi = self.protocol_minor + MINOR_WINDOW
        return {
            "version": f"{PROTOCOL_MAJOR}.{self.protocol_minor}",
            "accepts": f"{PROTOCOL_MAJOR}.{lo}-{PROTOCOL_MAJOR}.{hi}",
            "last_refused": self.refused_version,
        }

    @property
    def synced(self) -> bool:
        """First full state exchange done (or nothing to sync with)."""
        return self._sync.synced

    def receive_datagram(
        self,
        data: bytes,
        addr: tuple[str, int],
        now: float,
        sender: bytes = b"",
        to_any: bool = False,
    ) -> None:
        """Apply one datagram payload, all or nothing: every message is decoded and validated
        before any is applied, and a datagram with one bad message is counted (``drop.<reason>``)
        and dropped without any state change. Bad input never raises; only a bug would.

        ``sender``: the node id the envelope names as the sender (b"": unknown; nothing that
        answers with state is sent then). ``to_any``: the envelope was addressed to any member,
        not to us: what we send in answer totals at most ``len(data)`` bytes."""
        self._now = now
        self._sender, self._to_any = sender, to_any
        self.counters["in"] += 1
        if len(data) > self._limit:
            self.counters["drop.size"] += 1
            return
        if sender and sender in self._state.evicted:
            self.counters["drop.evicted"] += 1
            return
        try:
            msgs = decode(data, self.protocol_minor, self.counters)
        except DecodeError as exc:
            self.counters[f"drop.{exc.reason}"] += 1
            if isinstance(exc, VersionError):
                self.refused_version = {
                    "version": exc.version,
                    "reason": exc.reason,
                    "addr": f"{addr[0]}:{addr[1]}",
                    "sender": sender.hex(),
                }
            return
        counters = self.counters
        # Apply the news before answering, so that an ack already carries our reaction to what
        # rode in with the ping (a refutation, most importantly). Key ops of one datagram are
        # taken together, in stamp order (keyops.py).
        news: list[Message] = []
        probes: list[Message] = []
        key_ops: list[KeyOp] = []
        for msg in msgs:
            kind = type(msg)
            counters[_MSG_COUNTER[kind]] += 1
            if kind is KeyOp:
                key_ops.append(msg)  # type: ignore[arg-type]
            elif kind in _PROBE_MESSAGES:
                probes.append(msg)
            else:
                news.append(msg)
        # Everything was validated by decode(), so nothing below refuses the datagram: it is
        # applied whole. An exception here is a bug, and it propagates (the driver logs it).
        if key_ops:
            self._on_key_ops(key_ops)
        mark = len(self._outbox)
        for msg in news:
            self._dispatch(msg, addr, now)
        for msg in probes:
            self._dispatch(msg, addr, now)
        if self._riders:
            riders, self._riders = self._riders, {}
            for (dst, node_id), parts in riders.items():
                self._emit(parts, dst, node_id)
        if to_any:
            self._cap_answers(mark, len(data))
        self._after(now)

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int], bytes]]:
        """Payloads (plaintext, at most max_datagram - ENVELOPE_RESERVE bytes) with their
        destination address and the node id of the member they are for (b"": any member)."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` wants to be called next (it may be early or late, never harmful).

        Timers that can no longer do anything -- the indirect round of a probe already acked, the
        nack of a relayed ping already answered -- are dropped here rather than woken for: in an
        idle mesh that is one wakeup in five."""
        timers = self._timers
        while timers:
            _, _, kind, key = timers[0]
            if kind == "probe_timeout":
                p = self._probe
                if p is None or p.seq != key or p.acked:
                    heapq.heappop(timers)
                    continue
            elif kind == "forward" and key not in self._forwards:
                heapq.heappop(timers)
                continue
            return timers[0][0]
        return None

    def handle_timer(self, now: float) -> None:
        self._now = now
        trust = self._trust
        if trust is not None and now >= self._expiry_at:
            self._expiry_at = now + EXPIRY_CHECK
            if self._wall >= trust.earliest_expiry:
                self._check_certificates()
        timers = self._timers
        # Lifeguard's local health, for a slow node rather than a lossy one: called this late,
        # our loop did not run for a while, and whatever answers came meanwhile may still be
        # waiting to be read. We count it against our own health (longer probe intervals and
        # suspicion timeouts) and draw no verdict from the stretch: the probe in flight is
        # dropped instead of failed, a suspicion that ran out waits once more (state.py).
        self._stalled = bool(timers) and now - timers[0][0] > self._stall_after
        if self._stalled:
            self.counters["stall"] += 1
            self._slow(now)
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            self._fire(kind, key, now)
        self._stalled = False
        self._after(now)

    def leave(self, now: float) -> None:
        """Announce a graceful leave (a dead message about ourselves, memberlist style)."""
        self._now = now
        self._state.leave()
        self._after(now)

    @property
    def leaving(self) -> bool:
        """`leave` was called: this node is gone from the mesh's point of view."""
        return self._state.leaving

    def leave_done(self) -> bool:
        """True once the leave broadcast was sent its full retransmit count (or nobody is left)."""
        st = self._state
        return st.leaving and (st.local.name not in self._queue or not st.alive)

    def update_local(self, record: NodeRecord, now: float) -> None:
        """Announce new record data; the incarnation is raised here, whatever ``record`` says."""
        self._now = now
        local = self._state.local
        if record.name != local.name or record.node_id != local.node_id:
            raise ValueError("update_local: name and node_id cannot change")
        validate(record)
        if self._trust is not None and self._signer is not None:
            self._trust.check_own(record, self._signer, self._wall)  # TrustError: one line
        self._state.update_local(record)
        self._after(now)

    def renew_credentials(
        self, authorities: Sequence[Authority], signer: Signer, now: float
    ) -> None:
        """Take a renewed certificate or a changed CA bundle (the daemon's SIGHUP) and announce
        our record under it at a higher incarnation. TrustError (one line) when members would
        refuse our record under them: nothing changes then. Certificate mode only."""
        self._now = now
        old = self._trust
        if old is None:
            raise ValueError("renew_credentials: shared-key mode has no credentials")
        trust = Trust(authorities, old.revocations)
        local = trust.check_own(self._state.local, signer, self._wall)
        self._trust, self._signer = trust, signer
        self._state.sign = signer.sign
        self._state.update_local(local)
        self._check_certificates()
        self._after(now)

    def members(self) -> list[Member]:
        """Every member we know, ourselves first."""
        st = self._state
        me = Member(
            st.local,
            MemberState.LEFT if st.leaving else MemberState.ALIVE,
            self._start,
            self._now,
        )
        return [me, *(e.snapshot() for e in st.table.values())]

    def pop_events(self) -> list[MemberEvent]:
        events, self._state.events = self._state.events, []
        self._news_mark = self._mark()
        return events

    def _mark(self) -> tuple[bool, int, bytes | None, str]:
        # What the driver acts on besides events: the first sync, our incarnation (persisted),
        # the revocation list in force (persisted) and whether our own certificate still holds.
        return (self.synced, self._state.local.incarnation, self.crl_der, self.local_revoked)

    def has_news(self) -> bool:
        """Something for the driver since the last `pop_events`: member events, key ops to
        apply, the first sync done, or a new local incarnation (to persist). Lets the daemon
        skip its membership step after the many datagrams that change nothing (probes)."""
        return bool(self._state.events or self._keyops.pending or self._news_mark != self._mark())

    def broadcast_key_op(self, op: str, arg: bytes, now: float) -> bytes:
        """Spread a keyring operation to the whole mesh; returns its 16-byte id.

        ``op``: ``install`` (``arg`` = the 32-byte key), ``use`` or ``remove`` (``arg`` = the key
        id, ``security.key_id(key)``); ValueError otherwise. The op is also handed back through
        `pop_key_ops`, so the daemon applies its own ops the way it applies everyone else's.
        """
        self._now = now
        op_id = self._rng.getrandbits(8 * KEY_OP_ID_LEN).to_bytes(KEY_OP_ID_LEN, "big")
        kop = self._keyops.new(op, arg, self.local.name, op_id)
        for fresh in self._keyops.accept([kop]):
            self._queue.push(_key_op_key(fresh), encode(fresh))
        self._after(now)
        return op_id

    def pop_key_ops(self) -> list[KeyOp]:
        """Key ops for the daemon to apply, in order (see keyops.py for the rule). An op can come
        again when an op it depends on arrived late; applying is idempotent, so apply every one."""
        return self._keyops.pop()

    @property
    def health(self) -> int:
        """Lifeguard local health score (0 = healthy)."""
        return self._state.awareness.score

    def bootstrap_members(self, records: Iterable[NodeRecord] | ConvergedStart, now: float) -> None:
        """Simulations only: start as if already converged with ``records`` (no events, no
        broadcasts) and consider the node synced. Nodes bootstrapped from one `ConvergedStart`
        share its entries until they change them, so 10,000 nodes fit in memory."""
        if not isinstance(records, ConvergedStart):
            records = ConvergedStart(records, now)
        self._state.bootstrap(records)
        self._sync.bootstrapped(now)

    # --- trust --------------------------------------------------------------------------------

    def _verify(self, rec: NodeRecord) -> NodeRecord | None:
        got, reason = self._trust.verify(rec, self._wall)  # type: ignore[union-attr]
        if got is None:
            self.counters[f"drop.{reason}"] += 1
        return got

    def _check_certificates(self, revoked_only: bool = False) -> None:
        """Evict every member whose certificate is revoked (or expired), and note whether ours
        is. Recomputes the earliest expiry, so the timer check stays one comparison."""
        trust, st, wall = self._trust, self._state, self._wall
        assert trust is not None
        earliest = trust.expiry(st.local)
        for name, e in list(st.table.items()):
            reason = trust.status(e.record, wall)
            if reason and (reason == REVOKED or not revoked_only):
                st.evict(name, self._now)
            else:
                earliest = min(earliest, trust.expiry(e.record))
        trust.earliest_expiry = earliest
        self.local_revoked = trust.status(st.local, wall)

    # --- timers -------------------------------------------------------------------------------

    def _schedule(self, when: float, kind: str, key: str | int = "") -> None:
        self._tseq += 1
        heapq.heappush(self._timers, (when, self._tseq, kind, key))

    def _fire(self, kind: str, key: str | int, now: float) -> None:
        if kind == "probe":
            self._probe_tick(now)
        elif kind == "probe_timeout":
            self._probe_indirect(key, now)
        elif kind == "forward":
            fwd = self._forwards.pop(int(key), None)
            if fwd is not None and fwd[2]:
                self._send([encode(Nack(fwd[0]))], fwd[1], fwd[3])
        elif kind == "gossip":
            self._gossip(now)
        elif kind == SUSPICION_TIMER:
            self._suspicion_due(str(key), now)
        elif kind == HEALTH_TIMER:
            self._heal(now)
        elif kind == REAP_TIMER:
            self._state.reap(str(key), now)
        elif kind in SYNC_TIMERS:
            self._sync.fire(kind, now)

    def _slow(self, now: float) -> None:
        """Evidence that this node (or the host it shares) is starved: a stall of our own loop,
        or an ack that came back slow. Local health worsens; time heals it (_heal)."""
        self._state.awareness.stall()
        self._stall_at = now
        if not self._health_armed:
            self._health_armed = True
            self._schedule(now + self.config.probe_interval, HEALTH_TIMER)

    def _heal(self, now: float) -> None:
        """A probe interval after a stall: a point of what stalls raised heals per interval
        without one (suspicion.Awareness)."""
        aw, interval = self._state.awareness, self.config.probe_interval
        if now - self._stall_at >= interval:
            aw.heal_stall()
        if aw.stalled:
            self._schedule(max(now, self._stall_at) + interval, HEALTH_TIMER)
        else:
            self._health_armed = False

    def _after(self, now: float) -> None:
        if not self._state.watch_joins and self._sync.synced:
            self._state.watch_joins = True
        queue = self._queue
        if (
            queue
            and self.config.eager_gossip
            and queue.pushes != self._gossiped
            and self._refill(now) >= 1
        ):
            # News, and a round to spare: it goes now, not at the next tick.
            self._gossip_round(now)
        # Gossip rounds run only while there is something to gossip: an idle mesh of thousands of
        # simulated nodes then costs no timer wakeups for them.
        if queue and not self._gossip_armed:
            self._gossip_armed = True
            self._schedule(self._next_gossip_tick(now), "gossip")

    def _next_gossip_tick(self, now: float) -> float:
        # The first tick after now of a ticker with a fixed random phase, as if gossip rounds ran
        # all the time (memberlist): news waits half an interval on average, not a whole one.
        interval, phase = self.config.gossip_interval, self._gossip_phase
        tick = phase + (math.floor((now - phase) / interval) + 1) * interval
        return tick if tick > now + 1e-9 else tick + interval  # rounding must not loop

    # --- sending ------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & MAX_SEQ
        return self._seq

    def _emit(self, parts: Sequence[bytes], addr: Addr, to: bytes) -> None:
        data = pack_datagram(parts, self.protocol_minor)
        self._outbox.append((data, addr, to))
        self.counters["out"] += 1

    def _send(self, parts: list[bytes], addr: Addr, to: bytes) -> None:
        """Send ``parts`` (and any answer waiting to ride to ``addr``) to the member ``to`` (its
        node id) with as many queued broadcasts piggybacked as fit."""
        if self._riders:
            parts = parts + self._riders.pop((addr, to), [])
        room = self._budget - sum(len(p) for p in parts)
        self._emit(parts + self._queue.take(room, self._state.num_nodes), addr, to)

    def _cap_answers(self, mark: int, size: int) -> None:
        """What handling an any-addressed datagram of ``size`` bytes queued (from ``mark`` on)
        totals at most ``size``: whoever can replay one to many members gains nothing by it.
        Honest any-addressed datagrams (a joiner's padded push-pull) always fit."""
        room, kept = size, []
        for item in self._outbox[mark:]:
            if len(item[0]) <= room:
                room -= len(item[0])
                kept.append(item)
            else:
                self.counters["drop.answer_size"] += 1
                self.counters["out"] -= 1
        self._outbox[mark:] = kept

    def _gossip(self, now: float) -> None:
        if not self._queue:
            self._gossip_armed = False
            return
        if not self.config.eager_gossip or self._refill(now) >= 1:
            self._gossip_round(now)
        self._schedule(self._next_gossip_tick(now), "gossip")

    def _refill(self, now: float) -> float:
        """Rounds are paid from a bucket refilled at one per gossip_interval and holding at most
        ROUND_BURST: on average no more rounds than memberlist's ticker, however busy the mesh,
        while news in a quiet mesh goes out at once (eager_gossip)."""
        gained = (now - self._tokens_at) / self.config.gossip_interval
        self._tokens = min(float(ROUND_BURST), self._tokens + max(0.0, gained))
        self._tokens_at = now
        return self._tokens

    def _delivery(self) -> float:
        """Fraction of our datagrams that arrive (queue.py sends more copies when it is low),
        from our direct probes. Probes concluded while our own loop was stalled say nothing
        about the network and are left out, and so is the probe still in flight; probes of
        crashed members count as losses: they only add copies, at most 1 / MIN_DELIVERY times
        as many."""
        concluded = self.counters["probe.sent"] - self.counters["probe.stalled"]
        if self._probe is not None and not self._probe.acked:
            concluded -= 1
        return self._delivery_estimate.update(concluded, self.counters["probe.ok"])

    def _gossip_round(self, now: float) -> None:
        """Queued broadcasts to gossip_nodes random members (and recently dead ones)."""
        if self.config.eager_gossip:
            self._tokens -= 1  # the ticker alone needs no bucket
        self._gossiped = self._queue.pushes
        self._queue.delivery = self._delivery()
        n = self._state.num_nodes
        for e in self._state.gossip_targets(self.config.gossip_nodes, now):
            parts = self._queue.take(self._budget, n)
            if not parts:
                break
            self._emit(parts, e.record.addr, e.record.node_id)

    def spend_gossip(self, datagrams: int) -> int:
        """Count ``datagrams`` gossip datagrams as sent without sending them: each takes from
        the broadcast queue what a gossip round's would. For a simulator whose member runs no
        timers for a while (benchmarks/simbridge.py's asleep members): the news it would have
        gossiped on meanwhile is used up, not piggybacked on its next answer. Returns how many
        datagrams had something to carry."""
        n = self._state.num_nodes
        for spent in range(datagrams):
            if not self._queue.take(self._budget, n):
                return spent
        return datagrams

    # --- probing (SWIM + Lifeguard) -----------------------------------------------------------

    def _suspicion_due(self, name: str, now: float) -> None:
        """Checked verdicts: two probe intervals before a suspicion runs out, the node asks the
        suspect itself (a ping with the buddy system's suspect on it, and the same ping through
        indirect_checks relays); a member that is up answers, and the refutation this node
        missed rides on its ack. No answer within a probe interval: it is asked once more
        (state.CHECK_ASKS). At the deadline, no answer to either: dead; an answer but still no
        refutation: the suspicion runs the shortest timeout more. Under loss one observer can
        miss every copy of a refutation gossiped to the mesh, and one check goes unanswered ~7 %
        of the time at 20 % loss (two ~0.5 %); a crash is declared as fast as without checks
        (both are over by the deadline)."""
        st = self._state
        s = st.suspicion_due(name, now)
        if s is None:
            return
        interval = self.config.probe_interval
        if s.check_seq < 0:
            self._ask_suspect(name, s)
            if now >= s.deadline:
                s.deadline = now + interval  # asked only now: the check gets its interval
            self._schedule(min(s.deadline, s.asked_at + interval), SUSPICION_TIMER, name)
            return
        if not s.answered and s.asks < CHECK_ASKS and now >= s.asked_at + interval:
            # No answer within an interval: ask once more before the verdict.
            self._ask_suspect(name, s)
            s.deadline = max(s.deadline, now + interval / 2)
            self._schedule(s.deadline, SUSPICION_TIMER, name)
            return
        if now < s.deadline or self._stalled:
            if now >= s.deadline:
                s.deadline = now + interval  # stalled: the answer may be unread
            self._schedule(s.deadline, SUSPICION_TIMER, name)
            return
        self._checks.pop(s.check_seq, None)
        if s.answered:
            s.answered, s.check_seq, s.asks = False, -1, 0
            s.deadline = now + s.min
            self._schedule(st.check_at(s), SUSPICION_TIMER, name)
            return
        st.suspicion_expired(name, now)

    def _ask_suspect(self, name: str, s: Suspicion) -> None:
        st = self._state
        s.asks += 1
        s.asked_at = self._now
        e = st.table.get(name)
        if e is None:
            return
        if len(self._checks) >= MAX_CHECKS:
            # Checks of suspicions refuted meanwhile, never answered: forget them.
            self._checks = {
                q: n
                for q, n in self._checks.items()
                if (x := st.suspicions.get(n)) is not None and x.check_seq == q
            }
        s.check_seq = seq = self._next_seq()
        self._checks[seq] = name
        self.counters["suspect.checked"] += 1
        ping = encode(Ping(seq, name, st.local.name, st.local.addr))
        self._send(
            [ping, encode(Suspect(e.inc, name, st.local.name))], e.record.addr, e.record.node_id
        )
        relayed = encode(
            IndirectPing(seq, name, e.record.addr, st.local.name, st.local.addr, False)
        )
        for peer in st.random_alive(self.config.indirect_checks, exclude=name):
            self._send([relayed], peer.record.addr, peer.record.node_id)

    def _probe_tick(self, now: float) -> None:
        self._finish_probe(now)
        st = self._state
        self._schedule(now + st.awareness.scale(self.config.probe_interval), "probe")
        target = st.next_probe_target(now)
        if target is None:
            if not st.alive:
                self._sync.digest_due = False  # nobody to sync with
            return
        seq = self._next_seq()
        name = target.record.name
        self._probe = _Probe(seq, name, now)
        self.counters["probe.sent"] += 1
        parts = [encode(Ping(seq, name, st.local.name, st.local.addr))]
        if self._sync.digest_due:
            parts.append(self._sync.opening())
        if target.state == MemberState.SUSPECT:
            # Lifeguard's buddy system: tell a suspect directly, so it can refute at once.
            parts.append(encode(Suspect(target.inc, name, st.local.name)))
        self._send(parts, target.record.addr, target.record.node_id)
        self._schedule(now + st.awareness.scale(self.config.probe_timeout), "probe_timeout", seq)

    def _probe_indirect(self, seq: str | int, now: float) -> None:
        p = self._probe
        if p is None or p.seq != seq or p.acked:
            return
        st = self._state
        target = st.table.get(p.target)
        if target is None:
            return
        msg = encode(
            IndirectPing(p.seq, p.target, target.record.addr, st.local.name, st.local.addr, True)
        )
        # A second direct ping, under its own seq, beside the relayed ones: memberlist tries the
        # target over TCP at this point, which gets through a lossy path more often than not;
        # this is the UDP-only analogue. At 20 % loss it cuts the probes that fail although the
        # target is up from ~7 % to ~3 % (each one a suspicion gossiped to the whole mesh).
        p.retry_seq = self._next_seq()
        parts = [encode(Ping(p.retry_seq, p.target, st.local.name, st.local.addr))]
        if target.state == MemberState.SUSPECT:
            parts.append(encode(Suspect(target.inc, p.target, st.local.name)))
        self._send(parts, target.record.addr, target.record.node_id)
        for peer in st.random_alive(self.config.indirect_checks, exclude=p.target):
            self._send([msg], peer.record.addr, peer.record.node_id)
            p.relays.add(peer.record.addr)
            p.expected_nacks += 1

    def _finish_probe(self, now: float) -> None:
        p, self._probe = self._probe, None
        if p is None:
            return
        if p.acked:
            return
        if self._stalled:
            # Its ack may be among what queued up while we were stalled: no verdict either way.
            self.counters["probe.stalled"] += 1
            return
        st = self._state
        self.counters["probe.failed"] += 1
        # Lifeguard: missing nacks mean our own messages are not getting through; with nobody to
        # nack, every failed probe counts against us.
        if p.expected_nacks:
            st.awareness.apply(p.expected_nacks - p.nacks)
        else:
            st.awareness.apply(1)
        e = st.table.get(p.target)
        if e is not None and e.state in (MemberState.ALIVE, MemberState.SUSPECT):
            st.on_suspect(e.inc, p.target, st.local.name, now)

    # --- receiving ----------------------------------------------------------------------------

    def _dispatch(self, msg: Message, addr: Addr, now: float) -> None:
        st = self._state
        if isinstance(msg, Ping):
            if msg.target != st.local.name:
                self.counters["drop.wrong_target"] += 1
                return
            st.seen(msg.source, now)
            parts = [encode(Ack(msg.seq))]
            src = st.table.get(msg.source)
            if src is not None and src.state == MemberState.SUSPECT:
                # The buddy system in reverse: a member we suspect is talking to us; tell it, so
                # it refutes (or re-announces a refutation we missed).
                parts.append(encode(Suspect(src.inc, msg.source, st.local.name)))
            self._send(parts, msg.source_addr, self._sender)
        elif isinstance(msg, Ack):
            self._on_ack(msg.seq, addr, now)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and p.seq == msg.seq and not p.acked:
                p.nacks += 1
        elif isinstance(msg, IndirectPing):
            self._on_indirect_ping(msg, now)
        elif isinstance(msg, Suspect):
            self._correct_stale_claim(msg)
            st.on_suspect(msg.incarnation, msg.node, msg.sender, now)
        elif isinstance(msg, Alive):
            st.on_alive(msg.record, now)
        elif isinstance(msg, Dead):
            self._correct_stale_claim(msg)
            st.on_dead(msg.incarnation, msg.node, msg.sender, now)
        elif isinstance(msg, PushPull):
            self._sync.receive(msg, now, self._sender, self._to_any)
        elif isinstance(msg, SyncDigest):
            answer = self._sync.receive_digest(msg, self._sender, now)
            if answer is not None:
                reply, member = answer
                self._riders.setdefault((member.addr, member.node_id), []).append(reply)
        elif isinstance(msg, Crl):
            self.install_crl(msg.der, now)
        elif isinstance(msg, Resend):
            self._sync.receive_resend(msg, self._sender, now)

    def _correct_stale_claim(self, msg: Suspect | Dead) -> None:
        """Its sender suspects us at an incarnation we already refuted: it missed our alive, and
        its suspicion will run out. Tell it directly; gossip already failed once."""
        st = self._state
        if msg.node != st.local.name or msg.incarnation >= st.local.incarnation or st.leaving:
            return
        e = st.table.get(msg.sender)
        if e is not None and e.state in (MemberState.ALIVE, MemberState.SUSPECT):
            self._send([encode(Alive(st.local))], e.record.addr, e.record.node_id)

    def _on_ack(self, seq: int, addr: Addr, now: float) -> None:
        p = self._probe
        if p is not None and p.retry_seq == seq:
            if not p.acked:
                p.acked = True
                self.counters["probe.retry_ok"] += 1  # not timed: it left probe_timeout late
                self._state.awareness.apply(-1)
                self._state.seen(p.target, now)
            return
        if p is not None and p.seq == seq:
            if not p.acked:
                p.acked = True
                # A relay forwards the target's ack under our seq, so only the sender's address
                # tells a relayed ack from a direct one (a late direct ack still counts as direct).
                if addr in p.relays:
                    self.counters["probe.indirect_ok"] += 1
                else:
                    self.counters["probe.ok"] += 1
                    self.probe_rtt.observe(now - p.sent_at)
                    if now - p.sent_at > self._stall_after:
                        # Members are probed at random: acks that come back slow from
                        # whoever we ask point at us, or at a CPU we share (100 daemons on 2
                        # cores), before any probe fails. Lifeguard: slow down our own verdicts.
                        self.counters["probe.slow"] += 1
                        self._slow(now)
                        self._state.seen(p.target, now)
                        return
                self._state.awareness.apply(-1)
                self._state.seen(p.target, now)
            return
        name = self._checks.pop(seq, None)
        if name is not None:
            s = self._state.suspicions.get(name)
            # Either ask of the round in progress: a late answer to the first is as good.
            if s is not None and s.check_seq >= 0 and not s.answered:
                s.answered = True
                self.counters["suspect.answered"] += 1
            return
        fwd = self._forwards.pop(seq, None)
        if fwd is not None:
            self._send([encode(Ack(fwd[0]))], fwd[1], fwd[3])
        else:
            self.counters["ack.unmatched"] += 1  # late: the probe was already concluded

    def _on_indirect_ping(self, msg: IndirectPing, now: float) -> None:
        st = self._state
        if msg.target == st.local.name:
            self._send([encode(Ack(msg.seq))], msg.source_addr, self._sender)
            return
        target = st.table.get(msg.target)
        if target is None:
            # We cannot name the member the ping is for, so we do not send it.
            self.counters["drop.unknown_target"] += 1
            return
        if len(self._forwards) >= MAX_FORWARDS:
            self.counters["drop.busy"] += 1
            return
        seq = self._next_seq()
        self._forwards[seq] = (msg.seq, msg.source_addr, msg.nack, self._sender)
        ping = encode(Ping(seq, msg.target, st.local.name, st.local.addr))
        self._send([ping], msg.target_addr, target.record.node_id)
        self._schedule(now + self.config.probe_timeout, "forward", seq)

    def _on_key_ops(self, ops: list[KeyOp]) -> None:
        # Gossip on what is news here, like any broadcast; stale and repeated ops die out.
        for fresh in self._keyops.accept(ops):
            self._queue.push(_key_op_key(fresh), encode(fresh))
