"""benchmarks/bench_netlink.py --smoke (CI): it runs to the end, tears its lab down, prints one
JSON line per (backend, op) in the agreed shape, and iproute2 saw every entry programmed by meshd
and by ``ip -batch`` (and every one removed)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.lab import leftover_namespaces

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_netlink.py"
SHAPE = {
    "bench": str,
    "backend": str,
    "n": int,
    "op": str,
    "meshd_s": float,
    "ip_batch_s": float,
    "ratio": float,
}


def test_bench_netlink_smoke() -> None:
    prefix = f"bnl{secrets.token_hex(2)}"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert {(r["backend"], r["op"]) for r in rows} == {
        (b, op) for b in ("vxlan", "host-gw") for op in ("add", "noop", "remove")
    }
    assert len(rows) == 6
    for r in rows:
        for key, typ in SHAPE.items():
            assert isinstance(r[key], typ), (key, r)
        assert r["bench"] == "netlink" and r["n"] == 100
        assert r["meshd_s"] > 0 and r["ip_batch_s"] > 0
        assert r["ratio"] == pytest.approx(r["meshd_s"] / r["ip_batch_s"], rel=0.01, abs=0.002)
        per_peer = 100 if r["op"] != "remove" else 0
        want = {
            "routes": per_peer,
            "neighs": per_peer if r["backend"] == "vxlan" else 0,
            "fdb": per_peer if r["backend"] == "vxlan" else 0,
        }
        assert r["kernel_meshd"] == want, r
        assert r["kernel_ip_batch"] == want, r
    assert leftover_namespaces(prefix) == []
