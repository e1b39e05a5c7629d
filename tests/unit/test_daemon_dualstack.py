"""meshd/daemon.py with two families: the record it announces, where gossip binds, the seeds it
resolves and the subnets it refuses (the underlay and the data plane faked; no root)."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from pathlib import Path
from typing import Any

import pytest

import meshd.daemon
from meshd.config import build
from meshd.daemon import Daemon, check_subnet
from meshd.dataplane.model import Underlay
from meshd.errors import ConfigError
from meshd.gossip.record import NodeRecord
from meshd.gossip.security import generate_key
from meshd.transport import Transport


class FakeReconciler:
    def __init__(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        self.cfg = cfg

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"mtu": 1450}


def start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ul: Underlay,
    **values: Any,
) -> tuple[Daemon, dict[str, Any], list[tuple[str, int]]]:
    """Run the daemon's setup against ``ul``; returns it (closed again), what discovery was
    asked and what the transport was told to bind."""
    asked: dict[str, Any] = {}
    bound: list[tuple[str, int]] = []

    async def underlay(iface: str | None, public_ip: str | None, **kw: Any) -> Underlay:
        asked.update(iface=iface, public_ip=public_ip, **kw)
        return ul

    class LoopbackTransport(Transport):
        def __init__(self, node: Any, sealer: Any, bind: tuple[str, int], **kw: Any) -> None:
            bound.append(bind)  # not an address of this machine: loopback of its family
            super().__init__(node, sealer, ("::1" if ":" in bind[0] else "127.0.0.1", 0), **kw)

    monkeypatch.setattr(meshd.daemon, "discover_underlay", underlay)
    monkeypatch.setattr(meshd.daemon, "Transport", LoopbackTransport)
    monkeypatch.setattr(meshd.daemon, "Reconciler", FakeReconciler)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no nft cleanup
    key = tmp_path / "key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    cfg = build(
        {
            "name": "h1",
            "key_file": key,
            "state_dir": tmp_path / "state",
            "socket": tmp_path / "meshd.sock",
            "subnet_env": tmp_path / "subnet.env",
            **values,
        }
    )
    daemon = Daemon(cfg)

    async def main() -> None:
        await daemon.setup()
        await daemon._close()

    asyncio.run(main())
    return daemon, asked, bound


def test_a_dual_stack_node_announces_both_families(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ul = Underlay("eth0", 2, "192.0.2.1", 24, 1500, "2001:db8::1", 64)
    d, asked, bound = start(
        tmp_path,
        monkeypatch,
        ul,
        subnet=["10.244.1.0/24", "fd00:10:244:1::/64"],
        network=["10.244.0.0/16", "fd00:10:244::/48"],
    )
    local = d.service.node.local
    assert (local.public_ip, local.public_ip6) == ("192.0.2.1", "2001:db8::1")
    assert local.subnets == ("10.244.1.0/24", "fd00:10:244:1::/64")
    # Discovery is asked for the IPv6 address beside the IPv4 one (host-gw routes over it).
    assert asked["dual_stack"] is True and asked["public_ip6"] is None
    assert bound == [("192.0.2.1", d.cfg.port)]  # gossip over IPv4
    assert d.reconciler is not None
    rcfg = d.reconciler.cfg
    assert (rcfg.network, rcfg.network6) == ("10.244.0.0/16", "fd00:10:244::/48")
    assert d.service.underlay.get("ip6") == "2001:db8::1"
    src = d._doctor_sources()
    assert src.expected_env() == {
        "FLANNEL_SUBNET": "10.244.1.1/24",
        "FLANNEL_IPV6_SUBNET": "fd00:10:244:1::1/64",
        "FLANNEL_MTU": "1450",
    }
    assert (src.subnet_families, src.underlay_families) == ((4, 6), (4, 6))


def test_an_ipv6_only_node_gossips_over_ipv6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ul = Underlay("eth0", 2, "2001:db8::5", 64, 1500)
    d, asked, bound = start(
        tmp_path, monkeypatch, ul, subnet="fd00:5::/64", public_ip="2001:db8::5"
    )
    local = d.service.node.local
    assert (local.public_ip, local.public_ip6, local.subnet, local.subnet6) == (
        "2001:db8::5",
        None,
        "fd00:5::/64",
        None,
    )
    assert asked["public_ip"] == "2001:db8::5" and asked["public_ip6"] is None
    assert bound == [("2001:db8::5", d.cfg.port)]
    assert d.transport is not None and d.transport.family.name == "AF_INET6"
    assert "ip6" not in d.service.underlay
    src = d._doctor_sources()
    assert src.expected_env() == {"FLANNEL_IPV6_SUBNET": "fd00:5::1/64", "FLANNEL_MTU": "1450"}
    assert (src.subnet_families, src.underlay_families) == ((6,), (6,))


def test_a_given_ipv6_underlay_address_beside_an_ipv4_one_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ul = Underlay("eth0", 2, "192.0.2.1", 24, 1500, "2001:db8::1", 64)
    _, asked, _ = start(
        tmp_path,
        monkeypatch,
        ul,
        subnet="10.244.1.0/24",
        public_ip=["2001:db8::1", "192.0.2.1"],
    )
    assert (asked["public_ip"], asked["public_ip6"], asked["dual_stack"]) == (
        "192.0.2.1",
        "2001:db8::1",
        False,
    )


def test_an_ipv6_network_without_an_ipv6_subnet_allocates_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ul = Underlay("eth0", 2, "192.0.2.1", 24, 1500, "2001:db8::1", 64)
    d, asked, _ = start(
        tmp_path,
        monkeypatch,
        ul,
        subnet="10.244.1.0/24",
        network=["10.244.0.0/16", "fd00:10:244::/48"],
    )
    local = d.service.node.local
    assert local.subnet == "10.244.1.0/24" and local.subnet6 is not None
    net = ipaddress.IPv6Network(local.subnet6)
    assert net.prefixlen == 64 and net.subnet_of(ipaddress.IPv6Network("fd00:10:244::/48"))
    assert [a.version for a in d.allocators] == [6]  # the IPv4 subnet is fixed
    assert asked["dual_stack"] is True  # an IPv6 subnet: its underlay address is wanted too
    assert d._doctor_sources().expected_env() == {}  # not settled: no subnet.env yet


def test_both_families_allocate_and_restart_with_the_same_subnets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ul = Underlay("eth0", 2, "192.0.2.1", 24, 1500, "2001:db8::1", 64)
    nets = {"network": ["10.244.0.0/16", "fd00:10:244::/48"], "subnet_len6": 80}
    d, _, _ = start(tmp_path, monkeypatch, ul, **nets)
    first = d.service.node.local
    assert [a.version for a in d.allocators] == [4, 6]
    assert ipaddress.ip_network(first.subnet).prefixlen == 24
    assert first.subnet6 is not None and ipaddress.ip_network(first.subnet6).prefixlen == 80
    again, _, _ = start(tmp_path, monkeypatch, ul, **nets)  # the same state dir
    assert again.service.node.local.subnets == first.subnets
    assert again.service.node.local.since == first.since
    assert [a.origin for a in again.allocators] == ["kept", "kept"]


def test_a_subnet_on_the_underlay_network_is_refused_per_family() -> None:
    ul = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/64")]
    check_subnet("10.244.1.0/24", None, ul)
    check_subnet("2001:db8:0:1::/64", None, ul)  # beside it, not on it
    with pytest.raises(ConfigError, match="^subnet: 2001:db8::/80 overlaps the underlay network"):
        check_subnet("2001:db8::/80", None, ul)
    with pytest.raises(ConfigError, match="^subnet: fd00:1::/64 is outside network fd00:2::/48"):
        check_subnet("fd00:1::/64", "fd00:2::/48", ul)
    with pytest.raises(ConfigError, match="outside network 10.0.0.0/8"):
        check_subnet("fd00:1::/64", "10.0.0.0/8", ul)


def test_seeds_resolve_to_the_family_gossip_uses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = build(
        {
            "subnet": "fd00:1::/64",
            "seeds": ["[2001:db8::2]:7000", "2001:DB8::3", "192.0.2.9", "[2001:db8::1]:7950"],
        }
    )
    me = NodeRecord("h1", bytes(16), "2001:db8::1", 7950, "fd00:1::/64", "vxlan", None, 1500)
    got = asyncio.run(Daemon(cfg)._resolve_seeds(me))
    # Canonical spelling (as recvfrom reports it); our own address is not a seed.
    assert got == [("2001:db8::2", 7000), ("2001:db8::3", 7950)]
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "seed_unresolved"]
    assert said == [
        "seed 192.0.2.9: an IPv4 address, but this node gossips over IPv6 (2001:db8::1); "
        "skipping it"
    ]


class FakeMasquerade:
    def __init__(self, network: str) -> None:
        self.network = network
        self.family = "ip6" if ":" in network else "ip"
        self.applied: list[str] = []

    async def apply(self, subnet: str, *, force: bool = False) -> bool:
        self.applied.append(subnet)
        return True

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "network": self.network}


@pytest.mark.parametrize(
    ("subnet", "network", "tables"),
    [
        (["10.244.1.0/24", "fd00:1::/64"], ["10.244.0.0/16", "fd00:1::/48"], ("ip", "ip6")),
        ("fd00:1::/64", "fd00:1::/48", ("ip6", None)),  # IPv6-only: its one table
    ],
)
def test_ipmasq_keeps_a_table_per_family(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    subnet: object,
    network: object,
    tables: tuple[str, str | None],
) -> None:
    monkeypatch.setattr(meshd.daemon, "Masquerade", FakeMasquerade)
    ul = Underlay("eth0", 2, "192.0.2.1", 24, 1500, "2001:db8::1", 64)
    d, _, _ = start(tmp_path, monkeypatch, ul, subnet=subnet, network=network, ipmasq=True)
    assert d.masquerade is not None and d.masquerade.family == tables[0]
    assert (d.masquerade6.family if d.masquerade6 else None) == tables[1]
    st = d.service.status()
    assert st["masquerade"]["enabled"] and ("masquerade6" in st) == (tables[1] is not None)


def test_an_ipv6_underlay_watches_the_ipv6_neighbour_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ul = Underlay("eth0", 2, "2001:db8::5", 64, 1500)
    d, _, _ = start(tmp_path, monkeypatch, ul, subnet="fd00:5::/64")
    assert d.membership.neigh_sysctls[2] == "net.ipv6.neigh.default.gc_thresh3"
