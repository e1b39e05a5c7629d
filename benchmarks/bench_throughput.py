"""Data-plane throughput: one TCP stream container to container across two lab hosts, per
backend, side by side with the raw underlay.

    .venv/bin/python benchmarks/bench_throughput.py --out benchmarks/results/throughput.jsonl

One 2-host :class:`meshd.lab.Lab` per backend (``--backends``, default host-gw, vxlan,
wireguard), all built and converged first, each running two real ``meshd join`` daemons; plus one
lab without daemons for the baseline, ``underlay``: host namespace to host namespace over the
underlay addresses, no overlay, no bridge. Every backend's pods get the MTU its daemon writes in
subnet.env (``FLANNEL_MTU``), on the container's ``eth0`` and the host's ``veth0``, as the CNI
bridge plugin would set it. Then ``--reps`` rounds; in each, one ``--bytes`` transfer (64 MiB) on
every path, the order rotated from round to round so no path always goes first, after one untimed
warm-up transfer per path. A transfer is ``tcp_stream.py``: a sink in host 2's container, a
sender in host 1's, each byte checked; the time is the sender's, from just before ``connect`` to
the sink's answer after the last byte.

One JSON line per path (MB = 10^6 bytes)::

    {"bench": "throughput", "path": "vxlan", "mb_s": .., "mb_s_runs": [..], "ratio": ..,
     "mtu": 1450, "device_mtu": 1450, "busy_cores": .., "sender_cores": .., "sink_cores": ..,
     "wireguard_go_cores": .., "retransmits": .., "udp_rcvbuf_errors": .., "link_drops": ..,
     "loadavg_before": .., "machine": {..}}

``mb_s`` is the median over the rounds, ``ratio`` it divided by host-gw's. CPU: ``busy_cores``
is the whole machine (/proc/stat over the transfers: every namespace shares one kernel, so the
sender, the sink, the softirq work of both "hosts" and, for wireguard, both wireguard-go
processes), ``sender_cores``/``sink_cores`` the two Python processes, ``wireguard_go_cores`` both
wireguard-go processes (their threads' run time), each as CPU seconds per second of transfer.
Drops, totals over the rounds: ``retransmits`` (TCP, the sender's namespace),
``udp_rcvbuf_errors`` (both hosts: a tunnel socket's full receive buffer) and ``link_drops``
(both hosts, every link).

A backend this machine cannot run (not in this meshd, no kernel module, no wireguard-go) gets a
line ``{"path": .., "skipped": "<why>"}`` and the run goes on; a backend that can run but does
not converge gets ``"error"`` and the run exits 1 after writing the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshd.control.client import request  # noqa: E402
from meshd.dataplane import backends  # noqa: E402
from meshd.errors import MeshdError  # noqa: E402
from meshd.lab import Lab, cleanup_on_signals, ns_exec, write_key  # noqa: E402
from meshd.lab import daemons as lab_daemons  # noqa: E402
from meshd.lab.cni import read_subnet_env  # noqa: E402
from meshd.lab.namespaces import netns_pids  # noqa: E402
from meshd.lab.runner import kernel_supports  # noqa: E402

STREAM = Path(__file__).with_name("tcp_stream.py")
UNDERLAY = "underlay"
PORT = 5201
SHORT = {UNDERLAY: "ul", "host-gw": "hg", "vxlan": "vx", "ipip": "ip", "wireguard": "wg"}
WARMUP_BYTES = 4 << 20


def log(msg: str) -> None:
    print(f"[bench_throughput] {msg}", file=sys.stderr, flush=True)


@dataclass
class Pair:
    """One measured path: a sender namespace, a sink namespace and the address between them."""

    name: str
    lab: Lab
    src_ns: str
    dst_ns: str
    dst_ip: str
    mtu: int
    device_mtu: int | None = None
    wg_hosts: list[str] = field(default_factory=list)  # host namespaces running wireguard-go
    runs: list[dict[str, Any]] = field(default_factory=list)


def unavailable(backend: str) -> str | None:
    """Why this machine cannot run ``backend`` in the lab, or None."""
    if backend not in backends.names():
        return f"this meshd has no {backend!r} backend (it has {', '.join(backends.names())})"
    if backend == "wireguard":
        kernel = kernel_supports("wireguard")
        if not kernel and shutil.which("wireguard-go") is None:
            return "no kernel WireGuard and no wireguard-go (apt-get install wireguard-go)"
        if not kernel and not hasattr(lab_daemons, "WG_RUN_DIR"):
            # Every lab host shares one /run: the second wireguard-go fails with "UAPI listen
            # error: unix socket in use" unless each daemon has its own /run/wireguard.
            return (
                "this lab does not give each host's daemon its own /run/wireguard (a mount "
                "namespace), so two wireguard-go devices cannot run side by side"
            )
        return None
    if not kernel_supports(backend):
        return f"this kernel cannot create a {backend} device"
    return None


def link_mtu(ns: str, ifname: str) -> int:
    out = ns_exec(None, ["ip", "-n", ns, "-j", "link", "show", "dev", ifname]).stdout
    return int(json.loads(out)[0]["mtu"])


def overlay_device_mtu(ns: str) -> int | None:
    """The MTU of meshd's own device in ``ns`` (meshd.1, meshd.wg, ...); None for host-gw."""
    out = ns_exec(None, ["ip", "-n", ns, "-j", "link", "show"]).stdout
    mtus = [int(x["mtu"]) for x in json.loads(out) if str(x["ifname"]).startswith("meshd.")]
    return mtus[0] if mtus else None


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def start_backend(lab: Lab, backend: str, timeout: float) -> Pair:
    """Two daemons with ``backend``, converged (both alive in both tables, containers ping
    both ways), the pods at the daemons' MTU; RuntimeError with the logs' tails if not."""
    key = write_key(lab.workdir / "key")
    conf = lab.workdir / "bench.toml"
    conf.write_text("# defaults\n[gossip]\n")
    # Not a systemd service, even when the bench runs under one.
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    for h in lab.hosts:
        lab.start_daemon(
            h, key_file=key, backend=backend, env=env, extra_args=["--config", str(conf)]
        )
    h1, h2 = lab.hosts
    names = {h1.name, h2.name}

    def converged() -> bool:
        for d in lab.daemons.values():
            if not d.alive():
                raise RuntimeError(f"{d.host.name}'s daemon exited")
            try:
                rows = request(d.socket_path, "peers", timeout=5)
            except MeshdError:
                return False
            if {r["name"] for r in rows if r["state"] == "alive"} != names:
                return False
        return lab.ping(h1.container_ns, h2.container_ip, timeout=1) and lab.ping(
            h2.container_ns, h1.container_ip, timeout=1
        )

    try:
        ok = wait_for(converged, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}{tails(lab)}") from None
    if not ok:
        raise RuntimeError(f"no convergence within {timeout:g}s{tails(lab)}")
    env1 = read_subnet_env(lab.subnet_file(h1))
    mtu = int(env1.get("FLANNEL_MTU") or 1500)
    for h in lab.hosts:
        ns_exec(h.ns, ["ip", "link", "set", "dev", "veth0", "mtu", str(mtu)])
        ns_exec(h.container_ns, ["ip", "link", "set", "dev", "eth0", "mtu", str(mtu)])
    wg_hosts = [h.ns for h in lab.hosts] if backend == "wireguard" else []
    return Pair(
        backend,
        lab,
        h1.container_ns,
        h2.container_ns,
        h2.container_ip,
        link_mtu(h1.container_ns, "eth0"),
        overlay_device_mtu(h1.ns),
        wg_hosts,
    )


