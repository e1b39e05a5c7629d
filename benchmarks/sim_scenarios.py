"""One scenario on the simulator (meshd/sim.py's `Network`): steady state, updates, a crash.

    python benchmarks/sim_scenarios.py --nodes 1000 --converged --loss 0.1 --duration 60

prints JSON lines, one per phase: the run's parameters (``config``), steady-state traffic
(``steady``), when one node crashed and how fast the others noticed (``failure``), how fast the
updates spread (``dissemination``), false positives and what the run cost (``summary``).

Timeline (simulated seconds): ``warmup`` .. ``update_at`` steady state (traffic measured); from
``update_at`` on, ``updates`` distinct nodes change their record, ``update_gap`` apart (time to
reach the others, until the end of the run, and how often the news was sent: medians and means
over the updates); one other node crashes at ``crash_at`` (time to be suspected and declared
dead); the run ends at ``duration``. Suspicions and deaths of live nodes over the whole run are
false positives.

bench_sim.py runs this at issue 7's sizes beside Serf's model.

``--allocate NETWORK`` runs the subnet allocation scenario instead (issue 13; `allocate`): the
nodes have no subnet, join at random instants within ``--join-spread`` seconds (default here 1)
through the first three nodes, and take /``--subnet-len`` subnets of NETWORK; one ``allocation``
line says when their subnets were first pairwise distinct, when every node agreed on every
member's subnet, how many subnets were picked again, and which pairs still overlap (none)::

    python benchmarks/sim_scenarios.py --allocate 10.0.0.0/14 --nodes 1000 --signed
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from meshd.dataplane.allocation import Pool
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberEvent
from meshd.gossip.messages import Alive, encode
from meshd.gossip.record import NodeRecord
from meshd.sim import Addr, Network, make_record

Line = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """One run: the mesh, the network's faults and the timeline, all resolved and checked."""

    nodes: int
    duration: float
    warmup: float
    update_at: float
    crash_at: float
    loss: float = 0.0
    seed: int = 1
    converged: bool = False
    join_spread: float = 5.0
    latency: tuple[float, float] = (0.0005, 0.002)
    updates: int = 1
    update_gap: float = 2.0
    signed: bool = False
    config: GossipConfig = field(default_factory=GossipConfig)

    def __post_init__(self) -> None:
        if self.nodes < 1 or not 0 <= self.loss < 1 or self.duration <= 0:
            raise ValueError("need --nodes >= 1, 0 <= --loss < 1, --duration > 0")
        last_update = self.update_at + (self.updates - 1) * self.update_gap
        if not 0 <= self.warmup <= self.update_at <= last_update <= self.crash_at <= self.duration:
            raise ValueError("need 0 <= warmup <= update_at (+ gaps) <= crash_at <= duration")
        if not 1 <= self.updates < self.nodes:
            raise ValueError("need 1 <= updates < nodes")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Scenario:
        """The scenario of parsed command-line arguments; unset times become their defaults."""
        duration = args.duration
        update_at = args.update_at if args.update_at is not None else 0.3 * duration
        return cls(
            nodes=args.nodes, duration=duration, loss=args.loss, seed=args.seed,
            update_at=update_at,
            crash_at=args.crash_at if args.crash_at is not None else 0.5 * duration,
            warmup=args.warmup if args.warmup is not None else min(0.1 * duration, update_at),
            converged=args.converged,
            join_spread=5.0 if args.join_spread is None else args.join_spread,
            latency=(args.latency_ms[0] / 1000, args.latency_ms[1] / 1000),
            updates=args.updates, update_gap=args.update_gap, signed=args.signed,
            config=gossip_config(args.set or []),
        )  # fmt: skip

    def cast(self) -> tuple[list[int], int | None]:
        """(the nodes that update their record, the node that crashes), seeded by ``seed``."""
        rng = random.Random(self.seed ^ 0x5EED)
        picks = rng.sample(range(self.nodes), min(self.nodes, self.updates + 1))
        updaters = picks[: self.updates]
        victim = picks[self.updates] if self.nodes > 2 and len(picks) > self.updates else None
        return updaters, victim


