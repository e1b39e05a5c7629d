"""Real meshd daemons in network namespaces, side by side with the memberlist anchor.

    .venv/bin/python benchmarks/bench_daemons.py --n 10 30 --runs 3 \
        --out benchmarks/results/daemons.jsonl

For each N and run: N `meshd join` daemons (host-gw backend, default = memberlist LAN gossip
settings, AES-GCM) in a :class:`meshd.lab.Lab`, then the anchor's netns mode (one
``mlnode`` per namespace) for the same N. Prints one JSON line per metric, medians over runs:

    {"bench": "daemons", "n": 30, "metric": "convergence_ms", "meshd": .., "memberlist": ..,
     "ratio": meshd / memberlist, "unit": "ms", "runs": .., "meshd_runs": [..], ...}

How each meshd number is taken (the anchor's methodology, see benchmarks/README.md):

convergence_ms
    The seed h1 is started and answers its control socket; then h2..hN are launched together.
    Times come from the daemons' own log lines (``member <name> ...: join``, wall clock, ms
    resolution, written inside each daemon by its membership loop, which batches for 10 ms: up
    to ~10 ms late, like memberlist's in-process timestamps otherwise). A joiner's join is done
    when it first learns the seed (the seed's push-pull answer: memberlist's ``Join()`` returns
    at the same point). Convergence = when the last node's view holds all N (alive or suspect)
    minus when the last join was done. Checked once with ``peers`` per node.
dissemination_ms
    The control command ``update`` on the seed h1 (memberlist: ``UpdateNode()`` on node 0)
    re-announces it with a higher incarnation and answers the wall-clock time just before.
    An incarnation alone logs nothing, so one thread per other node polls its ``peers`` every
    ``--poll-ms`` (15 ms), only during this phase, from just before the update until it shows
    the new incarnation. Each node's time is the midpoint between the last poll without and the
    first with it (each poll's middle: the daemon answered somewhere inside it), and never
    before the update itself; the worst
    half-width is ``dissemination_resolution_ms``. Until the last node (``dissemination_ms``)
    and the first (``dissemination_first_ms``). What the polling costs is reported too
    (``dissemination_poll_*_cores``: CPU of all daemons and of the pollers in the window).
failure_ms
    SIGKILL of hN; from just before the kill until every other node logs ``hN ...: dead``.
leave_ms
    ``leave`` on h(N-1) through its control socket (the clock starts just before the request;
    memberlist's inside the node just before ``Leave()``); until every remaining node logs
    ``left``.
idle_*
    After convergence and a settle pause, a 10 s window per daemon: CPU from the scheduler's
    per-thread run time (/proc/<pid>/task/*/schedstat, ns; utime+stime of /proc/<pid>/stat
    counts 10 ms ticks, too coarse for 0.2 % of a core), RSS (VmRSS), the status counters
    ``out``/``out_bytes`` (sealed datagrams) plus 28 B IPv4+UDP header per datagram,
    cross-checked with the namespace's kernel counters (/proc/<pid>/net/snmp Udp
    OutDatagrams, /proc/<pid>/net/netstat IpExt OutOctets).
    Medians over the daemons; bandwidth is the mean per node.

``--meshd-src DIR`` runs the meshd package in DIR/meshd (a frozen copy of a commit, say) rather
than this working tree; every line records which code ran (``meshd_src``: path, a hash of its
*.py, the commit) and the load average before each run (``loadavg_before_runs``). The package
is byte-compiled first, as installed (the .deb's postinst compiles it).
It also prints what each import costs in RSS (``import_rss_kib``), to explain the RSS floor.
Benchmarks are not tests: the smoke test runs N=3 without the anchor.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _meshd_src(argv: Sequence[str]) -> Path:
    """``--meshd-src DIR``: import meshd (and so run the daemons) from DIR/meshd, e.g. a frozen
    copy of a commit while the working tree is being edited; default: this repository."""
    for i, a in enumerate(argv):
        if a == "--meshd-src" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--meshd-src="):
            return Path(a.split("=", 1)[1]).resolve()
    return REPO


SRC = _meshd_src(sys.argv[1:])
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import memberlist_anchor  # noqa: E402

import meshd  # noqa: E402
from meshd import neightable  # noqa: E402
from meshd.control.client import request  # noqa: E402
from meshd.errors import MeshdError  # noqa: E402
from meshd.lab import Daemon, Lab, cleanup_on_signals, write_key  # noqa: E402
from meshd.lab.topology import raised_neighbour_table  # noqa: E402

BACKEND = "host-gw"
UDP_IP_HEADER = 28
UP = ("alive", "suspect")
STATE_OF = {
    "join": "alive",
    "alive": "alive",
    "update": "alive",
    "suspect": "suspect",
    "dead": "dead",
    "left": "left",
}
# "2026-11-26 22:41:31,594 INFO meshd: member h1 (10.99.0.1 10.244.1.0/24): join"
EVENT_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO meshd: member (\S+) \((\S+) (\S+)\): (\w+)$"
)
# "2026-12-02 23:41:31,594 INFO meshd: meshd 0.2.0: h7 (10.99.0.7) subnet ...": set up, joining,
# control socket listening (daemon.py's daemon_started)
READY_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO meshd: meshd \S+: \S+ \(")
UNITS = {
    "convergence_ms": "ms",
    "convergence_from_launch_ms": "ms",
    "convergence_after_ready_ms": "ms",
    "dissemination_ms": "ms",
    "dissemination_first_ms": "ms",
    "dissemination_resolution_ms": "ms",
    "dissemination_poll_daemon_cores": "cores",
    "dissemination_poll_client_cores": "cores",
    "failure_ms": "ms",
    "leave_ms": "ms",
    "idle_cpu_pct": "% of one core",
    "rss_mib": "MiB",
    "idle_bytes_per_node_s": "B/node/s",
    "idle_datagrams_per_node_s": "datagrams/node/s",
    "idle_kernel_ip_bytes_per_node_s": "B/node/s",
    "idle_kernel_udp_datagrams_per_node_s": "datagrams/node/s",
    "startup_suspect_msgs_per_node": "suspect messages received per node",
    "startup_probe_failures_per_node": "failed probes per node",
    "startup_stalls_per_node": "late timer wakeups per node",
    "startup_false_deaths": "dead verdicts about live members",
    "idle_suspect_msgs_per_node": "suspect messages received per node",
    "idle_settle_s": "s",
    "load_at_idle_start": "1-min load average (2 cores)",
}
STARTUP = {
    # status counter -> snapshot key: what the start-up storm is made of (docs/protocol.md)
    "msg.suspect": "suspect_msgs",
    "probe.failed": "probe_failed",
    "probe.stalled": "probe_stalled",
    "stall": "stalls",
    "suspect.raised": "suspect_raised",
    "refute": "refutes",
    "dead.declared": "dead_declared",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench_daemons] {msg}", file=sys.stderr, flush=True)


def tree_sha1(src: Path = SRC) -> str:
    """Identity of the meshd sources the daemons run: sha1 over every meshd/**/*.py."""
    h = hashlib.sha1()
    for f in sorted((src / "meshd").rglob("*.py")):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def source_info() -> dict[str, Any]:
    """Where the daemons' code comes from: path, tree hash, and the git commit when known."""
    info: dict[str, Any] = {"path": str(SRC), "tree_sha1": tree_sha1()}
    note = SRC / "SOURCE"
    if note.exists():  # a frozen copy says what it is a copy of
        info["git"] = note.read_text().strip()
    elif (SRC / ".git").exists():

        def git(*a: str) -> str:
            return subprocess.run(
                ["git", "-C", str(SRC), *a], capture_output=True, text=True, check=False
            ).stdout.strip()

        dirty = git("status", "--porcelain", "--", "meshd")
        info["git"] = git("rev-parse", "--short", "HEAD") + (
            " + uncommitted meshd/ changes" if dirty else ""
        )
    return info


