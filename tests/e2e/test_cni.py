"""meshd under the real flannel CNI plugin, as Kubernetes runs it (docs/kubernetes.md).

The flannel plugin (flannel-io/cni-plugin) is looked for at ``$MESHD_CNI_FLANNEL`` or
``/opt/cni/bin/flannel`` (``.ci/run`` points the variable at ``../shared/cni/flannel``); bridge and
host-local come from Debian's containernetworking-plugins. A missing plugin fails the tests with
one line saying where to put it: they never skip.

Per backend, on a 3-host lab whose pods the plugins attach (``Lab(cni=True)``) and whose daemons
masquerade (``ipmasq = true``): every daemon writes its own flannel subnet file; CNI ADD attaches a
pod on every host with the pod MTU = FLANNEL_MTU; pods ping across every host pair; the receiving
pod sees the sending pod's own address (the issue's bug: sources lost to the bridge plugin's
masquerade); a pod reaches a machine outside the cluster network that has no route back to it
(masqueraded by meshd); CNI DEL leaves no veth, no address lease and no plugin state behind.

Dual-stack (vxlan over an IPv4 underlay; host-gw over a dual-stack underlay, whose IPv6 routes need
an IPv6 next hop): each subnet file has the ``FLANNEL_IPV6_*`` lines, from which the plugin makes a
second host-local range and a route to the IPv6 cluster network; every pod gets an IPv4 and an
IPv6 address, pods ping across every host pair over both families and see each other's own IPv6
address; IPv6 leaving the cluster network is masqueraded by meshd's ``ip6`` table; CNI DEL
releases both leases.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.errors import LabError
from meshd.lab import Host, Lab, format_matrix, leftover_namespaces, ns_exec
from meshd.lab.cni import find_flannel

from .conftest import FAST_GOSSIP, all_alive, cli, keygen, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]

MTU = {"vxlan": 1450, "host-gw": 1500}  # the lab's underlay is 1500; vxlan takes 50


def plugin() -> Path:
    """The flannel plugin, or this test FAILS (never skips) with one line saying where to put it."""
    problem = ""
    try:
        return find_flannel()
    except LabError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def link(ns: str, dev: str) -> dict[str, Any]:
    return dict(json.loads(ns_exec(ns, ["ip", "-j", "-d", "link", "show", "dev", dev]).stdout)[0])


def ports(ns: str, bridge: str = "cni0") -> list[str]:
    """The links enslaved to ``bridge`` in ``ns`` (the pods' veth ends)."""
    out = ns_exec(ns, ["ip", "-j", "link", "show", "master", bridge]).stdout
    return [str(x["ifname"]) for x in json.loads(out or "[]")]


def leases(lab: Lab, h: Host) -> set[str]:
    """The addresses host-local has leased on ``h`` (one file per address, either family)."""
    d = lab.cni_dir(h) / "ipam" / "meshnet"
    out = set()
    for p in d.iterdir() if d.exists() else ():
        try:
            out.add(str(ipaddress.ip_address(p.name)))
        except ValueError:
            continue  # last_reserved_ip.0, lock
    return out


def global_addresses(ns: str, dev: str, family: int) -> list[str]:
    out = ns_exec(ns, ["ip", f"-{family}", "-j", "addr", "show", "dev", dev]).stdout
    return [
        f"{a['local']}/{a['prefixlen']}"
        for i in json.loads(out or "[]")
        for a in i.get("addr_info", [])
        if a.get("scope") == "global"
    ]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_flannel_plugin_on_meshd(
    make_lab: Callable[..., Lab], tmp_path: Path, backend: str
) -> None:
    flannel = plugin()
    lab = make_lab(f"cni{backend[:2]}", 3, cni=True, outside=True)
    out_ns, out_ip = lab.outside_ns, lab.outside_ip
    assert out_ns is not None and out_ip is not None
    key = keygen(tmp_path / "key")
    cfg = tmp_path / "cni.toml"
    cfg.write_text("ipmasq = true\n" + FAST_GOSSIP)
    lab.start_daemons(key_file=key, backend=backend, extra_args=["--config", str(cfg)])
    names = [h.name for h in lab.hosts]
    wait_until(all_alive(lab, names), 30, "every member alive everywhere", lab)

    # Each daemon's own subnet file, in flannel's format, with the cluster network.
    envs = {h.name: lab.wait_subnet_env(h) for h in lab.hosts}
    for h in lab.hosts:
        assert envs[h.name] == {
            "FLANNEL_NETWORK": lab.pod_network,
            "FLANNEL_SUBNET": f"{h.gateway}/24",
            "FLANNEL_MTU": str(MTU[backend]),
            "FLANNEL_IPMASQ": "true",
        }

    pods = [lab.cni_add(h, plugin=flannel) for h in lab.hosts]
    for h, pod in zip(lab.hosts, pods, strict=True):
        assert pod.ip == h.container_ip
        eth0 = link(pod.ns, "eth0")
        assert eth0["mtu"] == MTU[backend], "pod MTU must be FLANNEL_MTU"
        assert link(h.ns, "cni0")["mtu"] == MTU[backend]
        # The plugin's routes: the cluster network and the default, both via the pod's bridge.
        dsts = {r["dst"] for r in pod.result.get("routes", [])}
        assert {lab.pod_network, "0.0.0.0/0"} <= dsts
        status = cli(lab.daemons[h.name], "status", "--json")
        assert status["masquerade"]["enabled"] and status["masquerade"]["subnet"] == h.subnet

    wait_until(lambda: all(lab.ping_matrix(count=1, timeout=1).values()), 30, "pod pings", lab)

    # The bug: with ipmasq the receiving pod must see the sender pod's own address (the
    # bridge plugin masquerades nothing, and meshd's rules leave pod-to-pod alone).
    for a in pods:
        for b in pods:
            if a is not b:
                seen = lab.seen_source(a.ns, b.ns, b.ip)
                assert seen == a.ip, f"{a.host.name} -> {b.host.name}: arrived as {seen}"

    # Leaving the cluster network: masqueraded to the host's address, so the outside machine,
    # which has no route to the pods, can answer.
    for h, pod in zip(lab.hosts, pods, strict=True):
        assert lab.seen_source(pod.ns, out_ns, out_ip) == h.underlay_ip
    assert lab.tcp_transfer(pods[0].ns, pods[-1].ns, pods[-1].ip, 1 << 20)

    # CNI DEL: no veth, no address lease, no plugin state; a second DEL is harmless (CNI spec).
    assert all(len(ports(h.ns)) == 1 for h in lab.hosts)
    for pod in pods:
        lab.cni_del(pod, plugin=flannel)
        lab.cni_call(pod.host, "DEL", pod.container_id, pod.ns, flannel)
    for h, pod in zip(lab.hosts, pods, strict=True):
        assert ports(h.ns) == []
        assert "eth0" not in ns_exec(pod.ns, ["ip", "-o", "link"]).stdout
        assert leases(lab, h) == set()
        assert not (lab.cni_dir(h) / "flannel" / pod.container_id).exists()
    assert not lab.ping(pods[0].ns, pods[1].ip, timeout=0.5)

    # A restart keeps the table as it is (adopted, no gap); ipmasq switched off removes it.
    h1 = lab.hosts[0]

    def nat_tables() -> bool:
        return "ip meshd-nat" in ns_exec(h1.ns, ["nft", "list", "tables"]).stdout

    lab.stop_daemon(h1.name)
    assert nat_tables()
    lab.start_daemon(h1, key_file=key, backend=backend, extra_args=["--config", str(cfg)])
    wait_until(all_alive(lab, names), 30, "h1 back", lab)
    assert cli(lab.daemons[h1.name], "status", "--json")["masquerade"]["adopted"]
    lab.stop_daemon(h1.name)
    plain = tmp_path / "plain.toml"
    plain.write_text(FAST_GOSSIP)
    lab.start_daemon(h1, key_file=key, backend=backend, extra_args=["--config", str(plain)])
    wait_until(lambda: not nat_tables(), 30, "ip meshd-nat removed", lab)
    wait_until(
        lambda: lab.wait_subnet_env(h1).get("FLANNEL_IPMASQ") == "false", 30, "FLANNEL_IPMASQ", lab
    )


@pytest.mark.parametrize(
    ("backend", "underlay"),
    [("vxlan", "ipv4"), ("host-gw", "dual")],
    ids=["vxlan-ipv4-underlay", "host-gw-dual-underlay"],
)
def test_flannel_plugin_dual_stack(
    make_lab: Callable[..., Lab], tmp_path: Path, backend: str, underlay: str
) -> None:
    flannel = plugin()
    lab = make_lab(f"cd{backend[0]}", 3, cni=True, outside=True, ipv6=True,
                   underlay_family=underlay)  # fmt: skip
    assert lab.outside_ns is not None and lab.outside_ip is not None
    key = keygen(tmp_path / "key")
    cfg = tmp_path / "cni.toml"
    cfg.write_text("ipmasq = true\n" + FAST_GOSSIP)
    lab.start_daemons(key_file=key, backend=backend, extra_args=["--config", str(cfg)])
    names = [h.name for h in lab.hosts]
    wait_until(all_alive(lab, names), 30, "every member alive everywhere", lab)

    # flanneld's six lines: each family's cluster network and this node's subnet.
    for h in lab.hosts:
        assert lab.wait_subnet_env(h) == {
            "FLANNEL_NETWORK": lab.pod_network,
            "FLANNEL_SUBNET": f"{h.gateway}/24",
            "FLANNEL_IPV6_NETWORK": lab.pod_network6,
            "FLANNEL_IPV6_SUBNET": f"{h.gateway6}/64",
            "FLANNEL_MTU": str(MTU[backend]),
            "FLANNEL_IPMASQ": "true",
        }

    pods = [lab.cni_add(h, plugin=flannel) for h in lab.hosts]
    for h, pod in zip(lab.hosts, pods, strict=True):
        # host-local's two ranges: the second address of each subnet, the first on the bridge.
        assert (pod.ip, pod.ip6) == (h.container_ip, h.container_ip6)
        assert global_addresses(pod.ns, "eth0", 6) == [f"{h.container_ip6}/64"]
        assert global_addresses(pod.ns, "eth0", 4) == [f"{h.container_ip}/24"]
        assert f"{h.gateway6}/64" in global_addresses(h.ns, "cni0", 6)
        assert link(pod.ns, "eth0")["mtu"] == MTU[backend]
        # The plugin's routes: each cluster network, and a default per family (isDefaultGateway).
        dsts = {r["dst"] for r in pod.result.get("routes", [])}
        assert dsts == {lab.pod_network, lab.pod_network6, "0.0.0.0/0", "::/0"}
        r6 = ns_exec(pod.ns, ["ip", "-6", "route", "show", str(lab.pod_network6)]).stdout
        assert f"via {h.gateway6} dev eth0" in r6, r6
        assert leases(lab, h) == {h.container_ip, h.container_ip6}
        status = cli(lab.daemons[h.name], "status", "--json")
        assert status["masquerade6"]["enabled"]
        assert status["masquerade6"]["subnet"] == h.subnet6

    def full() -> bool:
        return all(all(lab.ping_matrix(count=1, timeout=1, family=f).values()) for f in (4, 6))

    wait_until(full, 30, "pod pings over IPv4 and IPv6", lab)
    for family in (4, 6):
        m = lab.ping_matrix(count=2, family=family)
        assert all(m.values()), f"IPv{family}\n" + format_matrix(m, names)

    # Pod to pod over IPv6: the receiver sees the sender pod's own address (no masquerade).
    for a in pods:
        for b in pods:
            if a is not b:
                seen = lab.seen_source(a.ns, b.ns, str(b.ip6))
                assert seen == a.ip6, f"{a.host.name} -> {b.host.name}: arrived as {seen}"
    assert lab.tcp_transfer(pods[0].ns, pods[-1].ns, str(pods[-1].ip6), 1 << 20)

    # Leaving the cluster network, per family, masqueraded to the host's underlay address (the
    # outside machine has an IPv6 address only on a dual-stack underlay).
    for h, pod in zip(lab.hosts, pods, strict=True):
        assert lab.seen_source(pod.ns, lab.outside_ns, lab.outside_ip) == h.underlay_ip
        if lab.outside_ip6 is not None:
            seen6 = lab.seen_source(pod.ns, lab.outside_ns, lab.outside_ip6)
            assert seen6 == h.underlay_ip6, f"{h.name} pod -> outside over IPv6: {seen6}"

    # CNI DEL releases both leases and the veth; the pod is gone for both families.
    for pod in pods:
        lab.cni_del(pod, plugin=flannel)
    for h, pod in zip(lab.hosts, pods, strict=True):
        assert leases(lab, h) == set()
        assert ports(h.ns) == []
        assert not (lab.cni_dir(h) / "flannel" / pod.container_id).exists()
    assert not lab.ping(pods[0].ns, str(pods[1].ip6), timeout=0.5)


@pytest.mark.parametrize(
    ("backend", "underlay", "mtu"),
    [("vxlan", [], 1450), ("host-gw", [], 1500), ("vxlan", ["--underlay", "ipv6"], 1430)],
    ids=["vxlan", "host-gw-dual-underlay", "vxlan-ipv6-underlay"],
)
def test_meshd_lab_cni_ipv6(backend: str, underlay: list[str], mtu: int) -> None:
    plugin()
    prefix = f"lc{os.getpid() % 100000}"
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "lab", "--cni", "--ipv6", "--backend", backend, *underlay],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MESHD_LAB_PREFIX": prefix},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "h3: pod 10.244.3.2 fd00:10:244:3::2 attached by" in r.stdout
    assert f"FLANNEL_IPV6_NETWORK=fd00:10:244::/56 FLANNEL_MTU={mtu} " in r.stdout
    assert "container -> container ping over IPv6" in r.stdout
    assert f"OK: all 12 container pairs ping through {backend} (IPv4 and IPv6)" in r.stdout
    assert "4 MiB over TCP/IPv6 h1 -> h3 container: ok" in r.stdout
    assert leftover_namespaces(prefix) == []
