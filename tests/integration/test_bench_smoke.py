"""benchmarks/bench_daemons.py at a smoke size (N=3, one run, no memberlist anchor): it runs to the
end, tears its lab down, and prints the JSON lines benchmarks/report.py reads."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.lab import leftover_namespaces

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_daemons.py"
REQUIRED = {"bench", "n", "metric", "meshd", "memberlist", "ratio", "unit"}
TIMED = ("convergence_ms", "dissemination_ms", "failure_ms", "leave_ms")


@pytest.mark.root
@pytest.mark.slow
def test_bench_daemons_smoke(tmp_path: Path) -> None:
    out = tmp_path / "daemons.jsonl"
    prefix = f"bds{secrets.token_hex(2)}"
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--n",
            "3",
            "--runs",
            "1",
            "--no-anchor",
            "--idle",
            "3",
            "--settle",
            "1",
            "--timeout",
            "240",
            "--out",
            str(out),
            "--prefix",
            prefix,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert lines == [json.loads(x) for x in out.read_text().splitlines()]
    for rec in lines:
        assert rec.keys() >= REQUIRED, rec
        assert rec["bench"] == "daemons"
        assert rec["memberlist"] is None and rec["ratio"] is None
    metrics = {r["metric"]: r for r in lines if r["n"] == 3}
    for m in (
        *TIMED,
        "convergence_from_launch_ms",
        "rss_mib",
        "idle_bytes_per_node_s",
        "idle_datagrams_per_node_s",
        "idle_kernel_ip_bytes_per_node_s",
        "idle_cpu_pct",
    ):
        assert isinstance(metrics[m]["meshd"], float), metrics[m]
        assert metrics[m]["memberlist_note"] == "skipped (--no-anchor)"
    # The bench reports convergence only once every `peers` table holds all 3 (it checks each
    # daemon's table after the logs say so): the converged state itself, not just the clock.
    assert "converged" in res.stderr and "disagrees" not in res.stderr, res.stderr[-3000:]
    # Convergence after the last join can be 0 at the logs' 1 ms resolution (the last joiner
    # gets the whole table in the seed's answer); from the launch it takes at least the
    # daemons' start-up, and at N = 3 on a LAN well under the 240 s timeout.
    launch = metrics["convergence_from_launch_ms"]["meshd"]
    assert 10 < launch < 60_000, launch
    assert metrics["convergence_ms"]["meshd"] <= launch
    for m in ("dissemination_ms", "failure_ms", "leave_ms"):
        assert 0 < metrics[m]["meshd"] < 60_000, metrics[m]
    # CPU from the scheduler's ns run time (not 10 ms ticks): an idle daemon probing once a
    # second uses some, and far less than a core.
    assert 0 < metrics["idle_cpu_pct"]["meshd"] < 50
    # Dissemination comes from the `update` command and concurrent `peers` polls.
    assert metrics["dissemination_first_ms"]["meshd"] <= metrics["dissemination_ms"]["meshd"]
    assert 0 < metrics["dissemination_resolution_ms"]["meshd"] < 1000
    # Probing alone sends about one ping and one ack per node per second.
    assert 0.5 < metrics["idle_datagrams_per_node_s"]["meshd"] < 20
    assert 0 < metrics["rss_mib"]["meshd"] < 500
    # Start-up (issue 16): nobody has died before the failure phase, so any dead verdict would be
    # false; the suspicion counters come from each daemon's `status`.
    assert metrics["startup_false_deaths"]["meshd"] == 0, metrics["startup_false_deaths"]
    for m in ("startup_suspect_msgs_per_node", "convergence_after_ready_ms", "idle_settle_s"):
        assert isinstance(metrics[m]["meshd"], float), metrics[m]
    assert metrics["convergence_after_ready_ms"]["meshd"] <= launch
    imports = [r for r in lines if r["metric"].startswith("import_rss_kib:")]
    assert [r["metric"].split(":")[1] for r in imports][:2] == ["interpreter", "asyncio"]
    assert all(r["cumulative_kib"] > 0 for r in imports)
    assert leftover_namespaces(prefix) == []


@pytest.mark.root
def test_bench_wireguard_smoke() -> None:
    """benchmarks/bench_wireguard.py at 20 peers: both ways configure the device, and it prints
    the lines report.py reads (one per operation, with a ratio)."""
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_wireguard.py"), "--n", "20"]
        + ["--reps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip().startswith("{")]
    assert {r["op"] for r in lines} == {"add", "noop"}
    for r in lines:
        assert r["bench"] == "wireguard" and r["n"] == 20
        assert r["meshd_s"] > 0 and r["wg_s"] > 0 and r["ratio"] > 0


@pytest.mark.root
@pytest.mark.slow
def test_bench_throughput_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_throughput.py at 1 MiB, 2 rounds, every default backend: each path the
    machine can run is measured (checked bytes, MTU from the daemons), the others say why not,
    the labs are gone afterwards, and report.py renders the section from the lines."""
    out = tmp_path / "throughput.jsonl"
    prefix = f"bts{secrets.token_hex(2)}"
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_throughput.py"), "--bytes", "1048576"]
        + ["--reps", "2", "--timeout", "120", "--out", str(out), "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert lines == [json.loads(x) for x in out.read_text().splitlines()]
    by_path = {r["path"]: r for r in lines}
    assert set(by_path) == {"underlay", "host-gw", "vxlan", "wireguard"}
    assert all(r["bench"] == "throughput" and "error" not in r for r in lines)
    for path in ("underlay", "host-gw", "vxlan"):
        r = by_path[path]
        assert r["bytes"] == 1 << 20 and r["reps"] == 2 and len(r["mb_s_runs"]) == 2, r
        assert r["mb_s"] > 0 and r["sender_cores"] > 0, r
        assert r["machine"]["cpus"] >= 1
    assert by_path["host-gw"]["ratio"] == 1.0
    # vxlan's pods get the daemon's FLANNEL_MTU: 50 bytes of VXLAN under the underlay's 1500.
    assert (by_path["vxlan"]["mtu"], by_path["vxlan"]["device_mtu"]) == (1450, 1450)
    assert (by_path["host-gw"]["mtu"], by_path["host-gw"]["device_mtu"]) == (1500, None)
    wg = by_path["wireguard"]
    if "skipped" in wg:
        assert wg["skipped"], wg
    else:
        # MTU = underlay - 60; the traffic went through both hosts' wireguard-go.
        assert (wg["mtu"], wg["device_mtu"]) == (1440, 1440), wg
        assert wg["wireguard_go_cores"] > 0, wg
    for short in ("ul", "hg", "vx", "wg"):
        assert leftover_namespaces(f"{prefix}-{short}") == []
    doc = tmp_path / "performance.md"
    rep = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "report.py"), "--results", str(tmp_path)]
        + ["--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rep.returncode == 0, rep.stderr
    text = doc.read_text()
    assert "## Data-plane throughput" in text
    assert "| vxlan | " in text and "| underlay | " in text