def compile_sources(src: Path = SRC) -> None:
    """Byte-compile the meshd package the daemons run, as the .deb's postinst does: with
    PYTHONDONTWRITEBYTECODE set (or a read-only tree) every daemon would otherwise compile
    every module from source on start -- a third of its start-up CPU, 100 times over, that an
    installed meshd never spends."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", str(src / "meshd")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


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
        self.ready: float | None = None  # when the daemon logged that it was up and joining

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
            text = raw.decode(errors="replace")
            m = EVENT_RE.match(text)
            if m:
                t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                self.events.append(Event(t, m[2], m[4], m[5]))
            elif self.ready is None and (r := READY_RE.match(text)):
                self.ready = datetime.strptime(r[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()

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


def wait_logs(
    tails: dict[str, LogTail],
    done: Callable[[LogTail], float | None],
    timeout: float,
    period: float = 0.05,
) -> dict[str, float | None]:
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
    """CPU time of a process, in ns resolution: the scheduler's run time of each of its threads
    (/proc/<pid>/task/*/schedstat), plus what its exited threads used (utime+stime of
    /proc/<pid>/stat, which counts only in 10 ms clock ticks: 0.1 % of a core over 10 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        ns = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            ns += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return ticks
    return ns / 1e9


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
    st = request(d.socket_path, "status", timeout=30)
    snap: dict[str, Any] = {
        "t": time.monotonic(),
        "cpu": proc_cpu_s(pid),
        "rss": proc_rss_kib(pid),
        **net_counters(pid),
    }
    c = st["counters"]
    snap.update(
        out=c.get("out", 0), out_bytes=c.get("out_bytes", 0), push_pull=c.get("msg.push_pull", 0)
    )
    snap.update({key: c.get(counter, 0) for counter, key in STARTUP.items()})
    snap["counters"] = c
    return snap


# ------------------------------------------------------------------------------ dissemination


class _Poller(threading.Thread):
    """Polls one daemon's ``peers`` until it shows ``member`` at ``target`` incarnation or above.

    Every poll is kept as (sent, answered, incarnation seen). The daemon built its answer somewhere
    inside [sent, answered], so the new incarnation arrived after the middle of the last poll
    that did not show it and before the middle of the first one that did; the estimate is the
    midpoint of those two, the uncertainty half their distance."""

    def __init__(self, sock: Path, member: str, period: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.member, self.period, self.deadline = sock, member, period, deadline
        self.target: int | None = None  # set once the update has answered
        self.polls: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and time.time() < self.deadline:
            t1 = time.time()
            try:
                rows = request(self.sock, "peers", timeout=10)
            except MeshdError:
                rows = []
            t2 = time.time()
            inc = next((int(r["incarnation"]) for r in rows if r["name"] == self.member), -1)
            self.polls.append((t1, t2, inc))
            if self.target is not None and inc >= self.target:
                return
            self.stop.wait(max(0.0, self.period - (time.time() - t1)))

    def seen(self, not_before: float) -> tuple[float, float] | None:
        """(estimated time the target incarnation arrived, uncertainty ±s), or None. The news
        cannot arrive before ``not_before`` (the update itself), which narrows the interval when
        it travels faster than the polls (with eager gossip it does)."""
        assert self.target is not None
        prev: tuple[float, float, int] | None = None
        for p in self.polls:
            if p[2] >= self.target:
                hi = max((p[0] + p[1]) / 2, not_before)
                lo = (prev[0] + prev[1]) / 2 if prev is not None else p[0]
                lo = min(max(lo, not_before), hi)
                return (lo + hi) / 2, (hi - lo) / 2
            prev = p
        return None


def measure_update(
    socks: dict[str, Path], member: str, period: float, timeout: float
) -> tuple[float, dict[str, tuple[float, float] | None]]:
    """``update`` on ``member``; returns its "at" and, per other node, when it saw the new
    incarnation (estimate, ± uncertainty), from concurrent ``peers`` polls every ``period``."""
    deadline = time.time() + timeout
    pollers = {nm: _Poller(s, member, period, deadline) for nm, s in socks.items() if nm != member}
    for p in pollers.values():
        p.start()
    time.sleep(3 * period)  # every poller has a "before" answer
    try:
        ans = request(socks[member], "update", timeout=10)
    except MeshdError:
        for p in pollers.values():
            p.stop.set()
        raise
    for p in pollers.values():
        p.target = int(ans["incarnation"])
    for p in pollers.values():
        p.join(max(0.0, deadline - time.time()) + 1)
        p.stop.set()
    at = float(ans["at"])
    return at, {nm: p.seen(at) for nm, p in pollers.items()}


# ------------------------------------------------------------------------------ one run


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def run_meshd(
    n: int,
    run: int,
    idle: float,
    settle: float | None,
    timeout: float,
    prefix: str,
    poll: float = 0.015,
) -> dict[str, float | None]:
    """One run of N daemons; returns this run's metrics (None where a phase failed)."""
    res: dict[str, float | None] = dict.fromkeys(UNITS)
    with Lab(prefix, hosts=n) as lab, contextlib.ExitStack() as keep:
        if KEEP_LOGS is not None:
            keep.callback(_keep_logs, lab, KEEP_LOGS / f"n{n}-run{run}")
        log(f"meshd n={n} run={run}: lab built in {lab.build_seconds:.1f}s")
        key = write_key(lab.workdir / "key")
        conf = lab.workdir / "bench.toml"
        conf.write_text("# memberlist LAN defaults\n[gossip]\n")
        args = ["--config", str(conf), "--log-level", "info"]
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}

        def start(h: Any, extra: Sequence[str] = ()) -> Daemon:
            return lab.start_daemon(
                h, key_file=key, backend=BACKEND, env=env, extra_args=[*args, *extra]
            )

        seed = lab.hosts[0]
        d0 = start(seed)
        _wait_socket(d0, max(60.0, timeout))
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
                # The logs are the clock, the tables the truth: no convergence time without both.
                log("  the logs say converged but a `peers` table disagrees")
                return res
            last_join = max(v for v in joined.values() if v is not None)
            last_full = max(v for v in full_at.values() if v is not None)
            res["convergence_ms"] = (last_full - last_join) * 1000
            res["convergence_from_launch_ms"] = (last_full - t_launch) * 1000
            ready = [tails[nm].ready for nm in names[1:]]
            if all(r is not None for r in ready):
                last_ready = max(r for r in ready if r is not None)
                res["convergence_after_ready_ms"] = (last_full - last_ready) * 1000
            log(
                f"  converged {res['convergence_ms']:.0f} ms after the last join "
                f"({res['convergence_from_launch_ms']:.0f} ms after launch, "
                f"{_fmt(res['convergence_after_ready_ms'])} ms after the last daemon was ready)"
            )
        else:
            log(f"  did not converge within {timeout:g}s")
            return res

        # --- idle
        fixed = settle if settle is not None else 3.0 + 0.02 * n
        time.sleep(fixed)
        daemons = [lab.daemons[nm] for nm in names]
        res["idle_settle_s"] = fixed + _until_quiet(daemons)
        a = [snapshot(d) for d in daemons]
        # Start-up, launch to here (convergence + settle): the suspicion storm issue 16 is about.
        res.update(_startup_metrics(a))
        res["load_at_idle_start"] = os.getloadavg()[0]
        for tail in tails.values():
            tail.poll()
        # Nobody has died yet: every dead verdict so far is about a live member.
        res["startup_false_deaths"] = sum(
            1 for t in tails.values() for e in t.events if e.kind == "dead"
        )
        log(
            f"  start-up: {res['startup_suspect_msgs_per_node']:.1f} suspect messages received "
            f"per node, {res['startup_probe_failures_per_node']:.2f} failed probes per node, "
            f"{res['startup_stalls_per_node']:.2f} stalls per node, "
            f"{res['startup_false_deaths']:.0f} false deaths; totals "
            + json.dumps({k: sum(x[k] for x in a) for k in STARTUP.values()})
        )
        cpus = sorted(x["cpu"] for x in a)
        log(
            f"  start-up CPU per daemon: median {statistics.median(cpus):.2f} s, "
            f"max {cpus[-1]:.2f} s, seed {a[0]['cpu']:.2f} s, all {sum(cpus):.0f} s in "
            f"{time.time() - t_launch:.0f} s"
        )
        if KEEP_LOGS is not None:
            dest = KEEP_LOGS / f"n{n}-run{run}"
            dest.mkdir(parents=True, exist_ok=True)
            (dest / "startup-counters.json").write_text(
                json.dumps(
                    {
                        nm: dict(x["counters"], cpu_s=x["cpu"])
                        for nm, x in zip(names, a, strict=True)
                    }
                )
            )
        time.sleep(idle)
        b = [snapshot(d) for d in reversed(daemons)][::-1]
        res.update(_idle_metrics(a, b))
        log(
            f"  idle: cpu {res['idle_cpu_pct']:.2f}% rss {res['rss_mib']:.1f} MiB "
            f"{res['idle_bytes_per_node_s']:.0f} B/node/s "
            f"{res['idle_datagrams_per_node_s']:.2f} dgram/node/s "
            f"(kernel {res['idle_kernel_ip_bytes_per_node_s']:.0f} B/node/s)"
        )

        # --- dissemination: `update` on the seed (memberlist: UpdateNode() on node 0)
        if n >= 2:
            socks = {nm: lab.daemons[nm].socket_path for nm in names}
            pids = [d.proc.pid for d in daemons if d.proc is not None]
            cpu0, own0, w0 = sum(map(proc_cpu_s, pids)), time.process_time(), time.monotonic()
            try:
                at, seen = measure_update(socks, seed.name, poll, max(60.0, timeout))
            except MeshdError as exc:
                log(f"  dissemination: update failed: {exc}")
                seen = {}
            wall = time.monotonic() - w0
            # What the polling cost: cores used by all daemons, and by this process's pollers.
            res["dissemination_poll_daemon_cores"] = (sum(map(proc_cpu_s, pids)) - cpu0) / wall
            res["dissemination_poll_client_cores"] = (time.process_time() - own0) / wall
            if seen and all(v is not None for v in seen.values()):
                ts = [v for v in seen.values() if v is not None]
                last = max(ts)
                res["dissemination_ms"] = (last[0] - at) * 1000
                res["dissemination_first_ms"] = (min(t for t, _ in ts) - at) * 1000
                res["dissemination_resolution_ms"] = max(u for _, u in ts) * 1000
                log(
                    f"  dissemination {res['dissemination_ms']:.0f} ms "
                    f"(first {res['dissemination_first_ms']:.0f} ms, "
                    f"±{res['dissemination_resolution_ms']:.0f} ms; polling: daemons "
                    f"{res['dissemination_poll_daemon_cores']:.2f} cores, client "
                    f"{res['dissemination_poll_client_cores']:.2f})"
                )
            else:
                log("  dissemination: not everyone saw the update")

        # --- failure detection: SIGKILL of the last host
        victim = names[-1]
        others = {nm: tails[nm] for nm in names if nm != victim}
        if others:
            t0 = time.time()
            lab.stop_daemon(victim, signal.SIGKILL)
            got = wait_logs(
                others,
                lambda t: t.first(lambda e: e.member == victim and e.kind == "dead", t0),
                max(90.0, timeout),
                period=0.1,
            )
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
                request(lab.daemons[leaver].socket_path, "leave", timeout=60)
            except MeshdError as exc:
                log(f"  leave: {exc}")
            got = wait_logs(
                others,
                lambda t: t.first(lambda e: e.member == leaver and e.kind == "left", t0),
                max(60.0, timeout),
            )
            if all(v is not None for v in got.values()):
                res["leave_ms"] = (max(v for v in got.values() if v is not None) - t0) * 1000
                log(f"  leave {res['leave_ms']:.0f} ms")
            else:
                log("  leave: not everyone saw it")
    return res


KEEP_LOGS: Path | None = None
"""``--keep-logs DIR``: the daemons' logs of each run are copied to DIR/n<N>-run<r>/."""


def _keep_logs(lab: Lab, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in lab.workdir.glob("*.log"):
        shutil.copy(f, dest / f.name)
    log(f"  logs kept in {dest}")


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
        rows = request(lab.daemons[nm].socket_path, "peers", timeout=30)
        if sum(1 for r in rows if r["state"] in UP) != len(names):
            return False
    return True


QUIET_RATE = 2.5
"""Datagrams sent per node per second once the start-up's broadcasts have drained: probing alone
is a ping and an ack per node per second."""
QUIET_MAX_S = 30.0


def _until_quiet(daemons: list[Daemon]) -> float:
    """Wait (at most QUIET_MAX_S) until the mesh sends no more than probing does, so the idle
    window does not measure the tail of the join broadcasts (at N = 100 they take a few seconds
    past convergence to drain: each is sent 12 times by every member); returns the wait."""
    t0 = time.monotonic()

    def sent() -> tuple[float, int]:
        total = sum(
            int(request(d.socket_path, "status", timeout=30)["counters"].get("out", 0))
            for d in daemons
        )
        return time.monotonic(), total

    prev = sent()
    while time.monotonic() - t0 < QUIET_MAX_S:
        time.sleep(1.0)
        cur = sent()
        if (cur[1] - prev[1]) / (cur[0] - prev[0]) / len(daemons) <= QUIET_RATE:
            break
        prev = cur
    return time.monotonic() - t0


def _fmt(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}"


def _startup_metrics(a: list[dict[str, Any]]) -> dict[str, float]:
    """Counters since each daemon started, per node (``a``: one snapshot per daemon)."""
    n = len(a)
    return {
        "startup_suspect_msgs_per_node": sum(x["suspect_msgs"] for x in a) / n,
        "startup_probe_failures_per_node": sum(x["probe_failed"] for x in a) / n,
        "startup_stalls_per_node": sum(x["stalls"] for x in a) / n,
    }


def _idle_metrics(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, float]:
    n = len(a)
    secs = [y["t"] - x["t"] for x, y in zip(a, b, strict=True)]
    per = sum(secs)  # node-seconds

    def total(k: str) -> float:
        return float(sum(y[k] - x[k] for x, y in zip(a, b, strict=True)))

    dgrams = total("out")
    return {
        "idle_cpu_pct": statistics.median(
            100 * (y["cpu"] - x["cpu"]) / s for x, y, s in zip(a, b, secs, strict=True)
        ),
        "rss_mib": statistics.median(y["rss"] for y in b) / 1024,
        "idle_bytes_per_node_s": (total("out_bytes") + UDP_IP_HEADER * dgrams) / per,
        "idle_datagrams_per_node_s": dgrams / per,
        "idle_kernel_ip_bytes_per_node_s": total("ip_out_octets") / per,
        "idle_kernel_udp_datagrams_per_node_s": total("udp_out") / per,
        "idle_push_pulls_per_node": total("push_pull") / n,
        "idle_suspect_msgs_per_node": total("suspect_msgs") / n,
    }


# ------------------------------------------------------------------------------ imports

IMPORT_STEPS = [
    ("interpreter", ""),
    ("asyncio", "import asyncio"),
    ("msgpack", "import msgpack"),
    ("cryptography", "from cryptography.hazmat.primitives.ciphers.aead import AESGCM"),
    ("asyncio_dgram", "import asyncio_dgram"),
    ("typer", "import typer"),
    ("meshd", "import meshd.cli, meshd.daemon, meshd.dataplane.reconciler"),
    # Devices and addresses: pyroute2's AsyncIPRoute alone, not the package's __init__ (netlink.py).
    ("pyroute2", "from meshd.dataplane import netlink; netlink._pyroute2()"),
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
        r = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE, json.dumps(steps)],
            capture_output=True,
            text=True,
            check=True,
            cwd=SRC,
            env=dict(os.environ, PYTHONPATH=str(SRC)),
        )
        return list(json.loads(r.stdout))

    chain = probe(IMPORT_STEPS)
    base = chain[0][1]
    lines = []
    prev = base
    for (name, stmt), (_, rss, ms) in zip(IMPORT_STEPS, chain, strict=True):
        alone = base if not stmt else probe([IMPORT_STEPS[0], (name, stmt)])[1][1]
        lines.append(
            {
                "bench": "daemons",
                "n": None,
                "metric": f"import_rss_kib:{name}",
                "meshd": rss - prev if stmt else rss,
                "memberlist": None,
                "ratio": None,
                "unit": "KiB",
                "cumulative_kib": rss,
                "alone_kib": alone - base if stmt else rss,
                "import_ms": round(ms, 1),
            }
        )
        prev = rss
    return lines


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 30], help="cluster sizes")
    ap.add_argument("--runs", type=int, default=3, help="runs per size (medians reported)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    ap.add_argument(
        "--settle",
        type=float,
        default=None,
        help="pause between convergence and the idle window (default 3 s + 20 ms*N)",
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="convergence timeout, seconds")
    ap.add_argument(
        "--poll-ms",
        type=float,
        default=None,
        help="peers poll period while measuring dissemination (default 15 ms, and 0.5 ms * N "
        "past N = 30, so the pollers ask ~2,000 times a second at most)",
    )
    ap.add_argument(
        "--large-runs",
        type=int,
        default=1,
        help="runs per size past N = 30 (default 1: N = 100 takes minutes per run)",
    )
    ap.add_argument(
        "--meshd-src",
        type=Path,
        default=REPO,
        help="directory holding the meshd package to run (default: this repository)",
    )
    ap.add_argument("--no-anchor", action="store_true", help="skip the memberlist column")
    ap.add_argument(
        "--anchor-install",
        action="store_true",
        help="let the anchor's build.sh apt-get install Go and memberlist's source",
    )
    ap.add_argument("--no-imports", action="store_true", help="skip the import-cost lines")
    ap.add_argument("--keep-logs", type=Path, help="copy each run's daemon logs under this dir")
    ap.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    ap.add_argument(
        "--prefix",
        default=f"bd{os.getpid() % 10000}",
        help="lab namespace prefix (default bd<pid>)",
    )
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 2
    global KEEP_LOGS
    KEEP_LOGS = opts.keep_logs

    if Path(meshd.__file__).resolve().parents[1] != SRC:
        log(f"meshd was imported from {meshd.__file__}, not from {SRC}")
        return 2
    src = source_info()
    log(f"meshd from {src}")
    compile_sources()
    anchor_note: str | None = "skipped (--no-anchor)" if opts.no_anchor else None
    if anchor_note is None:
        anchor_note = memberlist_anchor.prepare(install=opts.anchor_install)
        if anchor_note:
            log(f"memberlist column left empty: {anchor_note}")

    lines: list[dict[str, Any]] = []
    loads: dict[int, list[float]] = {n: [] for n in opts.n}
    # One kernel holds every namespace's neighbour entries: N·(N−1) of them for a full mesh,
    # past the default gc_thresh3 from N = 28. Each Lab raises the thresholds for itself, but the
    # anchor's namespaces are not a Lab: raise them for the largest N, for both, once, and put
    # them back at the end (docs/lab.md).
    with cleanup_on_signals(), raised_neighbour_table(max(opts.n)) as neigh:
        if neigh is not None:
            log(f"neighbour thresholds {neigh['saved']} -> {neigh['set']} for n={max(opts.n)}")
        gc_thresh = list(neightable.read() or ())
        for n in opts.n:
            mesh_runs: list[dict[str, float | None]] = []
            ml_runs: list[dict[str, float | None]] = []
            runs = opts.runs if n <= 30 else min(opts.runs, opts.large_runs)
            poll_ms = opts.poll_ms if opts.poll_ms is not None else max(15.0, 0.5 * n)
            for run in range(1, runs + 1):
                if tree_sha1() != src["tree_sha1"]:
                    log(
                        f"warning: {SRC}/meshd changed since the start; this run measures "
                        "other code"
                    )
                    src["changed_during_run"] = True
                loads[n].append(round(os.getloadavg()[0], 2))
                log(f"n={n} run={run}: load average {loads[n][-1]} before the run")
                t = time.monotonic()
                mesh_runs.append(
                    run_meshd(
                        n,
                        run,
                        opts.idle,
                        opts.settle,
                        opts.timeout,
                        opts.prefix,
                        poll_ms / 1000,
                    )
                )
                log(f"meshd n={n} run={run} took {time.monotonic() - t:.0f}s")
                if anchor_note is None:
                    t = time.monotonic()
                    try:
                        ml_runs.append(
                            memberlist_anchor.metrics(
                                memberlist_anchor.run_netns(n, idle=opts.idle)
                            )
                        )
                    except RuntimeError as exc:
                        log(f"anchor: {exc}")
                        ml_runs.append({})
                    log(
                        f"memberlist n={n} run={run} took {time.monotonic() - t:.0f}s: "
                        + json.dumps({k: v and round(v, 2) for k, v in ml_runs[-1].items()})
                    )
            for metric, unit in UNITS.items():
                m_vals = [r.get(metric) for r in mesh_runs]
                a_vals = [r.get(metric) for r in ml_runs]
                m, a = _median(m_vals), _median(a_vals)
                line: dict[str, Any] = {
                    "bench": "daemons",
                    "n": n,
                    "metric": metric,
                    "meshd": _round(m),
                    "memberlist": _round(a),
                    "ratio": _round(m / a, 3) if m is not None and a else None,
                    "unit": unit,
                    "runs": runs,
                    "meshd_runs": [_round(v) for v in m_vals],
                    "memberlist_runs": [_round(v) for v in a_vals],
                    "meshd_src": src,
                    "loadavg_before_runs": loads[n],
                    "gc_thresh": gc_thresh,
                }
                if anchor_note:
                    line["memberlist_note"] = anchor_note
                lines.append(line)
                print(json.dumps(line), flush=True)
            pp = _median([r.get("idle_push_pulls_per_node") for r in mesh_runs])
            if pp is not None:
                line = {
                    "bench": "daemons",
                    "n": n,
                    "metric": "idle_push_pulls_per_node",
                    "meshd": _round(pp),
                    "memberlist": None,
                    "ratio": None,
                    "unit": "push-pull messages received per node in the idle window",
                    "runs": runs,
                    "meshd_src": src,
                }
                lines.append(line)
                print(json.dumps(line), flush=True)
    if not opts.no_imports:
        for line in import_costs():
            line["meshd_src"] = src
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
