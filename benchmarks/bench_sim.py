"""The gossip core at scale on the simulator (issue 7), side by side with Serf's convergence model.

    .venv/bin/python benchmarks/bench_sim.py --out benchmarks/results/sim.jsonl   # ~5-10 min
    .venv/bin/python benchmarks/bench_sim.py --smoke                              # N = 50, seconds

Runs ``sim_scenarios.py`` on meshd/sim.py (the real sans-IO `GossipNode` for every node, one
virtual clock, an in-memory network with 0.5-2 ms latency and independent per-datagram loss) with
the default `GossipConfig`
(memberlist's LAN profile: gossip to 3 nodes every 200 ms, probe every 1 s, suspicion mult 4;
each broadcast sent ceil(ln((N+1)/0.025)) times, meshd's retransmit rule: 9 at 100, 11 at 1,000,
13 at 10,000). Every node starts converged. By default N = 100 and 1,000 at 0, 10 and 20 %
loss, and N = 10,000 at 0 % (``--nodes``, ``--loss``, ``--lossy-up-to``), plus the
equal-bandwidth runs below. One JSON line per metric::

    {"bench": "sim", "n": 1000, "loss": 0.1, "metric": "t99", "meshd": 1.2, "model": 1.5,
     "unit": "s"}

The model is Serf's published convergence model (as issue 7 quotes it) at equal parameters,
fanout 3 and a 200 ms gossip interval: after r rounds a fraction 1/(1+(N+1)e^(-1.5 r)) of the
nodes has the update. ``model`` is null where the model says nothing.

Metrics:

t50, t99, t999
    A node changes its record (`update_local`); seconds until 50/99/99.9 % of the others
    report the change (gossip, or push-pull for the ones gossip missed); the median over 5 such
    updates by different nodes, 2 s apart (3 at 1,000, 2 at 10,000 and in the smoke run).
    Model: 0.2 s * ln((N+1) q / (1 - q)) / 1.5 for the fraction q, whatever the loss.
update_reached
    Fraction of the others that had the update by the end of the run (the worst update).
update_sends_per_node
    How often an update message was sent, per node (mean over the updates; piggybacked or in a
    gossip round, meshd retires a broadcast after queue.retransmit_limit sends).
    Model: every informed node sends it to 3 nodes each round until the round at which it
    reaches 99.9 %: 3 * the sum of the informed fraction over those rounds.
update_bytes_per_node, update_bytes_per_node_s
    What spreading one update costs at equal message size (the update's alive message): sends
    per node * message bytes; per second over the model's t999 for both. "At equal bandwidth"
    means comparing t999 while this is at or under the model's. The envelope (security.OVERHEAD
    + 28 B IPv4/UDP per datagram) is left out on both sides: the model has no datagrams, and
    meshd's copies ride on probes and acks as well as in gossip rounds of their own.
*_equal_bw
    Where meshd's default sends more per update than the model (memberlist's rule, before issue
    16: 4 * ceil(log10(N+1)) per node, 16 at 1,000 and 20 at 10,000, against the model's
    ~13-15), a separate run at 0 % loss with memberlist's rule at the largest retransmit_mult
    that sends no more than the model (``retransmit_mult_equal_bw``). The default no longer
    sends more anywhere the bench runs, so these runs are skipped unless the rule is changed.
datagrams_per_node_s, bytes_per_node_s, payload_bytes_per_node_s
    Steady state before the update: everything nodes send (probes, acks, push-pull), per node
    per second. bytes = payload + the envelope (security.OVERHEAD, 53 B) + 28 B IPv4/UDP per
    datagram.
largest_datagram
    Largest payload of the whole run (the envelope adds security.OVERHEAD; the limit is 1,400 B
    on the wire).
first_suspect, first_dead, dead_all
    Another node crashes; seconds until the first node suspects it, the first declares it dead,
    and every live node has it dead.
false_positive_rate
    Live nodes declared dead over the whole run: (observer, member) pairs / (N (N - 1)).
false_suspicions_per_node_min
    Distinct suspicions (member, incarnation) of live nodes per node per simulated minute: how
    often a healthy node is suspected somewhere (then refuted, unless it counts above).
wall_s, max_rss_mb
    What the run cost this machine (RSS is the process's peak so far).

``--allocation`` runs issue 13's subnet allocation scenario instead (sim_scenarios.py
``--allocate``): N allocating nodes (default 1,000) join at random instants within one second
through three of them, taking /24s from 10.0.0.0/14 (1,024 subnets: the hard case) and 10.0.0.0/12
(4,096), in shared-key and certificate mode, at each ``--loss`` and each of ``--seeds``; one line
per run (``"bench": "alloc"``, sim_scenarios' ``allocation`` line)::

    .venv/bin/python benchmarks/bench_sim.py --allocation --out benchmarks/results/alloc.jsonl

``--false-deaths`` runs issue 16's no-false-death check instead: N = 1,000 (``--nodes``) at 20 %
loss (``--loss``) for 60 simulated seconds, once per seed (``--seeds``, default 1..10), with one
update and one crash as in the runs above; one line per seed (``"bench": "sim_lifeguard"``): live
members declared dead (pairs), false suspicions, t99.9 of the update, when all had the crashed
node dead, and the run's wall time. The target is 0 false-dead pairs in every run::

    .venv/bin/python benchmarks/bench_sim.py --false-deaths --out benchmarks/results/lifeguard.jsonl

``--set KEY=VALUE`` runs every scenario with a GossipConfig field changed and labels its lines
(``"settings"``); report.py shows them beside the default's. Issue 16's before/after::

    .venv/bin/python benchmarks/bench_sim.py --nodes 1000 10000 --set retransmit_mult=4 \
        --out benchmarks/results/sim_memberlist_rule.jsonl

Benchmarks are not tests; tests/unit/test_gossip_sim.py runs ``--smoke`` with short durations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from meshd.gossip.config import GossipConfig
from meshd.gossip.queue import retransmit_limit
from meshd.gossip.security import OVERHEAD as ENVELOPE_BYTES

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_scenarios  # noqa: E402

IP_UDP_BYTES = 28
MODEL_RATE = 1.5
"""Serf's model: fraction = 1 / (1 + (N + 1) e^(-1.5 r))."""
CFG = GossipConfig()
FANOUT = CFG.gossip_nodes
ROUND = CFG.gossip_interval


