"""The backend objects (meshd/dataplane/backends/) and the registry everyone reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from records import UL, rec  # tests/unit is on sys.path (pytest prepend import mode)

from meshd.config import build
from meshd.dataplane import apply, backends, model
from meshd.dataplane.backends import base
from meshd.dataplane.backends.base import Backend, Encapsulation, PeerEntries, Refusal, Site
from meshd.dataplane.backends.wireguard import b64
from meshd.dataplane.firewall import Firewall
from meshd.dataplane.objects import DeviceSpec, Fdb, Neigh, Route, WgPeer
from meshd.errors import ConfigError
from meshd.gossip.record import NodeRecord, RecordError, vtep_mac_for


def site(backend: str = "vxlan", **kw: Any) -> Site:
    kw.setdefault("onlink", ((4, 0x0A630000, 0x0A6300FF),))  # 10.99.0.0/24
    return Site(rec(1, backend), UL, **kw)


# --- the registry --------------------------------------------------------------------------------


def test_registry_names_and_lookup() -> None:
    assert backends.names() == ("host-gw", "ipip", "vxlan", "wireguard")
    assert [backends.get(n).name for n in backends.names()] == list(backends.names())
    with pytest.raises(ValueError, match=r"^'gre' is not one of host-gw, ipip, vxlan, wireguard$"):
        backends.get("gre")


@pytest.mark.parametrize("name", backends.names())
def test_every_backend_declares_a_consistent_order(name: str) -> None:
    be = backends.get(name)
    assert set(be.peer_objects) <= set(base.PEER_OBJECTS)
    # The route goes last: its (onlink) gateway must resolve before traffic uses it.
    assert be.peer_objects[-1] == "route"
    steps = be.steps()
    runnable = set(apply._STEPS) | set(apply.WG_STEPS)
    assert set(steps) <= runnable, "apply.py cannot run a step the backend declares"
    dels = [s for s in steps if s.endswith("_del")]
    assert steps[: len(dels)] == tuple(dels), "removals run first"


@pytest.mark.parametrize("name", backends.names())
def test_device_mtu_is_the_underlay_minus_the_overhead(name: str) -> None:
    be = backends.get(name)
    dev = be.device(site(name))
    if dev is None:
        assert be.overhead == 0
    else:
        assert dev.mtu == UL.mtu - be.overhead
        assert dev.addresses == ("10.244.1.0/32",)
        assert dev.kind == be.kernel_module


# --- host-gw -------------------------------------------------------------------------------------


def test_hostgw() -> None:
    be = backends.get("host-gw")
    assert (be.overhead, be.kernel_module, be.peer_objects) == (0, None, ("route",))
    assert be.steps() == ("route_del", "route_add", "route_replace")
    assert be.device(site("host-gw")) is None
    assert be.encapsulation(8472) is None and be.vtep_mac(b"\x01" * 16) is None
    assert be.entries(rec(2, "host-gw"), site("host-gw"), None) == PeerEntries(
        (Route("10.244.2.0/24", "10.99.0.2", "eth0"),)
    )
    near, far = rec(2, "host-gw"), rec(3, "host-gw", public_ip="192.0.2.3")
    refused = be.refuse([near, far], site("host-gw"))
    assert list(refused) == ["n3"] and refused["n3"].flag == "not-on-link"
    assert "192.0.2.3 is not on-link on eth0" in refused["n3"].reason
    assert be.refuse([near], site("host-gw", onlink=())) == {
        "n2": Refusal("not-on-link", "10.99.0.2 is not on-link on eth0; host-gw needs one L2")
    }


# --- ipip ----------------------------------------------------------------------------------------


def test_ipip() -> None:
    be = backends.get("ipip")
    assert (be.overhead, be.kernel_module, be.peer_objects) == (20, "ipip", ("route",))
    dev = be.device(site("ipip"))
    assert dev == DeviceSpec(
        "meshd.ipip",
        "ipip",
        1480,
        None,
        ("10.244.1.0/32",),
        (("ipip_local", "10.99.0.1"), ("ipip_link", 2), ("ipip_ttl", 64)),
    )
    assert be.entries(rec(2, "ipip"), site("ipip"), dev) == PeerEntries(
        (Route("10.244.2.0/24", "10.99.0.2", "meshd.ipip", onlink=True),)
    )
    assert be.refuse([rec(2, "ipip"), rec(3, "ipip", public_ip="192.0.2.3")], site("ipip")) == {}
    assert be.encapsulation(8472) == Encapsulation("ip", 4)


# --- vxlan ---------------------------------------------------------------------------------------


def test_vxlan() -> None:
    be = backends.get("vxlan")
    assert (be.overhead, be.kernel_module, be.peer_objects) == (
        50,
        "vxlan",
        ("neigh", "fdb", "route"),
    )
    assert be.steps() == (
        "route_del",
        "fdb_del",
        "neigh_del",
        "neigh_set",
        "fdb_set",
        "route_add",
        "route_replace",
    )
    s = site("vxlan", vni=42, port=4789)
    dev = be.device(s)
    assert dev is not None
    assert (dev.name, dev.kind, dev.mtu, dev.mac) == (
        "meshd.42",
        "vxlan",
        1450,
        vtep_mac_for(b"\x01" * 16),
    )
    assert dict(dev.params) == {
        "vxlan_id": 42,
        "vxlan_local": "10.99.0.1",
        "vxlan_link": 2,
        "vxlan_port": 4789,
        "vxlan_learning": 0,
    }
    p2 = rec(2)
    mac = vtep_mac_for(p2.node_id)
    assert be.entries(p2, s, dev) == PeerEntries(
        (Route("10.244.2.0/24", "10.244.2.0", "meshd.42", onlink=True),),
        (Neigh("10.244.2.0", mac),),
        Fdb(mac, "10.99.0.2"),
    )
    assert be.encapsulation(4789) == Encapsulation("udp", 4789)
    assert be.vtep_mac(p2.node_id) == mac


def wgrec(i: int, **kw: Any) -> NodeRecord:
    return rec(i, "wireguard", **{"wg_key": bytes([0x80 + i]) * 32, **kw})


def test_wireguard() -> None:
    be = backends.get("wireguard")
    assert (be.overhead, be.kernel_module, be.peer_objects) == (
        60,
        "wireguard",
        ("wgpeer", "route"),
    )
    # The peer before its route: a route into the device with no peer only drops packets.
    assert be.steps() == ("route_del", "wgpeer_del", "wgpeer_set", "route_add", "route_replace")
    s = Site(wgrec(1), UL, wg_port=51999)
    dev = be.device(s)
    assert dev is not None
    assert (dev.name, dev.kind, dev.mtu, dev.mac, dev.settable) == (
        "meshd.wg",
        "wireguard",
        1440,
        None,
        True,
    )
    assert dev.addresses == ("10.244.1.0/32",)
    assert dict(dev.params) == {"listen_port": 51999, "public_key": b64(bytes([0x81]) * 32)}
    p2 = wgrec(2)
    assert be.entries(p2, s, dev) == PeerEntries(
        (Route("10.244.2.0/24", "", "meshd.wg"),),
        wgpeer=WgPeer(b64(p2.wg_key), "10.99.0.2:51999", ("10.244.2.0/24",)),
    )
    assert str(Route("10.244.2.0/24", "", "meshd.wg")) == "10.244.2.0/24 dev meshd.wg"
    assert be.encapsulation(51999) == Encapsulation("udp", 51999)
    assert be.vtep_mac(p2.node_id) is None


def test_wireguard_refuses_no_key_our_key_and_a_second_peer_with_the_same_key() -> None:
    be = backends.get("wireguard")
    a = wgrec(2)
    b, c, d = wgrec(3, wg_key=a.wg_key), wgrec(4, wg_key=b""), wgrec(5, wg_key=wgrec(1).wg_key)
    assert be.refuse([a, b, c, d], Site(wgrec(1), UL)) == {
        "n3": Refusal("refused", f"WireGuard key {b64(a.wg_key)} is also n2's"),
        "n4": Refusal("refused", "announces no WireGuard key"),
        "n5": Refusal("refused", "announces this node's WireGuard key"),
    }


def test_wireguard_plan_adds_changes_and_holds_removals_until_synced() -> None:
    local = wgrec(1)
    peers = [model.PeerView(wgrec(i), "alive", 0.0) for i in (2, 3)]
    d = model.desired_state(
        backend="wireguard", local=local, underlay=UL, peers=peers, now=1.0, synced=False,
        reap_after=60.0,
    )  # fmt: skip
    assert set(d.wgpeers) == {b64(wgrec(2).wg_key), b64(wgrec(3).wg_key)}
    assert set(d.routes) == {"10.244.2.0/24", "10.244.3.0/24"}
    # Nothing there yet: the device is created and configured, both peers then routes added.
    plan = model.diff(d, model.EMPTY_OBSERVED)
    assert [op.action for op in plan.device_ops] == ["create", "set-params", "addr-add", "set-up"]
    assert len(plan.wgpeer_set) == 2 and len(plan.route_add) == 2
    # Observed: one right, one with a stale endpoint, one nobody wants (held: not synced).
    stale = WgPeer(b64(wgrec(3).wg_key), "10.99.0.33:51820", ("10.244.3.0/24",))
    gone = WgPeer(b64(bytes([9]) * 32), "10.99.0.9:51820", ("10.244.9.0/24",))
    assert d.device is not None
    obs_dev = model.ObservedDevice(
        "meshd.wg", 7, "wireguard", 1440, None, True, ("10.244.1.0/32",), dict(d.device.params)
    )
    observed = model.Observed(
        devices={"meshd.wg": obs_dev},
        routes=dict(d.routes),
        neighs={},
        fdb=frozenset(),
        wgpeers={**{k: w for k, w in d.wgpeers.items() if k != stale.public_key},
                 stale.public_key: stale, gone.public_key: gone},
    )  # fmt: skip
    plan = model.diff(d, observed)
    assert plan.device_ops == () and plan.wgpeer_set == (d.wgpeers[stale.public_key],)
    assert plan.wgpeer_del == () and plan.removals_held == 1
    plan = model.diff(replace(d, allow_remove=True), observed)
    assert plan.wgpeer_del == (gone,)
    # Another listen port or key on the device: set in place, never recreated.
    wrong = replace(obs_dev, params={"listen_port": 1, "public_key": "x"})
    plan = model.diff(d, replace(observed, devices={"meshd.wg": wrong}))
    assert [op.action for op in plan.device_ops] == ["set-params"]
    assert "listen_port 51820" in plan.device_ops[0].arg


def test_vxlan_refuses_no_mac_and_a_second_peer_with_the_same_mac() -> None:
    be = backends.get("vxlan")
    a, b, c = rec(2), rec(3, vtep_mac=rec(2).vtep_mac), rec(4, vtep_mac=None)
    assert be.refuse([a, b, c], site()) == {
        "n3": Refusal("refused", f"VTEP MAC {a.vtep_mac} is also n2's"),
        "n4": Refusal("refused", "announces no VTEP MAC"),
    }
    # The first in the model's order keeps the MAC.
    assert list(be.refuse([b, a], site())) == ["n2"]


def test_the_local_mac_comes_from_the_record_or_the_node_id() -> None:
    be = backends.get("vxlan")
    own = site()
    assert own.local.vtep_mac is not None
    other = replace(own, local=replace(own.local, vtep_mac="02:00:00:00:00:07"))
    derived = replace(own, local=replace(own.local, vtep_mac=None))
    assert [d.mac for d in map(be.device, (own, other, derived)) if d] == [
        own.local.vtep_mac,
        "02:00:00:00:00:07",
        vtep_mac_for(own.local.node_id),
    ]


# --- one registry, read by config, CLI, firewall and the model -----------------------------------


class Tunnel(Backend):
    """A made-up fourth backend: only routes, over a device, UDP 51820."""

    name = "tunnel"
    overhead = 60
    kernel_module = "tunnel"

    def device(self, site: Site) -> DeviceSpec:
        return DeviceSpec(
            "meshd.tun", "tunnel", site.underlay.mtu - self.overhead, None, ("10.244.1.0/32",)
        )

    def entries(self, peer: NodeRecord, site: Site, device: DeviceSpec | None) -> PeerEntries:
        return PeerEntries((Route(peer.subnet, peer.public_ip, "meshd.tun", onlink=True),))

    def refuse(self, peers: Sequence[NodeRecord], site: Site) -> dict[str, Refusal]:
        return {p.name: Refusal("refused", "odd") for p in peers if p.port % 2}

    def encapsulation(self, port: int) -> Encapsulation:
        return Encapsulation("udp", 51820)


@pytest.fixture
def tunnel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """Registers ``Tunnel`` the way its one registry line would."""
    be = Tunnel()
    monkeypatch.setattr(backends, "_BY_NAME", {**backends._BY_NAME, be.name: be})
    yield be


def test_a_registered_backend_is_accepted_everywhere(tunnel: Backend, tmp_path: Path) -> None:
    assert "tunnel" in backends.names()
    assert build({"subnet": "10.244.1.0/24", "backend": "tunnel"}).backend == "tunnel"
    fw = Firewall("tunnel")
    assert fw.active and fw.match == "udp dport 51820"
    peers = [
        model.PeerView(rec(2, "tunnel"), "alive", 0.0),
        model.PeerView(rec(3, "tunnel", port=7951), "alive", 0.0),
        model.PeerView(rec(4), "alive", 0.0),
    ]
    d = model.desired_state(
        backend="tunnel",
        local=rec(1, "tunnel"),
        underlay=UL,
        peers=peers,
        now=1.0,
        synced=True,
        reap_after=300.0,
    )
    assert d.device is not None and d.mtu == 1440
    assert d.routes == {"10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "meshd.tun", True)}
    assert d.flags == {"n3": "refused", "n4": "incompatible"}
    assert d.steps == ("route_del", "route_add", "route_replace")


def test_an_unregistered_backend_is_refused_by_config_and_firewall() -> None:
    with pytest.raises(ConfigError, match="backend: 'tunnel' is not one of host-gw, ipip, vxlan"):
        build({"subnet": "10.244.1.0/24", "backend": "tunnel"})
    with pytest.raises(ConfigError, match="backend: 'tunnel' is not one of"):
        Firewall("tunnel")


# --- the record carries any well-formed backend name; the data plane judges it --------------------


def test_record_keeps_protocol_1_codes_for_the_first_three_backends() -> None:
    for code, name in enumerate(("host-gw", "ipip", "vxlan")):
        r = rec(2, name)
        wire = r.to_wire()
        assert wire[5] == code  # what members running protocol 1 read
        assert NodeRecord.from_wire(wire) == r


def test_record_carries_another_backend_by_name() -> None:
    r = rec(2, "wireguard")
    wire = r.to_wire()
    assert wire[5] == "wireguard"
    assert NodeRecord.from_wire(wire) == r
    assert NodeRecord.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "bad", ["VXLAN", "", "9lives", "a" * 17, "wire guard", 3, -1, True, None, b"vxlan"]
)
def test_record_rejects_a_malformed_backend(bad: object) -> None:
    wire = rec(2).to_wire()
    wire[5] = bad
    with pytest.raises(RecordError, match="^backend: "):
        NodeRecord.from_wire(wire)
