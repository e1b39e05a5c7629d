"""Subnet allocation on real daemons: no --subnet, only --network.

Ten daemons started at the same instant from a pool barely larger than the mesh (16 subnets)
collide, and the conflict rule must sort them out to distinct subnets every member agrees on,
with full pings; a restart keeps the subnet. A network with no free subnet stops a newcomer with
one line; `meshd leave` frees a subnet at once; a dead member's subnet is held for the lease.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Daemon, Lab

from .conftest import FAST_GOSSIP, all_alive, cli, keygen, peers, states, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]


def status(d: Daemon) -> dict[str, Any]:
    st: dict[str, Any] = cli(d, "status", "--json")
    return st


def own_subnets(lab: Lab, names: list[str]) -> dict[str, str]:
    return {n: status(lab.daemons[n])["node"]["subnet"] for n in names}


def agreed(lab: Lab, names: list[str]) -> Callable[[], bool]:
    """Every daemon settled, the subnets are distinct, and every daemon's table says of every
    member the subnet that member announces itself."""

    def check() -> bool:
        try:
            sts = {n: status(lab.daemons[n]) for n in names}
        except AssertionError:
            return False
        if not all(st["allocation"].get("settled") for st in sts.values()):
            return False
        own = {n: st["node"]["subnet"] for n, st in sts.items()}
        if len(set(own.values())) != len(own):
            return False
        for n in names:
            table = peers(lab.daemons[n])
            if {m: table.get(m, {}).get("subnet") for m in names} != own:
                return False
        return True

    return check


def moves(d: Daemon) -> int:
    return d.log_path.read_text(errors="replace").count("which the conflict rule keeps")


def test_ten_daemons_started_at_once_end_distinct_and_ping(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    # 16 subnets for 10 hosts: simultaneous random picks collide more often than not.
    lab = make_lab("alloc", 10, pod_network="10.244.0.0/20")
    lab.allocate = True  # certificate mode: each host holds a pool grant of the network
    key = keygen(tmp_path / "key")
    names = [h.name for h in lab.hosts]
    lab.start_daemons(key_file=key, backend="vxlan", extra_args=["--config", str(fast_config)])
    wait_until(all_alive(lab, names), 90, "10 members alive everywhere", lab)
    wait_until(agreed(lab, names), 60, "distinct subnets every member agrees on", lab)
    subnets = own_subnets(lab, names)
    assert all(s.startswith("10.244.") and s.endswith("/24") for s in subnets.values())
    total_moves = sum(moves(d) for d in lab.daemons.values())
    print(f"allocated {subnets}; {total_moves} move(s) after collisions")

    lab.adopt_subnets()
    assert {h.name: h.subnet for h in lab.hosts} == subnets
    # Peers flag nothing as conflicted once it settled, and every container pair pings.
    for n in names:
        assert not [r for r in peers(lab.daemons[n]).values() if r.get("flag") == "conflicted"]
    matrix = lab.ping_matrix(count=1, timeout=2)
    assert all(matrix.values()), [k for k, ok in matrix.items() if not ok]

    # A restart keeps the subnet (state dir): no move, the same subnet.env, pings on.
    h2 = lab.host("h2")
    env_before = (lab.workdir / "h2" / "subnet.env").read_text()
    lab.stop_daemon("h2")
    lab.start_daemon(h2, key_file=key, backend="vxlan", extra_args=["--config", str(fast_config)])
    wait_until(agreed(lab, names), 60, "h2 back with its subnet", lab)
    st = status(lab.daemons["h2"])
    assert st["node"]["subnet"] == subnets["h2"]
    assert st["allocation"]["origin"] == "kept" and st["allocation"]["moves"] == 0
    assert (lab.workdir / "h2" / "subnet.env").read_text() == env_before
    assert lab.ping(lab.host("h1").container_ns, lab.host("h2").container_ip, count=2)


LEASE = 8.0


def lease_config(tmp_path: Path) -> Path:
    p = tmp_path / "lease.toml"
    # Top-level keys before the [gossip] table; reap_after (4 s) below the lease, as required.
    p.write_text(
        f"subnet_lease = {LEASE}\n" + FAST_GOSSIP.replace("reap_after = 10", "reap_after = 4")
    )
    return p


def exited_full(d: Daemon, timeout: float = 60) -> bool:
    """The daemon stopped with rc 1 and said, in one line, that the network is full."""
    assert d.proc is not None
    try:
        rc = d.proc.wait(timeout)
    except Exception:  # noqa: BLE001 - still running: not what we wanted
        return False
    text = d.log_path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if "meshd: error:" in ln]
    return (
        rc == 1
        and bool(lines)
        and "network 10.244.0.0/23 (2 subnets of /24) is full" in (lines[-1])
    )


def test_full_network_leave_and_lease(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    # Shared-key mode, so a network other than the lab's CA's can be given: 2 subnets of /24.
    lab = make_lab("lease", 3, pod_network="10.245.0.0/16")
    lab.certificates = False
    lab.allocate = True
    key = keygen(tmp_path / "key")
    cfg = lease_config(tmp_path)
    args = ["--config", str(cfg), "--network", "10.244.0.0/23"]
    h1, h2, h3 = lab.hosts

    def start(h: Any, seeds: list[str] | None = None, fresh: bool = False) -> Daemon:
        if fresh:
            shutil.rmtree(lab.workdir / h.name / "state", ignore_errors=True)
        return lab.start_daemon(h, key_file=key, backend="vxlan", extra_args=args, seeds=seeds)

    start(h1)
    start(h2)
    wait_until(agreed(lab, ["h1", "h2"]), 60, "h1 and h2 settled", lab)
    full = own_subnets(lab, ["h1", "h2"])
    assert set(full.values()) == {"10.244.0.0/24", "10.244.1.0/24"}

    # A third node finds no free subnet: one line, exit 1; the two holders keep theirs (the
    # conflict rule may also make the newcomer the holder: then the loser is the one told).
    start(h3)
    wait_until(lambda: not lab.daemons["h3"].alive() or not lab.daemons["h2"].alive(), 60,
               "one of h2/h3 to give up", lab)  # fmt: skip
    loser = "h3" if not lab.daemons["h3"].alive() else "h2"
    assert exited_full(lab.daemons[loser])
    holders = [n for n in ("h1", "h2", "h3") if n != loser]
    wait_until(agreed(lab, holders), 30, "the holders unchanged", lab)
    kept = own_subnets(lab, holders)
    assert set(kept.values()) == set(full.values())

    # `meshd leave` releases a subnet at once: the node that gave up takes it on its next try.
    leaver = holders[1]
    released = kept[leaver]
    cli(lab.daemons[leaver], "leave")
    wait_until(lambda: not lab.daemons[leaver].alive(), 30, f"{leaver} gone", lab)
    wait_until(lambda: states(lab.daemons["h1"]).get(leaver) == "left", 30, "left", lab)
    start(lab.host(loser), seeds=[f"{h1.underlay_ip}:7950"])
    wait_until(agreed(lab, ["h1", loser]), 60, f"{loser} took the released subnet", lab)
    assert own_subnets(lab, [loser])[loser] == released
    # The leaver's state dir forgot the subnet: it would allocate afresh, not claim it back.
    assert '"subnet": null' in (lab.workdir / leaver / "state" / "state.json").read_text()

    # A crashed member's subnet is held for the lease: a newcomer within it finds the network
    # full, one after it takes the dead member's subnet.
    crashed = loser
    lab.stop_daemon(crashed, sig=signal.SIGKILL)
    wait_until(lambda: states(lab.daemons["h1"]).get(crashed) == "dead", 30, "dead", lab)
    dead_at = time.monotonic()
    start(lab.host(leaver), seeds=[f"{h1.underlay_ip}:7950"], fresh=True)
    assert exited_full(lab.daemons[leaver])
    time.sleep(max(0.0, dead_at + LEASE + 2 - time.monotonic()))  # the lease runs out
    start(lab.host(leaver), seeds=[f"{h1.underlay_ip}:7950"], fresh=True)
    wait_until(agreed(lab, ["h1", leaver]), 60, f"{leaver} took the dead member's subnet", lab)
    assert own_subnets(lab, [leaver])[leaver] == released
    lab.adopt_subnets()
    assert lab.ping(lab.host("h1").container_ns, lab.host(leaver).container_ip, count=2)