def gossip_config(settings: Sequence[str]) -> GossipConfig:
    """The default GossipConfig with ``KEY=VALUE`` overrides (booleans: true or false)."""
    cfg = GossipConfig()
    for item in settings:
        key, _, value = item.partition("=")
        kind = type(getattr(cfg, key))
        if kind is bool:
            if value not in ("true", "false"):
                raise ValueError(f"--set {key}: true or false, got {value!r}")
            cfg = replace(cfg, **{key: value == "true"})
        else:
            cfg = replace(cfg, **{key: kind(value)})
    return cfg


class Observer:
    """Sorts the membership events of a run: updates arriving, the victim's fall, false alarms."""

    def __init__(self, victim: str, crash_at: float) -> None:
        self.victim, self.crash_at = victim, crash_at
        # updater's name -> (when its update started, incarnation that carries it, arrival times)
        self.updates: dict[str, tuple[float, int, list[float]]] = {}
        self.suspect_seen: list[float] = []
        self.dead_seen: list[float] = []
        self.false_suspects: set[tuple[str, int]] = set()
        self.false_suspect_events = 0
        self.false_dead: set[tuple[int, str]] = set()

    def on_event(self, now: float, idx: int, ev: MemberEvent) -> None:
        name = ev.member.record.name
        upd = self.updates.get(name)
        if upd is not None and ev.kind == "update" and ev.member.record.incarnation >= upd[1]:
            upd[2].append(now - upd[0])
        elif name == self.victim and now >= self.crash_at:
            if ev.kind == "suspect":
                self.suspect_seen.append(now - self.crash_at)
            elif ev.kind == "dead":
                self.dead_seen.append(now - self.crash_at)
        elif ev.kind == "suspect":
            self.false_suspects.add((name, ev.member.record.incarnation))
            self.false_suspect_events += 1
        elif ev.kind == "dead":
            self.false_dead.add((idx, name))


class NewsCounter:
    """Counts every transmission of the news: piggybacked or in a gossip round, it is the same
    encoded message inside the datagram."""

    def __init__(self) -> None:
        self.news: list[bytes] = []
        self.sends = 0

    def on_datagram(self, src: int, data: bytes, addr: Addr, to: bytes) -> None:
        for msg in self.news:
            if msg in data:
                self.sends += 1


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep full collections from rescanning what exists now (10,000 converged nodes are ~10^7
    objects) until the block ends, however it ends."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build(sc: Scenario) -> tuple[Network, list[NodeRecord]]:
    """The mesh at time 0 (converged) or once every node has joined through node 0."""
    net = Network(
        sc.config,
        seed=sc.seed,
        loss=sc.loss,
        latency=sc.latency,
        record_events=False,
        signed=sc.signed,
    )
    records = [make_record(i) for i in range(sc.nodes)]
    if sc.converged:
        net.converged(records)
    else:
        net.add_node(records[0], seeds=[])
        for i in range(1, sc.nodes):
            net.run_until(sc.join_spread * i / sc.nodes)
            net.add_node(records[i], seeds=[records[0].addr])
    return net, records


def steady(net: Network, sc: Scenario) -> Line:
    """Run through the steady window; what every node sent in it."""
    net.run_until(sc.warmup)
    sent0, bytes0 = net.sent, net.sent_bytes
    net.run_until(sc.update_at)
    window, n = sc.update_at - sc.warmup, sc.nodes
    return {
        "phase": "steady", "window": [round(sc.warmup, 3), round(sc.update_at, 3)],
        "datagrams_per_node_s": round((net.sent - sent0) / n / window, 3) if window else None,
        "bytes_per_node_s": round((net.sent_bytes - bytes0) / n / window, 1) if window else None,
        "largest_datagram": net.largest,
    }  # fmt: skip


