"""Real meshd daemons in network namespaces, side by side with the memberlist anchor.

    .venv/bin/python benchmarks/bench_daemons.py --n 10 30 --runs 3 \
        --out benchmarks/results/daemons.jsonl

For each N and run: N `meshd join` daemons (host-gw backend, default = memberlist LAN gossip
settings, AES-GCM) in a :class:`meshd.lab.topology.Lab`, then the anchor's netns mode (one
``mlnode`` per namespace) for the same N. Prints one JSON line per metric, medians over runs:

    {"bench": "daemons", "n": 30, "metric": "convergence_ms", "meshd": .., "memberlist": ..,
     "ratio": meshd / memberlist, "unit": "ms", "runs": .., "meshd_runs": [..], ...}

How each meshd number is taken (the anchor's methodology, see benchmarks/README.md):

convergence_ms
    The seed h1 is started and answers its control socket; then h2..hN are launched together.
    Times come from the daemons' own log lines (``member <name> ...: join``, wall clock, ms
    resolution; the daemon logs membership events at most 50 ms after they happen). A joiner's
    join is done when it first learns the seed (the seed's push-pull answer: memberlist's
    ``Join()`` returns at the same point). Convergence = when the last node's view holds all N
    (alive or suspect) minus when the last join was done. Checked once with ``peers`` per node.
dissemination_ms
    meshd has no control command to change a node's record, so h2 is restarted (SIGTERM, quiet)
    with a new subnet and its state dir's remembered members cleared (it rejoins through the
    seed only; otherwise it would push-pull every member directly, which is not gossip). The
    clock runs from the first node that logs h2's new subnet (the seed, which answered its
    push-pull) to the last one.
failure_ms
    SIGKILL of hN; from just before the kill until every other node logs ``hN ...: dead``.
leave_ms
    ``leave`` on h(N-1) through its control socket; until every remaining node logs ``left``.
idle_*
    After convergence and a settle pause, a 10 s window per daemon: CPU from /proc/<pid>/stat
    (utime+stime), RSS (VmRSS), the status counters ``out``/``out_bytes`` (sealed datagrams)
    plus 28 B IPv4+UDP header per datagram, cross-checked with the namespace's kernel counters
    (/proc/<pid>/net/snmp Udp OutDatagrams, /proc/<pid>/net/netstat IpExt OutOctets).
    Medians over the daemons; bandwidth is the mean per node.

It also prints what each import costs in RSS (``import_rss_kib``), to explain the RSS floor.
Benchmarks are not tests: the smoke test runs N=3 without the anchor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import memberlist_anchor  # noqa: E402

from meshd.control.client import request  # noqa: E402
from meshd.errors import MeshdError  # noqa: E402
from meshd.lab.topology import Daemon, Lab, cleanup_on_signals  # noqa: E402
from meshd.statestore import State, StateStore  # noqa: E402

BACKEND = "host-gw"
UDP_IP_HEADER = 28
UP = ("alive", "suspect")
STATE_OF = {"join": "alive", "alive": "alive", "update": "alive", "suspect": "suspect",
            "dead": "dead", "left": "left"}
# "2026-11-26 22:41:31,594 INFO meshd: member h1 (10.99.0.1 10.244.1.0/24): join"
EVENT_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO meshd: member (\S+) \((\S+) (\S+)\): (\w+)$"
)
UNITS = {
    "convergence_ms": "ms", "convergence_from_launch_ms": "ms", "dissemination_ms": "ms",
    "failure_ms": "ms", "leave_ms": "ms", "idle_cpu_pct": "% of one core", "rss_mib": "MiB",
    "idle_bytes_per_node_s": "B/node/s", "idle_datagrams_per_node_s": "datagrams/node/s",
    "idle_kernel_ip_bytes_per_node_s": "B/node/s",
    "idle_kernel_udp_datagrams_per_node_s": "datagrams/node/s",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench_daemons] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ daemon logs


class Event:
    __slots__ = ("t", "member", "subnet", "kind")

    def __init__(self, t: float, member: str, subnet: str, kind: str) -> None:
        self.t, self.member, self.subnet, self.kind = t, member, subnet, kind


class LogTail:
    """The membership events a daemon logged, read incrementally from its log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.events: list[Event] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            m = EVENT_RE.match(raw.decode(errors="replace"))
            if m:
                t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                self.events.append(Event(t, m[2], m[4], m[5]))

    def since(self, t0: float) -> list[Event]:
        return [e for e in self.events if e.t >= t0 - 0.001]

    def first(self, pred: Callable[[Event], bool], t0: float = 0.0) -> float | None:
        return next((e.t for e in self.since(t0) if pred(e)), None)

    def full_at(self, others: set[str]) -> float | None:
        """When this node's view first held every one of ``others`` alive or suspect."""
        state: dict[str, str] = {}
        for e in self.events:
            state[e.member] = STATE_OF.get(e.kind, state.get(e.member, ""))
            if all(state.get(o) in UP for o in others):
                return e.t
        return None


