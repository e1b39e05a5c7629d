"""Dual-stack end to end: real daemons in namespaces, IPv4 and IPv6 pods, IPv4 and IPv6 underlays.

- a dual-stack overlay on an IPv4 underlay (vxlan; host-gw on a dual-stack underlay, whose IPv6
  routes need an IPv6 next hop): every container pair pings over IPv4 and over IPv6, 4 MiB pass
  over TCP on IPv6, each daemon shows both subnets and writes both into subnet.env;
- an IPv6-only underlay (no IPv4 address on it at all, hosts included; vxlan and host-gw flat,
  vxlan across a router): full pings over both families, gossip over UDP/IPv6;
- the IPv6 entries (routes, IPv4 routes via an IPv6 next hop, IPv6 neighbours, FDB entries with
  an IPv6 destination) deleted by hand come back, and a daemon killed with -9 and restarted
  while a container pings over IPv6 through its host loses nothing and rewrites nothing;
- ipip over an IPv6 underlay (ip6tnl), in a user-mode-linux guest when this kernel lacks it.

Every lab runs in certificate mode (the lab's throwaway CA) with strict rp_filter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Host, Lab, format_matrix, leftover_namespaces, ns_exec, uml
from meshd.lab.runner import kernel_supports, link_kind, tunnel_device

from .conftest import all_alive, cli, keygen, peers, states, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]
PROTO = "109"


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = ns_exec(None, ["ip", "-n", ns, "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def route_pairs(h: Host, *args: str) -> list[list[tuple[str, Any]]]:
    """``ip -j route show`` as key-value pairs: iproute2 names an encapsulated route's outer
    destination ``dst`` too (after ``"encap": "ip6"``), which a dict would keep instead."""
    out = ns_exec(None, ["ip", "-n", h.ns, "-j", *args, "route", "show", "proto", PROTO]).stdout
    pairs: list[list[tuple[str, Any]]] = json.loads(out or "[]", object_pairs_hook=list)
    return pairs


def routes(h: Host, family: int) -> set[str]:
    return {str(next(v for k, v in r if k == "dst")) for r in route_pairs(h, f"-{family}")}


def neighbours6(h: Host, dev: str) -> dict[str, str]:
    """The device's permanent IPv6 neighbours: address -> MAC."""
    return {
        str(n["dst"]): str(n.get("lladdr"))
        for n in ip_json(h.ns, "-6", "neigh", "show", "dev", dev)
        if "PERMANENT" in (n.get("state") or [])
    }


def fdb(h: Host, dev: str) -> set[str]:
    out = ns_exec(None, ["bridge", "-n", h.ns, "-j", "fdb", "show", "dev", dev]).stdout
    return {f"{e['mac']}>{e.get('dst')}" for e in json.loads(out or "[]") if e.get("dst")}


def full_pings(lab: Lab) -> Callable[[], bool]:
    return lambda: all(all(lab.ping_matrix(count=1, timeout=1, family=f).values()) for f in (4, 6))


def assert_full_pings(lab: Lab) -> None:
    names = [h.name for h in lab.hosts]
    for family in (4, 6):
        m = lab.ping_matrix(count=2, family=family)
        assert all(m.values()), f"IPv{family}\n" + format_matrix(m, names)


def start(lab: Lab, backend: str, key: Path, cfg: Path, host: Host | None = None,
          seeds: list[str] | None = None) -> None:  # fmt: skip
    for h in [host] if host else lab.hosts:
        lab.start_daemon(h, key_file=key, backend=backend, extra_args=["--config", str(cfg)],
                         seeds=seeds)  # fmt: skip


def converge(lab: Lab, backend: str, tmp_path: Path, cfg: Path) -> Path:
    lab.set_rp_filter(1)
    key = keygen(tmp_path / "key")
    start(lab, backend, key, cfg)
    wait_until(all_alive(lab, [h.name for h in lab.hosts]), 60, "members alive", lab)
    wait_until(full_pings(lab), 30, "every container to ping every other, both families", lab)
    return key