def model_rounds(n: int, frac: float) -> float:
    """Rounds the model needs to reach ``frac`` of ``n`` nodes."""
    return math.log((n + 1) * frac / (1 - frac)) / MODEL_RATE


def model_fraction(n: int, rounds: float) -> float:
    return 1 / (1 + (n + 1) * math.exp(-MODEL_RATE * rounds))


def model_time(n: int, frac: float) -> float:
    return ROUND * model_rounds(n, frac)


def model_sends_per_node(n: int, frac: float = 0.999) -> float:
    """Each informed node sends to FANOUT nodes per round, up to the round reaching ``frac``."""
    rounds = math.ceil(model_rounds(n, frac))
    return FANOUT * sum(model_fraction(n, r) for r in range(rounds))


def timeline(n: int, smoke: bool) -> dict[str, int]:
    """Simulated seconds: warm-up, steady window, updates (2 s apart), crash, end.

    The crash needs the suspicion time after it: 4 log10(N) s at least (12 s at 1,000, 16 s at
    10,000), up to 6x that without confirmations. Larger meshes get shorter runs because of what
    they cost here: 1,000 nodes at 20 % loss simulate at ~5 s per simulated second (false
    suspicions and their refutations keep every gossip round full), 10,000 at ~4 s.
    """
    if smoke:
        return {"warmup": 2, "update_at": 6, "updates": 2, "crash_at": 10, "duration": 40}
    if n <= 200:
        return {"warmup": 5, "update_at": 20, "updates": 5, "crash_at": 30, "duration": 120}
    if n <= 2000:
        return {"warmup": 3, "update_at": 8, "updates": 3, "crash_at": 14, "duration": 36}
    return {"warmup": 2, "update_at": 6, "updates": 2, "crash_at": 10, "duration": 36}


