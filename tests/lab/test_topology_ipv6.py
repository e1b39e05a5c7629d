"""The lab with IPv6: dual-stack pods, IPv6-only and dual-stack underlays, routed IPv6 segments.

As in test_topology.py, static routes stand in for a backend (host-gw by hand, RFC 5549 IPv4
routes via an IPv6 next hop on an IPv6-only underlay), so these tests need no daemon.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.errors import LabError
from meshd.lab import DEFAULT_GOSSIP_PORT, Lab, down, format_matrix, leftover_namespaces
from meshd.lab.daemons import host_port
from meshd.lab.runner import link_kind

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)
needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping (iputils-ping)")

_seq = iter(range(1000))


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"t6{os.getpid() % 100000}x{next(_seq)}"
    yield p
    left = leftover_namespaces(p)
    down(p)  # never leave anything behind, even when the test failed
    assert left == [], f"namespaces left behind: {left}"


def addresses(lab: Lab, ns: str, dev: str, family: int) -> list[str]:
    out = lab.exec(ns, ["ip", f"-{family}", "-j", "addr", "show", "dev", dev]).stdout
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out or "[]")
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]


# --------------------------------------------------------------------------- no root needed


def test_addressing_dual_stack_pods() -> None:
    lab = Lab("addr", hosts=3, ipv6=True)
    h1, _, h3 = lab.hosts
    assert (h3.subnet6, h3.gateway6, h3.container_ip6) == (
        "fd00:10:244:3::/64", "fd00:10:244:3::1", "fd00:10:244:3::2",
    )  # fmt: skip
    assert h3.subnets == ("10.244.3.0/24", "fd00:10:244:3::/64")
    assert (h1.container_ip_of(4), h1.container_ip_of(6)) == ("10.244.1.2", "fd00:10:244:1::2")
    # The underlay stays IPv4 only.
    assert (h1.underlay_ip, h1.underlay_ip6, h1.underlay_of(6)) == ("10.99.0.1", None, None)
    assert lab.pod_network6 == "fd00:10:244::/56"
    # An IPv4-only lab has no second family at all.
    plain = Lab("addr", hosts=1).hosts[0]
    assert (plain.subnet6, plain.subnets, plain.container_ip_of(6)) == (
        None, ("10.244.1.0/24",), None,
    )  # fmt: skip


def test_addressing_ipv6_underlay() -> None:
    lab = Lab("addr", hosts=4, underlay_family="ipv6", routed=True)
    h1, h2 = lab.hosts[:2]
    assert (h1.underlay_ip, h1.underlay_cidr, h1.underlay_version) == (
        "fd00:99:1::1", "fd00:99:1::1/64", 6,
    )  # fmt: skip
    assert (h1.underlay_of(6), h1.underlay_of(4), h1.underlay_ip6) == ("fd00:99:1::1", None, None)
    assert (h2.underlay_ip, h2.router_ip) == ("fd00:99:2::2", "fd00:99:2::fe")
    assert lab.router_ips == ["fd00:99:1::fe", "fd00:99:2::fe"]
    assert h1.subnet == "10.244.1.0/24"  # the pods keep IPv4 (add ipv6=True for both)


def test_addressing_dual_underlay() -> None:
    lab = Lab("addr", hosts=2, underlay_family="dual", routed=True, ipv6=True)
    h1, h2 = lab.hosts
    assert (h1.underlay_ip, h1.underlay_ip6, h1.underlay_version) == (
        "10.99.1.1", "fd00:99:1::1", 4,
    )  # fmt: skip
    assert (h2.router_ip, h2.router_ip6) == ("10.99.2.254", "fd00:99:2::fe")
    assert (h2.underlay_of(4), h2.underlay_of(6)) == ("10.99.2.2", "fd00:99:2::2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"underlay_family": "ipv5"}, "underlay family"),
        ({"ipv6": True, "pod_network6": "fd00::/120", "subnet_prefixlen6": 124}, "do not fit"),
        ({"ipv6": True, "subnet_prefixlen6": 48}, "does not fit"),
    ],
)
def test_bad_ipv6_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabError, match=message):
        Lab("bad", hosts=20, **kwargs)  # type: ignore[arg-type]


def test_daemon_argv_dual_stack_on_ipv6_underlay(tmp_path: Path) -> None:
    lab = Lab("argv", hosts=2, workdir=tmp_path, ipv6=True, underlay_family="ipv6")
    lab.certificates = False
    h2 = lab.hosts[1]
    argv = lab.daemon_argv(h2, key_file="/k", backend="vxlan", seeds=lab.seeds_for(h2))
    assert argv[4] == f"[fd00:99::1]:{DEFAULT_GOSSIP_PORT}"
    assert argv[argv.index("--public-ip") + 1] == "fd00:99::2"
    assert argv.count("--public-ip") == 1
    subnets = [argv[i + 1] for i, a in enumerate(argv) if a == "--subnet"]
    assert subnets == ["10.244.2.0/24", "fd00:10:244:2::/64"]


def test_cni_lab_dual_stack_daemons_name_both_cluster_networks(tmp_path: Path) -> None:
    # subnet.env's FLANNEL_NETWORK and FLANNEL_IPV6_NETWORK (the pods' routes) come from these.
    lab = Lab("argv", hosts=2, workdir=tmp_path, cni=True, outside=True, ipv6=True,
              underlay_family="dual")  # fmt: skip
    lab.certificates = False
    argv = lab.daemon_argv(lab.hosts[0], key_file="/k", backend="vxlan")
    networks = [argv[i + 1] for i, a in enumerate(argv) if a == "--network"]
    assert networks == ["10.244.0.0/16", "fd00:10:244::/56"]
    # The outside machine has an address of each family on a dual-stack underlay.
    assert (lab.outside_ip, lab.outside_ip6) == ("10.99.0.253", "fd00:99::fd")
    v4 = Lab("argv", hosts=2, workdir=tmp_path, cni=True, outside=True)
    v4.certificates = False
    argv = v4.daemon_argv(v4.hosts[0], key_file="/k", backend="vxlan")
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--network"] == ["10.244.0.0/16"]
    assert v4.outside_ip6 is None


def test_daemon_argv_dual_underlay_announces_both(tmp_path: Path) -> None:
    lab = Lab("argv", hosts=2, workdir=tmp_path, ipv6=True, underlay_family="dual")
    lab.certificates = False
    h2 = lab.hosts[1]
    argv = lab.daemon_argv(h2, key_file="/k", backend="host-gw", seeds=lab.seeds_for(h2))
    assert argv[4] == f"10.99.0.1:{DEFAULT_GOSSIP_PORT}"
    public = [argv[i + 1] for i, a in enumerate(argv) if a == "--public-ip"]
    assert public == ["10.99.0.2", "fd00:99::2"]


def test_seed_and_link_kind() -> None:
    assert host_port("10.99.0.1", 7950) == "10.99.0.1:7950"
    assert host_port("fd00:99::1", 7950) == "[fd00:99::1]:7950"
    assert link_kind("ipip", "ipv6") == "ip6tnl"
    assert [link_kind(b, u) for b, u in [("ipip", "ipv4"), ("ipip", "dual"), ("vxlan", "ipv6")]
            ] == ["ipip", "ipip", "vxlan"]  # fmt: skip


# --------------------------------------------------------------------------- real namespaces


@pytest.mark.root
@needs_root
@needs_ping
def test_dual_stack_pods_on_dual_underlay_host_gw_by_hand(prefix: str) -> None:
    with Lab(prefix, hosts=3, ipv6=True, underlay_family="dual") as lab:
        h1, h2, _ = lab.hosts
        fwd = lab.exec(h1.ns, ["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip()
        assert fwd == "1"
        assert addresses(lab, h1.container_ns, "eth0", 6) == ["fd00:10:244:1::2/64"]
        assert addresses(lab, h1.ns, "eth0", 6) == ["fd00:99::1/64"]
        assert lab.ping(h1.ns, h2.underlay_ip6 or "")  # underlay, IPv6
        assert lab.ping(h1.container_ns, h1.gateway6 or "")  # own host, IPv6
        assert not lab.ping(h1.container_ns, h2.container_ip6 or "", timeout=0.5)  # no routes yet
        lab.add_host_gw_routes()
        names = [h.name for h in lab.hosts]
        for family in (4, 6):
            m = lab.ping_matrix(family=family)
            assert len(m) == 6 and all(m.values()), format_matrix(m, names)
        before = lab.link_counters(h1.ns, "eth0")
        assert lab.tcp_transfer(h1.container_ns, h2.container_ns, h2.container_ip6 or "", 4 << 20)
        after = lab.link_counters(h1.ns, "eth0")
        assert after["tx_bytes"] - before["tx_bytes"] >= 4 << 20
        # The sink binds IPv6 only: the peer shows as itself, not IPv4-mapped.
        seen = lab.seen_source(h1.container_ns, h2.container_ns, h2.container_ip6 or "")
        assert seen == h1.container_ip6
        assert lab.seen_source(h1.container_ns, h2.container_ns, h2.container_ip) == h1.container_ip


@pytest.mark.root
@needs_root
@needs_ping
def test_ipv6_pods_on_ipv4_underlay_get_no_host_gw_routes(prefix: str) -> None:
    # host-gw by hand has no IPv6 next hop on an IPv4-only underlay: IPv4 pairs only.
    with Lab(prefix, hosts=2, ipv6=True) as lab:
        lab.add_host_gw_routes()
        h1 = lab.hosts[0]
        assert addresses(lab, h1.ns, "eth0", 6) == []
        assert all(lab.ping_matrix(family=4).values())
        assert not any(lab.ping_matrix(family=6, timeout=0.5).values())


@pytest.mark.root
@needs_root
@needs_ping
def test_ipv6_only_underlay_carries_both_pod_families(prefix: str) -> None:
    with Lab(prefix, hosts=3, ipv6=True, underlay_family="ipv6") as lab:
        h1, h2, h3 = lab.hosts
        for h in lab.hosts:
            assert addresses(lab, h.ns, "eth0", 4) == []  # no IPv4 on the underlay at all
            assert addresses(lab, h.ns, "eth0", 6) == [h.underlay_cidr]
        assert lab.ping(h1.ns, h3.underlay_ip)
        lab.add_host_gw_routes()
        # IPv4 pods via an IPv6 next hop (RFC 5549), IPv6 pods via the same.
        route = lab.exec(h1.ns, ["ip", "-4", "route", "show", h2.subnet]).stdout
        assert f"via inet6 {h2.underlay_ip}" in route
        names = [h.name for h in lab.hosts]
        for family in (4, 6):
            m = lab.ping_matrix(family=family)
            assert all(m.values()), format_matrix(m, names)
        assert lab.tcp_transfer(h3.container_ns, h1.container_ns, h1.container_ip, 1 << 20)
        assert lab.tcp_transfer(h1.container_ns, h3.container_ns, h3.container_ip6 or "", 1 << 20)


@pytest.mark.root
@needs_root
@needs_ping
def test_routed_ipv6_only_underlay_reaches_across_router(prefix: str) -> None:
    with Lab(prefix, hosts=3, routed=True, underlay_family="ipv6") as lab:
        h1, h2, h3 = lab.hosts
        assert lab.router_ns is not None
        assert addresses(lab, lab.router_ns, "eth1", 4) == []
        assert addresses(lab, lab.router_ns, "eth2", 6) == ["fd00:99:2::fe/64"]
        assert lab.ping(h1.ns, h2.underlay_ip)  # segment 1 -> 2 through the router
        assert lab.ping(h2.ns, h3.underlay_ip)
        assert lab.ping(h1.ns, h3.underlay_ip)  # same segment


@pytest.mark.root
@needs_root
def test_ipv6_ping_matrix_of_a_bigger_lab_finds_the_one_broken_pair(prefix: str) -> None:
    # 10 hosts: the one-process-per-source path (nettool ping-many, ICMPv6 here).
    with Lab(prefix, hosts=10, ipv6=True, underlay_family="dual") as lab:
        lab.add_host_gw_routes()
        h1, h10 = lab.hosts[0], lab.hosts[9]
        lab.exec(h1.ns, ["ip", "-6", "route", "del", h10.subnet6 or ""])
        m6 = lab.ping_matrix(timeout=0.5, family=6)
        assert len(m6) == 90
        broken = sorted(pair for pair, ok in m6.items() if not ok)
        assert broken == [("h1", "h10"), ("h10", "h1")]
        assert all(lab.ping_matrix(timeout=0.5, family=4).values())  # IPv4 untouched


@pytest.mark.root
@needs_root
@needs_ping
def test_readdress_moves_both_families(prefix: str) -> None:
    with Lab(prefix, hosts=2, ipv6=True, underlay_family="dual") as lab:
        h1 = lab.hosts[0]
        new = lab.readdress(h1, "10.244.9.0/24", "fd00:10:244:9::/64")
        assert lab.hosts[0] is new and new.container_ip6 == "fd00:10:244:9::2"
        assert addresses(lab, new.container_ns, "eth0", 6) == ["fd00:10:244:9::2/64"]
        assert addresses(lab, new.container_ns, "eth0", 4) == ["10.244.9.2/24"]
        assert addresses(lab, new.ns, "br", 6) == ["fd00:10:244:9::1/64"]
        lab.add_host_gw_routes()
        for family in (4, 6):
            assert all(lab.ping_matrix(family=family).values())


def test_ping_matrix_refuses_a_family_the_pods_lack() -> None:
    with pytest.raises(LabError, match="no IPv6 container address"):
        Lab("nov6", hosts=2).ping_matrix(family=6)


@pytest.mark.root
@needs_root
def test_nettool_udp_over_ipv6(prefix: str) -> None:
    with Lab(prefix, hosts=2, ipv6=True, underlay_family="dual") as lab:
        lab.add_host_gw_routes()
        h1, h2 = lab.hosts
        port = 20000 + os.getpid() % 1000
        got = lab.udp_count(h1.container_ns, h2.container_ns, h2.container_ip6 or "", port, 50)
        assert got == 50


def test_lab_certificates_cover_both_families(tmp_path: Path) -> None:
    from meshd import pki

    lab = Lab("cert", hosts=2, workdir=tmp_path, ipv6=True, underlay_family="dual")
    h2 = lab.hosts[1]
    argv = lab.daemon_argv(h2, key_file="/k", backend="host-gw")
    assert argv[argv.index("--cert") + 1] == f"{tmp_path}/ca/h2.crt"
    cert = pki.load_certificate(tmp_path / "ca" / "h2.crt")
    assert (cert.public_ip, cert.public_ip6) == ("10.99.0.2", "fd00:99::2")
    assert (cert.grant.subnet, cert.grant.subnet6) == (h2.subnet, h2.subnet6)
    # Allocating: a pool of each family, the lengths the lab plans.
    alloc = Lab("calloc", hosts=2, workdir=tmp_path / "a", ipv6=True, underlay_family="ipv6")
    alloc.allocate = True
    argv = alloc.daemon_argv(alloc.hosts[0], key_file="/k", backend="vxlan")
    assert argv[argv.index("--subnet-len6") + 1] == "64"
    grant = pki.load_certificate(tmp_path / "a" / "ca" / "h1.crt").grant
    assert (grant.pool, grant.pool_len, grant.pool6, grant.pool_len6) == (
        "10.244.0.0/16", 24, "fd00:10:244::/56", 64,
    )  # fmt: skip
