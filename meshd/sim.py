"""An in-memory network on a virtual clock that drives real GossipNodes; tests and benchmarks.

`Network` is the harness: it owns the clock, one event heap (timers and datagrams in flight),
loss, latency, partitions and crashes. It always jumps straight to the next event, so a minute of a
thousand-node mesh costs only the work the nodes actually do.

It models the envelope's addressing (security.py) without its cryptography: every datagram carries
its sender's node id and the node id it is for, and a node drops one that is for another member
(``misaddressed``) or from itself, as the envelope does; `deliver` hands a node a datagram from
anywhere (a replay, a spoofed source) through the same checks.

The unit tests drive it directly; the scenarios that measure the protocol at scale (steady-state
traffic, how fast an update spreads, how fast a crash is noticed, false positives) live beside the
benchmarks::

    python benchmarks/sim_scenarios.py --nodes 1000 --loss 0.01 --seed 1 --duration 60 --converged

``Network(signed=True)`` runs certificate mode: a throwaway CA (`SimPKI`, keys derived from the
seed, so runs replay exactly), one certificate per node, every record signed and verified. The
nodes share one verification cache (`Trust.fork`), as if each record version were checked once
for the whole mesh; each node still pays for signing its own records. Wall time is
``SIM_WALL + now``.

Nodes added with `Network.add_allocating` have no fixed subnet: each takes one from the
network's `allocation.Pool` and runs the loop the daemon runs (`AllocationDriver`): whenever news
about a member claiming an overlapping subnet arrives, it applies the conflict rule
(`allocation.lost_to`) and, having lost, picks again from what it knows and announces the new
subnet. In certificate mode
their certificates grant the pool (``Grant.from_pool``), not a subnet.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.dataplane import allocation, prefix
from meshd.dataplane.allocation import Pool
from meshd.dataplane.model import PeerView
from meshd.gossip.certificate import (
    Grant,
    build_authority,
    build_certificate,
    build_crl,
    parse_authority,
)
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberEvent, MemberState
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord, certified_vtep_seed, vtep_mac_for
from meshd.gossip.state import ConvergedStart
from meshd.gossip.trust import Signer, Trust

Addr = tuple[str, int]
EventHook = Callable[[float, int, MemberEvent], None]
DatagramHook = Callable[[int, bytes, Addr, bytes], None]
"""(sender index, payload, destination, recipient node id or b"" for any)."""
InterceptHook = Callable[[int, bytes, Addr, bytes], bool]
"""Like DatagramHook, for a datagram to a simulated node: True keeps it from being delivered."""


RECHECK = -1
"""The source of a heap entry that is an allocator's recheck, not a node's timer."""
STARVED_READ = 1e-9
"""A starved node reads the datagrams of a turn this long after running its timers."""
SIM_WALL = 1_800_000_000.0
"""The simulated wall clock at ``now = 0`` (Unix seconds)."""
DAY = 86400.0


def _sim_key(*parts: object) -> Ed25519PrivateKey:
    seed = hashlib.sha256(repr(parts).encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


class SimPKI:
    """A throwaway cluster CA and the certificates it issues; deterministic given ``seed``."""

    def __init__(
        self, seed: int = 0, network: str | Sequence[str] = ("10.0.0.0/8", "2001:db8::/32")
    ) -> None:
        self.seed = seed
        self.key = _sim_key("ca", seed)
        self.ca = build_authority(
            self.key, "meshd sim CA", network, SIM_WALL - DAY, SIM_WALL + 3650 * DAY, 1
        )
        self.authority = parse_authority(self.ca)
        self.trust = Trust([self.authority])
        """A template: every node gets a `Trust.fork` of it (shared caches, own revocations)."""
        self._signers: dict[str, Signer] = {}
        self._serial = 1

    def issue(
        self,
        rec: NodeRecord,
        grant: Grant | None = None,
        not_before: float = SIM_WALL - DAY,
        not_after: float = SIM_WALL + 365 * DAY,
        key: Ed25519PrivateKey | None = None,
        name: str | None = None,
        public_ip: str | Sequence[str] | None = None,
    ) -> Signer:
        """A fresh certificate for ``rec`` (its name, public IPs and fixed subnets, one per
        family, unless told otherwise) and its key."""
        self._serial += 1
        key = key or _sim_key("node", self.seed, rec.name, self._serial)
        der = build_certificate(
            self.key,
            self.ca,
            key.public_key(),
            name or rec.name,
            public_ip or [ip for ip in (rec.underlay_of(4), rec.underlay_of(6)) if ip],
            grant or Grant.combine([Grant.fixed(s) for s in rec.subnets]),
            not_before,
            not_after,
            self._serial,
        )
        return Signer(key, der)

    def signer(self, rec: NodeRecord, grant: Grant | None = None) -> Signer:
        """The certificate of ``rec``'s node, issued on first use (granting ``grant``, by
        default ``rec``'s subnet)."""
        got = self._signers.get(rec.name)
        if got is None:
            got = self._signers[rec.name] = self.issue(rec, grant)
        return got

    def signed(self, rec: NodeRecord) -> NodeRecord:
        """``rec`` as its node would announce it (signed, certificate attached, claim rank)."""
        return self.signer(rec).sign(rec)

    def crl(self, serials: Iterable[int], number: int) -> bytes:
        return build_crl(
            self.key,
            self.ca,
            number,
            dict.fromkeys(serials, SIM_WALL),
            SIM_WALL - DAY,
            SIM_WALL + 30 * DAY,
        )