def simulate(
    n: int, loss: float, seed: int, t: dict[str, int], settings: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """One sim_scenarios run; its result lines by phase."""
    argv = ["--nodes", str(n), "--loss", str(loss), "--seed", str(seed), "--converged"]
    for key, value in t.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    for item in settings:
        argv += ["--set", item]
    return {rec["phase"]: rec for rec in sim_scenarios.run(sim_scenarios.scenario(argv))}


def line(n: int, loss: float, metric: str, meshd: Any, model: Any, unit: str) -> dict[str, Any]:
    return {
        "bench": "sim",
        "n": n,
        "loss": loss,
        "metric": metric,
        "meshd": meshd,
        "model": model,
        "unit": unit,
    }


def default_sends(n: int) -> int:
    """Copies of each broadcast the default configuration sends per node (queue.py's rule)."""
    return retransmit_limit(CFG.retransmit_mult, n, CFG.retransmit_miss)


def equal_bandwidth_mult(n: int) -> int:
    """The largest retransmit_mult whose sends per node (mult * ceil(log10(N+1))) stay at or
    under the model's."""
    per = max(1, math.ceil(math.log10(n + 1)))
    return max(1, math.floor(model_sends_per_node(n) / per))


def equal_bandwidth(n: int, seed: int, mult: int) -> Iterator[dict[str, Any]]:
    """Dissemination alone with retransmit_mult = ``mult`` (0 % loss)."""
    updates = 3 if n <= 2000 else 2
    end = 4 + 2 * updates + 2
    t = {"warmup": 2, "update_at": 4, "updates": updates, "crash_at": end, "duration": end}
    dis = simulate(n, 0.0, seed, t, [f"retransmit_mult={mult}"])["dissemination"]
    yield line(n, 0.0, "retransmit_mult_equal_bw", mult, None, "")
    yield line(
        n,
        0.0,
        "update_sends_per_node_equal_bw",
        round(dis["sends"] / n, 2),
        round(model_sends_per_node(n), 2),
        "msgs/node",
    )
    yield line(n, 0.0, "update_reached_equal_bw", dis["reached"], None, "fraction")
    for key, frac in (("t50", 0.5), ("t99", 0.99), ("t999", 0.999)):
        yield line(n, 0.0, f"{key}_equal_bw", dis[key], round(model_time(n, frac), 3), "s")


def scenario(
    n: int, loss: float, seed: int, smoke: bool, settings: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """Run one simulation; yield the bench lines (with ``settings``, each says them)."""
    t = timeline(n, smoke)
    phases = simulate(n, loss, seed, t, settings)
    st, dis, fail, summ = (phases[p] for p in ("steady", "dissemination", "failure", "summary"))

    def out(metric: str, meshd: Any, model: Any, unit: str) -> dict[str, Any]:
        rec = line(n, loss, metric, meshd, model, unit)
        return {**rec, "settings": " ".join(settings)} if settings else rec

    for key, frac in (("t50", 0.5), ("t99", 0.99), ("t999", 0.999)):
        yield out(key, dis[key], round(model_time(n, frac), 3), "s")
    yield out("update_reached", dis["reached"], None, "fraction")
    sends = dis["sends"] / n
    model_sends = model_sends_per_node(n)
    yield out("update_sends_per_node", round(sends, 2), round(model_sends, 2), "msgs/node")
    size = dis["message_bytes"]
    yield out(
        "update_bytes_per_node", round(sends * size, 1), round(model_sends * size, 1), "B/node"
    )
    window = model_time(n, 0.999)
    yield out(
        "update_bytes_per_node_s",
        round(sends * size / window, 1),
        round(model_sends * size / window, 1),
        "B/node/s",
    )
    dgs = st["datagrams_per_node_s"]
    wire = st["bytes_per_node_s"] + dgs * (ENVELOPE_BYTES + IP_UDP_BYTES)
    yield out("datagrams_per_node_s", dgs, None, "datagrams/node/s")
    yield out("bytes_per_node_s", round(wire, 1), None, "B/node/s")
    yield out("payload_bytes_per_node_s", st["bytes_per_node_s"], None, "B/node/s")
    yield out("largest_datagram", summ["largest_datagram"], None, "B")
    for key in ("first_suspect", "first_dead", "dead_all"):
        yield out(key, fail[key], None, "s")
    yield out("false_positive_rate", summ["false_death_rate"], None, "fraction of pairs")
    yield out(
        "false_suspicions_per_node_min", summ["false_suspicions_per_node_min"], None, "1/node/min"
    )
    yield out("wall_s", summ["wall_s"], None, "s")
    yield out("max_rss_mb", summ["max_rss_mb"], None, "MB")


FALSE_DEATH_SEEDS = tuple(range(1, 11))
FALSE_DEATH_TIMELINE = {"warmup": 6, "update_at": 18, "updates": 1, "crash_at": 30, "duration": 60}
"""Issue 16: 60 simulated seconds, the update at 18 s and the crash at 30 s (sim_scenarios'
defaults for a 60 s run), so the crash has its whole suspicion time before the end."""


def false_deaths(n: int, loss: float, seed: int, smoke: bool) -> dict[str, Any]:
    """One seeded run of issue 16's check; its line."""
    t = timeline(n, True) if smoke else FALSE_DEATH_TIMELINE
    phases = simulate(n, loss, seed, t)
    dis, fail, summ = (phases[p] for p in ("dissemination", "failure", "summary"))
    return {
        "bench": "sim_lifeguard", "n": n, "loss": loss, "seed": seed, "duration": t["duration"],
        "false_dead_pairs": summ["false_deaths"],
        "false_suspicions_per_node_min": summ["false_suspicions_per_node_min"],
        "t999": dis["t999"], "reached": dis["reached"],
        "dead_all": fail["dead_all"], "first_dead": fail["first_dead"],
        "datagrams": summ["datagrams"], "wall_s": summ["wall_s"],
    }  # fmt: skip


ALLOC_NETWORKS = ("10.0.0.0/14", "10.0.0.0/12")
"""1,024 and 4,096 /24s: for 1,000 nodes, nearly full and a quarter full."""
ALLOC_SMOKE_NETWORKS = ("10.0.0.0/18", "10.0.0.0/16")


def allocation_runs(
    n: int, losses: Sequence[float], seeds: Sequence[int], smoke: bool
) -> Iterator[dict[str, Any]]:
    """The allocation scenario over pools, modes, losses and seeds; one line per run."""
    for network in ALLOC_SMOKE_NETWORKS if smoke else ALLOC_NETWORKS:
        for signed in (False, True):
            for loss in losses:
                for seed in seeds:
                    line = sim_scenarios.allocate(n, network, 24, seed, loss, signed)
                    yield {"bench": "alloc", **{k: v for k, v in line.items() if k != "phase"}}


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="bench_sim.py", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    p.add_argument(
        "--lossy-up-to",
        type=int,
        default=1000,
        help="larger meshes run at the first --loss only (default 1000)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="N = 50 only, short runs")
    p.add_argument(
        "--no-equal-bandwidth", action="store_true", help="skip the runs at the model's bandwidth"
    )
    p.add_argument("--out", help="also write the lines to this file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a GossipConfig field in every run (e.g. retransmit_mult=4, memberlist's"
        " retransmit rule); the lines carry it as 'settings' and skip the equal-bandwidth runs",
    )
    p.add_argument(
        "--allocation",
        action="store_true",
        help="run the subnet allocation scenario instead (default --nodes 1000, --loss 0)",
    )
    p.add_argument(
        "--false-deaths",
        action="store_true",
        help="issue 16's check instead: N = 1000 at 20%% loss for 60 s, once per seed",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="with --allocation (default 1) or --false-deaths (default 1..10)",
    )
    args = p.parse_args(argv)
    if args.allocation:
        args.seeds = args.seeds or [1]
        return allocation_main(args, out)
    if args.false_deaths:
        return false_deaths_main(args, out)
    sizes = [50] if args.smoke else args.nodes
    sink = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below

    def emit(rec: dict[str, Any]) -> None:
        text = json.dumps(rec)
        print(text, file=out, flush=True)
        if sink is not None:
            sink.write(text + "\n")
            sink.flush()

    wall0 = time.monotonic()
    try:
        for n in sizes:
            for loss in args.loss if n <= args.lossy_up_to else args.loss[:1]:
                t0 = time.monotonic()
                for rec in scenario(n, loss, args.seed, args.smoke, args.set):
                    emit(rec)
                print(f"# n={n} loss={loss}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
            mult = equal_bandwidth_mult(n)
            over = default_sends(n) > model_sends_per_node(n)
            if over and not args.set and not args.no_equal_bandwidth:
                t0 = time.monotonic()
                for rec in equal_bandwidth(n, args.seed, mult):
                    emit(rec)
                print(f"# n={n} equal bandwidth: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    finally:
        if sink is not None:
            sink.close()
    print(f"# total {time.monotonic() - wall0:.1f} s", file=sys.stderr)
    return 0


def false_deaths_main(args: argparse.Namespace, out: TextIO) -> int:
    given = argparse.Namespace(nodes=[100, 1000, 10000], loss=[0.0, 0.1, 0.2])
    n = 50 if args.smoke else (1000 if args.nodes == given.nodes else args.nodes[0])
    loss = 0.2 if args.loss == given.loss else args.loss[0]
    ok = True
    seeds = list(args.seeds or FALSE_DEATH_SEEDS)
    # The seeds are independent and deterministic: one process per core (each ~5-8 min of CPU
    # at N = 1,000), lines in seed order.
    with (
        open(args.out, "w") if args.out else contextlib.nullcontext() as sink,
        ProcessPoolExecutor(max_workers=min(len(seeds), os.cpu_count() or 1)) as pool,
    ):
        runs = [pool.submit(false_deaths, n, loss, seed, args.smoke) for seed in seeds]
        for run in runs:
            rec = run.result()
            text = json.dumps(rec)
            print(text, file=out, flush=True)
            if sink is not None:
                sink.write(text + "\n")
                sink.flush()
            ok = ok and rec["false_dead_pairs"] == 0
    return 0 if ok else 1


def allocation_main(args: argparse.Namespace, out: TextIO) -> int:
    given = argparse.Namespace(nodes=[100, 1000, 10000], loss=[0.0, 0.1, 0.2])
    n = 50 if args.smoke else (1000 if args.nodes == given.nodes else args.nodes[0])
    losses = [0.0] if args.loss == given.loss else args.loss
    ok = True
    with open(args.out, "w") if args.out else contextlib.nullcontext() as sink:
        for rec in allocation_runs(n, losses, args.seeds, args.smoke):
            text = json.dumps(rec)
            print(text, file=out, flush=True)
            if sink is not None:
                sink.write(text + "\n")
                sink.flush()
            ok = ok and bool(rec["settled"]) and not rec["overlapping"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