def spread_updates(
    net: Network, sc: Scenario, updaters: Sequence[int], obs: Observer, counter: NewsCounter
) -> None:
    """Each updater changes its record (its MTU), ``update_gap`` after the previous one."""
    for k, updater in enumerate(updaters):
        net.run_until(sc.update_at + k * sc.update_gap)
        old = net.nodes[updater].local
        obs.updates[old.name] = (net.now, old.incarnation + 1, [])
        # Known before the update, so the updater's own first (eager) round is counted too.
        new = replace(old, mtu=old.mtu - 1, incarnation=old.incarnation + 1)
        if net.pki is not None:
            new = net.pki.signed(new)
        counter.news.append(encode(Alive(new)))
        net.update_local(updater, replace(old, mtu=old.mtu - 1))
        if net.nodes[updater].local != new:
            raise RuntimeError(f"{old.name} announced {net.nodes[updater].local}, not {new}")


def _percentile_time(times: list[float], total: int, frac: float) -> float | None:
    need = max(1, math.ceil(frac * total))
    return round(times[need - 1], 3) if len(times) >= need else None


def failure(sc: Scenario, victim: str, obs: Observer) -> Line:
    observers = sc.nodes - 1
    suspect, dead = sorted(obs.suspect_seen), sorted(obs.dead_seen)
    return {
        "phase": "failure", "node": victim,
        "first_suspect": round(suspect[0], 3) if suspect else None,
        "first_dead": round(dead[0], 3) if dead else None,
        "dead_50": _percentile_time(dead, observers, 0.5),
        "dead_99": _percentile_time(dead, observers, 0.99),
        "dead_all": _percentile_time(dead, observers, 1.0),
    }  # fmt: skip


def dissemination(sc: Scenario, names: list[str], obs: Observer, counter: NewsCounter) -> Line:
    others = sc.nodes - 1
    per_update = [sorted(seen) for _, _, seen in obs.updates.values()]

    def median(frac: float) -> float | None:
        times = [_percentile_time(seen, others, frac) for seen in per_update]
        if any(t is None for t in times):
            return None  # some update never reached that fraction
        return round(statistics.median(t for t in times if t is not None), 3)

    return {
        "phase": "dissemination", "nodes": names,
        "t50": median(0.5), "t99": median(0.99), "t999": median(0.999),
        "reached": round(min(len(seen) for seen in per_update) / others, 4) if others else 1.0,
        "sends": round(counter.sends / len(names), 1),
        "message_bytes": round(statistics.mean(map(len, counter.news)), 1),
    }  # fmt: skip