def make_record(i: int, port: int = 7950) -> NodeRecord:
    """A distinct, valid record for simulated node ``i`` (0 <= i < 65536)."""
    # Distinct from the first byte on, like random ids: the envelope sends 2 bytes of each.
    node_id = (i + 1).to_bytes(16, "little")
    return NodeRecord(
        name=f"n{i}",
        node_id=node_id,
        public_ip=f"172.16.{i >> 8}.{i & 255}",
        port=port,
        subnet=f"10.{i >> 8}.{i & 255}.0/24",
        backend="vxlan",
        # From the name, as certificate mode derives it (either mode accepts it).
        vtep_mac=vtep_mac_for(certified_vtep_seed(f"n{i}")),
        mtu=1500,
    )


def _span(cidr: str) -> tuple[int, int]:
    s = prefix.span(cidr)
    if s is None:
        raise ValueError(f"not an IPv4 network: {cidr!r}")
    return s


def _overlaps(cidr: str, span: tuple[int, int]) -> bool:
    s = prefix.span(cidr)
    return s is not None and prefix.overlaps(s, span)


def peer_views(node: GossipNode) -> list[PeerView]:
    """What ``node`` knows of the others, as the daemon hands it to the data plane."""
    me = node.local.name
    return [
        PeerView(m.record, str(m.state.value), m.state_since)
        for m in node.members()
        if m.record.name != me
    ]


