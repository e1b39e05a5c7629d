"""An in-memory network on a virtual clock that drives real GossipNodes; tests and benchmarks.

`Network` is the harness: it owns the clock, one event heap (timers and datagrams in flight),
loss, latency, partitions and crashes. It always jumps straight to the next event, so a minute of a
thousand-node mesh costs only the work the nodes actually do.

    python -m meshd.sim --nodes 1000 --loss 0.01 --seed 1 --duration 60 --converged

prints JSON lines: the run's parameters, steady-state traffic, how fast one update spreads, how
fast a crashed node is declared dead, and false positives.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from meshd.config import GossipConfig
from meshd.gossip.events import MemberEvent, MemberState
from meshd.gossip.messages import Alive, encode
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord, vtep_mac_for
from meshd.gossip.state import ConvergedStart

Addr = tuple[str, int]
EventHook = Callable[[float, int, MemberEvent], None]
DatagramHook = Callable[[int, bytes, Addr], None]


def make_record(i: int, port: int = 7950) -> NodeRecord:
    """A distinct, valid record for simulated node ``i`` (0 <= i < 65536)."""
    node_id = (i + 1).to_bytes(16, "big")
    return NodeRecord(
        name=f"n{i}",
        node_id=node_id,
        public_ip=f"172.16.{i >> 8}.{i & 255}",
        port=port,
        subnet=f"10.{i >> 8}.{i & 255}.0/24",
        backend="vxlan",
        vtep_mac=vtep_mac_for(node_id),
        mtu=1500,
    )


class Network:
    """N GossipNodes on a virtual clock, joined by a lossy, partitionable in-memory network."""

    def __init__(
        self,
        config: GossipConfig | None = None,
        seed: int = 0,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.002),
        record_events: bool = True,
    ) -> None:
        self.config = config or GossipConfig()
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
        self.sent = 0
        self.sent_bytes = 0
        self.largest = 0
        self.lost = 0
        self.blocked = 0
        self._by_addr: dict[Addr, int] = {}
        self._heap: list[tuple[float, int, int, bytes | None, int]] = []
        self._hseq = 0
        self._sched: list[float | None] = []

    # --- building -----------------------------------------------------------------------------

    def add_node(
        self,
        record: NodeRecord,
        known: Iterable[NodeRecord] = (),
        seeds: Sequence[Addr] | None = (),
    ) -> int:
        """Start a node now; ``seeds=None`` creates it without calling join (see `converge`)."""
        idx = len(self.nodes)
        node = GossipNode(
            record, self.config, random.Random(self.seed * 1_000_003 + idx), self.now, known
        )
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

    def converged(self, records: Sequence[NodeRecord]) -> None:
        """Create one node per record, each already knowing all the others (no joins)."""
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

    def _push(self, when: float, idx: int, data: bytes | None, src: int) -> None:
        self._hseq += 1
        heapq.heappush(self._heap, (when, self._hseq, idx, data, src))

    def _after(self, idx: int) -> None:
        node = self.nodes[idx]
        for data, addr in node.datagrams_to_send():
            self._route(idx, data, addr)
        events = node.pop_events()
        if events:
            for ev in events:
                if self.log is not None:
                    self.log.append((self.now, node.local.name, ev.kind, ev.member.record.name,
                                     ev.member.record.incarnation))
                if self.on_event is not None:
                    self.on_event(self.now, idx, ev)
        t = node.get_timer()
        if t is not None and t != self._sched[idx]:
            self._sched[idx] = t
            self._push(t, idx, None, idx)

    def _route(self, src: int, data: bytes, addr: Addr) -> None:
        self.sent += 1
        self.sent_bytes += len(data)
        self.largest = max(self.largest, len(data))
        if self.on_datagram is not None:
            self.on_datagram(src, data, addr)
        dst = self._by_addr.get(addr)
        if dst is None:
            return
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        self._push(self.now + self.rng.uniform(*self.latency), dst, data, src)

    def run_until(self, t_end: float) -> None:
        heap, nodes = self._heap, self.nodes
        while heap and heap[0][0] <= t_end:
            when, _, idx, data, src = heapq.heappop(heap)
            if self.down[idx]:
                continue
            self.now = when
            if data is None:
                if self._sched[idx] != when:
                    continue  # superseded by an earlier timer
                self._sched[idx] = None
                nodes[idx].handle_timer(when)
            else:
                if self.group[src] != self.group[idx] or self.down[src]:
                    self.blocked += 1
                    continue
                nodes[idx].receive_datagram(data, self.addrs[src], when)
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


# --- the CLI benchmark ------------------------------------------------------------------------


def _percentile_time(times: list[float], total: int, frac: float) -> float | None:
    need = max(1, math.ceil(frac * total))
    return round(times[need - 1], 3) if len(times) >= need else None


def run(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Run one scenario, yielding each JSON-able result line as soon as it is known.

    Timeline: ``warmup`` .. ``update_at`` steady state (traffic measured); from ``update_at`` on,
    ``updates`` distinct nodes change their record, ``update_gap`` apart (time to reach the
    others, until the end of the run, and how often the news was sent: medians and means over
    the updates); one other node crashes at ``crash_at`` (time to be suspected and declared
    dead); the run ends at ``duration``. Suspicions and deaths of live nodes over the whole run
    are false positives.
    """
    wall0 = time.monotonic()
    n, duration = args.nodes, args.duration
    cfg = GossipConfig()
    for item in args.set or []:
        key, _, value = item.partition("=")
        kind = type(getattr(cfg, key))
        if kind is bool:
            if value not in ("true", "false"):
                raise ValueError(f"--set {key}: true or false, got {value!r}")
            cfg = replace(cfg, **{key: value == "true"})
        else:
            cfg = replace(cfg, **{key: kind(value)})
    net = Network(cfg, seed=args.seed, loss=args.loss,
                  latency=(args.latency_ms[0] / 1000, args.latency_ms[1] / 1000),
                  record_events=False)
    records = [make_record(i) for i in range(n)]
    t_update = args.update_at if args.update_at is not None else 0.3 * duration
    t_crash = args.crash_at if args.crash_at is not None else 0.5 * duration
    warmup = args.warmup if args.warmup is not None else min(0.1 * duration, t_update)
    n_updates, gap = args.updates, args.update_gap
    if not 0 <= warmup <= t_update <= t_update + (n_updates - 1) * gap <= t_crash <= duration:
        raise ValueError("need 0 <= warmup <= update_at (+ gaps) <= crash_at <= duration")
    if not 1 <= n_updates < n:
        raise ValueError("need 1 <= updates < nodes")
    rng = random.Random(args.seed ^ 0x5EED)
    picks = rng.sample(range(n), min(n, n_updates + 1))
    updaters = picks[:n_updates]
    victim = picks[n_updates] if n > 2 and len(picks) > n_updates else None
    victim_name = records[victim].name if victim is not None else ""
    # updater's name -> (when its update started, incarnation that carries it, event times)
    updates: dict[str, tuple[float, int, list[float]]] = {}
    suspect_seen: list[float] = []
    dead_seen: list[float] = []
    false_suspects: set[tuple[str, int]] = set()
    false_suspect_events = 0
    false_dead: set[tuple[int, str]] = set()

    def on_event(now: float, idx: int, ev: MemberEvent) -> None:
        nonlocal false_suspect_events
        name = ev.member.record.name
        upd = updates.get(name)
        if upd is not None and ev.kind == "update" and ev.member.record.incarnation >= upd[1]:
            upd[2].append(now - upd[0])
        elif name == victim_name and now >= t_crash:
            if ev.kind == "suspect":
                suspect_seen.append(now - t_crash)
            elif ev.kind == "dead":
                dead_seen.append(now - t_crash)
        elif ev.kind == "suspect":
            false_suspects.add((name, ev.member.record.incarnation))
            false_suspect_events += 1
        elif ev.kind == "dead":
            false_dead.add((idx, name))

    if args.converged:
        net.converged(records)
    else:
        net.add_node(records[0], seeds=[])
        spread = args.join_spread
        for i in range(1, n):
            net.run_until(spread * i / n)
            net.add_node(records[i], seeds=[records[0].addr])
    # What exists now lives to the end: keep full collections from rescanning it (10,000
    # converged nodes are ~10^7 objects).
    gc.collect()
    gc.freeze()
    setup_s = time.monotonic() - wall0
    net.on_event = on_event
    yield {
        "phase": "config", "nodes": n, "loss": args.loss, "seed": args.seed,
        "duration": duration, "converged": args.converged, "setup_wall_s": round(setup_s, 2),
    }
    net.run_until(warmup)
    sent0, bytes0 = net.sent, net.sent_bytes
    net.run_until(t_update)
    window = t_update - warmup
    yield {
        "phase": "steady", "window": [round(warmup, 3), round(t_update, 3)],
        "datagrams_per_node_s": round((net.sent - sent0) / n / window, 3) if window else None,
        "bytes_per_node_s": round((net.sent_bytes - bytes0) / n / window, 1) if window else None,
        "largest_datagram": net.largest,
    }
    # Count every transmission of the news: piggybacked or in a gossip round, it is this message.
    news: list[bytes] = []
    sends = 0

    def count_sends(src: int, data: bytes, addr: Addr) -> None:
        nonlocal sends
        for msg in news:
            if msg in data:
                sends += 1

    net.on_datagram = count_sends
    for k, updater in enumerate(updaters):
        net.run_until(t_update + k * gap)
        old = net.nodes[updater].local
        updates[old.name] = (net.now, old.incarnation + 1, [])
        # Known before the update, so the updater's own first (eager) round is counted too.
        new = replace(old, mtu=old.mtu - 1, incarnation=old.incarnation + 1)
        news.append(encode(Alive(new)))
        net.update_local(updater, replace(old, mtu=old.mtu - 1))
        assert net.nodes[updater].local == new
    net.run_until(t_crash)
    if victim is not None:
        net.crash(victim)
    net.run_until(duration)
    observers = n - 1
    suspect_seen.sort()
    dead_seen.sort()
    yield {
        "phase": "failure", "node": victim_name,
        "first_suspect": round(suspect_seen[0], 3) if suspect_seen else None,
        "first_dead": round(dead_seen[0], 3) if dead_seen else None,
        "dead_50": _percentile_time(dead_seen, observers, 0.5),
        "dead_99": _percentile_time(dead_seen, observers, 0.99),
        "dead_all": _percentile_time(dead_seen, observers, 1.0),
    }
    net.on_datagram = None
    others = n - 1
    per_update = [sorted(seen) for _, _, seen in updates.values()]

    def median(frac: float) -> float | None:
        times = [_percentile_time(seen, others, frac) for seen in per_update]
        if any(t is None for t in times):
            return None  # some update never reached that fraction
        return round(statistics.median(t for t in times if t is not None), 3)

    yield {
        "phase": "dissemination", "nodes": [records[i].name for i in updaters],
        "t50": median(0.5), "t99": median(0.99), "t999": median(0.999),
        "reached": round(min(len(seen) for seen in per_update) / others, 4) if others else 1.0,
        "sends": round(sends / len(updaters), 1),
        "message_bytes": round(statistics.mean(map(len, news)), 1),
    }
    pairs = n * (n - 1)
    yield {
        "phase": "summary", "false_suspicions": len(false_suspects),
        "false_suspicions_per_node_min": round(len(false_suspects) / n / (duration / 60), 4),
        "false_suspect_events": false_suspect_events,
        "false_deaths": len(false_dead),
        "false_death_rate": round(len(false_dead) / pairs, 9) if pairs else 0.0,
        "largest_datagram": net.largest, "datagrams": net.sent, "bytes": net.sent_bytes,
        "lost": net.lost, "wall_s": round(time.monotonic() - wall0, 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    gc.unfreeze()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshd.sim", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--loss", type=float, default=0.0, help="probability a datagram is lost")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    p.add_argument("--converged", action="store_true",
                   help="start with every node knowing every other (no joins; for large N)")
    p.add_argument("--join-spread", type=float, default=5.0,
                   help="without --converged: seconds over which nodes join through node 0")
    p.add_argument("--latency-ms", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    p.add_argument("--warmup", type=float,
                   help="start of the steady-state window (default: 10%% of the duration)")
    p.add_argument("--update-at", type=float,
                   help="when one node changes its record (default: 30%% of the duration)")
    p.add_argument("--updates", type=int, default=1,
                   help="how many nodes change their record, one after the other (default 1)")
    p.add_argument("--update-gap", type=float, default=2.0,
                   help="seconds between those changes (default 2)")
    p.add_argument("--crash-at", type=float,
                   help="when one node crashes (default: 50%% of the duration)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a GossipConfig field, e.g. --set probe_interval=0.5")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.nodes < 1 or not 0 <= args.loss < 1 or args.duration <= 0:
        p.error("need --nodes >= 1, 0 <= --loss < 1, --duration > 0")
    try:
        for line in run(args):
            print(json.dumps(line), flush=True)
    except ValueError as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
