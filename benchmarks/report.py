"""Regenerate docs/performance.md (tables) and docs/performance/*.png (plots) from the JSON lines
of every benchmark in benchmarks/results/*.jsonl.

    .venv/bin/python benchmarks/report.py [--results DIR] [--doc FILE]

Plots need matplotlib, which is not a dependency of meshd: without it the tables are still
written and the document says the plots were skipped. Text between ``<!-- keep:analysis -->``
and ``<!-- /keep -->`` in the existing document (the hand-written analysis) is carried over.
Only the standard library is needed otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "performance.md"
KEEP_RE = re.compile(r"<!-- keep:analysis -->.*?<!-- /keep -->", re.S)
RSS_LIMIT_MIB = 40e6 / 2**20  # "RSS under 40 MB": 38.1 MiB

LABELS = {
    "convergence_ms": "convergence after the last join",
    "convergence_from_launch_ms": "convergence from launch of nodes 2..N",
    "dissemination_ms": "update dissemination (all nodes)",
    "failure_ms": "failure detection, SIGKILL (all nodes)",
    "leave_ms": "graceful leave (all nodes)",
    "idle_cpu_pct": "idle CPU per daemon",
    "rss_mib": "RSS per daemon",
    "idle_bytes_per_node_s": "idle bytes sent per node per s (payload + 28 B/datagram)",
    "idle_datagrams_per_node_s": "idle datagrams sent per node per s",
    "idle_kernel_ip_bytes_per_node_s": "cross-check: kernel IP bytes out per node per s",
    "idle_kernel_udp_datagrams_per_node_s": "cross-check: kernel UDP datagrams out per node per s",
    "idle_push_pulls_per_node": "push-pull messages received per node in the idle window",
}
# metric -> target as in issue 7; "ml": at or under memberlist's
TARGETS: dict[str, str] = {
    "convergence_ms": "ml", "dissemination_ms": "ml", "failure_ms": "ml", "leave_ms": "ml",
    "idle_cpu_pct": "ml", "idle_bytes_per_node_s": "ml", "idle_datagrams_per_node_s": "ml",
    "rss_mib": "rss",
}
TIMING = ["convergence_ms", "dissemination_ms", "leave_ms", "failure_ms"]
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


def verdict(rec: dict[str, Any]) -> tuple[str, str]:
    """(target text, met / missed / —) for one daemons metric line."""
    kind = TARGETS.get(rec["metric"])
    m, a = rec.get("meshd"), rec.get("memberlist")
    if kind == "ml":
        if m is None or a is None:
            return "≤ memberlist", "—"
        return "≤ memberlist", "met" if m <= a else f"**missed** ({rec['ratio']:.2f}x)"
    if kind == "rss":
        if m is None:
            return "< 40 MB", "—"
        return "< 40 MB (38.1 MiB)", "met" if m < RSS_LIMIT_MIB else "**missed**"
    return "", ""


def daemons_section(recs: list[dict[str, Any]], plots: list[str]) -> list[str]:
    out = ["## Real daemons: meshd vs memberlist, one process per network namespace", ""]
    sizes = sorted({r["n"] for r in recs if r.get("n") is not None})
    notes = {r["memberlist_note"] for r in recs if r.get("memberlist_note")}
    for note in sorted(notes):
        out += [f"> memberlist column: {note}", ""]
    for n in sizes:
        rows = [r for r in recs if r.get("n") == n]
        runs = rows[0].get("runs", "?")
        out += [f"### N = {n} (median of {runs} run(s); per-run values in the last column)", "",
                "| metric | unit | meshd | memberlist | ratio | target | verdict | meshd runs "
                "/ memberlist runs |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            target, ok = verdict(r)
            per = fmt(r.get("meshd_runs"))
            if r.get("memberlist_runs"):
                per += " / " + fmt(r.get("memberlist_runs"))
            out.append(f"| {LABELS.get(r['metric'], r['metric'])} | {r['unit']} | "
                       f"{fmt(r.get('meshd'))} | {fmt(r.get('memberlist'))} | "
                       f"{fmt(r.get('ratio'))} | {target} | {ok} | {per} |")
        out.append("")
    imports = [r for r in recs if str(r["metric"]).startswith("import_rss_kib:")]
    if imports:
        out += ["### Where the RSS goes: what each import costs", "",
                "One fresh interpreter imports the daemon's dependencies in the daemon's order; "
                "*added* is the VmRSS growth of that step, *alone* the growth when it is the only "
                "import after the bare interpreter (shared pieces such as asyncio count again).",
                "",
                "| step | added KiB | cumulative KiB | alone KiB | import ms |",
                "|---|---|---|---|---|"]
        for r in imports:
            out.append(f"| {r['metric'].split(':', 1)[1]} | {r['meshd']:,} | "
                       f"{r['cumulative_kib']:,} | {r['alone_kib']:,} | {r['import_ms']} |")
        out.append("")
    out += [f"![{p}](performance/{p})" for p in plots if p.startswith("daemons")]
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


def make_plots(by_bench: dict[str, list[dict[str, Any]]], outdir: Path) -> tuple[list[str], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ("Plots skipped: matplotlib is not installed in this interpreter "
                    "(it is not a meshd dependency; `pip install matplotlib` and rerun).")
    outdir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    recs = by_bench.get("daemons", [])
    for fname, metrics, title in (("daemons-timing.png", TIMING, "Membership timings (ms)"),
                                  ("daemons-idle.png", RESOURCES, "Idle cost per daemon")):
        sizes = sorted({r["n"] for r in recs if r.get("n") is not None and r["metric"] in metrics})
        if not sizes:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
        for ax, metric in zip(axes, metrics, strict=True):
            vals = {r["n"]: r for r in recs if r["metric"] == metric and r.get("n") is not None}
            xs = range(len(sizes))
            for off, impl, color in ((-0.2, "meshd", "tab:blue"),
                                     (0.2, "memberlist", "tab:orange")):
                ys = [vals.get(n, {}).get(impl) or 0 for n in sizes]
                ax.bar([x + off for x in xs], ys, width=0.4, label=impl, color=color)
            if metric == "rss_mib":
                ax.axhline(RSS_LIMIT_MIB, color="gray", ls="--", lw=1, label="40 MB target")
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
    return made, ""


HEADER = """# Performance

Generated by `benchmarks/report.py` from `benchmarks/results/*.jsonl`; do not edit the tables by
hand (the analysis block is kept across regenerations). How to run each benchmark, and how each
number is measured: [benchmarks/README.md](../benchmarks/README.md).
"""


def render(by_bench: dict[str, list[dict[str, Any]]], plots: list[str], plot_note: str,
           analysis: str) -> str:
    out = [HEADER]
    if analysis:
        out += [analysis, ""]
    if plot_note:
        out += [f"> {plot_note}", ""]
    if "daemons" in by_bench:
        out += daemons_section(by_bench["daemons"], plots)
    for bench, recs in sorted(by_bench.items()):
        if bench != "daemons":
            out += generic_section(bench, recs)
    return "\n".join(out).rstrip() + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    opts = ap.parse_args(list(argv) if argv is not None else None)
    by_bench = load(opts.results)
    if not by_bench:
        print(f"no results in {opts.results}", file=sys.stderr)
        return 1
    old = opts.doc.read_text() if opts.doc.exists() else ""
    keep = KEEP_RE.search(old)
    plots, note = make_plots(by_bench, opts.doc.with_suffix(""))
    opts.doc.write_text(render(by_bench, plots, note, keep[0] if keep else ""))
    print(f"wrote {opts.doc}" + (f" and {len(plots)} plot(s)" if plots else f" ({note})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
