"""Regenerate docs/performance.md (tables) and docs/performance/*.png (plots) from the JSON lines
of every benchmark in benchmarks/results/*.jsonl; with ``--run``, run the benchmarks first.

    .venv/bin/python benchmarks/report.py             # tables + plots from the committed results
    .venv/bin/python benchmarks/report.py --run       # run everything (root, ~15-25 min), then that

``--run`` runs, in this order, each one writing its file in benchmarks/results/:
bench_daemons.py (``--n 10 30 100 --runs 3``, one run at 100: daemons.jsonl), bench_netlink.py
(netlink.jsonl), bench_throughput.py (throughput.jsonl), bench_hybrid.py (one real daemon among
10,000 simulated members, quiet model: hybrid.jsonl, rewritten) and, when it exists, bench_sim.py
(sim.jsonl) and its
``--false-deaths`` check (lifeguard.jsonl: N = 1,000 at 20 % loss, 10 seeds of 60 s, ~5-8 min
each on one core); ``--skip daemons netlink throughput hybrid sim lifeguard`` leaves any of them out
(its committed results are still reported); ``--runs``, ``--n`` and ``--meshd-src`` are passed to
bench_daemons.py.

Sections: real daemons beside memberlist (``"bench":"daemons"``), the netlink data plane beside
``ip -batch`` (``"bench":"netlink"``), data-plane throughput per backend beside the underlay
(``"bench":"throughput"``), the simulator beside Serf's model (``"bench":"sim"``; the
section says "not yet measured" until sim.jsonl exists), then any other benchmark as one table.

Plots need matplotlib, which is not a dependency of meshd: when this interpreter lacks it, the
plots are drawn by the first of ``$MESHD_PLOT_PYTHON`` and /var/cache/meshd/plotvenv/bin/python
that has it (this script again, ``--plots-only``); without any, the tables are still written and
the document says the plots were skipped. Text between ``<!-- keep:analysis -->`` and
``<!-- /keep -->`` in the existing document (the hand-written analysis) is carried over.
Only the standard library is needed otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "performance.md"
KEEP_RE = re.compile(r"<!-- keep:analysis -->.*?<!-- /keep -->", re.S)
# Issue 11's budget with pyroute2 back in the daemon (issue 7 aimed at 40 MB without it).
RSS_LIMIT_MIB = 50.0

LABELS = {
    "convergence_ms": "convergence after the last join",
    "convergence_from_launch_ms": "convergence from launch of nodes 2..N",
    "convergence_after_ready_ms": "convergence after the last daemon is ready "
    "(memberlist: after its last join)",
    "dissemination_ms": "update dissemination (all nodes)",
    "dissemination_first_ms": "update dissemination (first node)",
    "dissemination_resolution_ms": "meshd dissemination: worst ± of the poll estimate",
    "dissemination_poll_daemon_cores": "while polling: CPU of all meshd daemons",
    "dissemination_poll_client_cores": "while polling: CPU of the pollers (bench process)",
    "failure_ms": "failure detection, SIGKILL (all nodes)",
    "leave_ms": "graceful leave (all nodes)",
    "idle_cpu_pct": "idle CPU per daemon",
    "rss_mib": "RSS per daemon",
    "idle_bytes_per_node_s": "idle bytes sent per node per s (payload + 28 B/datagram)",
    "idle_datagrams_per_node_s": "idle datagrams sent per node per s",
    "idle_kernel_ip_bytes_per_node_s": "cross-check: kernel IP bytes out per node per s",
    "idle_kernel_udp_datagrams_per_node_s": "cross-check: kernel UDP datagrams out per node per s",
    "idle_push_pulls_per_node": "push-pull messages received per node in the idle window",
    "idle_suspect_msgs_per_node": "suspect messages received per node in the idle window",
    "idle_settle_s": "wait after convergence until the mesh sends no more than probing does",
    "load_at_idle_start": "machine load when the idle window starts",
    "startup_suspect_msgs_per_node": "start-up: suspect messages received per node "
    "(launch to the idle window)",
    "startup_probe_failures_per_node": "start-up: failed probes per node (memberlist: "
    "whole run, its log)",
    "startup_stalls_per_node": "start-up: timers run over half a probe timeout late, per node",
    "startup_false_deaths": "start-up: dead verdicts about live members (memberlist: whole run)",
}
SUSPECT_LIMIT = 50  # issue 16: suspect messages received per node while 100 daemons start
# metric -> target as in issue 7; "ml": at or under memberlist's
TARGETS: dict[str, str] = {
    "convergence_ms": "ml",
    "convergence_after_ready_ms": "ml",
    "dissemination_ms": "ml",
    "failure_ms": "ml",
    "leave_ms": "ml",
    "idle_cpu_pct": "ml",
    "idle_bytes_per_node_s": "ml",
    "idle_datagrams_per_node_s": "ml",
    "rss_mib": "rss",
    "startup_suspect_msgs_per_node": "suspects",
    "startup_false_deaths": "zero",
}
TIMING = ["convergence_after_ready_ms", "dissemination_ms", "leave_ms", "failure_ms"]
STARTUP_PLOT = ["startup_suspect_msgs_per_node", "startup_probe_failures_per_node"]
RESOURCES = ["idle_cpu_pct", "rss_mib", "idle_bytes_per_node_s", "idle_datagrams_per_node_s"]


def load(results: Path) -> dict[str, list[dict[str, Any]]]:
    by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in sorted(results.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                rec.setdefault("_file", f.name)
                by_bench[str(rec.get("bench", f.stem))].append(rec)
    return by_bench


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def pct(v: Any) -> str:
    return f"{v:.0%}" if isinstance(v, (int, float)) else fmt(v)


def verdict(rec: dict[str, Any]) -> tuple[str, str]:
    """(target text, met / missed / —) for one daemons metric line."""
    kind = TARGETS.get(rec["metric"])
    m, a = rec.get("meshd"), rec.get("memberlist")
    if kind == "ml":
        if m is None or a is None:
            return "≤ memberlist", "—"
        return "≤ memberlist", "met" if m <= a else f"**missed** ({rec['ratio']:.2f}x)"
    if kind == "suspects":
        if m is None:
            return f"< {SUSPECT_LIMIT}", "—"
        return f"< {SUSPECT_LIMIT}", "met" if m < SUSPECT_LIMIT else "**missed**"
    if kind == "zero":
        if m is None:
            return "0", "—"
        return "0", "met" if m == 0 else "**missed**"
    if kind == "rss":
        if m is None:
            return "≤ 50 MiB", "—"
        return "≤ 50 MiB", "met" if m <= RSS_LIMIT_MIB else "**missed**"
    return "", ""


def daemons_section(recs: list[dict[str, Any]], plots: list[str]) -> list[str]:
    out = ["## Real daemons: meshd vs memberlist, one process per network namespace", ""]
    sizes = sorted({r["n"] for r in recs if r.get("n") is not None})
    notes = {r["memberlist_note"] for r in recs if r.get("memberlist_note")}
    for note in sorted(notes):
        out += [f"> memberlist column: {note}", ""]
    srcs = {json.dumps(r["meshd_src"], sort_keys=True) for r in recs if r.get("meshd_src")}
    for src in sorted(srcs):
        info = json.loads(src)
        out += [
            f"> meshd code measured: {info.get('git', info.get('path'))} (sources hash "
            f"{info.get('tree_sha1')})"
            + (
                "; **the sources changed during the runs**"
                if info.get("changed_during_run")
                else ""
            ),
            "",
        ]
    loads = {
        r["n"]: r["loadavg_before_runs"]
        for r in recs
        if r.get("loadavg_before_runs") and r["metric"] == "convergence_ms"
    }
    if loads:
        out += [
            "> 1-minute load average before each run (2 cores): "
            + "; ".join(f"N = {n}: {fmt(v)}" for n, v in sorted(loads.items())),
            "",
        ]
    for n in sizes:
        rows = [r for r in recs if r.get("n") == n]
        runs = rows[0].get("runs", "?")
        out += [
            f"### N = {n} (median of {runs} run(s); per-run values in the last column)",
            "",
            "| metric | unit | meshd | memberlist | ratio | target | verdict | meshd runs "
            "/ memberlist runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            target, ok = verdict(r)
            per = fmt(r.get("meshd_runs"))
            if r.get("memberlist_runs"):
                per += " / " + fmt(r.get("memberlist_runs"))
            out.append(
                f"| {LABELS.get(r['metric'], r['metric'])} | {r['unit']} | "
                f"{fmt(r.get('meshd'))} | {fmt(r.get('memberlist'))} | "
                f"{fmt(r.get('ratio'))} | {target} | {ok} | {per} |"
            )
        out.append("")
    imports = [r for r in recs if str(r["metric"]).startswith("import_rss_kib:")]
    if imports:
        out += [
            "### Where the RSS goes: what each import costs",
            "",
            "One fresh interpreter imports the daemon's dependencies in the daemon's order; "
            "*added* is the VmRSS growth of that step, *alone* the growth when it is the only "
            "import after the bare interpreter (shared pieces such as asyncio count again).",
            "",
            "| step | added KiB | cumulative KiB | alone KiB | import ms |",
            "|---|---|---|---|---|",
        ]
        for r in imports:
            out.append(
                f"| {r['metric'].split(':', 1)[1]} | {r['meshd']:,} | "
                f"{r['cumulative_kib']:,} | {r['alone_kib']:,} | {r['import_ms']} |"
            )
        out.append("")
    out += [f"![{p}](performance/{p})" for p in plots if p.startswith("daemons")]
    out.append("")
    return out


NETLINK_RATIO = 1.5  # issue 7: the reconciler within 1.5x of `ip -batch`
WIRE_LIMIT = 1400  # issue 7: no datagram over 1,400 bytes
RAM_GIB = 24  # issue 7: 10,000 simulated nodes fit this 2-core, 24 GiB machine


def netlink_section(recs: list[dict[str, Any]], plots: list[str]) -> list[str]:
    out = [
        "## Data plane: the reconciler vs `ip -batch` (netlink)",
        "",
        "One host namespace; each cell is the median of `reps` passes. *add*: a whole pass "
        "(read back, diff, apply) for N new peers vs `bridge -batch` + `ip -batch` writing the "
        "same objects; *noop*: a pass over a converged kernel (filtered dumps, nothing "
        "written; steady state, the first pass after the add in the last column) vs the "
        "iproute2 reads; *remove*: a pass after every peer left vs batch deletes. ratio = "
        "meshd / ip.",
        "",
        "| backend | N | op | objects | meshd s | ip -batch s | ratio | target | verdict "
        "| first noop pass s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        recs,
        key=lambda r: (
            r.get("backend", ""),
            r.get("n", 0),
            ["add", "noop", "remove"].index(r["op"])
            if r.get("op") in ("add", "noop", "remove")
            else 9,
        ),
    ):
        ratio = r.get("ratio")
        ok = (
            "—"
            if ratio is None
            else ("met" if ratio <= NETLINK_RATIO else f"**missed** ({ratio:.2f}x)")
        )
        out.append(
            f"| {r.get('backend')} | {fmt(r.get('n'))} | {r.get('op')} | "
            f"{fmt(r.get('objects'))} | {fmt(r.get('meshd_s'))} | "
            f"{fmt(r.get('ip_batch_s'))} | {fmt(ratio)} | ≤ {NETLINK_RATIO}x | {ok} | "
            f"{fmt(r.get('meshd_first_s'))} |"
        )
    out.append("")
    out += [f"![{p}](performance/{p})" for p in plots if p.startswith("netlink")]
    return [*out, ""]


THROUGHPUT_ORDER = ["underlay", "host-gw", "vxlan", "ipip", "wireguard"]


def mbs(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def throughput_section(recs: list[dict[str, Any]]) -> list[str]:
    """bench_throughput.py: one TCP stream container to container, per backend, and the
    underlay without an overlay, measured in the same run (rounds interleaved)."""
    measured = [r for r in recs if r.get("mb_s") is not None]
    measured.sort(
        key=lambda r: THROUGHPUT_ORDER.index(r["path"]) if r["path"] in THROUGHPUT_ORDER else 9
    )
    first = measured[0] if measured else {}
    size = first.get("bytes", 64 << 20)
    mach = first.get("machine") or {}
    out = [
        "## Data-plane throughput: one TCP stream, container to container",
        "",
        f"`bench_throughput.py`: two lab hosts per backend, real `meshd join` daemons, one "
        f"{size / 2**20:g} MiB TCP transfer from the container of host 1 to the container of "
        "host 2, every byte checked; *underlay* is host namespace to host namespace over the "
        "underlay addresses (no overlay, no bridge). Every path is measured in the same run, "
        f"in {first.get('reps', '?')} interleaved rounds (the order rotated each round); MB/s "
        "(10^6 bytes) is the median, per-round values in the last column. The pods use the "
        "MTU their daemon writes in subnet.env (`FLANNEL_MTU`), as the CNI bridge plugin would "
        "set it. *CPUs busy*: the whole machine during the transfers (/proc/stat); *sender / "
        "sink*: the two Python processes; *wireguard-go*: both hosts' wireguard-go processes "
        "(cores = CPU seconds per second of transfer). *TCP retransmits* (sender's namespace) "
        "and *drops* (both hosts: UDP datagrams refused for a full socket receive buffer, "
        "packets dropped by any link) are totals over all rounds.",
        "",
    ]
    if mach:
        out += [
            f"> Measured on {mach.get('cpus', '?')} CPUs, kernel {mach.get('kernel', '?')}, "
            f"meshd {mach.get('meshd', '?')}"
            + (f", {mach['wireguard_go']}" if mach.get("wireguard_go") else "")
            + (
                f"; 1-minute load average before the rounds {first['loadavg_before']}"
                if first.get("loadavg_before") is not None
                else ""
            )
            + ".",
            "",
        ]
    out += [
        "| path | MB/s | ratio to host-gw | pod MTU | device MTU | CPUs busy | sender / sink "
        "cores | wireguard-go cores | TCP retransmits | drops: UDP rcvbuf / links "
        "| MB/s per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in measured:
        out.append(
            f"| {r['path']} | {mbs(r['mb_s'])} | {fmt(r.get('ratio'))} | {fmt(r.get('mtu'))} | "
            f"{fmt(r.get('device_mtu'))} | {fmt(r.get('busy_cores'))} | "
            f"{fmt(r.get('sender_cores'))} / {fmt(r.get('sink_cores'))} | "
            f"{fmt(r.get('wireguard_go_cores'))} | {fmt(r.get('retransmits'))} | "
            f"{fmt(r.get('udp_rcvbuf_errors'))} / {fmt(r.get('link_drops'))} | "
            f"{', '.join(mbs(x) for x in r.get('mb_s_runs') or [])} |"
        )
    out.append("")
    for r in recs:
        if r.get("skipped") or r.get("error"):
            why = r.get("skipped") or str(r.get("error")).splitlines()[0]
            kind = "not measured" if r.get("skipped") else "**failed**"
            out += [f"> {r['path']}: {kind}: {why}", ""]
    by_path = {r["path"]: r for r in measured}
    notes = [
        'How to read it: every "host" is a network namespace of one kernel on the same '
        f"{mach.get('cpus', 2)} CPUs, and the cables are veth pairs, which have no line rate. A "
        "path's number is how fast these CPUs move one stream's bytes through it: the sender's "
        "copies, the TCP stacks of both ends, each forwarding hop and the encapsulation all "
        "share the same cores (on real hosts the two ends have their own, and a NIC sets the "
        "ceiling). On the kernel paths one transfer lasts only tens of milliseconds, so single "
        "rounds vary by tens of percent: compare medians, and ratios within one run."
    ]
    load = first.get("loadavg_before")
    if isinstance(load, (int, float)) and load > 1:
        notes.append(
            f"Other work was running on the machine during this run (load average {load:g} on "
            f"{mach.get('cpus', 2)} CPUs): the absolute rates are lower and noisier than on an "
            "idle machine; the ratios, measured round by round on the same load, hold better."
        )
    kernel = [r for r in measured if r["path"] not in ("underlay", "wireguard")]
    if len(kernel) > 1:
        lo, hi = min(r["mb_s"] for r in kernel), max(r["mb_s"] for r in kernel)
        notes.append(
            f"The overlay backends in the kernel are within {1 - lo / hi:.0%} of each other "
            "here: next to the copies and two TCP stacks on the same CPUs, a route or a VXLAN "
            "header adds little."
        )
    wg = by_path.get("wireguard")
    if wg and wg.get("wireguard_go_cores") is None:
        notes.append("wireguard here is kernel WireGuard (no wireguard-go process ran).")
    elif wg:
        notes.append(
            "wireguard is wireguard-go, userspace WireGuard (this kernel has no wireguard "
            "module): every packet crosses into a Go process through a TUN device and is "
            "encrypted there (ChaCha20-Poly1305) on the same CPUs as everything else, which "
            f"used {fmt(wg.get('wireguard_go_cores'))} cores for it."
        )
        if wg.get("udp_rcvbuf_errors"):
            notes.append(
                f"The hosts' UDP sockets refused {wg['udp_rcvbuf_errors']:,} datagrams for a "
                "full receive buffer (the only UDP sockets there are wireguard-go's and the "
                f"gossip's) and TCP retransmitted {wg['retransmits']:,} segments: the receiving "
                "wireguard-go does not drain its socket as fast as the sending one fills it."
            )
        notes.append(
            "The wireguard-go measured is Debian's (its version above); later releases added "
            "segmentation offloads for the TUN device and UDP that it lacks. Kernel WireGuard "
            "avoids the crossings; neither is measured here."
        )
    out += [
        " ".join(notes),
        "",
        "Command: `.venv/bin/python benchmarks/bench_throughput.py --out "
        "benchmarks/results/throughput.jsonl` (root; part of `make bench`).",
        "",
    ]
    return out


SIM_SPREAD = ["t50", "t99", "t999"]
SIM_STEADY = [
    ("datagrams_per_node_s", "datagrams/node/s"),
    ("bytes_per_node_s", "B/node/s on the wire"),
    ("largest_datagram", "largest payload B"),
    ("first_suspect", "first suspect s"),
    ("first_dead", "first dead s"),
    ("dead_all", "dead at all s"),
    ("false_positive_rate", "false deaths (pairs)"),
    ("false_suspicions_per_node_min", "false suspicions /node/min"),
    ("wall_s", "wall s"),
    ("max_rss_mb", "peak RSS MB"),
]


def sim_section(recs: list[dict[str, Any]], plots: list[str], present: bool) -> list[str]:
    out = ["## Simulator: the gossip core at scale vs Serf's model", ""]
    if not present:
        return [
            *out,
            "Not yet measured: `benchmarks/results/sim.jsonl` does not exist yet "
            "(`.venv/bin/python benchmarks/bench_sim.py --out benchmarks/results/sim.jsonl`, "
            "or `report.py --run`).",
            "",
        ]
    cells: dict[tuple[Any, Any], dict[str, dict[str, Any]]] = defaultdict(dict)
    variants: dict[str, dict[tuple[Any, Any], dict[str, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in recs:
        key = (r.get("n"), r.get("loss"))
        if r.get("settings"):
            variants[str(r["settings"])][key][str(r.get("metric"))] = r
        else:
            cells[key][str(r.get("metric"))] = r
    keys = sorted(cells, key=lambda k: (k[0] or 0, k[1] or 0))

    def val(k: tuple[Any, Any], metric: str, side: str = "meshd") -> Any:
        return cells[k].get(metric, {}).get(side)

    out += [
        "Serf's model at equal parameters (fanout 3, 200 ms rounds): reached fraction "
        "1/(1+(N+1)e^(-1.5 r)). Cells are *meshd / model*, seconds after the update. "
        "Target: t99.9 at or under the model while spreading one update costs no more "
        "bytes per node than the model's (equal bandwidth).",
        "",
        "| N | loss | t50 s | t99 s | t99.9 s | t99.9 ratio | reached | update B/node "
        "(meshd / model) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in keys:
        ts = [f"{fmt(val(k, m))} / {fmt(val(k, m, 'model'))}" for m in SIM_SPREAD]
        m999, a999 = val(k, "t999"), val(k, "t999", "model")
        ratio = m999 / a999 if isinstance(m999, (int, float)) and a999 else None
        b, bm = val(k, "update_bytes_per_node"), val(k, "update_bytes_per_node", "model")
        if ratio is None:
            ok = "—"
        else:
            fast, cheap = ratio <= 1, b is None or bm is None or b <= bm
            ok = (
                "met"
                if fast and cheap
                else "**missed** ("
                + ", ".join(
                    x for x, bad in (("slower", not fast), ("more bytes", not cheap)) if bad
                )
                + ")"
            )
        out.append(
            f"| {fmt(k[0])} | {pct(k[1])} | {' | '.join(ts)} | {fmt(ratio)} | "
            f"{fmt(val(k, 'update_reached'))} | {fmt(b)} / {fmt(bm)} | {ok} |"
        )
    out += [
        "",
        "Steady state before the update, failure detection of one crashed node, and "
        f"what the run cost. Target: no datagram over {WIRE_LIMIT:,} B on the wire "
        "(largest payload + 41 B envelope), 10,000 nodes fit in "
        f"{RAM_GIB} GiB.",
        "",
        "| N | loss | " + " | ".join(lbl for _, lbl in SIM_STEADY) + " | verdict |",
        "|" + "---|" * (len(SIM_STEADY) + 3),
    ]
    for k in keys:
        big, rss = val(k, "largest_datagram"), val(k, "max_rss_mb")
        bad = []
        if isinstance(big, (int, float)) and big + 41 > WIRE_LIMIT:
            bad.append(f"datagram {big + 41:,.0f} B")
        if isinstance(rss, (int, float)) and rss * 1e6 > RAM_GIB * 2**30:
            bad.append("RSS")
        ok = (
            "—"
            if big is None and rss is None
            else ("met" if not bad else f"**missed** ({', '.join(bad)})")
        )
        out.append(
            f"| {fmt(k[0])} | {pct(k[1])} | "
            + " | ".join(fmt(val(k, m)) for m, _ in SIM_STEADY)
            + f" | {ok} |"
        )
    out.append("")
    for settings, vcells in sorted(variants.items()):
        out += sim_variant_table(settings, vcells, cells)
    out += [f"![{p}](performance/{p})" for p in plots if p.startswith("sim")]
    return [*out, ""]


def sim_variant_table(
    settings: str,
    vcells: dict[tuple[Any, Any], dict[str, dict[str, Any]]],
    cells: dict[tuple[Any, Any], dict[str, dict[str, Any]]],
) -> list[str]:
    """The same runs (seed, timeline) with ``--set settings`` beside the default's."""
    out = [
        f"The default beside `bench_sim.py --set {settings}` (same seed and timeline; "
        "`retransmit_mult=4` is memberlist's retransmit rule, the default before issue 16). "
        "Cells are *default / variant / model*.",
        "",
        "| N | loss | sends per node and update | update B/node | t99.9 s "
        "| reached (default / variant) |",
        "|---|---|---|---|---|---|",
    ]
    for k in sorted(vcells, key=lambda k: (k[0] or 0, k[1] or 0)):
        d, v = cells.get(k, {}), vcells[k]

        def trio(metric: str, d: dict[str, dict[str, Any]] = d, v: dict[str, Any] = v) -> str:
            model = v.get(metric, {}).get("model")
            return " / ".join(
                fmt(x)
                for x in (d.get(metric, {}).get("meshd"), v.get(metric, {}).get("meshd"), model)
            )

        reached = " / ".join(fmt(c.get("update_reached", {}).get("meshd")) for c in (d, v))
        out.append(
            f"| {fmt(k[0])} | {pct(k[1])} | {trio('update_sends_per_node')} | "
            f"{trio('update_bytes_per_node')} | {trio('t999')} | {reached} |"
        )
    return [*out, ""]