class AllocationDriver:
    """One allocating node's driver (design-13, the daemon's loop): pure, on the caller's clock.
    The simulator calls `check` after the node's first full state exchange, after each batch of
    membership events `concerns` says may cost us our subnet, and again at ``recheck_at`` (a
    dead member's lease running out) when the pool was full."""

    def __init__(self, pool: Pool, lease: float, rng: random.Random) -> None:
        self.pool = pool
        self.lease = lease
        self.rng = rng
        self.repicks = 0
        """Subnets picked again after losing one (the first pick is not counted)."""
        self.full = False
        """The last pick found nothing free: the node keeps its (losing) claim until then."""
        self.recheck_at: float | None = None
        self.synced = False
        """The node's first full state exchange was seen (and checked)."""
        self.last_pick_at = 0.0
        """When the node last picked a subnet (its first pick included)."""

    def first(self, known: Sequence[PeerView], now: float) -> str:
        """The subnet to start with, from what the node knows (a previous run's members, or
        nothing); ValueError (`allocation.full_message`) when nothing is free."""
        got = allocation.pick(self.pool, allocation.held(known, now, self.lease), self.rng)
        if got is None:
            raise ValueError(allocation.full_message(self.pool))
        self.last_pick_at = now
        return got

    @staticmethod
    def concerns(local: NodeRecord, events: Iterable[MemberEvent]) -> bool:
        """Whether any event is about a member claiming a subnet overlapping ours: nothing else
        can make us lose ours (a member leaving, dying or moving away only helps)."""
        mine = _span(local.subnet)
        return any(_overlaps(ev.member.record.subnet, mine) for ev in events)

    def check(
        self, local: NodeRecord, peers: Sequence[PeerView], now: float, wall: float
    ) -> NodeRecord | None:
        """Our record with a new subnet when another member holds ours by the conflict rule;
        None when we hold it, or when nothing is free (``full``, ``recheck_at``)."""
        self.recheck_at = None
        # Only claims overlapping ours can beat it (the rule grants disjoint claims alike).
        mine = _span(local.subnet)
        rivals = [pv for pv in peers if _overlaps(pv.record.subnet, mine)]
        if (
            allocation.lost_to(local, rivals, now, self.lease, local.backend, self.pool.network)
            is None
        ):
            self.full = False
            return None
        taken = [*allocation.held(peers, now, self.lease), _span(local.subnet)]
        subnet = allocation.pick(self.pool, taken, self.rng)
        if subnet is None:
            self.full = True
            expiring = [
                pv.state_since + self.lease
                for pv in peers
                if pv.state == "dead" and pv.state_since + self.lease > now
            ]
            self.recheck_at = min(expiring, default=None)
            return None
        self.full = False
        self.repicks += 1
        self.last_pick_at = now
        return replace(local, subnet=subnet, since=int(wall))