def tails(lab: Lab, n: int = 8) -> str:
    out = ""
    for d in lab.daemons.values():
        with contextlib.suppress(OSError):
            lines = d.log_path.read_text(errors="replace").splitlines()[-n:]
            out += f"\n--- {d.host.name} ---\n" + "\n".join(lines)
    return out


def thread_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (scheduler run time, ns resolution)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def wireguard_go_pids(host_namespaces: Sequence[str]) -> list[int]:
    pids = []
    for ns in host_namespaces:
        for pid in netns_pids(ns):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                    pids.append(pid)
    return pids


def host_drops(p: Pair) -> dict[str, int]:
    """Drop counters of both hosts' namespaces (the senders of the underlay pair, the routers
    of the others): UDP datagrams refused for a full receive buffer (a tunnel's socket) and
    packets dropped by any link (veth, bridge, the tunnel device)."""
    out = {"udp_rcvbuf_errors": 0, "link_drops": 0}
    for h in p.lab.hosts:
        snmp = ns_exec(h.ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
        udp = [line.split() for line in snmp if line.startswith("Udp:")]
        out["udp_rcvbuf_errors"] += int(udp[1][udp[0].index("RcvbufErrors")])
        links = json.loads(ns_exec(None, ["ip", "-n", h.ns, "-j", "-s", "link", "show"]).stdout)
        for link in links:
            stats = link.get("stats64", {})
            out["link_drops"] += sum(int(stats.get(d, {}).get("dropped", 0)) for d in ("rx", "tx"))
    return out


def stream(*args: object) -> list[str]:
    return [sys.executable, "-S", str(STREAM), *map(str, args)]


def transfer(p: Pair, nbytes: int, seed: int, timeout: float) -> dict[str, Any]:
    """One checked transfer on ``p``: the sender's and the sink's reports, merged."""
    ready = p.lab.workdir / f"sink-{seed}.ready"
    ready.unlink(missing_ok=True)
    sink = p.lab.spawn(
        p.dst_ns,
        stream("sink", "--port", PORT, "--seed", seed, "--timeout", timeout, "--ready", ready),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if not wait_for(lambda: ready.exists() or sink.poll() is not None, 10):
            raise RuntimeError(f"{p.name}: the sink did not start")
        if not ready.exists():
            err = sink.communicate()[1].decode().strip()
            raise RuntimeError(f"{p.name}: the sink exited: {err}")
        wg_pids = wireguard_go_pids(p.wg_hosts)
        wg0 = sum(map(thread_cpu_s, wg_pids))
        sent = ns_exec(
            p.src_ns,
            stream("send", "--host", p.dst_ip, "--port", PORT, "--bytes", nbytes, "--seed", seed,
                   "--timeout", timeout),
            check=False,
            timeout=timeout + 10,
        )  # fmt: skip
        wg1 = sum(map(thread_cpu_s, wg_pids))
        sink_out, sink_err = sink.communicate(timeout=timeout + 10)
        if sent.returncode != 0:
            raise RuntimeError(f"{p.name}: {sent.stderr.strip() or 'the sender failed'}")
        if sink.returncode != 0:
            raise RuntimeError(f"{p.name}: {sink_err.decode().strip() or 'the sink failed'}")
        snd, rcv = json.loads(sent.stdout), json.loads(sink_out)
        if rcv["bytes"] != nbytes or not rcv["intact"]:
            raise RuntimeError(f"{p.name}: the sink got {rcv} of {nbytes} bytes")
        return {
            "seconds": snd["seconds"],
            "mb_s": nbytes / snd["seconds"] / 1e6,
            "sender_cpu_s": snd["cpu_s"],
            "sink_cpu_s": rcv["cpu_s"],
            "busy_ticks": snd["busy_ticks"],
            "total_ticks": snd["total_ticks"],
            "retransmits": snd["retransmits"],
            "wireguard_go_cpu_s": wg1 - wg0 if wg_pids else None,
        }
    finally:
        p.lab.stop(sink, signal.SIGKILL)
        ready.unlink(missing_ok=True)


def summary(p: Pair, nbytes: int) -> dict[str, Any]:
    runs = p.runs
    secs = sum(r["seconds"] for r in runs)
    total_ticks = sum(r["total_ticks"] for r in runs)
    wg = [r["wireguard_go_cpu_s"] for r in runs if r["wireguard_go_cpu_s"] is not None]
    return {
        "bench": "throughput",
        "path": p.name,
        "bytes": nbytes,
        "reps": len(runs),
        "mb_s": round(statistics.median(r["mb_s"] for r in runs), 1),
        "mb_s_runs": [round(r["mb_s"], 1) for r in runs],
        "ratio": None,
        "mtu": p.mtu,
        "device_mtu": p.device_mtu,
        # Ticks of all CPUs over the transfers: x CPUs busy = busy/total * CPUs.
        "busy_cores": (
            round(sum(r["busy_ticks"] for r in runs) / total_ticks * (os.cpu_count() or 1), 2)
            if total_ticks
            else None
        ),
        "sender_cores": round(sum(r["sender_cpu_s"] for r in runs) / secs, 2),
        "sink_cores": round(sum(r["sink_cpu_s"] for r in runs) / secs, 2),
        "wireguard_go_cores": round(sum(wg) / secs, 2) if wg else None,
        "retransmits": sum(r["retransmits"] for r in runs),
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": platform.release()}
    if shutil.which("wireguard-go"):
        res = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True)
        info["wireguard_go"] = next(iter((res.stdout or res.stderr).split("\n")), "").strip()
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "meshd", "benchmarks/*.py"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    info["meshd"] = git + (" + uncommitted changes" if dirty else "")
    return info


def measure(opts: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build every lab, converge it, run the rounds; (one summary per path, skips and errors)."""
    others: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        pairs: list[Pair] = []
        ul = stack.enter_context(Lab(f"{opts.prefix}-ul", hosts=2))
        a, b = ul.hosts
        pairs.append(Pair(UNDERLAY, ul, a.ns, b.ns, b.underlay_ip, link_mtu(a.ns, "eth0")))
        for backend in opts.backends:
            why = unavailable(backend)
            if why:
                log(f"{backend}: skipped: {why}")
                others.append({"bench": "throughput", "path": backend, "skipped": why})
                continue
            lab = stack.enter_context(Lab(f"{opts.prefix}-{SHORT.get(backend, 'x')}", hosts=2))
            t = time.monotonic()
            try:
                pairs.append(start_backend(lab, backend, opts.timeout))
            except (RuntimeError, MeshdError) as exc:
                log(f"{backend}: {exc}")
                others.append({"bench": "throughput", "path": backend, "error": str(exc)[:2000]})
                continue
            log(f"{backend}: converged in {time.monotonic() - t:.1f}s, pod MTU {pairs[-1].mtu}")
        for p in pairs:
            transfer(p, min(WARMUP_BYTES, opts.bytes), 0, 60.0)
        load = round(os.getloadavg()[0], 2)
        log(f"load average before the rounds: {load}")
        before = {p.name: host_drops(p) for p in pairs}
        for rep in range(opts.reps):
            k = rep % len(pairs)
            for p in pairs[k:] + pairs[:k]:
                p.runs.append(transfer(p, opts.bytes, rep + 1, 120.0))
            log(
                f"round {rep + 1}: "
                + ", ".join(f"{p.name} {p.runs[-1]['mb_s']:.0f} MB/s" for p in pairs)
            )
        done = [summary(p, opts.bytes) for p in pairs]
        for p, line in zip(pairs, done, strict=True):
            # Nothing else runs on a path between its own transfers: these are the rounds'.
            after = host_drops(p)
            line.update({k: v - before[p.name][k] for k, v in after.items()})
            # Other work on the machine shows in busy_cores and in the rates: say how much.
            line["loadavg_before"] = load
        return done, others


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backends", nargs="+", default=["host-gw", "vxlan", "wireguard"], metavar="BACKEND"
    )
    ap.add_argument("--bytes", type=int, default=64 << 20, help="per transfer (default 64 MiB)")
    ap.add_argument("--reps", type=int, default=20, help="rounds (default 20; medians reported)")
    ap.add_argument("--timeout", type=float, default=120.0, help="convergence timeout, seconds")
    ap.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    ap.add_argument(
        "--prefix", default=f"bt{os.getpid() % 10000}", help="lab prefix (default bt<pid>)"
    )
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 2
    if opts.bytes <= 0 or opts.reps <= 0:
        log("--bytes and --reps must be positive")
        return 2
    lines: list[dict[str, Any]] = []
    host = machine()
    log(f"machine {host}")
    try:
        with cleanup_on_signals():
            done, lines = measure(opts)
    except (RuntimeError, MeshdError) as exc:  # MeshdError: LabError, ControlError
        log(f"error: {exc}")
        return 1
    base = next((s["mb_s"] for s in done if s["path"] == "host-gw"), None)
    for s in done:
        s["ratio"] = round(s["mb_s"] / base, 3) if base else None
        s["machine"] = host
    lines = done + lines
    for line in lines:
        print(json.dumps(line), flush=True)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return 1 if any("error" in x for x in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
