"""Build and run the hashicorp/memberlist anchor (../shared/anchors/memberlist) in its netns mode.

The anchor's code is not part of this repository: at run time this module copies the anchor's
folder to a writable place (its scripts write ``bin/`` and ``results/`` next to themselves),
builds it there if needed, and runs ``run_netns.sh`` for one N and one run. When the anchor is
absent, or cannot be built, :func:`prepare` says why and the benchmark leaves its column empty.

Environment:
    MESHD_MLANCHOR_SRC  the anchor's folder (default: <repo>/../shared/anchors/memberlist)
    MESHD_MLANCHOR_DIR  the writable copy (default: /var/cache/meshd/mlanchor)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("MESHD_MLANCHOR_SRC", REPO.parent / "shared" / "anchors" / "memberlist"))
WORK = Path(os.environ.get("MESHD_MLANCHOR_DIR", "/var/cache/meshd/mlanchor"))
BINARIES = ("mlnode", "mlctl")
IMPL = "memberlist-0.2.2"


def _writable_copy(src: Path, dst: Path) -> None:
    if not (dst / "run_netns.sh").exists():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    # The shared folder is read-only; the copy must not be.
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)


def prepare(install: bool = False) -> str | None:
    """Make the anchor runnable in :data:`WORK`; None when ready, else the reason it is not.

    ``install``: allow ``build.sh --install`` (apt-get install of Go and memberlist's Debian
    source package) when Go is missing."""
    if all((WORK / "bin" / b).exists() for b in BINARIES) and (WORK / "run_netns.sh").exists():
        return None
    if not (SRC / "run_netns.sh").exists():
        return f"memberlist anchor not found at {SRC}"
    try:
        _writable_copy(SRC, WORK)
    except OSError as exc:
        return f"cannot copy the anchor to {WORK}: {exc}"
    args = [str(WORK / "build.sh")]
    if shutil.which("go") is None:
        if not install:
            return "Go is not installed; rerun with --anchor-install (apt-get, Debian packages)"
        args.append("--install")
    res = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"anchor build failed: {tail[0]}"
    return None


NODE_LOG = WORK / "results" / "netns-nodes.log"
"""Where run_netns.sh sends the nodes' stderr: memberlist's own log lines with ``-log``."""
# memberlist 0.2.2 state.go: a probe that got no ack (direct, indirect or TCP), and a suspicion
# that ran out (the member is declared dead).
PROBE_FAILED_RE = re.compile(r"\[INFO\] memberlist: Suspect (\S+) has failed, no acks received")
DECLARED_DEAD_RE = re.compile(r"\[INFO\] memberlist: Marking (\S+) as failed, suspect timeout")


def verdicts(text: str, n: int) -> dict[str, int]:
    """Failed probes and dead verdicts in the nodes' log of one run, leaving out those about the
    node the run kills (n-1, named ``n%02d``): every other member stays up until the end."""
    victim = f"n{n - 1:02d}"
    failed = [m[1] for m in PROBE_FAILED_RE.finditer(text)]
    dead = [m[1] for m in DECLARED_DEAD_RE.finditer(text)]
    return {
        "probe_failures": sum(1 for x in failed if x != victim),
        "false_deaths": sum(1 for x in dead if x != victim),
    }


def run_netns(n: int, idle: float = 10.0, timeout: float = 600.0) -> dict[str, dict[str, Any]]:
    """One run of the anchor's multi-process mode at size ``n`` (one mlnode per namespace):
    convergence, idle, meta dissemination, SIGKILL failure detection and leave. Returns the
    anchor's JSON records by phase; raises RuntimeError if the script fails. The nodes run with
    ``-log`` (memberlist's log, written only on events): record ``verdicts`` counts its failed
    probes and false deaths."""
    start = NODE_LOG.stat().st_size if NODE_LOG.exists() else 0
    with tempfile.TemporaryDirectory(prefix="mlanchor-") as tmp:
        out = Path(tmp) / "netns.jsonl"
        env = dict(
            os.environ,
            NS_LIST=str(n),
            RUNS="1",
            IDLE=f"{idle:g}",
            OUT=str(out),
            SOCKDIR=str(Path(tmp) / "sock"),
            EXTRA="-log",
        )
        try:
            res = subprocess.run(
                [str(WORK / "run_netns.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"anchor run_netns.sh n={n} timed out after {timeout:g}s") from exc
        records: dict[str, dict[str, Any]] = {}
        if out.exists():
            for line in out.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    records[rec["phase"]] = rec
        if res.returncode != 0 and not records:
            tail = res.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"anchor run_netns.sh n={n} failed (rc={res.returncode}): {tail[0]}")
        if NODE_LOG.exists():
            with open(NODE_LOG, "rb") as fh:
                fh.seek(start)
                records["verdicts"] = dict(verdicts(fh.read().decode(errors="replace"), n))
        return records


def metrics(records: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The anchor's records as this benchmark's metrics (same names as bench_daemons')."""
    conv = records.get("convergence", {})
    idle = records.get("idle", {})
    out: dict[str, float | None] = {
        "convergence_ms": conv.get("ms") if conv.get("ok") else None,
        "convergence_from_launch_ms": conv.get("from_launch_ms") if conv.get("ok") else None,
        # A node is ready when Join() returns (its first push-pull done): the last join.
        "convergence_after_ready_ms": conv.get("ms") if conv.get("ok") else None,
    }
    for phase, metric in (
        ("dissemination", "dissemination_ms"),
        ("failure", "failure_ms"),
        ("leave", "leave_ms"),
    ):
        rec = records.get(phase, {})
        out[metric] = rec.get("ms") if rec.get("ok") else None
        if metric == "dissemination_ms":
            out["dissemination_first_ms"] = rec.get("first_ms") if rec.get("ok") else None
    verdict = records.get("verdicts")
    if verdict is not None and conv.get("ok"):
        out["startup_false_deaths"] = verdict["false_deaths"]
        out["startup_probe_failures_per_node"] = verdict["probe_failures"] / int(conv["n"])
    if idle:
        pkts = idle["udp_pkts_per_node_s"]
        out.update(
            {
                "idle_cpu_pct": idle["cpu_pct_median"],
                "rss_mib": idle["rss_kb_median"] / 1024,
                # payload (UDP + TCP, after encryption) plus 28 B IPv4+UDP header per datagram
                "idle_bytes_per_node_s": idle["bytes_per_node_s"] + 28 * pkts,
                "idle_datagrams_per_node_s": pkts,
                "idle_kernel_ip_bytes_per_node_s": idle["kernel_ip_out_octets_per_node_s"],
                "idle_kernel_udp_datagrams_per_node_s": idle["kernel_udp_out_dgrams_per_node_s"],
            }
        )
    return out
