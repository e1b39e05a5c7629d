"""meshd/doctor.py's pure half: facts in, findings out (the e2e test runs it in a daemon)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshd.doctor import FAIL, OK, WARN, Facts, Finding, Peer, failed, findings


def healthy(**kw: Any) -> Facts:
    base = Facts(
        backend="vxlan",
        gossip_port=7950,
        backend_port=8472,
        ip_forward="1",
        rp_filter={"all": "0", "meshd.1": "1"},
        dataplane={"device": "meshd.1", "underlay": {"ifname": "eth0", "mtu": 1500}},
        underlay_mtu=1500,
        overhead=50,
        device_mtu=1450,
        kernel="6.1.0-13-amd64",
        nft_ruleset={"nftables": []},
        iptables="",
        files={"/etc/meshd/key": 0o600},
        now=1000.0,
        subnet_env="FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n",
        subnet_env_path="/run/meshd/subnet.env",
        expected_env={"FLANNEL_SUBNET": "10.244.1.1/24", "FLANNEL_MTU": "1450"},
        peers=[
            Peer("h2", "alive", "10.99.0.2", 1500, tunnel="ok", skew=0.4, address="10.244.2.0"),
            Peer("h3", "alive", "10.99.0.3", 1500, tunnel="ok", skew=-1.0, address="10.244.3.0"),
        ],
        route_via={"h2": "meshd.1", "h3": "meshd.1"},
    )
    return replace(base, **kw)


def bad(found: list[Finding]) -> set[tuple[str, str, str | None]]:
    return {(f.check, f.level, f.peer) for f in found if f.level != OK}


def test_a_healthy_host_has_only_ok_findings() -> None:
    found = findings(healthy())
    assert not failed(found) and bad(found) == set()
    assert {f.check for f in found} == {
        "forwarding", "rp_filter", "kernel", "mtu", "checksum", "firewall", "clock", "files",
        "subnet.env", "tunnel",
    }  # fmt: skip


def test_the_peer_whose_tunnel_is_silent_is_named() -> None:
    f = healthy()
    f.peers[0].tunnel = "unreachable"
    found = findings(f)
    assert failed(found) and bad(found) == {("tunnel", FAIL, "h2")}
    line = next(x for x in found if x.check == "tunnel" and x.level == FAIL)
    assert "alive in gossip but its tunnel does not answer" in line.message
    assert "UDP 8472" in line.fix
    # ipip has no port: the fix names the IP protocol.
    f = replace(f, backend="ipip", backend_port=None, ip_protocol=4)
    fix = next(x.fix for x in findings(f) if x.check == "tunnel" and x.level == FAIL)
    assert "IP protocol 4" in fix


def test_an_nft_rule_dropping_the_backend_port_from_a_peer() -> None:
    rules = {
        "nftables": [
            {"chain": {"family": "inet", "table": "ops", "name": "in", "hook": "input"}},
            {
                "rule": {
                    "family": "inet",
                    "table": "ops",
                    "chain": "in",
                    "expr": [
                        {"match": {"op": "==", "left": {"payload": {"protocol": "udp",
                                   "field": "dport"}}, "right": 8472}},
                        {"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                                   "field": "saddr"}}, "right": "10.99.0.2"}},
                        {"drop": None},
                    ],
                }
            },
            # meshd's own filter drops non-members on purpose: never reported.
            {"chain": {"family": "inet", "table": "meshd", "name": "input", "hook": "input"}},
            {"rule": {"family": "inet", "table": "meshd", "chain": "input", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                           "right": 8472}}, {"drop": None}]}},
        ]
    }  # fmt: skip
    found = findings(healthy(nft_ruleset=rules))
    assert bad(found) == {("firewall", FAIL, "h2")}
    # A default-drop input policy is a warning: the rules may accept the ports.
    policy = {"nftables": [{"chain": {"family": "inet", "table": "filter", "name": "input",
                                      "hook": "input", "policy": "drop"}}]}  # fmt: skip
    assert bad(findings(healthy(nft_ruleset=policy))) == {("firewall", WARN, None)}
    ipt = "*filter\n-A INPUT -p udp -m udp --dport 7950 -j DROP\nCOMMIT\n"
    assert bad(findings(healthy(iptables=ipt))) == {("firewall", FAIL, None)}


def test_clock_skew_warns_before_the_envelope_refuses() -> None:
    f = healthy()
    f.peers[0].skew = 30.0
    f.peers[1].skew = -75.0
    assert bad(findings(f)) == {("clock", WARN, "h2"), ("clock", FAIL, "h3")}


def test_mtu_files_forwarding_subnet_env_checksum_and_routes() -> None:
    f = healthy(device_mtu=1400, ip_forward="0")
    f.peers[1].mtu = 1400
    assert bad(findings(f)) == {
        ("mtu", FAIL, None), ("mtu", WARN, "h3"), ("forwarding", FAIL, None),
    }  # fmt: skip
    f = healthy(files={"/etc/meshd/key": 0o644, "/var/lib/meshd/wireguard.key": None})
    assert bad(findings(f)) == {("files", FAIL, None)}
    assert sum(x.level == FAIL for x in findings(f)) == 2
    assert bad(findings(healthy(cert_not_after=1000.0 + 5 * 86400))) == {("files", WARN, None)}
    assert bad(findings(healthy(cert_not_after=999.0))) == {("files", FAIL, None)}
    assert bad(findings(healthy(subnet_env=None))) == {("subnet.env", FAIL, None)}
    wrong = healthy(subnet_env="FLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\n")
    assert bad(findings(wrong)) == {("subnet.env", FAIL, None)}
    assert bad(findings(healthy(expected_env={}, subnet_env=None))) == set()  # not settled
    old = healthy(kernel="5.4.0-150-generic", tx_checksum=True)
    assert bad(findings(old)) == {("checksum", WARN, None)}
    assert bad(findings(replace(old, tx_checksum=False))) == set()
    assert bad(findings(healthy(route_via={"h2": "eth1"}))) == {("rp_filter", FAIL, "h2")}
    shadowed6 = findings(healthy(route_via6={"h2": "meshd.1", "h3": "eth1"}))
    assert bad(shadowed6) == {("rp_filter", FAIL, "h3")}
    assert any("h3's IPv6 subnet leaves through eth1" in x.message for x in shadowed6)


def test_not_programmed_and_host_gw() -> None:
    f = healthy()
    f.peers[0].flag = "conflicted"
    f.peers[0].tunnel = None
    assert bad(findings(f)) == {("tunnel", WARN, "h2")}
    gw = healthy(backend="host-gw", backend_port=None, overhead=0, device_mtu=None,
                 dataplane={"underlay": {"ifname": "eth0"}}, route_via={})  # fmt: skip
    assert not failed(findings(gw))
    assert any("host-gw: no tunnel" in x.message for x in findings(gw))


def test_neighbours_fit_the_table() -> None:
    found = findings(healthy(gc_thresh=(128, 512, 1024)))
    (line,) = [x for x in found if x.check == "neighbours"]
    assert line.level == OK and "2 peer(s)" in line.message and "gc_thresh3 = 1024" in line.message


def test_more_peers_than_the_neighbour_table_holds() -> None:
    many = [Peer(f"p{i}", "alive", f"10.99.{i // 250}.{i % 250 + 1}", 1500) for i in range(800)]
    dead = [Peer(f"d{i}", "dead", "10.98.0.1", 1500) for i in range(5000)]  # take no entry
    f = healthy(gc_thresh=(128, 512, 1024), peers=many + dead, route_via={})
    (line,) = [x for x in findings(f) if x.check == "neighbours"]
    assert (line.level, line.peer) == (WARN, None)  # 800 fit, but not with the margin
    assert "sysctl -w net.ipv4.neigh.default.gc_thresh1=1024" in line.fix
    assert "gc_thresh3=4096" in line.fix
    f = replace(f, gc_thresh=(128, 512, 700))
    assert [x.level for x in findings(f) if x.check == "neighbours"] == [FAIL]


def test_sends_lost_to_a_full_neighbour_table_fail_the_check() -> None:
    f = healthy(gc_thresh=(128, 512, 1024), lost_sends={"enobufs": 12, "econnrefused": 1})
    (line,) = [x for x in findings(f) if x.check == "neighbours"]
    assert line.level == FAIL and line.message.startswith("12 gossip send(s) failed with ENOBUFS")
    assert "gc_thresh3=" in line.fix
    # Other reasons are not this check's business.
    f = healthy(gc_thresh=(128, 512, 1024), lost_sends={"econnrefused": 1})
    assert [x.level for x in findings(f) if x.check == "neighbours"] == [OK]


def test_a_namespace_without_the_thresholds_still_reports_enobufs() -> None:
    assert not [x for x in findings(healthy(gc_thresh=None)) if x.check == "neighbours"]
    f = healthy(gc_thresh=None, lost_sends={"enobufs": 3})
    (line,) = [x for x in findings(f) if x.check == "neighbours"]
    assert line.level == FAIL and "not visible here" in line.message


def test_a_missing_kernel_module_fails_with_the_data_planes_line() -> None:
    line = "kernel has no ipip support (module ipip): Operation not supported"
    f = healthy(dataplane={"device": "meshd.ipip", "errors": [{"at": 1.0, "error": line}]})
    (kernel,) = [x for x in findings(f) if x.check == "kernel"]
    assert (kernel.level, kernel.message) == (FAIL, line)


# --- dual-stack ----------------------------------------------------------------------------------


def test_ipv6_forwarding_is_checked_when_the_node_has_an_ipv6_subnet() -> None:
    assert not [x for x in findings(healthy(ip6_forward="0")) if x.level != OK]  # IPv4 only
    dual = healthy(ipv6=True, ip6_forward="0")
    line = next(x for x in findings(dual) if x.check == "forwarding")
    assert line.level == FAIL
    assert line.message.startswith(
        "net.ipv6.conf.all.forwarding = 0: this host does not forward IPv6"
    )
    assert line.fix.startswith("sysctl -w net.ipv6.conf.all.forwarding=1")
    ok = next(x for x in findings(replace(dual, ip6_forward="1")) if x.check == "forwarding")
    assert ok.level == OK
    assert ok.message == "net.ipv4.ip_forward = 1, net.ipv6.conf.all.forwarding = 1"
    # An IPv6-only node forwards no IPv4 container traffic: its IPv4 setting is its own business.
    v6only = healthy(ipv6=True, ipv6_only=True, ip_forward="0", ip6_forward="1")
    assert bad(findings(v6only)) == set()


def test_an_ipv6_underlay_checks_the_ipv6_neighbour_table() -> None:
    f = healthy(
        underlay_families=(6,),
        gc_thresh=(128, 512, 1024),
        gc_thresh6=(128, 512, 40),
    )
    line = next(x for x in findings(f) if x.check == "neighbours")
    assert line.level == WARN and "IPv6 gc_thresh3 = 40" in line.message
    assert "sysctl -w net.ipv6.neigh.default.gc_thresh1=" in line.fix and "ipv4" not in line.fix
    # Lost sends with ENOBUFS blame gossip's family (here IPv6).
    lost = replace(f, gc_thresh6=(128, 512, 1024), lost_sends={"enobufs": 4})
    line = next(x for x in findings(lost) if x.check == "neighbours")
    assert line.level == FAIL and "net.ipv6.neigh" in line.fix


def test_a_dual_stack_underlay_checks_both_tables() -> None:
    f = healthy(underlay_families=(4, 6), gc_thresh=(128, 512, 1024), gc_thresh6=(128, 512, 1024))
    lines = [x for x in findings(f) if x.check == "neighbours"]
    assert [x.level for x in lines] == [OK, OK]
    assert "IPv6" not in lines[0].message and "IPv6 gc_thresh3 = 1024" in lines[1].message