HYBRID_NOTES = ("routes", "left", "resolution_s", "sim_lag_s", "peak_mib", "bridge_saw", "window_s")


def hybrid_section(recs: list[dict[str, Any]]) -> list[str]:
    """bench_hybrid.py: one real daemon among N simulated members, a table per N (the
    diagnostic counter records are left to the JSON)."""
    out = ["## One real daemon in a simulated mesh (bench_hybrid.py)", ""]
    for n in sorted({r["n"] for r in recs}):
        rows = [r for r in recs if r["n"] == n and r.get("value") is not None]
        probe = next(
            (r.get("sim_probe_interval_s") for r in rows if "sim_probe_interval_s" in r), None
        )
        out += [f"### N = {n} simulated members (their probe interval: {fmt(probe)} s)", ""]
        out += ["| metric | value | unit | notes |", "|---|---|---|---|"]
        for r in rows:
            notes = ", ".join(f"{k} {fmt(r[k])}" for k in HYBRID_NOTES if k in r)
            out.append(f"| {r['metric']} | {fmt(r['value'])} | {r['unit']} | {notes} |")
        out.append("")
    return out


def generic_section(bench: str, recs: list[dict[str, Any]]) -> list[str]:
    """Any other benchmark: one table with the union of its keys."""
    keys: list[str] = []
    for r in recs:
        keys += [k for k in r if k not in keys and k not in ("bench", "_file")]
    out = [f"## {bench}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in recs]
    return [*out, ""]


PLOT_PYTHONS = [os.environ.get("MESHD_PLOT_PYTHON", ""), "/var/cache/meshd/plotvenv/bin/python"]


def make_plots(results: Path, outdir: Path) -> tuple[list[str], str]:
    """Draw the plots here, or with another interpreter that has matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        for py in PLOT_PYTHONS:
            if not py or not os.access(py, os.X_OK):
                continue
            res = subprocess.run(
                [
                    py,
                    __file__,
                    "--plots-only",
                    "--results",
                    str(results),
                    "--plot-dir",
                    str(outdir),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode == 0:
                return json.loads(res.stdout.strip().splitlines()[-1]), ""
        return [], (
            "Plots skipped: matplotlib is not installed in this interpreter "
            "(it is not a meshd dependency; `pip install matplotlib`, or point "
            "MESHD_PLOT_PYTHON at an interpreter that has it, and rerun)."
        )
    return draw_plots(load(results), outdir), ""


def draw_plots(by_bench: dict[str, list[dict[str, Any]]], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    recs = by_bench.get("daemons", [])
    for fname, metrics, title in (
        ("daemons-timing.png", TIMING, "Membership timings (ms)"),
        ("daemons-idle.png", RESOURCES, "Idle cost per daemon"),
        ("daemons-startup.png", STARTUP_PLOT, "While the daemons start (issue 16)"),
    ):
        sizes = sorted({r["n"] for r in recs if r.get("n") is not None and r["metric"] in metrics})
        if not sizes:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
        for ax, metric in zip(axes, metrics, strict=True):
            vals = {r["n"]: r for r in recs if r["metric"] == metric and r.get("n") is not None}
            xs = range(len(sizes))
            for off, impl, color in (
                (-0.2, "meshd", "tab:blue"),
                (0.2, "memberlist", "tab:orange"),
            ):
                ys = [vals.get(n, {}).get(impl) or 0 for n in sizes]
                ax.bar([x + off for x in xs], ys, width=0.4, label=impl, color=color)
            if metric == "rss_mib":
                ax.axhline(RSS_LIMIT_MIB, color="gray", ls="--", lw=1, label="40 MB target")
            if metric == "startup_suspect_msgs_per_node":
                ax.axhline(SUSPECT_LIMIT, color="gray", ls="--", lw=1, label="issue 16 target")
            ax.set_xticks(list(xs), [f"N={n}" for n in sizes])
            ax.set_title(LABELS[metric].split(" (")[0], fontsize=8)
            ax.set_ylabel(vals[sizes[0]]["unit"] if sizes[0] in vals else "", fontsize=8)
            ax.tick_params(labelsize=8)
        axes[0].legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(outdir / fname, dpi=110)
        plt.close(fig)
        made.append(fname)
    imports = [r for r in recs if str(r["metric"]).startswith("import_rss_kib:")]
    if imports:
        fig, ax = plt.subplots(figsize=(6.5, 1.8))
        left = 0.0
        for r in imports:
            w = r["meshd"] / 1024
            ax.barh([0], [w], left=left, label=r["metric"].split(":", 1)[1])
            left += w
        ax.axvline(RSS_LIMIT_MIB, color="gray", ls="--", lw=1)
        ax.set_yticks([])
        ax.set_xlabel("MiB RSS after importing (cumulative, daemon order); dashed: 40 MB")
        ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.45))
        fig.tight_layout()
        fig.savefig(outdir / "daemons-imports.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append("daemons-imports.png")
    nl = by_bench.get("netlink", [])
    if nl:
        fig, ax = plt.subplots(figsize=(7, 3))
        rows = sorted(nl, key=lambda r: (r["backend"], r["n"], r["op"]))
        colors = {"add": "tab:blue", "noop": "tab:green", "remove": "tab:red"}
        ax.bar(
            range(len(rows)),
            [r["ratio"] for r in rows],
            color=[colors.get(r["op"], "gray") for r in rows],
        )
        ax.set_xticks(
            range(len(rows)), [f"{r['backend']}\n{r['n']}\n{r['op']}" for r in rows], fontsize=6
        )
        ax.axhline(NETLINK_RATIO, color="gray", ls="--", lw=1)
        ax.axhline(1.0, color="black", lw=0.5)
        ax.set_ylabel("meshd / ip -batch (dashed: 1.5x target)", fontsize=8)
        ax.set_title("Data plane: reconciler time relative to ip -batch", fontsize=10)
        fig.tight_layout()
        fig.savefig(outdir / "netlink-ratio.png", dpi=110)
        plt.close(fig)
        made.append("netlink-ratio.png")
    sim_recs = [
        r for r in by_bench.get("sim", []) if r.get("metric") == "t999" and not r.get("settings")
    ]
    if sim_recs:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for loss in sorted({r["loss"] for r in sim_recs}):
            pts = sorted(
                (r["n"], r["meshd"])
                for r in sim_recs
                if r["loss"] == loss and r.get("meshd") is not None
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"meshd, loss {loss:g}")
        model = sorted({(r["n"], r["model"]) for r in sim_recs if r.get("model") is not None})
        if model:
            ax.plot(*zip(*model, strict=True), "k--", marker="x", label="Serf's model")
        ax.set_xscale("log")
        ax.set_xlabel("N (simulated nodes)")
        ax.set_ylabel("s until 99.9% have the update")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(outdir / "sim-t999.png", dpi=110)
        plt.close(fig)
        made.append("sim-t999.png")
    return made


HEADER = """# Performance

Generated by `benchmarks/report.py` from `benchmarks/results/*.jsonl`; do not edit the tables by
hand (the analysis block is kept across regenerations). How to run each benchmark, and how each
number is measured: `benchmarks/README.md` in the repository.
"""


def render(
    by_bench: dict[str, list[dict[str, Any]]], plots: list[str], plot_note: str, analysis: str
) -> str:
    out = [HEADER]
    if analysis:
        out += [analysis, ""]
    if plot_note:
        out += [f"> {plot_note}", ""]
    if "daemons" in by_bench:
        out += daemons_section(by_bench["daemons"], plots)
    if "netlink" in by_bench:
        out += netlink_section(by_bench["netlink"], plots)
    if "throughput" in by_bench:
        out += throughput_section(by_bench["throughput"])
    out += sim_section(by_bench.get("sim", []), plots, "sim" in by_bench)
    if "hybrid" in by_bench:
        out += hybrid_section(by_bench["hybrid"])
    for bench, recs in sorted(by_bench.items()):
        if bench not in ("daemons", "netlink", "throughput", "sim", "hybrid"):
            out += generic_section(bench, recs)
    return "\n".join(out).rstrip() + "\n"


REAL_TIME = ("daemons", "netlink", "throughput", "hybrid")
"""The steps timed by the wall clock: with ``--lock``, run holding that flock (the project's
root tests take it too), so nothing else on the machine runs beside them."""


def run_benchmarks(opts: argparse.Namespace) -> int:
    """Run every benchmark not in ``--skip`` into ``--results``; the first failure stops it."""
    py, bench = sys.executable, REPO / "benchmarks"
    res_dir: Path = opts.results
    res_dir.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, list[str], Path | None]] = [
        (
            "daemons",
            [
                py,
                str(bench / "bench_daemons.py"),
                "--n",
                *map(str, opts.n),
                "--runs",
                str(opts.runs),
                "--out",
                str(res_dir / "daemons.jsonl"),
                *(["--meshd-src", str(opts.meshd_src)] if opts.meshd_src else []),
            ],
            None,
        ),
        ("netlink", [py, str(bench / "bench_netlink.py")], res_dir / "netlink.jsonl"),
        (
            "throughput",
            [py, str(bench / "bench_throughput.py"), "--out", str(res_dir / "throughput.jsonl")],
            None,
        ),
        (
            # Issue 16's 10,000-member run (its command in docs/performance.md): a fresh file,
            # the earlier runs are in git history and the section's hand-written table.
            "hybrid",
            [py, str(bench / "bench_hybrid.py"), "--n", "10000", "--leave", "1000"]
            + ["--model", "quiet", "--warmup", "10", "--settle", "180", "--settle-min", "40"]
            + ["--timeout", "600"],
            res_dir / "hybrid.jsonl",
        ),
        ("sim", [py, str(bench / "bench_sim.py"), "--out", str(res_dir / "sim.jsonl")], None),
        (
            "lifeguard",
            [py, str(bench / "bench_sim.py"), "--false-deaths", "--out"]
            + [str(res_dir / "lifeguard.jsonl")],
            None,
        ),
    ]
    held = None
    for name, cmd, stdout_to in steps:
        if name in opts.skip:
            continue
        if opts.lock and name in REAL_TIME and held is None:
            held = open(opts.lock, "a")  # noqa: SIM115 - closed after the real-time steps
            fcntl.flock(held, fcntl.LOCK_EX)
        elif held is not None and name not in REAL_TIME:
            held.close()  # the simulators keep their own clock: others may use the machine
            held = None
        if not Path(cmd[1]).exists():
            print(f"report.py: {cmd[1]} does not exist; skipping {name}", file=sys.stderr)
            continue
        print(
            f"report.py: {' '.join(cmd)}" + (f" > {stdout_to}" if stdout_to else ""),
            file=sys.stderr,
            flush=True,
        )
        tmp = stdout_to.with_suffix(".jsonl.tmp") if stdout_to else None
        with open(tmp, "w") if tmp else open(os.devnull, "w") as sink:
            rc = subprocess.run(cmd, stdout=sink, cwd=REPO, check=False).returncode
        if rc != 0:
            print(f"report.py: {name} failed (exit {rc}); stopping", file=sys.stderr)
            if tmp:
                tmp.unlink(missing_ok=True)
            return rc
        if tmp and stdout_to:
            tmp.replace(stdout_to)
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--run", action="store_true", help="run the benchmarks first (root)")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["daemons", "netlink", "throughput", "hybrid", "sim", "lifeguard"],
        help="with --run: benchmarks not to rerun",
    )
    ap.add_argument("--runs", type=int, default=3, help="with --run: bench_daemons.py --runs")
    ap.add_argument(
        "--lock",
        type=Path,
        default=None,
        help="with --run: hold this flock during the wall-clock steps ("
        + ", ".join(REAL_TIME)
        + ")",
    )
    ap.add_argument(
        "--n", type=int, nargs="+", default=[10, 30, 100], help="with --run: bench_daemons.py --n"
    )
    ap.add_argument(
        "--meshd-src",
        type=Path,
        default=None,
        help="with --run: bench_daemons.py --meshd-src (a frozen copy of meshd)",
    )
    ap.add_argument("--plots-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plot-dir", type=Path, default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(list(argv) if argv is not None else None)
    plot_dir = opts.plot_dir or opts.doc.with_suffix("")
    if opts.plots_only:
        print(json.dumps(draw_plots(load(opts.results), plot_dir)))
        return 0
    if opts.run:
        rc = run_benchmarks(opts)
        if rc:
            return rc
    by_bench = load(opts.results)
    if not by_bench:
        print(f"no results in {opts.results}", file=sys.stderr)
        return 1
    old = opts.doc.read_text() if opts.doc.exists() else ""
    keep = KEEP_RE.search(old)
    plots, note = make_plots(opts.results, plot_dir)
    opts.doc.write_text(render(by_bench, plots, note, keep[0] if keep else ""))
    print(f"wrote {opts.doc}" + (f" and {len(plots)} plot(s)" if plots else f" ({note})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
