"""The data plane per family (pure): dual-stack subnets over an IPv4 underlay, an IPv6-only
underlay, what each backend makes of both, and the diff of IPv6 entries."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from records import UL, rec  # tests/unit is on sys.path (pytest prepend import mode)

from meshd.dataplane import backends, model
from meshd.dataplane.backends.base import Site
from meshd.dataplane.backends.wireguard import b64
from meshd.dataplane.model import Desired, Fdb, Neigh, Observed, ObservedDevice, PeerView, Route
from meshd.dataplane.objects import Underlay, WgPeer, span_any
from meshd.gossip.record import NodeRecord

UL6 = Underlay("eth0", 2, "fd00:99::1", 64, 1500)  # an IPv6-only underlay
ULDS = replace(UL, ip6="fd00:99::1", prefixlen6=64)  # a dual-stack one


def ds(i: int, backend: str = "vxlan", **kw: Any) -> NodeRecord:
    """Node *i* with a dual-stack overlay (10.244.i.0/24 and fd00:244:i::/64) on an IPv4
    underlay that also has fd00:99::i."""
    kw.setdefault("subnet6", f"fd00:244:{i}::/64")
    kw.setdefault("public_ip6", f"fd00:99::{i}")
    return rec(i, backend, **kw)


def v6only_ul(i: int, backend: str = "vxlan", **kw: Any) -> NodeRecord:
    """Node *i* with a dual-stack overlay on an IPv6-only underlay (fd00:99::i)."""
    kw.setdefault("subnet6", f"fd00:244:{i}::/64")
    return rec(i, backend, public_ip=f"fd00:99::{i}", **kw)


def state(
    local: NodeRecord, peers: list[NodeRecord], underlay: Underlay, backend: str = "vxlan"
) -> Desired:
    return model.desired_state(
        backend=backend,
        local=local,
        underlay=underlay,
        peers=[PeerView(p, "alive", 0.0) for p in peers],
        now=1.0,
        synced=True,
        reap_after=300.0,
        onlink=underlay.cidrs(),
    )


# --- vxlan ---------------------------------------------------------------------------------------


def test_vxlan_dual_stack_on_an_ipv4_underlay_one_device_both_families() -> None:
    d = state(ds(1), [ds(2)], ULDS)
    assert d.device is not None
    assert d.device.addresses == ("10.244.1.0/32", "fd00:244:1::/128")
    assert ("vxlan_local", "10.99.0.1") in d.device.params  # the gossip family: IPv4
    assert d.mtu == 1450
    mac = ds(2).vtep_mac
    assert mac is not None
    assert d.routes == {
        "10.244.2.0/24": Route("10.244.2.0/24", "10.244.2.0", "meshd.1", True),
        "fd00:244:2::/64": Route("fd00:244:2::/64", "fd00:244:2::", "meshd.1", True),
    }
    assert d.neighs == {
        "10.244.2.0": Neigh("10.244.2.0", mac),
        "fd00:244:2::": Neigh("fd00:244:2::", mac),
    }
    assert d.fdb == frozenset({Fdb(mac, "10.99.0.2")})  # one FDB entry: one VTEP per peer
    assert d.programmed == ("n2",) and d.flags == {}


def test_vxlan_on_an_ipv6_underlay_local6_fdb_dst6_and_mtu_minus_70() -> None:
    d = state(v6only_ul(1), [v6only_ul(2)], UL6)
    assert d.device is not None
    assert ("vxlan_local6", "fd00:99::1") in d.device.params
    assert "vxlan_local" not in dict(d.device.params)
    assert d.device.mtu == d.mtu == 1500 - 70
    mac = v6only_ul(2).vtep_mac
    assert d.fdb == frozenset({Fdb(str(mac), "fd00:99::2")})
    assert set(d.routes) == {"10.244.2.0/24", "fd00:244:2::/64"}


def test_vxlan_refuses_a_peer_without_an_underlay_address_of_the_devices_family() -> None:
    d = state(v6only_ul(1), [v6only_ul(2), ds(3, public_ip6=None)], UL6)
    assert d.programmed == ("n2",)
    assert d.flags == {"n3": "refused"}
    assert d.reasons["n3"] == (
        "announces no IPv6 underlay address; this node's vxlan device sends over IPv6"
    )


def test_ipv6_entries_diff_like_ipv4_ones() -> None:
    d = state(ds(1), [ds(2), ds(3)], ULDS)
    assert d.device is not None
    dev = ObservedDevice(
        d.device.name, 7, "vxlan", 1450, d.device.mac, True, d.device.addresses,
        dict(d.device.params),
    )  # fmt: skip
    converged = Observed({dev.name: dev}, dict(d.routes), dict(d.neighs), d.fdb)
    assert model.diff(d, converged).empty
    # An IPv6 route and neighbour gone by hand, a stray IPv6 route of ours: put back, removed.
    routes = {k: r for k, r in d.routes.items() if k != "fd00:244:3::/64"}
    stray = Route("fd00:244:9::/64", "fd00:244:9::", "meshd.1", True)
    routes[stray.dst] = stray
    neighs = {k: n for k, n in d.neighs.items() if k != "fd00:244:2::"}
    plan = model.diff(d, Observed({dev.name: dev}, routes, neighs, d.fdb))
    assert plan.route_add == (d.routes["fd00:244:3::/64"],)
    assert plan.neigh_set == (d.neighs["fd00:244:2::"],)
    assert plan.route_del == (stray,)
    # The device's IPv6 address missing: added back, the IPv4 one kept.
    bare = replace(dev, addresses=("10.244.1.0/32",))
    plan = model.diff(d, Observed({dev.name: bare}, dict(d.routes), dict(d.neighs), d.fdb))
    assert [(o.action, o.arg) for o in plan.device_ops] == [("addr-add", "fd00:244:1::/128")]


# --- host-gw -------------------------------------------------------------------------------------


def test_hostgw_dual_stack_routes_each_family_via_the_same_family() -> None:
    d = state(ds(1, "host-gw"), [ds(2, "host-gw")], ULDS, "host-gw")
    assert d.routes == {
        "10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "eth0"),
        "fd00:244:2::/64": Route("fd00:244:2::/64", "fd00:99::2", "eth0"),
    }
    assert d.flags == {}


def test_hostgw_on_an_ipv6_only_underlay_routes_ipv4_via_inet6() -> None:
    d = state(v6only_ul(1, "host-gw"), [v6only_ul(2, "host-gw")], UL6, "host-gw")
    assert d.routes == {
        "10.244.2.0/24": Route("10.244.2.0/24", "fd00:99::2", "eth0"),
        "fd00:244:2::/64": Route("fd00:244:2::/64", "fd00:99::2", "eth0"),
    }
    assert str(d.routes["10.244.2.0/24"]) == "10.244.2.0/24 via inet6 fd00:99::2 dev eth0"


def test_hostgw_ipv6_subnet_over_an_ipv4_only_underlay_is_one_clear_line() -> None:
    d = state(ds(1, "host-gw"), [ds(2, "host-gw", public_ip6=None)], UL, "host-gw")
    assert d.routes == {"10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "eth0")}
    assert d.programmed == ("n2",)
    assert d.flags == {"n2": "partial"}
    assert d.reasons["n2"] == (
        "no route to fd00:244:2::/64: host-gw needs IPv6 on the underlay of both nodes "
        "(the kernel refuses an IPv6 route via an IPv4 gateway)"
    )


def test_hostgw_refuses_a_peer_whose_next_hops_are_all_off_link() -> None:
    far = ds(2, "host-gw", public_ip="192.0.2.2", public_ip6="2001:db8::2")
    d = state(ds(1, "host-gw"), [far], ULDS, "host-gw")
    assert d.flags == {"n2": "not-on-link"} and not d.routes
    assert "192.0.2.2, 2001:db8::2 is not on-link on eth0" in d.reasons["n2"]


# --- ipip, wireguard -----------------------------------------------------------------------------


def test_ipip_over_ipv6_is_an_ip6tnl_device_and_over_ipv4_carries_ipv4_only() -> None:
    d = state(v6only_ul(1, "ipip"), [v6only_ul(2, "ipip")], UL6, "ipip")
    assert d.device is not None
    assert (d.device.name, d.device.kind, d.device.mtu) == ("meshd.ip6tnl", "ip6tnl", 1460)
    assert d.device.addresses == ("10.244.1.0/32", "fd00:244:1::/128")
    params = dict(d.device.params)
    assert params["ip6tnl_local"] == "fd00:99::1"
    assert (params["ip6tnl_collect_metadata"], params["ip6tnl_proto"]) == (True, 0)
    # Neither a hop limit nor an encapsulation limit: a collect_md device uses neither.
    assert not {"ip6tnl_ttl", "ip6tnl_flags", "ip6tnl_encap_limit"} & set(params)
    # No gateway, no onlink (the kernel refuses an onlink IPv6 next hop on ip6tnl): the
    # outer destination comes from the route's encapsulation, for both inner families.
    assert d.routes == {
        "10.244.2.0/24": Route("10.244.2.0/24", "", "meshd.ip6tnl", encap6="fd00:99::2"),
        "fd00:244:2::/64": Route("fd00:244:2::/64", "", "meshd.ip6tnl", encap6="fd00:99::2"),
    }
    assert d.flags == {}
    assert str(d.routes["10.244.2.0/24"]) == (
        "10.244.2.0/24 encap ip6 dst fd00:99::2 dev meshd.ip6tnl"
    )
    d4 = state(ds(1, "ipip"), [ds(2, "ipip")], ULDS, "ipip")
    assert d4.routes == {"10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "meshd.ipip", True)}
    assert d4.flags == {"n2": "partial"}
    assert d4.device is not None and d4.device.addresses == ("10.244.1.0/32",)


def test_ipip_over_ipv6_adopts_its_device_and_replaces_a_route_encapsulated_elsewhere() -> None:
    d = state(v6only_ul(1, "ipip"), [v6only_ul(2, "ipip"), v6only_ul(3, "ipip")], UL6, "ipip")
    assert d.device is not None
    # What the kernel reports back for the device (flags masked by netlink.py, ttl 0 unset).
    params = {**dict(d.device.params), "ip6tnl_flags": 0, "ip6tnl_ttl": 0}
    dev = ObservedDevice(
        d.device.name, 7, "ip6tnl", 1460, None, True, d.device.addresses, params
    )  # fmt: skip
    converged = Observed({dev.name: dev}, dict(d.routes), {}, frozenset())
    assert model.diff(d, converged).empty
    moved = replace(d.routes["fd00:244:3::/64"], encap6="fd00:99::33")
    plain = Route("10.244.2.0/24", "fd00:99::2", "meshd.ip6tnl", True)  # an older meshd's
    plan = model.diff(
        d,
        Observed(
            {dev.name: dev}, {**d.routes, moved.dst: moved, plain.dst: plain}, {}, frozenset()
        ),
    )
    assert plan.route_replace == (d.routes["10.244.2.0/24"], d.routes["fd00:244:3::/64"])
    assert not plan.route_add and not plan.route_del and not plan.device_ops
    # The device an older meshd made (not external): recreated, its routes planned afresh.
    old = replace(dev, params={k: v for k, v in params.items() if k != "ip6tnl_collect_metadata"})
    plan = model.diff(d, Observed({dev.name: old}, dict(d.routes), {}, frozenset()))
    assert plan.device_ops[0].action == "delete"
    assert "ip6tnl_collect_metadata None != True" in plan.device_ops[0].arg
    assert set(plan.route_add) == set(d.routes.values())


def test_wireguard_allowed_ips_of_both_families_and_an_ipv6_endpoint() -> None:
    def wg(i: int) -> NodeRecord:
        return v6only_ul(i, "wireguard", wg_key=bytes([0x80 + i]) * 32)

    d = state(wg(1), [wg(2)], UL6, "wireguard")
    assert d.device is not None and d.device.mtu == 1420
    key = b64(wg(2).wg_key)
    assert d.wgpeers == {
        key: WgPeer(key, "[fd00:99::2]:51820", ("10.244.2.0/24", "fd00:244:2::/64"))
    }
    assert d.routes["fd00:244:2::/64"] == Route("fd00:244:2::/64", "", "meshd.wg")


@pytest.mark.parametrize(
    ("name", "v4", "v6"),
    [("vxlan", 50, 70), ("ipip", 20, 40), ("wireguard", 60, 80), ("host-gw", 0, 0)],
)
def test_overhead_per_underlay_family(name: str, v4: int, v6: int) -> None:
    be = backends.get(name)
    assert (be.overhead_for(4), be.overhead_for(6)) == (v4, v6)


# --- selection per family ------------------------------------------------------------------------


def test_an_ipv6_subnet_overlapping_this_nodes_is_conflicted() -> None:
    clash = ds(2, subnet6="fd00:244:1::/64")
    d = state(ds(1), [clash, ds(3)], ULDS)
    assert d.flags == {"n2": "conflicted"}
    # The conflict rule (per family) keeps it for this node, and says so in that family.
    assert d.reasons["n2"] == "subnet fd00:244:1::/64 overlaps fd00:244:1::/64 held by n1"


def test_an_ipv6_subnet_overlapping_the_underlay_or_a_foreign_route_is_refused() -> None:
    on_ul = ds(2, subnet6="fd00:99::/64")
    routed = ds(3)
    d = model.desired_state(
        backend="vxlan", local=ds(1), underlay=ULDS,
        peers=[PeerView(on_ul, "alive", 0.0), PeerView(routed, "alive", 0.0)], now=1.0,
        synced=True, reap_after=300.0, foreign=("fd00:244:3::/48", "::/0"),
    )  # fmt: skip
    assert d.reasons["n2"] == "subnet fd00:99::/64 overlaps the underlay fd00:99::1/64"
    assert d.reasons["n3"] == "subnet fd00:244:3::/64 overlaps route fd00:244:3::/48, not meshd's"
    assert model.touches_peers("fd00:244:3::/48", [PeerView(routed, "alive", 0.0)])
    assert not model.touches_peers("fd00:245::/48", [PeerView(routed, "alive", 0.0)])


def test_a_peer_announcing_this_nodes_ipv6_underlay_address_is_refused() -> None:
    d = state(ds(1), [ds(2, public_ip6="fd00:99:0::1")], ULDS)
    assert d.reasons["n2"] == "announces this node's own address fd00:99:0::1"


def test_spans_of_the_two_families_never_overlap() -> None:
    v4, v6 = span_any("0.0.0.0/0"), span_any("::/96")
    assert v4 is not None and v6 is not None and v4[1:] == v6[1:]
    site = Site(ds(1), ULDS)
    assert site.underlay.address_of(6) == "fd00:99::1" and UL.address_of(6) is None


def test_ipv4_only_records_keep_exactly_their_plan() -> None:
    d = state(rec(1), [rec(2)], UL)
    assert d.device is not None and d.device.addresses == ("10.244.1.0/32",)
    assert set(d.routes) == {"10.244.2.0/24"} and set(d.neighs) == {"10.244.2.0"}
    assert model.first_address("fd00:244:1::/64") == "fd00:244:1::1/64"