def wait_logs(tails: dict[str, LogTail], done: Callable[[LogTail], float | None],
              timeout: float, period: float = 0.05) -> dict[str, float | None]:
    """Poll the logs until ``done`` gives a time for every node (or the timeout)."""
    deadline = time.monotonic() + timeout
    got: dict[str, float | None] = dict.fromkeys(tails)
    while True:
        for name, tail in tails.items():
            if got[name] is None:
                tail.poll()
                got[name] = done(tail)
        if all(v is not None for v in got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(period)


# ------------------------------------------------------------------------------ /proc


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _proc_net(path: str, wanted: dict[str, str]) -> dict[str, int]:
    """Counters from a /proc/net/{snmp,netstat} file (header line, value line per section)."""
    out: dict[str, int] = {}
    lines = Path(path).read_text().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        h, v = head.split(), vals.split()
        for key, name in wanted.items():
            sec, field = key.split(":")
            if h[0] == sec + ":" and field in h:
                out[name] = int(v[h.index(field)])
    return out


def net_counters(pid: int) -> dict[str, int]:
    c = _proc_net(f"/proc/{pid}/net/snmp", {"Udp:OutDatagrams": "udp_out"})
    c.update(_proc_net(f"/proc/{pid}/net/netstat", {"IpExt:OutOctets": "ip_out_octets"}))
    return c


def snapshot(d: Daemon) -> dict[str, Any]:
    assert d.proc is not None
    pid = d.proc.pid
    st = request(d.socket_path, "status", timeout=10)
    snap: dict[str, Any] = {"t": time.monotonic(), "cpu": proc_cpu_s(pid),
                            "rss": proc_rss_kib(pid), **net_counters(pid)}
    c = st["counters"]
    snap.update(out=c.get("out", 0), out_bytes=c.get("out_bytes", 0),
                push_pull=c.get("msg.push_pull", 0))
    return snap


# ------------------------------------------------------------------------------ one run


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def run_meshd(n: int, run: int, idle: float, settle: float | None, timeout: float,
              prefix: str) -> dict[str, float | None]:
    """One run of N daemons; returns this run's metrics (None where a phase failed)."""
    res: dict[str, float | None] = dict.fromkeys(UNITS)
    with Lab(prefix, hosts=n) as lab:
        log(f"meshd n={n} run={run}: lab built in {lab.build_seconds:.1f}s")
        key = lab.workdir / "key"
        key.write_text(subprocess.run([sys.executable, "-m", "meshd", "keygen"],
                                      capture_output=True, text=True, check=True).stdout)
        key.chmod(0o600)
        conf = lab.workdir / "bench.toml"
        conf.write_text("# memberlist LAN defaults\n[gossip]\n")
        args = ["--config", str(conf), "--log-level", "info"]
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}

        def start(h: Any, extra: Sequence[str] = ()) -> Daemon:
            return lab.start_daemon(h, key_file=key, backend=BACKEND, env=env,
                                    extra_args=[*args, *extra])

        seed = lab.hosts[0]
        d0 = start(seed)
        _wait_socket(d0, 30)
        t_launch = time.time()
        for h in lab.hosts[1:]:
            start(h)
        names = [h.name for h in lab.hosts]
        tails = {nm: LogTail(lab.daemons[nm].log_path) for nm in names}

        # --- convergence
        def full(nm: str) -> Callable[[LogTail], float | None]:
            others = set(names) - {nm}
            return lambda t: t.full_at(others)

        full_at: dict[str, float | None] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            remaining = {nm: tails[nm] for nm in names if full_at.get(nm) is None}
            for nm, tail in remaining.items():
                tail.poll()
                full_at[nm] = full(nm)(tail)
            if all(full_at.get(nm) is not None for nm in names):
                break
            time.sleep(0.05)
        joined = {nm: tails[nm].first(lambda e: e.member == seed.name) for nm in names[1:]}
        if all(v is not None for v in full_at.values()) and n > 1:
            if not _peers_agree(lab, names):
                log("warning: logs say converged but a `peers` table disagrees")
            last_join = max(v for v in joined.values() if v is not None)
            last_full = max(v for v in full_at.values() if v is not None)
            res["convergence_ms"] = (last_full - last_join) * 1000
            res["convergence_from_launch_ms"] = (last_full - t_launch) * 1000
            log(f"  converged {res['convergence_ms']:.0f} ms after the last join "
                f"({res['convergence_from_launch_ms']:.0f} ms after launch)")
        else:
            log(f"  did not converge within {timeout:g}s")
            return res

        # --- idle
        time.sleep(settle if settle is not None else 3.0 + 0.02 * n)
        daemons = [lab.daemons[nm] for nm in names]
        a = [snapshot(d) for d in daemons]
        time.sleep(idle)
        b = [snapshot(d) for d in reversed(daemons)][::-1]
        res.update(_idle_metrics(a, b))
        log(f"  idle: cpu {res['idle_cpu_pct']:.2f}% rss {res['rss_mib']:.1f} MiB "
            f"{res['idle_bytes_per_node_s']:.0f} B/node/s "
            f"{res['idle_datagrams_per_node_s']:.2f} dgram/node/s "
            f"(kernel {res['idle_kernel_ip_bytes_per_node_s']:.0f} B/node/s)")

        # --- dissemination: h2 comes back with a new subnet (a record update)
        if n >= 2:
            h = lab.hosts[1]
            d = lab.daemons[h.name]
            lab.stop_daemon(h.name)
            store = StateStore(d.state_dir)
            st = store.load()
            store.save(State(node_id=st.node_id, incarnation=st.incarnation, members=[]))
            new_subnet = f"10.245.{h.index}.0/24"
            t0 = time.time()
            start(h, ["--subnet", new_subnet])
            others = {nm: tails[nm] for nm in names if nm != h.name}
            got = wait_logs(others, lambda t: t.first(
                lambda e: e.member == h.name and e.subnet == new_subnet, t0), 30)
            if all(v is not None for v in got.values()):
                times = [v for v in got.values() if v is not None]
                res["dissemination_ms"] = (max(times) - min(times)) * 1000
                log(f"  dissemination {res['dissemination_ms']:.0f} ms "
                    f"(restart to first receiver {1000 * (min(times) - t0):.0f} ms)")
            else:
                log("  dissemination: not everyone saw the update")

        # --- failure detection: SIGKILL of the last host
        victim = names[-1]
        others = {nm: tails[nm] for nm in names if nm != victim}
        if others:
            t0 = time.time()
            lab.stop_daemon(victim, signal.SIGKILL)
            got = wait_logs(others, lambda t: t.first(
                lambda e: e.member == victim and e.kind == "dead", t0), 90, period=0.1)
            if all(v is not None for v in got.values()):
                res["failure_ms"] = (max(v for v in got.values() if v is not None) - t0) * 1000
                log(f"  failure detection {res['failure_ms']:.0f} ms")
            else:
                log("  failure detection: not everyone saw the death")

        # --- graceful leave of h(N-1)
        leaver = names[-2] if n >= 3 else None
        if leaver is not None:
            others = {nm: tails[nm] for nm in names if nm not in (leaver, victim)}
            t0 = time.time()
            try:
                request(lab.daemons[leaver].socket_path, "leave", timeout=30)
            except MeshdError as exc:
                log(f"  leave: {exc}")
            got = wait_logs(others, lambda t: t.first(
                lambda e: e.member == leaver and e.kind == "left", t0), 30)
            if all(v is not None for v in got.values()):
                res["leave_ms"] = (max(v for v in got.values() if v is not None) - t0) * 1000
                log(f"  leave {res['leave_ms']:.0f} ms")
            else:
                log("  leave: not everyone saw it")
    return res


