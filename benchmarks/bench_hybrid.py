"""One real meshd daemon in a mesh of N simulated members (root).

    sudo .venv/bin/python benchmarks/bench_hybrid.py --n 10000 --leave 1000 \
        --out benchmarks/results/hybrid.jsonl

Two network namespaces joined by a veth: ``<prefix>-d`` runs one ``meshd join`` (vxlan backend,
shared-key mode, default gossip settings) at 192.168.77.1; ``<prefix>-s`` holds the simulator's
N members (`meshd.sim.Network`, real GossipNodes, converged at the start) at 172.16.x.y:7950,
made local there by one AnyIP route, and `simbridge.Bridge`, which runs them in real time and
joins them to one UDP socket: the members speak the real wire format, sealed with the real key.
The daemon routes 172.16.0.0/16 through the veth, so its 10,000 gossip peers cost one
neighbour entry; the vxlan backend programs a neighbour, an FDB entry and a route per peer on
its VTEP (the routes counted with ``ip route show proto 109``).

Phases, each reported as one JSON line (``{"bench": "hybrid", "n", "metric", "value",
"unit", ...}``):

program_all_s
    From launching the daemon (it joins through member 1) until the namespace holds N proto-109
    routes (polled every ``--poll`` s; the resolution is reported).
idle_*
    After a ``--settle`` pause, a ``--idle`` s window: the daemon's CPU (scheduler run time of
    all its threads), RSS (VmRSS; the peak is VmHWM), and its own counters ``in``/``out``/
    ``in_bytes``/``out_bytes`` (sealed datagrams, no IP/UDP headers) per second.
reprogram_leave_s
    ``--leave`` members (chosen at random, seeded) leave at once (``GossipNode.leave``); until
    the namespace holds N - leave routes.
sim_lag_s
    The most the simulator's clock fell behind real time in each phase: its members answered
    that much late at worst.

``--sim-probe-interval`` slows the simulated members' own probing (the daemon keeps its default
1 s): 10,000 members probing every second cost the simulator ~3 s of CPU per second of mesh on
the project machine, and a simulator that falls behind real time answers the daemon late.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simbridge import SOCKBUF, Bridge, QuietMesh  # noqa: E402

from meshd.control.client import status  # noqa: E402
from meshd.dataplane.netns import netns_path, run_in_netns  # noqa: E402
from meshd.errors import MeshdError  # noqa: E402
from meshd.gossip.config import GossipConfig  # noqa: E402
from meshd.gossip.security import Keyring  # noqa: E402
from meshd.lab import write_key  # noqa: E402
from meshd.sim import Network, make_record  # noqa: E402

PORT = 7950
DAEMON_IP = "192.168.77.1"
SIM_SIDE_IP = "192.168.77.2"
SIM_RANGE = "172.16.0.0/16"
DAEMON_SUBNET = "10.250.0.0/24"
QUIET_WINDOW = 5.0
"""Seconds over which the daemon's send rate is measured while settling."""
TOTALS = ("stall", "probe.sent", "probe.failed", "suspect.raised", "refute", "reannounce")
"""The daemon's counters reported since launch with the idle window."""
MAX_N = 65_000
"""make_record's addresses (172.16.x.y) and subnets (10.x.y.0/24) stay distinct up to 65,536
members; the daemon's 10.250.0.0/24 is clear of them below 64,000."""


