"""The data plane end to end: real daemons in namespaces converge the kernel for every backend
that this kernel has (ipip, missing here, runs in a user-mode-linux guest).

Per topology: every container pings every other; a 4 MiB TCP transfer passes (MTU right); routes,
neighbours, FDB entries and the device deleted by hand come back; kill -9 and restart of a daemon
while pinging loses nothing; leave removes entries at once; a dead peer is reaped after
reap_after; strict rp_filter on every host throughout.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Host, Lab, ns_exec, uml
from meshd.lab.runner import kernel_supports

from .conftest import all_alive, cli, keygen, states, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]
PROTO = "109"


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = ns_exec(None, ["ip", "-n", ns, "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def routes(h: Host) -> set[str]:
    return {str(r["dst"]) for r in ip_json(h.ns, "route", "show", "proto", PROTO)}


def neighbours(h: Host, dev: str) -> set[str]:
    return {
        str(n["dst"])
        for n in ip_json(h.ns, "neigh", "show", "dev", dev)
        if "PERMANENT" in (n.get("state") or [])
    }


def fdb(h: Host, dev: str) -> set[str]:
    out = ns_exec(None, ["bridge", "-n", h.ns, "-j", "fdb", "show", "dev", dev]).stdout
    return {f"{e['mac']}>{e.get('dst')}" for e in json.loads(out or "[]") if e.get("dst")}


def ping_all(lab: Lab) -> Callable[[], bool]:
    return lambda: all(lab.ping_matrix(count=1, timeout=1).values())


def start(
    lab: Lab,
    backend: str,
    key: Path,
    cfg: Path,
    host: Host | None = None,
    seeds: list[str] | None = None,
) -> None:
    for h in [host] if host else lab.hosts:
        extra = ["--config", str(cfg)]
        lab.start_daemon(h, key_file=key, backend=backend, extra_args=extra, seeds=seeds)


@pytest.mark.parametrize(
    ("backend", "routed"),
    [("host-gw", False), ("vxlan", False), ("vxlan", True), ("ipip", False), ("ipip", True)],
    ids=["host-gw-flat", "vxlan-flat", "vxlan-routed", "ipip-flat", "ipip-routed"],
)
def test_dataplane(
    make_lab: Callable[..., Lab],
    tmp_path: Path,
    fast_config: Path,
    backend: str,
    routed: bool,
    request: pytest.FixtureRequest,
) -> None:
    if not kernel_supports(backend):
        # This kernel lacks the module (ipip here): run this very test in a user-mode-linux
        # guest kernel that has it, on the same files and venv.
        rerun_in_guest(request.node.nodeid)
        return
    lab = make_lab(f"dp{'r' if routed else 'f'}{backend[0]}", 3, routed=routed)
    lab.set_rp_filter(1)
    key = keygen(tmp_path / "key")
    start(lab, backend, key, fast_config)
    h1, h2, h3 = lab.hosts
    names = [h.name for h in lab.hosts]
    wait_until(all_alive(lab, names), 60, "members alive", lab)
    wait_until(ping_all(lab), 30, "every container to ping every other", lab)
    dev = "meshd.1" if backend == "vxlan" else "eth0"
    assert routes(h1) == {h2.subnet, h3.subnet}

    # subnet.env for CNI plugins
    env = (lab.workdir / "h1" / "subnet.env").read_text()
    assert f"FLANNEL_SUBNET={h1.gateway}/24" in env and "FLANNEL_MTU=" in env

    # MTU right: 4 MiB over TCP, both directions through the data plane
    assert lab.tcp_transfer(h1.container_ns, h2.container_ns, h2.container_ip, 4 << 20)
    assert lab.tcp_transfer(h3.container_ns, h1.container_ns, h1.container_ip, 4 << 20)

    # Hand-deleted state comes back (netlink monitor), and traffic with it.
    ns_exec(h1.ns, ["ip", "route", "del", h2.subnet])
    wait_until(lambda: h2.subnet in routes(h1), 10, "the deleted route to come back", lab)
    if backend == "vxlan":
        gw2 = h2.subnet.split("/")[0]
        ns_exec(h1.ns, ["ip", "neigh", "del", gw2, "dev", dev])
        wait_until(lambda: gw2 in neighbours(h1, dev), 10, "the deleted neighbour", lab)
        entry = next(e for e in fdb(h1, dev) if e.endswith(h2.underlay_ip))
        mac = entry.split(">")[0]
        ns_exec(h1.ns, ["bridge", "fdb", "del", mac, "dev", dev, "dst", h2.underlay_ip])
        wait_until(lambda: entry in fdb(h1, dev), 10, "the deleted FDB entry", lab)
        ns_exec(h1.ns, ["ip", "link", "del", dev])
        wait_until(
            lambda: routes(h1) == {h2.subnet, h3.subnet} and len(neighbours(h1, dev)) == 2,
            15,
            "the deleted device",
            lab,
        )
    wait_until(ping_all(lab), 15, "pings after the repairs", lab)

    # kill -9 and restart of a daemon while pinging through its host loses nothing,
    # and the restarted daemon changes nothing in the kernel.
    pinger = lab.spawn(
        h1.container_ns,
        ["ping", "-n", "-q", "-i", "0.05", "-c", "160", "-W", "1", h2.container_ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lab.stop_daemon("h2", signal.SIGKILL)
    start(lab, backend, key, fast_config, host=h2, seeds=[])
    wait_until(
        lambda: states(lab.daemons["h2"]) == dict.fromkeys(names, "alive"),
        60,
        "restarted h2 to rejoin",
        lab,
    )
    out, _ = pinger.communicate(timeout=60)
    m = re.search(rb"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    assert m.group(1) == m.group(2), out.decode()
    dp = cli(lab.daemons["h2"], "status", "--json")["dataplane"]
    assert dp["synced"] and dp["last_error"] is None
    changed = {k: v for k, v in dp["applied"].items() if v and not k.startswith(("sysctl", "env"))}
    assert not changed, f"restart rewrote kernel state: {dp['applied']}"

    # leave removes h3's entries everywhere at once
    assert "left the mesh" in cli(lab.daemons["h3"], "leave").stdout
    wait_until(
        lambda: routes(h1) == {h2.subnet} and routes(h2) == {h1.subnet},
        15,
        "h3's routes to go after leave",
        lab,
    )
    if backend == "vxlan":
        assert len(neighbours(h1, dev)) == 1 and len(fdb(h1, dev)) == 1

    # a crashed peer keeps its routes while dead, and loses them after reap_after (10 s here)
    lab.stop_daemon("h2", signal.SIGKILL)
    wait_until(lambda: states(lab.daemons["h1"]).get("h2") == "dead", 30, "h2 dead", lab)
    assert h2.subnet in routes(h1)  # failure is not leave
    wait_until(lambda: routes(h1) == set(), 40, "h2's routes reaped", lab)


def rerun_in_guest(nodeid: str) -> None:
    reason = uml.available()
    assert reason is None, f"no user-mode-linux guest: {reason}"
    res = uml.run_pytest(nodeid, Path(__file__).resolve().parents[2])
    assert res.rc == 0, res.output[-4000:]
    assert " passed" in res.output, res.output[-2000:]