def _wait_socket(d: Daemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not d.alive():
            raise RuntimeError(f"{d.host.name} exited; see {d.log_path}")
        try:
            request(d.socket_path, "status", timeout=5)
            return
        except MeshdError:
            time.sleep(0.02)
    raise RuntimeError(f"{d.host.name}: no control socket after {timeout:g}s")


def _peers_agree(lab: Lab, names: list[str]) -> bool:
    for nm in names:
        rows = request(lab.daemons[nm].socket_path, "peers", timeout=10)
        if sum(1 for r in rows if r["state"] in UP) != len(names):
            return False
    return True


def _idle_metrics(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, float]:
    n = len(a)
    secs = [y["t"] - x["t"] for x, y in zip(a, b, strict=True)]
    per = sum(secs)  # node-seconds

    def total(k: str) -> float:
        return float(sum(y[k] - x[k] for x, y in zip(a, b, strict=True)))

    dgrams = total("out")
    return {
        "idle_cpu_pct": statistics.median(
            100 * (y["cpu"] - x["cpu"]) / s for x, y, s in zip(a, b, secs, strict=True)),
        "rss_mib": statistics.median(y["rss"] for y in b) / 1024,
        "idle_bytes_per_node_s": (total("out_bytes") + UDP_IP_HEADER * dgrams) / per,
        "idle_datagrams_per_node_s": dgrams / per,
        "idle_kernel_ip_bytes_per_node_s": total("ip_out_octets") / per,
        "idle_kernel_udp_datagrams_per_node_s": total("udp_out") / per,
        "idle_push_pulls_per_node": total("push_pull") / n,
    }


# ------------------------------------------------------------------------------ imports

IMPORT_STEPS = [
    ("interpreter", ""),
    ("asyncio", "import asyncio"),
    ("msgpack", "import msgpack"),
    ("cryptography", "from cryptography.hazmat.primitives.ciphers.aead import AESGCM"),
    ("asyncio_dgram", "import asyncio_dgram"),
    ("typer", "import typer"),
    ("pyroute2", "from pyroute2 import AsyncIPRoute"),
    ("meshd", "import meshd.cli, meshd.daemon"),
]
_IMPORT_PROBE = """
import json, sys, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
out = []
for name, stmt in json.loads(sys.argv[1]):
    t = time.perf_counter(); exec(stmt); ms = 1000 * (time.perf_counter() - t)
    out.append([name, rss(), ms])
print(json.dumps(out))
"""


def import_costs() -> list[dict[str, Any]]:
    """RSS added by each dependency, in the daemon's import order (cumulative) and alone."""
    def probe(steps: list[tuple[str, str]]) -> list[list[Any]]:
        r = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(steps)],
                           capture_output=True, text=True, check=True, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        return list(json.loads(r.stdout))

    chain = probe(IMPORT_STEPS)
    base = chain[0][1]
    lines = []
    prev = base
    for (name, stmt), (_, rss, ms) in zip(IMPORT_STEPS, chain, strict=True):
        alone = base if not stmt else probe([IMPORT_STEPS[0], (name, stmt)])[1][1]
        lines.append({
            "bench": "daemons", "n": None, "metric": f"import_rss_kib:{name}",
            "meshd": rss - prev if stmt else rss, "memberlist": None, "ratio": None,
            "unit": "KiB", "cumulative_kib": rss, "alone_kib": alone - base if stmt else rss,
            "import_ms": round(ms, 1),
        })
        prev = rss
    return lines


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 30], help="cluster sizes")
    ap.add_argument("--runs", type=int, default=3, help="runs per size (medians reported)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    ap.add_argument("--settle", type=float, default=None,
                    help="pause between convergence and the idle window (default 3 s + 20 ms*N)")
    ap.add_argument("--timeout", type=float, default=120.0, help="convergence timeout, seconds")
    ap.add_argument("--no-anchor", action="store_true", help="skip the memberlist column")
    ap.add_argument("--anchor-install", action="store_true",
                    help="let the anchor's build.sh apt-get install Go and memberlist's source")
    ap.add_argument("--no-imports", action="store_true", help="skip the import-cost lines")
    ap.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    ap.add_argument("--prefix", default=f"bd{os.getpid() % 10000}",
                    help="lab namespace prefix (default bd<pid>)")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 2

    anchor_note: str | None = "skipped (--no-anchor)" if opts.no_anchor else None
    if anchor_note is None:
        anchor_note = memberlist_anchor.prepare(install=opts.anchor_install)
        if anchor_note:
            log(f"memberlist column left empty: {anchor_note}")

    lines: list[dict[str, Any]] = []
    with cleanup_on_signals():
        for n in opts.n:
            mesh_runs: list[dict[str, float | None]] = []
            ml_runs: list[dict[str, float | None]] = []
            for run in range(1, opts.runs + 1):
                t = time.monotonic()
                mesh_runs.append(run_meshd(n, run, opts.idle, opts.settle, opts.timeout,
                                           opts.prefix))
                log(f"meshd n={n} run={run} took {time.monotonic() - t:.0f}s")
                if anchor_note is None:
                    t = time.monotonic()
                    try:
                        ml_runs.append(memberlist_anchor.metrics(
                            memberlist_anchor.run_netns(n, idle=opts.idle)))
                    except RuntimeError as exc:
                        log(f"anchor: {exc}")
                        ml_runs.append({})
                    log(f"memberlist n={n} run={run} took {time.monotonic() - t:.0f}s: "
                        + json.dumps({k: v and round(v, 2) for k, v in ml_runs[-1].items()}))
            for metric, unit in UNITS.items():
                m_vals = [r.get(metric) for r in mesh_runs]
                a_vals = [r.get(metric) for r in ml_runs]
                m, a = _median(m_vals), _median(a_vals)
                line: dict[str, Any] = {
                    "bench": "daemons", "n": n, "metric": metric,
                    "meshd": _round(m), "memberlist": _round(a),
                    "ratio": _round(m / a, 3) if m is not None and a else None,
                    "unit": unit, "runs": opts.runs,
                    "meshd_runs": [_round(v) for v in m_vals],
                    "memberlist_runs": [_round(v) for v in a_vals],
                }
                if anchor_note:
                    line["memberlist_note"] = anchor_note
                lines.append(line)
                print(json.dumps(line), flush=True)
            pp = _median([r.get("idle_push_pulls_per_node") for r in mesh_runs])
            if pp is not None:
                line = {"bench": "daemons", "n": n, "metric": "idle_push_pulls_per_node",
                        "meshd": _round(pp), "memberlist": None, "ratio": None,
                        "unit": "push-pull messages received per node in the idle window",
                        "runs": opts.runs}
                lines.append(line)
                print(json.dumps(line), flush=True)
    if not opts.no_imports:
        for line in import_costs():
            lines.append(line)
            print(json.dumps(line), flush=True)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return 0


def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


if __name__ == "__main__":
    sys.exit(main())