def subnet_env(lab: Lab, h: Host) -> dict[str, str]:
    text = (lab.workdir / h.name / "subnet.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def ping_through_restart(lab: Lab, src: Host, victim: Host, backend: str, key: Path,
                         cfg: Path) -> None:  # fmt: skip
    """kill -9 and restart ``victim``'s daemon while ``src``'s container pings ``victim``'s
    over IPv6: nothing lost, and the restarted daemon changes nothing in the kernel."""
    names = [h.name for h in lab.hosts]
    pinger = lab.spawn(
        src.container_ns,
        ["ping", "-n", "-q", "-i", "0.05", "-c", "160", "-W", "1", str(victim.container_ip6)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lab.stop_daemon(victim.name, signal.SIGKILL)
    start(lab, backend, key, cfg, host=victim, seeds=[])
    wait_until(
        lambda: states(lab.daemons[victim.name]) == dict.fromkeys(names, "alive"),
        60,
        f"restarted {victim.name} to rejoin",
        lab,
    )
    out, _ = pinger.communicate(timeout=60)
    m = re.search(rb"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    assert m.group(1) == m.group(2), out.decode()
    dp = cli(lab.daemons[victim.name], "status", "--json")["dataplane"]
    assert dp["synced"] and dp["last_error"] is None
    changed = {k: v for k, v in dp["applied"].items() if v and not k.startswith(("sysctl", "env"))}
    assert not changed, f"restart rewrote kernel state: {dp['applied']}"


@pytest.mark.parametrize(
    ("backend", "underlay"),
    [("vxlan", "ipv4"), ("host-gw", "dual")],
    ids=["vxlan-ipv4-underlay", "host-gw-dual-underlay"],
)
def test_dual_stack_overlay(
    make_lab: Callable[..., Lab],
    tmp_path: Path,
    fast_config: Path,
    backend: str,
    underlay: str,
) -> None:
    lab = make_lab(f"ds{backend[0]}", 3, ipv6=True, underlay_family=underlay)
    converge(lab, backend, tmp_path, fast_config)
    h1, h2, h3 = lab.hosts
    assert routes(h1, 4) == {h2.subnet, h3.subnet}
    assert routes(h1, 6) == {h2.subnet6, h3.subnet6}
    # 4 MiB over TCP on IPv6, both ways (the MTU is right for the longer IPv6 header too).
    assert lab.tcp_transfer(h1.container_ns, h3.container_ns, str(h3.container_ip6), 4 << 20)
    assert lab.tcp_transfer(h3.container_ns, h2.container_ns, str(h2.container_ip6), 4 << 20)
    assert lab.tcp_transfer(h2.container_ns, h1.container_ns, h1.container_ip, 4 << 20)
    # The peers table and subnet.env carry both families.
    row = peers(lab.daemons["h1"])["h2"]
    assert (row["subnet"], row.get("subnet6")) == (h2.subnet, h2.subnet6)
    assert row["public_ip"] == h2.underlay_ip and row.get("public_ip6") == h2.underlay_ip6
    text = cli(lab.daemons["h1"], "peers").stdout
    assert f"{h2.subnet},{h2.subnet6}" in text
    env = subnet_env(lab, h1)
    assert env["FLANNEL_SUBNET"] == f"{h1.gateway}/24"
    assert env["FLANNEL_IPV6_SUBNET"] == f"{h1.gateway6}/64"
    if backend == "vxlan":
        # One device, both families, over the IPv4 underlay: the FDB points at IPv4 addresses.
        assert {e.split(">")[1] for e in fdb(h1, "meshd.1")} == {h2.underlay_ip, h3.underlay_ip}
        assert set(neighbours6(h1, "meshd.1")) == {str(h2.subnet6).split("/")[0],
                                                   str(h3.subnet6).split("/")[0]}  # fmt: skip


@pytest.mark.parametrize(
    ("backend", "routed"),
    [("vxlan", False), ("host-gw", False), ("vxlan", True), ("ipip", False)],
    ids=["vxlan-flat", "host-gw-flat", "vxlan-routed", "ipip-flat"],
)
def test_ipv6_only_underlay(
    make_lab: Callable[..., Lab],
    tmp_path: Path,
    fast_config: Path,
    backend: str,
    routed: bool,
    request: pytest.FixtureRequest,
) -> None:
    if not kernel_supports(link_kind(backend, "ipv6")):
        # ip6tnl missing here: this very test in a user-mode-linux guest kernel that has it.
        rerun_in_guest(request.node.nodeid)
        return
    lab = make_lab(f"u6{'r' if routed else 'f'}{backend[0]}", 3, ipv6=True,
                   underlay_family="ipv6", routed=routed)  # fmt: skip
    for h in lab.hosts:  # (ip -j lists no link without an address of the family asked for)
        assert ip_json(h.ns, "-4", "addr", "show", "dev", "eth0") == []
        assert ip_json(h.ns, "-6", "addr", "show", "dev", "eth0") != []
    key = converge(lab, backend, tmp_path, fast_config)
    h1, h2, h3 = lab.hosts
    assert routes(h1, 4) == {h2.subnet, h3.subnet}
    assert routes(h1, 6) == {h2.subnet6, h3.subnet6}
    # Gossip over UDP/IPv6: the peers table shows each member's IPv6 underlay address.
    assert {n: r["public_ip"] for n, r in peers(lab.daemons["h3"]).items()} == {
        h.name: h.underlay_ip for h in lab.hosts
    }
    assert lab.tcp_transfer(h1.container_ns, h2.container_ns, str(h2.container_ip6), 4 << 20)
    assert lab.tcp_transfer(h3.container_ns, h1.container_ns, h1.container_ip, 4 << 20)
    dev = tunnel_device(backend, underlay="ipv6")
    if backend == "vxlan":
        assert {e.split(">")[1] for e in fdb(h1, str(dev))} == {h2.underlay_ip, h3.underlay_ip}
    if backend == "host-gw":
        # IPv4 pods over an IPv6-only underlay: routes via an IPv6 next hop (RFC 5549).
        r = ip_json(h1.ns, "-4", "route", "show", h2.subnet, "proto", PROTO)
        assert r and r[0].get("via", {}).get("host") == h2.underlay_ip, r
    if backend == "ipip":
        # An external ip6tnl, every peer subnet (both families) encapsulated towards the peer's
        # IPv6 underlay address; a restart adopts the device and rewrites nothing.
        (link,) = ip_json(h2.ns, "-d", "link", "show", "dev", str(dev))
        assert link["linkinfo"]["info_data"].get("external") is True, link
        encap = ip6tnl_routes(h2)
        assert encap == {str(h.subnet): h.underlay_ip for h in (h1, h3)} | {
            str(h.subnet6): h.underlay_ip for h in (h1, h3)
        }, encap
        ping_through_restart(lab, h1, h2, backend, key, fast_config)
        (again,) = ip_json(h2.ns, "-d", "link", "show", "dev", str(dev))
        assert again["ifindex"] == link["ifindex"]
        assert ip6tnl_routes(h2) == encap
        assert_full_pings(lab)


def ip6tnl_routes(h: Host) -> dict[str, str]:
    """meshd's routes on ``h`` of both families: destination -> encapsulation destination
    (iproute2's JSON names both ``dst``: the second, after ``"encap": "ip6"``, is the outer)."""
    out: dict[str, str] = {}
    for family in ("-4", "-6"):
        for pairs in route_pairs(h, family, "-d"):
            r = dict(pairs)
            assert "gateway" not in r and "onlink" not in r["flags"] and r["encap"] == "ip6", r
            assert r["hoplimit"] == 64, r
            (dst, outer) = [v for k, v in pairs if k == "dst"]
            out[dst] = outer
    return out


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_ipv6_entries_come_back_and_restart_loses_nothing(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path, backend: str
) -> None:
    lab = make_lab(f"r6{backend[0]}", 3, ipv6=True, underlay_family="ipv6")
    key = converge(lab, backend, tmp_path, fast_config)
    h1, h2, h3 = lab.hosts
    # Hand-deleted IPv6 state comes back (netlink monitor), and traffic with it.
    ns_exec(h1.ns, ["ip", "-6", "route", "del", str(h2.subnet6)])
    wait_until(lambda: h2.subnet6 in routes(h1, 6), 10, "the deleted IPv6 route", lab)
    ns_exec(h1.ns, ["ip", "route", "del", h3.subnet])  # IPv4, via an IPv6 next hop on host-gw
    wait_until(lambda: h3.subnet in routes(h1, 4), 10, "the deleted IPv4 route", lab)
    if backend == "vxlan":
        dev = "meshd.1"
        gw6 = str(h2.subnet6).split("/")[0]
        ns_exec(h1.ns, ["ip", "-6", "neigh", "del", gw6, "dev", dev])
        wait_until(lambda: gw6 in neighbours6(h1, dev), 10, "the deleted IPv6 neighbour", lab)
        entry = next(e for e in fdb(h1, dev) if e.endswith(h2.underlay_ip))
        mac = entry.split(">")[0]
        ns_exec(h1.ns, ["bridge", "fdb", "del", mac, "dev", dev, "dst", h2.underlay_ip])
        wait_until(lambda: entry in fdb(h1, dev), 10, "the deleted FDB entry (IPv6 dst)", lab)
        ns_exec(h1.ns, ["ip", "link", "del", dev])
        wait_until(
            lambda: routes(h1, 6) == {h2.subnet6, h3.subnet6} and len(neighbours6(h1, dev)) == 2,
            15,
            "the deleted device and its IPv6 entries",
            lab,
        )
    wait_until(full_pings(lab), 15, "pings after the repairs", lab)
    ping_through_restart(lab, h1, h2, backend, key, fast_config)
    assert routes(h1, 6) == {h2.subnet6, h3.subnet6}
    assert_full_pings(lab)


@pytest.mark.parametrize(
    ("backend", "args", "says"),
    [
        ("vxlan", ["--ipv6"], "IPv4 underlay, dual-stack pods"),
        ("host-gw", ["--ipv6"], "dual-stack underlay, dual-stack pods"),
        ("vxlan", ["--ipv6", "--underlay", "ipv6"], "IPv6-only underlay, dual-stack pods"),
        ("host-gw", ["--underlay", "ipv6"], "IPv6-only underlay, IPv4 pods"),
    ],
    ids=["vxlan-ipv6", "host-gw-ipv6", "vxlan-underlay-ipv6", "host-gw-underlay-ipv6"],
)
def test_meshd_lab_command(backend: str, args: list[str], says: str) -> None:
    prefix = f"l6{os.getpid() % 100000}"
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "lab", "--backend", backend, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MESHD_LAB_PREFIX": prefix},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert says in r.stdout
    if "--ipv6" in args:
        assert f"OK: all 12 container pairs ping through {backend} (IPv4 and IPv6)" in r.stdout
        assert "4 MiB over TCP/IPv6 h1 -> h3 container: ok" in r.stdout
    else:
        assert f"OK: all 6 container pairs ping through {backend};" in r.stdout
    assert leftover_namespaces(prefix) == []


def test_meshd_lab_refuses_a_bad_underlay_in_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "lab", "--underlay", "ipv5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "--underlay" in r.stderr, r.stderr


def rerun_in_guest(nodeid: str) -> None:
    reason = uml.available()
    assert reason is None, f"no user-mode-linux guest: {reason}"
    res = uml.run_pytest(nodeid, Path(__file__).resolve().parents[2])
    assert res.rc == 0, res.output[-4000:]
    assert " passed" in res.output, res.output[-2000:]
