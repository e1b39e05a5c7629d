"""Real `meshd join` daemons in network namespaces built by meshd.lab.Lab (the same class
`meshd lab` uses). Every lab is torn down even when a test fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Daemon, Lab, write_key
from meshd.lab.topology import down

# Fast but realistic timers: the protocol is identical, only the clock is scaled. reap_after
# must exceed the time a killed daemon takes to come back (seconds inside the user-mode-linux
# guest), or its peers rightly reap its routes and the restart test sees loss.
FAST_GOSSIP = """
metrics = "127.0.0.1:9950"

[gossip]
probe_interval = 0.4
probe_timeout = 0.2
gossip_interval = 0.1
push_pull_interval = 5
dead_probe_interval = 1
suspicion_mult = 3
reap_after = 10
"""


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


keygen = write_key  # the tests' name for it


def cli(d: Daemon, *args: str, check: bool = True, input: str | None = None) -> Any:
    """Run the real CLI against one daemon's control socket (``input`` on its stdin); parse
    --json output."""
    r = subprocess.run(
        [sys.executable, "-m", "meshd", *args, "--socket", str(d.socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        input=input,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"meshd {' '.join(args)}: rc={r.returncode} {r.stderr.strip()}")
    return json.loads(r.stdout) if "--json" in args and r.returncode == 0 else r


def peers(d: Daemon) -> dict[str, dict[str, Any]]:
    try:
        rows = cli(d, "peers", "--json")
    except AssertionError:
        return {}
    return {row["name"]: row for row in rows}


def wait_until(cond: Callable[[], bool], timeout: float, what: str, lab: Lab | None = None) -> None:
    """Poll ``cond``; on timeout fail with ``what`` and the daemons' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    logs = ""
    if lab is not None:
        for d in lab.daemons.values():
            tail = d.log_path.read_text(errors="replace").splitlines()[-15:]
            logs += f"\n--- {d.host.name} ---\n" + "\n".join(tail)
    raise AssertionError(f"timed out waiting for {what}{logs}")


def states(d: Daemon) -> dict[str, str]:
    return {name: row["state"] for name, row in peers(d).items()}


def all_alive(lab: Lab, names: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        want = {n: "alive" for n in names}
        return all(states(lab.daemons[n]) == want for n in names)

    return check


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(prefix: str, hosts: int, **kw: Any) -> Lab:
        down(prefix)  # a run killed mid-test left this test's own lab behind: not ours to refuse
        lab = Lab(prefix, hosts=hosts, workdir=tmp_path / prefix, **kw)
        labs.append(lab)
        lab.build()
        return lab

    yield make
    for lab in labs:
        lab.teardown()


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    p = tmp_path / "fast.toml"
    p.write_text(FAST_GOSSIP)
    return p