def log(msg: str) -> None:
    print(f"[bench_hybrid] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def sh(*argv: str) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def make_namespaces(prefix: str) -> tuple[str, str]:
    d, s = f"{prefix}-d", f"{prefix}-s"
    sh("ip", "netns", "add", d)
    sh("ip", "netns", "add", s)
    sh("ip", "link", "add", f"{prefix}d", "netns", d, "type", "veth", "peer", f"{prefix}s",
       "netns", s)  # fmt: skip
    for ns, dev, ip in ((d, f"{prefix}d", DAEMON_IP), (s, f"{prefix}s", SIM_SIDE_IP)):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", dev, "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    # Through a gateway: 10,000 peers' gossip costs one neighbour entry, not 10,000.
    sh("ip", "-n", d, "route", "add", SIM_RANGE, "via", SIM_SIDE_IP)
    # AnyIP: every member's public IP is local in the simulator's namespace.
    sh("ip", "-n", s, "route", "add", "local", SIM_RANGE, "dev", "lo")
    return d, s


def delete_namespaces(prefix: str) -> None:
    for ns in (f"{prefix}-d", f"{prefix}-s"):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def open_socket(ns: str) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # root: past net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, 33, SOCKBUF)  # SO_RCVBUFFORCE
        sock.setsockopt(socket.SOL_SOCKET, 32, SOCKBUF)  # SO_SNDBUFFORCE
        sock.bind(("0.0.0.0", PORT))
        return sock

    return run_in_netns(netns_path(ns), make)


def routes(ns: str) -> int:
    out = sh("ip", "-n", ns, "-4", "route", "show", "proto", "109")
    return sum(1 for line in out.splitlines() if line.strip())


def udp_counters(ns: str) -> dict[str, int]:
    """The namespace's kernel UDP counters (/proc/net/snmp): RcvbufErrors is what a socket's
    full receive queue dropped."""
    lines = [x.split() for x in sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").splitlines()]
    udp = [x[1:] for x in lines if x and x[0] == "Udp:"]
    return dict(zip(udp[0], map(int, udp[1]), strict=True))


def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def wait_routes(ns: str, want: int, timeout: float, poll: float, proc: subprocess.Popen[bytes],
                bridge: Bridge) -> tuple[float | None, int]:  # fmt: skip
    """(seconds until ``ns`` holds exactly ``want`` proto-109 routes, or None; the last count)."""
    t0 = time.monotonic()
    n = -1
    while time.monotonic() - t0 < timeout:
        bridge.behind()
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}")
        n = routes(ns)
        if n == want:
            return time.monotonic() - t0, n
        time.sleep(poll)
    return None, n


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    n = args.n
    key = write_key(work / "key")
    keyring = Keyring.parse(key.read_text())
    cfg = GossipConfig(probe_interval=args.sim_probe_interval)
    t = time.monotonic()
    net = Network(config=cfg, seed=args.seed, record_events=False)
    net.converged([make_record(i, PORT) for i in range(n)])
    setup_s = time.monotonic() - t
    log(f"{n} simulated members converged in {setup_s:.1f} s")
    # The members are long-lived: keep the collector from walking them again and again (a full
    # collection of 10,000 members' objects stalls the simulator for seconds).
    gc.collect()
    gc.freeze()
    if args.lock is not None:
        # Only the namespaced part is serialised with the other root runs; the simulator's
        # setup (half a minute at 10,000) is not.
        lock = args.lock.open("a")
        log(f"waiting for {args.lock}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    d_ns, s_ns = make_namespaces(args.prefix)
    bridge = Bridge(net, open_socket(s_ns), keyring)
    model = QuietMesh(bridge, args.speakers, args.seed) if args.model == "quiet" else None
    leave = net.leave if model is None else model.leave
    thread = threading.Thread(target=bridge.run, name="bridge", daemon=True)
    thread.start()

    seed = net.addrs[1]
    argv = [
        sys.executable, "-m", "meshd", "join", f"{seed[0]}:{seed[1]}",
        "--name", "real", "--public-ip", DAEMON_IP, "--iface", "eth0",
        "--subnet", DAEMON_SUBNET, "--backend", "vxlan", "--port", str(PORT),
        "--key-file", str(key), "--state-dir", str(work / "state"),
        "--socket", str(work / "meshd.sock"), "--subnet-env", str(work / "subnet.env"),
    ]  # fmt: skip
    if args.resync_interval is not None:
        conf = work / "meshd.toml"
        conf.write_text(f"resync_interval = {args.resync_interval}\n")
        argv += ["--config", str(conf)]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    sock_path = work / "meshd.sock"
    results: list[dict[str, Any]] = []

    def emit(metric: str, value: float | int | None, unit: str, **extra: Any) -> None:
        rec = {"bench": "hybrid", "n": n, "metric": metric, "value": value, "unit": unit,
               "load1": round(os.getloadavg()[0], 2)}  # fmt: skip
        rec.update(extra)
        results.append(rec)
        print(json.dumps(rec), flush=True)
        if args.out is not None:  # as they come: a phase that times out keeps the earlier ones
            with args.out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")

    # A converged start fires every member's first timers at once: let the simulator catch up
    # with real time before the daemon meets it.
    t_warm = time.monotonic()
    while time.monotonic() - t_warm < args.warmup:
        time.sleep(min(0.5, args.warmup))
        bridge.behind()
    emit("sim_warmup_lag_s", round(bridge.lag, 3), "s", warmup_s=args.warmup)
    bridge.lag = 0.0

    with open(work / "daemon.log", "wb") as dlog:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", d_ns, *argv], stdout=dlog, stderr=subprocess.STDOUT,
            env=env, cwd=work,
        )  # fmt: skip
        try:
            took, got = wait_routes(d_ns, n, args.timeout, args.poll, proc, bridge)
            lag_join = bridge.lag
            emit(
                "program_all_s",
                None if took is None else round(took, 2),
                "s",
                routes=got,
                resolution_s=args.poll,
                sim_lag_s=round(lag_join, 3),
                sim_probe_interval_s=args.sim_probe_interval,
                sim_setup_s=round(setup_s, 1),
                model=args.model,
                speakers=args.speakers if model is not None else None,
            )
            if took is None:
                raise RuntimeError(f"only {got} of {n} routes after {args.timeout} s")
            log(f"{n} routes {took:.1f} s after launch; settling (at most {args.settle} s)")
            # Merging the join's full state queues an alive broadcast per member learned, each
            # sent retransmit_mult * log10(N + 1) times on the gossip rounds: idle starts when
            # the daemon's sends fall to probing's few a second (or after --settle).
            t_settle = time.monotonic()
            sent = status(sock_path)["counters"].get("out", 0)
            out_rate = float("inf")
            while time.monotonic() - t_settle < args.settle:
                time.sleep(QUIET_WINDOW)
                bridge.behind()
                now_sent = status(sock_path)["counters"].get("out", 0)
                out_rate, sent = (now_sent - sent) / QUIET_WINDOW, now_sent
                if out_rate <= args.quiet and time.monotonic() - t_settle >= args.settle_min:
                    break
            emit(
                "settle_s",
                round(time.monotonic() - t_settle, 1),
                "s",
                out_per_s_at_end=round(out_rate, 1),
                quiet_per_s=args.quiet,
                max_s=args.settle,
                min_s=args.settle_min,
            )
            bridge.lag = 0.0
            st0, c0, w0 = status(sock_path), cpu_seconds(proc.pid), time.monotonic()
            b0 = dict(bridge.counters)
            t_idle = time.monotonic()
            while time.monotonic() - t_idle < args.idle:
                time.sleep(min(1.0, args.idle))
                bridge.behind()
            st1, c1, w1 = status(sock_path), cpu_seconds(proc.pid), time.monotonic()
            win = w1 - w0
            k0, k1 = st0["counters"], st1["counters"]

            def rate(c: str) -> float:
                return round((k1.get(c, 0) - k0.get(c, 0)) / win, 1)

            emit("idle_cpu_pct", round(100 * (c1 - c0) / win, 2), "% of one core",
                 window_s=round(win, 1), sim_lag_s=round(bridge.lag, 3),
                 resync_interval_s=args.resync_interval or 30.0)  # fmt: skip
            emit("rss_mib", round(proc_kib(proc.pid, "VmRSS") / 1024, 1), "MiB",
                 peak_mib=round(proc_kib(proc.pid, "VmHWM") / 1024, 1))  # fmt: skip
            # The daemon's "in" is what the bridge sent, and the other way round.
            for c, unit, mirror in (("in", "datagrams/s", "out"), ("out", "datagrams/s", "in"),
                                    ("in_bytes", "B/s", "out_bytes"),
                                    ("out_bytes", "B/s", "in_bytes")):  # fmt: skip
                seen = (bridge.counters.get(mirror, 0) - b0.get(mirror, 0)) / win
                emit(f"idle_{c}_per_s", rate(c), unit, bridge_saw=round(seen, 1))
            emit("idle_counters", None, "per window", window_s=round(win, 1),
                 daemon={c: k1[c] - k0.get(c, 0) for c in sorted(k1) if k1[c] != k0.get(c, 0)},
                 bridge={c: v - b0.get(c, 0) for c, v in sorted(bridge.counters.items())
                         if v != b0.get(c, 0)},
                 # Since launch: a stalled loop (Lifeguard) slows the daemon's probing.
                 daemon_totals={c: k1.get(c, 0) for c in TOTALS})  # fmt: skip
            emit("members", st1["members"].get("alive", 0), "alive members in the daemon's view",
                 by_state=st1["members"], dropped=st1["dropped"])  # fmt: skip

            if args.leave:
                chosen = random.Random(args.seed).sample(range(2, n), args.leave)
                bridge.lag = 0.0
                t_leave = time.monotonic()

                def leave_all() -> None:
                    for i in chosen:
                        leave(i)

                bridge.call(leave_all)
                took, got = wait_routes(d_ns, n - args.leave, args.timeout, args.poll, proc, bridge)
                emit("reprogram_leave_s", None if took is None else round(took, 2), "s",
                     left=args.leave, routes=got, resolution_s=args.poll,
                     sim_lag_s=round(bridge.lag, 3))  # fmt: skip
                log(f"after {args.leave} leaves: {got} routes, "
                    f"{time.monotonic() - t_leave:.1f} s")  # fmt: skip
        finally:
            emit(
                "bridge_counters",
                None,
                "",
                counters=dict(bridge.counters),
                daemon_udp=udp_counters(d_ns),
                bridge_udp=udp_counters(s_ns),
            )
            bridge.stop()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            thread.join(10)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="simulated members")
    ap.add_argument("--leave", type=int, default=100, help="members that leave at once")
    ap.add_argument(
        "--sim-probe-interval",
        type=float,
        default=1.0,
        help="the simulated members' probe interval, s (the daemon's: 1 s)",
    )
    ap.add_argument(
        "--model",
        choices=("full", "quiet"),
        default="full",
        help="full: every member runs its timers; quiet: simbridge.QuietMesh (members' own "
        "probing and gossip modelled; their traffic with the daemon real)",
    )
    ap.add_argument("--speakers", type=int, default=5, help="quiet: members that run their timers")
    ap.add_argument(
        "--warmup", type=float, default=5.0, help="simulator alone before the daemon, s"
    )
    ap.add_argument("--idle", type=float, default=30.0, help="idle window, s")
    ap.add_argument(
        "--settle", type=float, default=120.0, help="at most this long before the idle window, s"
    )
    ap.add_argument(
        "--settle-min",
        type=float,
        default=0.0,
        help="at least this long before the idle window, s (a probe failed during the join "
        "slows the daemon's probing for up to ~30 s: Lifeguard)",
    )
    ap.add_argument(
        "--quiet",
        type=float,
        default=6.0,
        help="settled when the daemon sends at most this many datagrams/s (probing: ~2)",
    )
    ap.add_argument(
        "--resync-interval",
        type=float,
        default=None,
        help="the daemon's data-plane resync interval, s (default: meshd's, 30)",
    )
    ap.add_argument("--poll", type=float, default=0.5, help="route count poll, s")
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prefix", default="hyb", help="namespace name prefix (short)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh /tmp dir")
    ap.add_argument(
        "--lock", type=Path, default=None, help="hold this flock while namespaces exist"
    )
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_hybrid: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 3 <= args.n <= MAX_N or not 0 <= args.leave <= args.n - 2:
        print(f"bench_hybrid: --n must be 3..{MAX_N}, --leave 0..n-2", file=sys.stderr)
        return 2
    if args.model == "quiet" and not 0 < args.speakers < args.n - args.leave:
        print("bench_hybrid: --speakers must be 1..n-leave-1", file=sys.stderr)
        return 2
    if len(args.prefix) > 10:
        print("bench_hybrid: --prefix: at most 10 characters (interface names)", file=sys.stderr)
        return 2
    import tempfile

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        results = run(args, work)
    except (RuntimeError, MeshdError, OSError) as exc:
        print(f"bench_hybrid: {exc} (daemon log: {work / 'daemon.log'})", file=sys.stderr)
        return 1
    finally:
        delete_namespaces(args.prefix)
    print(f"bench_hybrid: {len(results)} results", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