def summary(net: Network, sc: Scenario, obs: Observer, wall_s: float) -> Line:
    n = sc.nodes
    pairs = n * (n - 1)
    return {
        "phase": "summary", "false_suspicions": len(obs.false_suspects),
        "false_suspicions_per_node_min": round(len(obs.false_suspects) / n / (sc.duration / 60), 4),
        "false_suspect_events": obs.false_suspect_events,
        "false_deaths": len(obs.false_dead),
        "false_death_rate": round(len(obs.false_dead) / pairs, 9) if pairs else 0.0,
        "largest_datagram": net.largest, "datagrams": net.sent, "bytes": net.sent_bytes,
        "lost": net.lost, "wall_s": round(wall_s, 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip


def run(sc: Scenario) -> Iterator[Line]:
    """Run ``sc``, yielding each result line as soon as it is known."""
    wall0 = time.monotonic()
    net, records = build(sc)
    updaters, victim = sc.cast()
    obs = Observer(records[victim].name if victim is not None else "", sc.crash_at)
    # What exists now lives to the end of the run.
    with frozen_heap():
        net.on_event = obs.on_event
        yield {
            "phase": "config", "nodes": sc.nodes, "loss": sc.loss, "seed": sc.seed,
            "duration": sc.duration, "converged": sc.converged, "signed": sc.signed,
            "setup_wall_s": round(time.monotonic() - wall0, 2),
        }  # fmt: skip
        yield steady(net, sc)
        counter = NewsCounter()
        net.on_datagram = counter.on_datagram
        spread_updates(net, sc, updaters, obs, counter)
        net.run_until(sc.crash_at)
        if victim is not None:
            net.crash(victim)
        net.run_until(sc.duration)
        net.on_datagram = None
        yield failure(sc, obs.victim, obs)
        yield dissemination(sc, [records[i].name for i in updaters], obs, counter)
        yield summary(net, sc, obs, time.monotonic() - wall0)


ALLOC_SEEDS = 3
"""Nodes every allocating joiner joins through (each joins at its own random instant too)."""


def allocate(
    nodes: int,
    network: str,
    length: int = 24,
    seed: int = 1,
    loss: float = 0.0,
    signed: bool = False,
    spread: float = 1.0,
    timeout: float = 300.0,
    step: float = 0.1,
) -> Line:
    """``nodes`` allocating nodes join at random instants within ``spread`` seconds; run until
    `Network.subnets_settled` (checked every ``step`` simulated seconds) or ``timeout``."""
    wall0 = time.monotonic()
    pool = Pool(network, length)
    net = Network(seed=seed, loss=loss, record_events=False, signed=signed, pool=pool)
    rng = random.Random(seed ^ 0xA110C)
    starts = sorted(rng.uniform(0, spread) for _ in range(nodes))
    records = [make_record(i) for i in range(nodes)]
    seeds = [r.addr for r in records[:ALLOC_SEEDS]]
    for i, at in enumerate(starts):
        net.run_until(at)
        net.add_allocating(records[i], seeds=[a for a in seeds if a != records[i].addr])
    distinct_at: float | None = None
    with frozen_heap():
        while net.now < timeout:
            if distinct_at is None and not net.overlapping():
                distinct_at = net.now
            if distinct_at is not None and net.subnets_settled():
                break
            net.run_for(step)
        settled = net.subnets_settled()
    return {
        "phase": "allocation", "nodes": nodes, "network": network, "subnet_len": length,
        "pool": pool.size, "seed": seed, "loss": loss, "signed": signed, "join_spread": spread,
        "settled": settled, "distinct_s": None if distinct_at is None else round(distinct_at, 2),
        "settled_s": round(net.now, 2) if settled else None, "check_step_s": step,
        "repicks": net.repicks(),
        "last_pick_s": round(max(d.last_pick_at for d in net.allocators.values()), 2),
        "overlapping": net.overlapping(),
        "datagrams": net.sent, "lost": net.lost, "wall_s": round(time.monotonic() - wall0, 1),
    }  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/sim_scenarios.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--loss", type=float, default=0.0, help="probability a datagram is lost")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    p.add_argument(
        "--converged",
        action="store_true",
        help="start with every node knowing every other (no joins; for large N)",
    )
    p.add_argument(
        "--join-spread",
        type=float,
        help="without --converged: seconds over which nodes join through node 0 (default 5;"
        " with --allocate 1)",
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="certificate mode: every record signed and verified (a throwaway CA)",
    )
    p.add_argument(
        "--allocate",
        metavar="NETWORK",
        help="run the subnet allocation scenario in NETWORK instead (see above)",
    )
    p.add_argument("--subnet-len", type=int, default=24, help="with --allocate (default 24)")
    p.add_argument("--latency-ms", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    p.add_argument(
        "--warmup",
        type=float,
        help="start of the steady-state window (default: 10%% of the duration)",
    )
    p.add_argument(
        "--update-at",
        type=float,
        help="when one node changes its record (default: 30%% of the duration)",
    )
    p.add_argument(
        "--updates",
        type=int,
        default=1,
        help="how many nodes change their record, one after the other (default 1)",
    )
    p.add_argument(
        "--update-gap", type=float, default=2.0, help="seconds between those changes (default 2)"
    )
    p.add_argument(
        "--crash-at", type=float, help="when one node crashes (default: 50%% of the duration)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a GossipConfig field, e.g. --set probe_interval=0.5",
    )
    return p


def scenario(argv: Sequence[str] | None = None) -> Scenario:
    """The scenario of a command line; a bad one exits with the parser's usage message."""
    p = parser()
    try:
        return Scenario.from_args(p.parse_args(argv))
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.allocate:
        spread = 1.0 if args.join_spread is None else args.join_spread
        line = allocate(
            args.nodes, args.allocate, args.subnet_len, args.seed, args.loss, args.signed, spread
        )
        print(json.dumps(line), flush=True)
        return 0 if line["settled"] else 1
    for line in run(scenario(argv)):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