class Network:
    """N GossipNodes on a virtual clock, joined by a lossy, partitionable in-memory network."""

    def __init__(
        self,
        config: GossipConfig | None = None,
        seed: int = 0,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.002),
        record_events: bool = True,
        signed: bool = False,
        pool: Pool | None = None,
        lease: float = DAY,
    ) -> None:
        """``pool``: where `add_allocating` nodes take their subnets; ``lease``: how long a dead
        member's subnet stays held (subnet_lease)."""
        self.config = config or GossipConfig()
        self.pool = pool
        self.lease = lease
        self.allocators: dict[int, AllocationDriver] = {}
        self.pki = SimPKI(seed) if signed else None
        self.seed = seed
        self.loss = loss
        self.latency = latency
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: list[GossipNode] = []
        self.addrs: list[Addr] = []
        self.down: list[bool] = []
        self.group: list[int] = []
        self.log: list[tuple[float, str, str, str, int]] | None = [] if record_events else None
        self.on_event: EventHook | None = None
        self.on_datagram: DatagramHook | None = None
        self.intercept: InterceptHook | None = None
        """Called for every datagram to a simulated node before it is put in flight: True
        when the hook took it (it is not delivered, and counted in ``intercepted``)."""
        self.intercepted = 0
        self.dormant: set[int] = set()
        """Nodes whose timers are not run (`sleep`): they still receive and answer."""
        self.sent = 0
        self.sent_bytes = 0
        self.largest = 0
        self.lost = 0
        self.blocked = 0
        self.misaddressed = 0
        self._by_addr: dict[Addr, int] = {}
        self._heap: list[tuple[float, int, int, bytes | None, int, bytes]] = []
        self._hseq = 0
        self._sched: list[float | None] = []
        self.starved: dict[int, tuple[float, float]] = {}
        """Nodes whose event loop gets the CPU only now and then (`starve`): index -> (period,
        phase)."""

    # --- building -----------------------------------------------------------------------------

    def add_node(
        self,
        record: NodeRecord,
        known: Iterable[NodeRecord] = (),
        seeds: Sequence[Addr] | None = (),
        protocol_minor: int | None = None,
    ) -> int:
        """Start a node now; ``seeds=None`` creates it without calling join (see `converge`).
        ``protocol_minor``: the wire minor it speaks (a mesh in the middle of an upgrade; None:
        this build's)."""
        idx = len(self.nodes)
        rng = random.Random(self.seed * 1_000_003 + idx)
        pki = self.pki
        if pki is None:
            node = GossipNode(record, self.config, rng, self.now, known)
        else:
            node = GossipNode(
                record,
                self.config,
                rng,
                self.now,
                known,
                trust=pki.trust.fork(),
                signer=pki.signer(record),
                wall=SIM_WALL + self.now,
            )
        if protocol_minor is not None:  # before join: nothing was sent yet
            node.protocol_minor = protocol_minor
        self.nodes.append(node)
        self.addrs.append(record.addr)
        self._by_addr[record.addr] = idx
        self.down.append(False)
        self.group.append(0)
        self._sched.append(None)
        if seeds is not None:
            node.join(seeds, self.now)
        self._after(idx)
        return idx

    def add_allocating(
        self,
        record: NodeRecord,
        known: Iterable[NodeRecord] = (),
        seeds: Sequence[Addr] | None = (),
    ) -> int:
        """Start a node that takes its subnet from the pool (``record.subnet`` is ignored): the
        first pick from what it knows (``known``), then the conflict rule on every change."""
        if self.pool is None:
            raise ValueError("add_allocating: the Network has no pool")
        idx = len(self.nodes)
        driver = AllocationDriver(self.pool, self.lease, random.Random(f"alloc-{self.seed}-{idx}"))
        known = list(known)
        subnet = driver.first([PeerView(r, "alive", self.now) for r in known], self.now)
        record = replace(record, subnet=subnet, since=int(SIM_WALL + self.now))
        if self.pki is not None:
            self.pki.signer(record, Grant.from_pool(self.pool.network, self.pool.length))
        self.allocators[idx] = driver
        return self.add_node(record, known, seeds)

    def converged(self, records: Sequence[NodeRecord]) -> None:
        """Create one node per record, each already knowing all the others (no joins)."""
        pki = self.pki
        if pki is not None:
            wall = SIM_WALL + self.now
            records = [pki.trust.verify(pki.signed(r), wall)[0] or r for r in records]
        start = ConvergedStart(records, self.now)
        for rec in records:
            idx = self.add_node(rec, seeds=None)
            self.nodes[idx].bootstrap_members(start, self.now)
            self._after(idx)

    # --- faults -------------------------------------------------------------------------------

    def crash(self, idx: int) -> None:
        """The node stops: no timers, nothing delivered to it, nothing sent."""
        self.down[idx] = True

    def partition(self, *groups: Iterable[int]) -> None:
        """Only nodes in the same group reach each other; nodes not listed form group 0."""
        for g, members in enumerate(groups, 1):
            for i in members:
                self.group[i] = g

    def isolate(self, idx: int) -> None:
        self.group[idx] = -1 - idx

    def heal(self) -> None:
        self.group = [0] * len(self.nodes)

    def starve(self, idx: int, period: float, phase: float = 0.0) -> None:
        """From now on node ``idx``'s event loop runs only at ``phase + k * period`` (a starved
        CPU, a stalled interpreter): everything due for it meanwhile waits for the next turn,
        where its timers run first and then the datagrams that arrived, in arrival order, all on
        that turn's clock (the daemon's timer task can run before its receive task has read
        what queued up). Its answers leave late; its timers see acks that came in time only
        after they ran. ``period`` 0 ends the starvation."""
        if period <= 0:
            self.starved.pop(idx, None)
        else:
            self.starved[idx] = (period, phase)

    def _turn(self, idx: int, when: float) -> float:
        """The first instant at or after ``when`` at which node ``idx``'s loop runs."""
        period, phase = self.starved[idx]
        k = -((phase - when) // period)  # ceil((when - phase) / period)
        return phase + k * period

    def sleep(self, idx: int) -> None:
        """From now on node ``idx`` runs no timers (no probes, gossip rounds, syncs): it only
        answers what it receives, at once. A model of a member whose own periodic work is not
        simulated (benchmarks/simbridge.py `QuietMesh`); `wake` ends it."""
        self.dormant.add(idx)
        self._sched[idx] = None

    def wake(self, idx: int) -> None:
        """Node ``idx`` runs its timers again (the overdue ones at once)."""
        if idx in self.dormant:
            self.dormant.discard(idx)
            self._after(idx)

    # --- acting on a node ---------------------------------------------------------------------

    def update_local(self, idx: int, record: NodeRecord) -> None:
        self.nodes[idx].update_local(record, self.now)
        self._after(idx)

    def leave(self, idx: int) -> None:
        self.nodes[idx].leave(self.now)
        self._after(idx)

    def broadcast_key_op(self, idx: int, op: str, arg: bytes) -> bytes:
        op_id = self.nodes[idx].broadcast_key_op(op, arg, self.now)
        self._after(idx)
        return op_id

    # --- running ------------------------------------------------------------------------------

    def _push(self, when: float, idx: int, data: bytes | None, src: int, to: bytes = b"") -> None:
        self._hseq += 1
        heapq.heappush(self._heap, (when, self._hseq, idx, data, src, to))

    def _after(self, idx: int) -> None:
        node = self.nodes[idx]
        driver = self.allocators.get(idx)
        while True:
            for data, addr, to in node.datagrams_to_send():
                self._route(idx, data, addr, to)
            events = node.pop_events()
            self._report(idx, events)
            if driver is None:
                break
            # The first full state exchange brings dead members without events: check then too.
            first_sync = not driver.synced and node.synced
            driver.synced = node.synced
            if not first_sync and not (events and driver.concerns(node.local, events)):
                break
            if not self._allocate(idx, driver):
                break
        if self.dormant and idx in self.dormant:
            return
        t = node.get_timer()
        if t is not None and t != self._sched[idx]:
            self._sched[idx] = t
            self._push(t, idx, None, idx)

    def _allocate(self, idx: int, driver: AllocationDriver) -> bool:
        """Run the allocation check; True when the node announced a new subnet."""
        node = self.nodes[idx]
        if node.local.left:
            return False
        new = driver.check(node.local, peer_views(node), self.now, SIM_WALL + self.now)
        if driver.recheck_at is not None:
            self._push(driver.recheck_at, idx, None, RECHECK)
        if new is None:
            return False
        node.update_local(new, self.now)
        return True

    def _report(self, idx: int, events: list[MemberEvent]) -> None:
        node = self.nodes[idx]
        if events:
            for ev in events:
                if self.log is not None:
                    self.log.append(
                        (
                            self.now,
                            node.local.name,
                            ev.kind,
                            ev.member.record.name,
                            ev.member.record.incarnation,
                        )
                    )
                if self.on_event is not None:
                    self.on_event(self.now, idx, ev)

    def _route(self, src: int, data: bytes, addr: Addr, to: bytes) -> None:
        self.sent += 1
        self.sent_bytes += len(data)
        self.largest = max(self.largest, len(data))
        if self.on_datagram is not None:
            self.on_datagram(src, data, addr, to)
        dst = self._by_addr.get(addr)
        if dst is None:
            return
        if self.intercept is not None and self.intercept(src, data, addr, to):
            self.intercepted += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        self._push(self.now + self.rng.uniform(*self.latency), dst, data, src, to)

    def _opens(self, dst: int, sender: bytes, to: bytes) -> bool:
        """The envelope's addressing checks (security.Sealer.open)."""
        me = self.nodes[dst].local.node_id
        if (to and to != me) or sender == me:
            self.misaddressed += 1
            return False
        return True

    def deliver(self, dst: int, data: bytes, from_addr: Addr, sender: bytes, to: bytes) -> None:
        """Hand node ``dst`` a datagram now, as if it came from ``from_addr`` sealed by
        ``sender`` for ``to`` (b"": any): a replay or a spoofed source, through the envelope's
        checks. What the node sends in answer goes out as usual."""
        if self.down[dst] or not self._opens(dst, sender, to):
            return
        self.nodes[dst].receive_datagram(data, from_addr, self.now, sender, not to)
        self._after(dst)

    def run_until(self, t_end: float) -> None:
        heap, nodes = self._heap, self.nodes
        signed = self.pki is not None
        while heap and heap[0][0] <= t_end:
            when, _, idx, data, src, to = heapq.heappop(heap)
            if self.down[idx]:
                continue
            if self.starved and idx in self.starved and src != RECHECK:
                turn = self._turn(idx, when - 2 * STARVED_READ)
                if turn > when:
                    if data is None:
                        if self._sched[idx] != when:
                            continue  # superseded by an earlier timer
                        self._sched[idx] = turn
                        self._push(turn, idx, None, idx)
                    else:  # datagrams after the timers of the same turn
                        self._push(turn + STARVED_READ, idx, data, src, to)
                    continue
            self.now = when
            if signed:
                nodes[idx].advance_wall(SIM_WALL + when)
            if data is None and src == RECHECK:
                driver = self.allocators[idx]
                if driver.recheck_at == when and self._allocate(idx, driver):
                    self._after(idx)
                continue
            if data is None:
                if self._sched[idx] != when:
                    continue  # superseded by an earlier timer, or asleep
                self._sched[idx] = None
                nodes[idx].handle_timer(when)
            else:
                if self.group[src] != self.group[idx] or self.down[src]:
                    self.blocked += 1
                    continue
                sender = nodes[src].local.node_id
                if not self._opens(idx, sender, to):
                    continue
                nodes[idx].receive_datagram(data, self.addrs[src], when, sender, not to)
            self._after(idx)
        self.now = max(self.now, t_end)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(self, cond: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
        """Advance in ``step``s until ``cond()``; False if ``timeout`` simulated seconds pass."""
        end = self.now + timeout
        while self.now < end:
            if cond():
                return True
            self.run_for(step)
        return cond()

    # --- observing ----------------------------------------------------------------------------

    def live(self) -> list[int]:
        return [i for i, d in enumerate(self.down) if not d]

    def view(self, idx: int) -> dict[str, MemberState]:
        return {m.record.name: m.state for m in self.nodes[idx].members()}

    def all_see(self, name: str, state: MemberState, among: Iterable[int] | None = None) -> bool:
        among = self.live() if among is None else among
        return all(self.view(i).get(name) == state for i in among)

    def fully_converged(self, among: Iterable[int] | None = None) -> bool:
        """Every live node (or ``among``) sees exactly those nodes alive, and nobody else alive."""
        ids = list(self.live() if among is None else among)
        names = {self.nodes[i].local.name for i in ids}
        for i in ids:
            alive = {n for n, s in self.view(i).items() if s == MemberState.ALIVE}
            if alive != names:
                return False
        return True

    def overlapping(self, among: Iterable[int] | None = None) -> list[tuple[str, str]]:
        """Pairs of live nodes (or ``among``) whose own subnets overlap, by name."""
        ids = list(self.live() if among is None else among)
        claims = sorted((_span(self.nodes[i].local.subnet), self.nodes[i].local.name) for i in ids)
        out = []
        reach, holder = -1, ""  # the furthest last address so far, and whose
        for (first, last), name in claims:
            if first <= reach:
                out.append((holder, name))
            if last > reach:
                reach, holder = last, name
        return out

    def subnets_settled(self, among: Iterable[int] | None = None) -> bool:
        """Allocation is over: the live nodes' (or ``among``'s) subnets are pairwise disjoint,
        every one of them knows every other with the subnet it announces, and no allocating node
        loses its subnet by the rule to a member it knows (a dead one within the lease)."""
        ids = list(self.live() if among is None else among)
        if self.overlapping(ids):
            return False
        want = {self.nodes[i].local.name: self.nodes[i].local.subnet for i in ids}
        for i in ids:
            node = self.nodes[i]
            seen = {m.record.name: m.record.subnet for m in node.members()}
            if any(seen.get(name) != subnet for name, subnet in want.items()):
                return False
        for i in ids:
            driver = self.allocators.get(i)
            if driver is None:
                continue
            local = self.nodes[i].local
            if allocation.lost_to(
                local, peer_views(self.nodes[i]), self.now, self.lease, local.backend,
                driver.pool.network,
            ) is not None:  # fmt: skip
                return False
        return True

    def repicks(self) -> int:
        """Subnets picked again, over every allocating node."""
        return sum(d.repicks for d in self.allocators.values())
