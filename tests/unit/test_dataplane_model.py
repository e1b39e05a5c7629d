"""dataplane.model as pure data: desired state, the conflict rule, reaping, gating, diff."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import UL, rec  # tests/unit is on sys.path (pytest prepend import mode)

from meshd.dataplane import model
from meshd.dataplane.model import (
    EMPTY_OBSERVED,
    Desired,
    Fdb,
    Neigh,
    Observed,
    ObservedDevice,
    PeerView,
    Route,
)
from meshd.gossip.record import NodeRecord, vtep_mac_for

LOCAL = rec(1)


def pv(r: NodeRecord, state: str = "alive", since: float = 0.0) -> PeerView:
    return PeerView(r, state, since)


def desired(
    peers: list[PeerView],
    backend: str = "vxlan",
    now: float = 100.0,
    synced: bool = True,
    local: NodeRecord | None = None,
    **kw: Any,
) -> Desired:
    local = local or (LOCAL if backend == "vxlan" else rec(1, backend))
    kw.setdefault("onlink", ("10.99.0.0/24",))
    return model.desired_state(
        backend=backend,
        local=local,
        underlay=UL,
        peers=peers,
        now=now,
        synced=synced,
        reap_after=300.0,
        **kw,
    )


def device_of(d: Desired) -> ObservedDevice:
    """The observed twin of the desired device: as the kernel would report it."""
    assert d.device is not None
    return ObservedDevice(
        d.device.name,
        7,
        d.device.kind,
        d.device.mtu or 0,
        d.device.mac,
        True,
        d.device.addresses,
        dict(d.device.params),
    )


def converged(d: Desired) -> Observed:
    return Observed(
        devices={d.device.name: device_of(d)} if d.device else {},
        routes=dict(d.routes),
        neighs=dict(d.neighs),
        fdb=d.fdb,
    )


# --- per-backend desired state -------------------------------------------------------------------


def test_vxlan_per_peer_neighbour_fdb_and_onlink_route() -> None:
    p2 = rec(2)
    d = desired([pv(p2)])
    assert d.device is not None
    assert (d.device.name, d.device.kind, d.device.mtu, d.device.mac) == (
        "meshd.1",
        "vxlan",
        1450,
        LOCAL.vtep_mac,
    )
    assert d.device.addresses == ("10.244.1.0/32",)
    assert dict(d.device.params) == {
        "vxlan_id": 1,
        "vxlan_local": "10.99.0.1",
        "vxlan_link": 2,
        "vxlan_port": 8472,
        "vxlan_learning": 0,
    }
    assert d.neighs == {"10.244.2.0": Neigh("10.244.2.0", p2.vtep_mac or "")}
    assert d.fdb == {Fdb(p2.vtep_mac or "", "10.99.0.2")}
    assert d.routes == {"10.244.2.0/24": Route("10.244.2.0/24", "10.244.2.0", "meshd.1", True)}
    assert d.mtu == 1450


def test_vxlan_vni_and_port_name_the_device() -> None:
    d = desired([], vni=42, vxlan_port=4789)
    assert d.device is not None and d.device.name == "meshd.42"
    assert ("vxlan_id", 42) in d.device.params and ("vxlan_port", 4789) in d.device.params


def test_ipip_device_and_route_via_the_peer_underlay_ip() -> None:
    d = desired([pv(rec(2, "ipip"))], backend="ipip")
    assert d.device is not None
    assert (d.device.name, d.device.kind, d.device.mtu, d.device.mac) == (
        "meshd.ipip",
        "ipip",
        1480,
        None,
    )
    assert dict(d.device.params) == {"ipip_local": "10.99.0.1", "ipip_link": 2, "ipip_ttl": 64}
    assert d.routes == {
        "10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "meshd.ipip", onlink=True)
    }
    assert not d.neighs and not d.fdb


def test_hostgw_routes_only_on_link_peers() -> None:
    near, far = rec(2, "host-gw"), rec(3, "host-gw", public_ip="192.0.2.3")
    d = desired([pv(near), pv(far)], backend="host-gw")
    assert d.device is None and d.mtu == 1500
    assert d.routes == {"10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "eth0")}
    assert d.flags == {"n3": "not-on-link"}
    assert "not on-link" in d.reasons["n3"]


def test_incompatible_backend_and_missing_vtep_mac_are_not_programmed() -> None:
    d = desired([pv(rec(2, "host-gw")), pv(rec(3, vtep_mac=None))])
    assert d.flags == {"n2": "incompatible", "n3": "refused"}
    assert not d.routes and not d.neighs and not d.fdb


def test_bridge_holds_the_first_address() -> None:
    d = desired([], bridge="cbr0")
    assert d.bridge is not None
    assert (d.bridge.name, d.bridge.kind, d.bridge.addresses, d.bridge.owned) == (
        "cbr0",
        "bridge",
        ("10.244.1.1/24",),
        False,
    )


def test_subnet_env_is_flannel_format() -> None:
    assert model.subnet_env(None, "10.244.1.0/24", 1450, True) == (
        "FLANNEL_NETWORK=10.244.1.0/24\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    assert model.subnet_env("10.244.0.0/16", "10.244.1.0/24", 1500, False).startswith(
        "FLANNEL_NETWORK=10.244.0.0/16\n"
    )


# --- refusals and the conflict rule --------------------------------------------------------------


def test_refused_subnets() -> None:
    peers = [
        pv(rec(2, subnet="10.99.0.0/25")),  # overlaps the underlay
        pv(rec(3, subnet="10.244.1.128/25")),  # overlaps this node's subnet
        pv(rec(4, subnet="192.168.4.0/24")),  # outside network
        pv(rec(5, public_ip="10.99.0.1")),  # claims our own underlay address
    ]
    d = desired(peers, network="10.244.0.0/16")
    assert d.flags == {"n2": "refused", "n3": "conflicted", "n4": "refused", "n5": "refused"}
    assert "outside network" in d.reasons["n4"]
    assert not d.routes


def test_default_route_subnet_is_refused_even_if_a_record_carried_it() -> None:
    bad = replace(rec(2), subnet="0.0.0.0/0")  # validate() would reject it on the wire
    d = desired([pv(bad)])
    assert d.flags == {"n2": "refused"} and not d.routes


# --- the prefix and address policy (docs/dataplane.md "Refused peers") ---------------------------

SPECIAL_CLAIMS = [
    ("0.0.0.0/8", "this-network"),
    ("0.0.0.0/24", "this-network"),
    ("127.0.0.0/8", "loopback"),
    ("127.0.0.0/30", "loopback"),
    ("169.254.169.252/30", "link-local"),  # the cloud metadata service
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("239.1.2.0/24", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "reserved"),  # the limited broadcast
    ("128.0.0.0/1", "link-local"),  # contains 169.254/16, 224/4, 240/4: any overlap counts
    ("0.0.0.0/1", "this-network"),
]


@pytest.mark.parametrize(("subnet", "range_name"), SPECIAL_CLAIMS)
def test_special_purpose_subnets_are_refused_without_a_network(
    subnet: str, range_name: str
) -> None:
    d = desired([pv(rec(2, subnet=subnet)), pv(rec(3))])
    assert d.flags == {"n2": "refused"}
    assert range_name in d.reasons["n2"] and subnet in d.reasons["n2"]
    assert set(d.routes) == {"10.244.3.0/24"}


@pytest.mark.parametrize(("subnet", "range_name"), SPECIAL_CLAIMS)
def test_special_claims_do_not_take_a_subnet_from_anyone(subnet: str, range_name: str) -> None:
    # Refused before the conflict rule: an early `since` on 128.0.0.0/1 would otherwise make
    # every member below it conflicted.
    d = desired([pv(rec(2, subnet=subnet, since=1)), pv(rec(3, subnet="200.1.0.0/24"))])
    assert d.flags == {"n2": "refused"}
    assert set(d.routes) == {"200.1.0.0/24"}


def test_ordinary_subnets_next_to_the_special_ranges_are_accepted() -> None:
    ok = ["1.0.0.0/24", "126.255.255.0/24", "128.0.0.0/24", "169.253.0.0/16", "223.255.255.0/24"]
    d = desired([pv(rec(i + 2, subnet=s)) for i, s in enumerate(ok)])
    assert d.flags == {}
    assert set(d.routes) == set(ok)


def test_the_whole_cluster_network_and_more_are_refused() -> None:
    peers = [
        pv(rec(2, subnet="10.244.0.0/16", since=1)),  # the network itself, claimed first
        pv(rec(3, subnet="10.0.0.0/8", since=1)),  # contains it
        pv(rec(4, subnet="10.245.0.0/24")),  # outside it
        pv(rec(5)),
    ]
    d = desired(peers, network="10.244.0.0/16")
    assert d.flags == {"n2": "refused", "n3": "refused", "n4": "refused"}
    assert "whole cluster network" in d.reasons["n2"]
    assert "outside network 10.244.0.0/16" in d.reasons["n3"]
    assert "outside network" in d.reasons["n4"]
    assert set(d.routes) == {"10.244.5.0/24"}  # nobody lost its subnet to the claims


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this-network"),
        ("127.0.0.1", "loopback"),
        ("127.1.1.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("10.0.0.300", "not an IPv4 address"),
    ],
)
@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "ipip"])
def test_a_non_unicast_public_ip_never_reaches_routes_or_fdb(
    ip: str, why: str, backend: str
) -> None:
    d = desired([pv(rec(2, backend, public_ip=ip)), pv(rec(3, backend))], backend=backend)
    assert d.flags == {"n2": "refused"}
    assert why in d.reasons["n2"] and "public IP" in d.reasons["n2"]
    gateways = {r.gateway for r in d.routes.values()} | {f.dst for f in d.fdb}
    assert ip not in gateways
    assert set(d.routes) == {"10.244.3.0/24"}


def test_a_link_local_public_ip_is_unicast_and_accepted() -> None:
    d = desired([pv(rec(2, public_ip="169.254.7.8"))], onlink=("169.254.0.0/16",))
    assert d.flags == {} and d.programmed == ("n2",)


@pytest.mark.parametrize(
    ("mac", "why"),
    [
        ("00:00:00:00:00:00", "all zero"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("01:00:5e:00:00:01", "multicast"),  # IPv4 multicast MAC
        ("33:33:00:00:00:01", "multicast"),  # IPv6 multicast MAC
        ("03:00:00:00:00:00", "multicast"),  # just the low bit of the first octet
        ("00:11:22:33:44", "not a MAC"),
        ("zz:11:22:33:44:55", "not a MAC"),
        (None, "no VTEP MAC"),
    ],
)
def test_bad_vtep_macs_are_refused(mac: str | None, why: str) -> None:
    d = desired([pv(rec(2, vtep_mac=mac)), pv(rec(3))])
    assert d.flags == {"n2": "refused"}
    assert why in d.reasons["n2"]
    assert {f.lladdr for f in d.fdb} == {rec(3).vtep_mac}
    assert {n.lladdr for n in d.neighs.values()} == {rec(3).vtep_mac}


def test_a_locally_administered_unicast_mac_is_accepted() -> None:
    d = desired(
        [pv(rec(2, vtep_mac="02:00:00:00:00:01")), pv(rec(3, vtep_mac="00:00:00:00:00:01"))]
    )
    assert d.flags == {} and d.programmed == ("n2", "n3")


FOREIGN = (
    "10.244.2.0/24",  # the same prefix as n2's
    "10.244.3.128/25",  # inside n3's
    "10.244.4.0/23",  # contains n4's (and n5's)
    "192.168.7.0/24",  # elsewhere: touches nobody
    "10.244.9.9/32",  # a host route inside n9's
)


def test_foreign_routes_refuse_the_peers_they_overlap() -> None:
    peers = [pv(rec(i)) for i in (2, 3, 4, 5, 6, 8, 9)]
    d = desired(peers, foreign=FOREIGN)
    assert d.flags == {n: "refused" for n in ("n2", "n3", "n4", "n5", "n9")}
    assert d.reasons["n2"] == "subnet 10.244.2.0/24 overlaps route 10.244.2.0/24, not meshd's"
    assert "route 10.244.3.128/25" in d.reasons["n3"]
    assert "route 10.244.4.0/23" in d.reasons["n5"]
    assert "route 10.244.9.9/32" in d.reasons["n9"]
    assert set(d.routes) == {"10.244.6.0/24", "10.244.8.0/24"}


def test_default_route_and_routes_covering_the_network_are_not_foreign_claims() -> None:
    peers = [pv(rec(2)), pv(rec(3))]
    d = desired(
        peers, network="10.244.0.0/16", foreign=("0.0.0.0/0", "10.244.0.0/16", "10.0.0.0/8")
    )
    assert d.flags == {} and set(d.routes) == {"10.244.2.0/24", "10.244.3.0/24"}
    # Without a network only the default route is exempt: 10.0.0.0/8 is someone's.
    d = desired(peers, foreign=("0.0.0.0/0", "10.0.0.0/8"))
    assert d.flags == {"n2": "refused", "n3": "refused"} and not d.routes


def test_foreign_routes_are_node_local_and_do_not_change_who_holds_a_subnet() -> None:
    # n2 holds 10.244.2.0/24 everywhere; here a foreign route refuses it, but n3's later claim
    # on an overlapping prefix stays conflicted (the rule runs on cluster-wide facts only).
    holder = rec(2, since=100)
    late = rec(3, subnet="10.244.2.0/23", since=200)
    d = desired([pv(holder), pv(late)], foreign=("10.244.2.0/24",))
    assert d.flags == {"n2": "refused", "n3": "conflicted"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 32)).map(
            lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False))
        ),
        max_size=12,
    ),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False))
    ),
)
def test_foreign_route_index_agrees_with_a_linear_scan(routes: list[str], subnet: str) -> None:
    idx = model.foreign_routes(tuple(routes), None)
    net = ipaddress.IPv4Network(subnet)
    expected = {r for r in routes if ipaddress.IPv4Network(r).overlaps(net)}
    got = idx.overlapping((int(net.network_address), int(net.broadcast_address)))
    assert (got is None) == (not expected)
    assert got is None or got in expected


@pytest.mark.parametrize(
    ("subnet", "network", "why"),
    [
        ("10.244.1.0/24", None, None),
        ("10.244.1.0/24", "10.244.0.0/16", None),
        ("127.0.0.0/24", None, "overlaps loopback 127.0.0.0/8"),
        ("10.244.0.0/16", "10.244.0.0/16", "is the whole cluster network"),
        ("10.0.0.0/8", "10.244.0.0/16", "is outside network 10.244.0.0/16"),
        ("10.244.1.1/24", None, "is not a valid container subnet"),
    ],
)
def test_subnet_problem(subnet: str, network: str | None, why: str | None) -> None:
    got = model.subnet_problem(subnet, network)
    assert got == (None if why is None else f"subnet {subnet} {why}")


def test_conflict_rule_lowest_node_id_wins_and_is_the_same_everywhere() -> None:
    a = rec(5, subnet="10.244.50.0/24")
    b = rec(3, subnet="10.244.50.0/23")  # overlaps a; lower node_id, so b holds it
    c = rec(7, subnet="10.244.51.0/24")  # overlaps b only
    table = [a, b, c]
    for observer in (1, 2, 9):
        local = rec(observer)
        peers = [pv(r) for r in table]
        d = desired(peers, local=local)
        assert d.programmed == ("n3",), observer
        assert d.flags == {"n5": "conflicted", "n7": "conflicted"}
        assert "held by n3" in d.reasons["n5"]
    # Order of the table does not matter.
    d = desired([pv(r) for r in reversed(table)])
    assert d.programmed == ("n3",)


def test_resolve_claims_is_order_independent() -> None:
    rs = [rec(i, subnet="10.244.0.0/16" if i == 4 else f"10.244.{i}.0/24") for i in range(2, 8)]
    g1, l1 = model.resolve_claims(rs)
    g2, l2 = model.resolve_claims(list(reversed(rs)))
    assert g1 == g2 and l1 == l2
    # n4's /16 covers n2's and n3's /24s; they come first by node_id, so n4 loses to n2.
    assert g1 == {r.node_id for r in rs if r.name != "n4"}
    assert set(l1) == {rs[2].node_id} and l1[rs[2].node_id].name in ("n2", "n3")


def _greedy(claimants: list[NodeRecord]) -> set[bytes]:
    """The rule as written in docs/dataplane.md, quadratic: the reference for resolve_claims."""
    held: list[ipaddress.IPv4Network] = []
    out: set[bytes] = set()
    for r in sorted(claimants, key=lambda r: (r.node_id, r.name)):
        net = ipaddress.IPv4Network(r.subnet)
        if not any(net.overlaps(h) for h in held):
            held.append(net)
            out.add(r.node_id)
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 63), st.integers(16, 26)),
        min_size=1,
        max_size=40,
    )
)
def test_resolve_claims_matches_the_greedy_rule(claims: list[tuple[int, int, int]]) -> None:
    rs = []
    for n, (i, third, plen) in enumerate(claims):
        net = ipaddress.IPv4Network(f"10.{third}.{i}.0/{plen}", strict=False)
        rs.append(rec(2, name=f"p{n}", node_id=bytes([i, n]) * 8, subnet=str(net)))
    granted, losers = model.resolve_claims(rs)
    assert granted == _greedy(rs)
    by_id = {r.node_id: r for r in rs}
    for loser, holder in losers.items():
        assert holder.node_id in granted
        assert ipaddress.IPv4Network(by_id[loser].subnet).overlaps(
            ipaddress.IPv4Network(holder.subnet)
        )


def test_this_node_losing_its_own_subnet_is_reported() -> None:
    winner = rec(0, subnet="10.244.1.0/24", name="n0")
    d = desired([pv(winner)])
    assert d.local_conflict is not None and "n0" in d.local_conflict
    assert d.flags == {"n0": "conflicted"} and not d.routes


def test_left_and_reaped_peers_do_not_claim() -> None:
    gone = rec(2, subnet="10.244.9.0/24")
    heir = rec(3, subnet="10.244.9.0/24")
    assert desired([pv(gone, "left"), pv(heir)]).programmed == ("n3",)
    reaped = desired([pv(gone, "dead", since=0.0), pv(heir)], now=301.0)
    assert reaped.programmed == ("n3",) and reaped.flags == {"n2": "reaped"}
    kept = desired([pv(gone, "dead", since=0.0), pv(heir)], now=299.0)
    assert kept.programmed == ("n2",) and kept.flags == {"n3": "conflicted"}


def test_duplicate_vtep_mac_second_is_refused() -> None:
    a, b = rec(2), rec(3, vtep_mac=rec(2).vtep_mac)
    d = desired([pv(a), pv(b)])
    assert d.programmed == ("n2",) and d.flags == {"n3": "refused"}


# --- failure is not leave ------------------------------------------------------------------------


def test_suspect_and_dead_keep_entries_until_reap_after() -> None:
    p2, p3 = rec(2), rec(3)
    d = desired([pv(p2, "suspect", 0.0), pv(p3, "dead", since=50.0)], now=100.0)
    assert d.programmed == ("n2", "n3")
    assert d.next_deadline == 350.0
    assert desired([pv(p3, "dead", since=50.0)], now=349.9).programmed == ("n3",)
    assert desired([pv(p3, "dead", since=50.0)], now=350.0).programmed == ()


def test_left_is_removed_at_once_dead_later() -> None:
    p2, p3 = rec(2), rec(3)
    before = desired([pv(p2), pv(p3)])
    obs = converged(before)
    plan = model.diff(desired([pv(p2, "left", 99.0), pv(p3, "dead", 99.0)]), obs)
    assert [r.dst for r in plan.route_del] == ["10.244.2.0/24"]
    assert [n.dst for n in plan.neigh_del] == ["10.244.2.0"]
    assert [f.lladdr for f in plan.fdb_del] == [p2.vtep_mac]
    assert not plan.route_add and not plan.neigh_set and not plan.fdb_set
    later = model.diff(desired([pv(p3, "dead", 99.0)], now=399.0), obs)
    assert {r.dst for r in later.route_del} == {"10.244.2.0/24", "10.244.3.0/24"}


def test_dead_that_comes_back_churns_nothing() -> None:
    p2 = rec(2)
    obs = converged(desired([pv(p2)]))
    assert model.diff(desired([pv(p2, "dead", 90.0)]), obs).empty
    assert model.diff(desired([pv(p2, "alive", 95.0)]), obs).empty


# --- restart: adopt, and hold removals until synced ----------------------------------------------


MAC2, MAC3 = vtep_mac_for(b"\x02" * 16), vtep_mac_for(b"\x03" * 16)
KERNEL = {
    # What each backend's kernel holds for peers n2 and n3, written out as `ip` would show it
    # (not derived from the model), so the model is checked against the kernel's shape.
    "vxlan": Observed(
        devices={
            "meshd.1": ObservedDevice(
                "meshd.1",
                7,
                "vxlan",
                1450,
                vtep_mac_for(b"\x01" * 16),
                True,
                ("10.244.1.0/32",),
                {
                    "vxlan_id": 1,
                    "vxlan_local": "10.99.0.1",
                    "vxlan_link": 2,
                    "vxlan_port": 8472,
                    "vxlan_learning": 0,
                },
            )
        },
        routes={
            "10.244.2.0/24": Route("10.244.2.0/24", "10.244.2.0", "meshd.1", True),
            "10.244.3.0/24": Route("10.244.3.0/24", "10.244.3.0", "meshd.1", True),
        },
        neighs={"10.244.2.0": Neigh("10.244.2.0", MAC2), "10.244.3.0": Neigh("10.244.3.0", MAC3)},
        fdb=frozenset({Fdb(MAC2, "10.99.0.2"), Fdb(MAC3, "10.99.0.3")}),
    ),
    "ipip": Observed(
        devices={
            "meshd.ipip": ObservedDevice(
                "meshd.ipip",
                8,
                "ipip",
                1480,
                None,
                True,
                ("10.244.1.0/32",),
                {"ipip_local": "10.99.0.1", "ipip_link": 2, "ipip_ttl": 64},
            )
        },
        routes={
            "10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "meshd.ipip", True),
            "10.244.3.0/24": Route("10.244.3.0/24", "10.99.0.3", "meshd.ipip", True),
        },
        neighs={},
        fdb=frozenset(),
    ),
    "host-gw": Observed(
        devices={},
        routes={
            "10.244.2.0/24": Route("10.244.2.0/24", "10.99.0.2", "eth0"),
            "10.244.3.0/24": Route("10.244.3.0/24", "10.99.0.3", "eth0"),
        },
        neighs={},
        fdb=frozenset(),
    ),
}


@pytest.mark.parametrize("backend", sorted(KERNEL))
def test_a_kernel_holding_exactly_the_entries_gives_an_empty_plan(backend: str) -> None:
    d = desired([pv(rec(2, backend)), pv(rec(3, backend))], backend=backend)
    plan = model.diff(d, KERNEL[backend])
    assert plan.empty and not plan.problems and plan.removals_held == 0, (backend, plan)


@pytest.mark.parametrize("backend", sorted(KERNEL))
def test_a_kernel_with_known_differences_gives_exactly_those_changes(backend: str) -> None:
    """n3 left, n4 joined; the kernel also holds a route nobody wants and a stale gateway."""
    kernel = KERNEL[backend]
    stale = replace(kernel.routes["10.244.2.0/24"], gateway="10.99.0.77")
    orphan = Route("10.244.9.0/24", "10.99.0.9", "eth0")
    routes = {**kernel.routes, "10.244.2.0/24": stale, orphan.dst: orphan}
    d = desired(
        [pv(rec(2, backend)), pv(rec(3, backend), "left"), pv(rec(4, backend))], backend=backend
    )
    plan = model.diff(d, replace(kernel, routes=routes))
    want = d.routes
    assert plan.route_add == (want["10.244.4.0/24"],)
    assert plan.route_replace == (want["10.244.2.0/24"],)
    assert plan.route_del == (kernel.routes["10.244.3.0/24"], orphan)
    if backend == "vxlan":
        mac4 = vtep_mac_for(b"\x04" * 16)
        assert plan.neigh_set == (Neigh("10.244.4.0", mac4),)
        assert plan.fdb_set == (Fdb(mac4, "10.99.0.4"),)
        assert plan.neigh_del == (Neigh("10.244.3.0", MAC3),)
        assert plan.fdb_del == (Fdb(MAC3, "10.99.0.3"),)
    else:
        assert not (plan.neigh_set or plan.fdb_set or plan.neigh_del or plan.fdb_del)
    assert not plan.device_ops


def test_restart_adopts_and_holds_removals_until_synced() -> None:
    p2, p3 = rec(2), rec(3)
    obs = converged(desired([pv(p2), pv(p3)]))
    # Restarted, knows only p2, not synced: nothing is added or removed.
    early = model.diff(desired([pv(p2)], synced=False), obs)
    assert early.empty and early.removals_held == 3
    synced = model.diff(desired([pv(p2)], synced=True), obs)
    assert synced.counts() == {
        **{k: 0 for k in model.Plan.KINDS},
        "route_del": 1,
        "neigh_del": 1,
        "fdb_del": 1,
    }


def test_fresh_node_creates_device_then_entries_in_order() -> None:
    d = desired([pv(rec(2))])
    plan = model.diff(d, EMPTY_OBSERVED)
    assert [str(o) for o in plan.device_ops] == [
        "create meshd.1",
        "addr-add meshd.1 10.244.1.0/32",
        "set-up meshd.1",
    ]
    assert len(plan.neigh_set) == len(plan.fdb_set) == len(plan.route_add) == 1
    assert not plan.route_replace
    json.dumps(plan.to_dict())


def test_device_with_wrong_fixed_params_is_recreated_and_entries_replanned() -> None:
    d = desired([pv(rec(2))])
    obs = converged(d)
    dev = obs.devices["meshd.1"]
    wrong = replace(dev, params={**dev.params, "vxlan_port": 4789})
    plan = model.diff(d, replace(obs, devices={"meshd.1": wrong}))
    assert [o.action for o in plan.device_ops] == ["delete", "create", "addr-add", "set-up"]
    # The kernel drops a deleted device's neighbours, FDB and routes: plan them again.
    assert len(plan.neigh_set) == len(plan.fdb_set) == len(plan.route_add) == 1


def test_device_drift_is_fixed_in_place() -> None:
    d = desired([])
    obs = converged(d)
    dev = obs.devices["meshd.1"]
    drift = replace(
        dev,
        mtu=1400,
        up=False,
        mac="02:00:00:00:00:99",
        addresses=("10.244.1.0/32", "192.0.2.1/32"),
    )
    plan = model.diff(d, replace(obs, devices={"meshd.1": drift}))
    assert [str(o) for o in plan.device_ops] == [
        "set-mtu meshd.1 1450",
        f"set-mac meshd.1 {LOCAL.vtep_mac}",
        "addr-del meshd.1 192.0.2.1/32",
        "set-up meshd.1",
    ]


def test_bridge_is_only_ensured() -> None:
    d = desired([], bridge="br")
    br = ObservedDevice("br", 9, "bridge", 1500, "aa:bb:cc:dd:ee:ff", True, ("192.0.2.1/24",))
    plan = model.diff(d, replace(converged(d), devices={**converged(d).devices, "br": br}))
    assert [str(o) for o in plan.device_ops] == ["addr-add br 10.244.1.1/24"]
    veth = replace(br, kind="veth")
    plan = model.diff(d, replace(converged(d), devices={**converged(d).devices, "br": veth}))
    assert not plan.device_ops and plan.problems == ("br exists as a veth device, not a bridge",)


def test_changed_peer_is_replaced_not_deleted() -> None:
    p2 = rec(2)
    obs = converged(desired([pv(p2)]))
    moved = replace(p2, public_ip="10.99.0.22")
    plan = model.diff(desired([pv(moved)], synced=False), obs)
    assert plan.fdb_set == (Fdb(p2.vtep_mac or "", "10.99.0.22"),)
    assert not plan.fdb_del and not plan.route_replace and not plan.neigh_set


def test_subnet_taken_over_by_another_node_rewrites_neighbour_and_fdb() -> None:
    old = rec(2)
    new = rec(3, subnet=old.subnet, public_ip="10.99.0.3")
    obs = converged(desired([pv(old)]))
    plan = model.diff(desired([pv(old, "left"), pv(new)]), obs)
    assert plan.neigh_set == (Neigh("10.244.2.0", new.vtep_mac or ""),)
    assert plan.fdb_set == (Fdb(new.vtep_mac or "", "10.99.0.3"),)
    assert plan.fdb_del == (Fdb(old.vtep_mac or "", "10.99.0.2"),)
    assert not plan.route_add and not plan.route_del and not plan.route_replace


def test_foreign_route_device_is_replaced() -> None:
    d = desired([pv(rec(2))])
    obs = converged(d)
    stale = Route("10.244.2.0/24", "10.244.2.0", "#12", True)
    plan = model.diff(d, replace(obs, routes={"10.244.2.0/24": stale}))
    assert plan.route_replace == (d.routes["10.244.2.0/24"],) and not plan.route_add


@pytest.mark.parametrize("n", [1, 50])
def test_plan_to_dict_limits_lists_but_not_counts(n: int) -> None:
    peers = [
        pv(rec(i, subnet=f"10.245.{i}.0/24", public_ip=f"10.99.0.{i}")) for i in range(2, 2 + n)
    ]
    plan = model.diff(desired(peers), EMPTY_OBSERVED)
    out = plan.to_dict(limit=10)
    assert out["counts"]["route_add"] == n
    assert len(out["route_add"]) == min(n, 10)
