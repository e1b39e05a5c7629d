"""`meshd lab` end to end: exit codes, output, and nothing left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.lab import leftover_namespaces
from meshd.lab.runner import kernel_supports

pytestmark = [pytest.mark.slow, pytest.mark.root]
PREFIX = f"tl{os.getpid() % 100000}"


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHD_LAB_PREFIX": PREFIX}
    return subprocess.run(
        [sys.executable, "-m", "meshd", "lab", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def lab_processes() -> list[str]:
    """Processes started by our `meshd lab` runs, wherever they are: everything they start
    (daemons, the wireguard-go a daemon starts) inherits MESHD_LAB_PREFIX from them."""
    mark = f"MESHD_LAB_PREFIX={PREFIX}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        except OSError:  # gone, or a kernel thread
            continue
    return [c.decode(errors="replace") for c in found]


@pytest.mark.parametrize(
    ("backend", "routed", "shared_key"),
    [
        ("host-gw", False, True),
        ("vxlan", True, False),
        pytest.param(
            "wireguard",
            True,
            False,
            marks=pytest.mark.skipif(
                shutil.which("wireguard-go") is None and not kernel_supports("wireguard"),
                reason="needs the wireguard module or wireguard-go",
            ),
        ),
    ],
)
def test_lab_runs_and_cleans_up(backend: str, routed: bool, shared_key: bool) -> None:
    r = lab(
        "--hosts", "3", "--backend", backend,
        *(["--routed"] if routed else []), *(["--shared-key"] if shared_key else []),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: all 6 container pairs ping" in r.stdout
    assert "h1    10.99." in r.stdout  # the peers table
    if shared_key:
        assert "trust: shared-key mode" in r.stdout
        assert "mesh: UNAUTHENTICATED (shared-key mode)" in r.stdout  # said under `peers`
    else:
        assert "trust: certificates from a throwaway CA" in r.stdout
        assert "UNAUTHENTICATED" not in r.stdout
    if backend != "host-gw":
        assert f"tunnel {'meshd.1' if backend == 'vxlan' else 'meshd.wg'}" in r.stdout
        assert "tx +0" not in r.stdout
    assert leftover_namespaces(PREFIX) == []
    assert lab_processes() == []  # the daemons, and the wireguard-go processes they started


def test_host_gw_across_a_router_fails_clearly() -> None:
    r = lab("--hosts", "2", "--backend", "host-gw", "--routed")
    assert r.returncode == 1
    assert "FAILED" in r.stdout and "h1->h2" in r.stdout
    assert leftover_namespaces(PREFIX) == []


def test_keep_then_down() -> None:
    r = lab("--hosts", "2", "--backend", "vxlan", "--keep")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "meshd lab down" in r.stdout
        assert len(leftover_namespaces(PREFIX)) == 5
    finally:
        d = lab("down")
    assert d.returncode == 0 and "removed 5 namespaces" in d.stdout
    assert leftover_namespaces(PREFIX) == []


@pytest.mark.skipif(kernel_supports("ipip"), reason="this kernel has ipip: nothing to refuse")
def test_ipip_refused_politely_without_the_module() -> None:
    r = lab("--backend", "ipip")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "ipip" in r.stderr and "Traceback" not in r.stderr
