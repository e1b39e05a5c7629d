"""benchmarks/bench_hybrid.py at a smoke size: one real daemon joins 30 simulated members through
the bridge (real wire format, real key), programs a route per member, and removes the routes of
the 5 that leave; the namespaces are gone afterwards. Both models of the simulated side: every
member running its timers (``full``), and `simbridge.QuietMesh` (``quiet``)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_hybrid.py"
N, LEAVE = 30, 5


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("model", ["full", "quiet"])
def test_bench_hybrid_smoke(tmp_path: Path, model: str) -> None:
    out = tmp_path / "hybrid.jsonl"
    prefix = f"hs{secrets.token_hex(3)}"
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--n",
            str(N),
            "--leave",
            str(LEAVE),
            "--model",
            model,
            "--speakers",
            "3",
            "--idle",
            "2",
            "--settle",
            "10",
            "--warmup",
            "1",
            "--poll",
            "0.2",
            "--timeout",
            "30",
            "--prefix",
            prefix,
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in namespaces
    assert res.returncode == 0, (
        res.stderr[-3000:] + (tmp_path / "work" / "daemon.log").read_text(errors="replace")[-3000:]
    )
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert lines == [json.loads(x) for x in out.read_text().splitlines()]
    m = {r["metric"]: r for r in lines}
    assert all(r["bench"] == "hybrid" and r["n"] == N for r in lines)
    # Every member programmed, then exactly the leavers' routes removed.
    assert m["program_all_s"]["routes"] == N and m["program_all_s"]["value"] > 0
    assert m["reprogram_leave_s"]["routes"] == N - LEAVE and m["reprogram_leave_s"]["value"] >= 0
    # The daemon sees every simulated member alive (and itself); it opened everything the
    # members sealed, and the members opened everything it sealed.
    assert m["members"]["by_state"]["alive"] == N + 1, m["members"]
    assert m["members"]["dropped"] == {}, m["members"]
    counters = m["bridge_counters"]["counters"]
    assert counters["in"] > 0 and counters["out"] > 0
    assert not [c for c in counters if c.startswith("drop.")], counters
    if model == "quiet":  # the mesh's probes of the daemon, and its gossip, came from the model
        assert counters["model.stand_in_ping"] > 0 and counters["model.items"] >= LEAVE
        assert m["program_all_s"]["model"] == "quiet" and m["program_all_s"]["speakers"] == 3
    # Idle: it probes members (out) and is probed (in): a few datagrams a second, far below
    # a core.
    assert m["idle_out_per_s"]["value"] > 0 and m["idle_in_per_s"]["value"] > 0
    assert 0 < m["idle_cpu_pct"]["value"] < 50
    assert 0 < m["rss_mib"]["value"] < 500
