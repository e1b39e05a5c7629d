"""`meshd leave --purge` on a real daemon leaves the host's kernel exactly as it found it: links,
addresses, routes of every table, permanent neighbours and FDB entries, the nftables ruleset and
net.ipv4.ip_forward (which meshd had turned on) are what they were before meshd started; the
files it wrote are gone; the other host drops the purged one at once. For vxlan (with the filter
and the masquerade on) and wireguard (wireguard-go stopped)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Lab, ns_exec

from .conftest import all_alive, cli, keygen, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]


def ipj(ns: str, *args: str) -> Any:
    out = ns_exec(ns, ["ip", "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def snapshot(ns: str) -> dict[str, Any]:
    """The kernel state of one namespace that meshd could touch, without counters. IPv4 only
    for addresses, routes and neighbours: meshd writes no IPv6 (yet), and the kernel's own IPv6
    link-local autoconfiguration goes on settling after the lab is built."""
    links = sorted(
        (ln["ifname"], ln.get("link_type"), ln.get("mtu"), ln.get("address"), tuple(ln["flags"]))
        for ln in ipj(ns, "link", "show")
    )
    addrs = sorted(
        (a["ifname"], i["local"], i["prefixlen"])
        for a in ipj(ns, "-4", "addr", "show")
        for i in a["addr_info"]
    )
    routes = sorted(
        json.dumps(r, sort_keys=True) for r in ipj(ns, "-4", "route", "show", "table", "all")
    )
    neighs = sorted(
        json.dumps(n, sort_keys=True)
        for n in ipj(ns, "-4", "neigh", "show")
        if "PERMANENT" in n.get("state", [])
    )
    fdb_out = ns_exec(ns, ["bridge", "-j", "fdb", "show"]).stdout
    fdb = sorted(
        json.dumps(e, sort_keys=True)
        for e in (json.loads(fdb_out) if fdb_out.strip() else [])
        if e.get("state") == "permanent" or "dst" in e
    )
    return {
        "links": links,
        "addresses": addrs,
        "routes": routes,
        "neighbours": neighs,
        "fdb": fdb,
        "nft": ns_exec(ns, ["nft", "list", "ruleset"]).stdout,
        "ip_forward": ns_exec(ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip(),
    }


@pytest.mark.parametrize("backend", ["vxlan", "wireguard"])
def test_leave_purge_leaves_the_kernel_as_it_found_it(
    backend: str, make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    lab = make_lab(f"pg{backend[:2]}", 2)
    key = keygen(tmp_path / "key")
    h1, h2 = lab.hosts
    conf = tmp_path / "purge.toml"
    conf.write_text('filter = true\nipmasq = true\nnetwork = "10.244.0.0/16"\n')
    conf.write_text(fast_config.read_text().replace("[gossip]", conf.read_text() + "\n[gossip]"))
    ns_exec(h1.ns, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    before = snapshot(h1.ns)
    lab.start_daemons(key_file=key, backend=backend, extra_args=["--config", str(conf)])
    wait_until(all_alive(lab, ["h1", "h2"]), 60, "mesh up", lab)
    d1 = lab.daemons["h1"]
    wait_until(lambda: (d1.workdir / "subnet.env").exists(), 30, "subnet.env", lab)
    during = snapshot(h1.ns)
    assert during != before and during["ip_forward"] == "1"
    assert "table inet meshd" in during["nft"] and "table ip meshd-nat" in during["nft"]
    dev = "meshd.wg" if backend == "wireguard" else "meshd.1"
    assert any(ln[0] == dev for ln in during["links"])
    if backend == "wireguard":
        assert lab.wireguard_pid(h1) is not None
        assert (d1.state_dir / "wireguard.key").exists()

    out = ns_exec(
        h1.ns,
        [
            *cli_argv(), "leave", "--purge", "--socket", str(d1.socket_path),
            "--config", str(conf), "--state-dir", str(d1.state_dir),
            "--subnet-env", str(d1.workdir / "subnet.env"),
        ],
    ).stdout  # fmt: skip
    assert "left the mesh" in out and out.rstrip().endswith("purged"), out
    assert f"removed device {dev}" in out, out
    wait_until(lambda: not d1.alive(), 10, "daemon gone", lab)
    after = snapshot(h1.ns)
    for part in before:
        assert after[part] == before[part], (part, before[part], after[part])
    assert not (d1.workdir / "subnet.env").exists()
    assert not (d1.state_dir / "wireguard.key").exists()
    if backend == "wireguard":
        assert lab.wireguard_pid(h1) is None
    # The peer removed h1 at once (left, not dead).
    peers = cli(lab.daemons["h2"], "peers", "--json")
    assert {p["name"]: p["state"] for p in peers}["h1"] == "left"
    wait_until(lambda: h1.subnet not in ns_exec(h2.ns, ["ip", "route"]).stdout, 5, "h2", lab)
    # A second purge finds nothing: idempotent, and fine with no daemon running.
    again = ns_exec(
        h1.ns,
        [*cli_argv(), "leave", "--purge", "--socket", str(d1.socket_path), "--config", str(conf),
         "--state-dir", str(d1.state_dir), "--subnet-env", str(d1.workdir / "subnet.env")],
    ).stdout  # fmt: skip
    assert "removed" not in again and again.rstrip().endswith("purged"), again
    assert snapshot(h1.ns) == before


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "meshd"]
