"""The conflict rule and the prefix policy per IP family (dual-stack): each family is a claim
space of its own; IPv6 claims meet their own special ranges and their own cluster network."""

from __future__ import annotations

from dataclasses import replace

import pytest
from records import rec  # tests/unit is on sys.path (pytest prepend import mode)

from meshd.dataplane import model
from meshd.dataplane.model import PeerView
from meshd.gossip.record import NodeRecord
from meshd.gossip.trust import RANK_POOL4, RANK_POOL6

NET4, NET6 = "10.244.0.0/16", "fd00:10:244::/48"


def dual(i: int, since: int = 0, **kw: object) -> NodeRecord:
    """Node *i* on a dual-stack overlay: 10.244.i.0/24 and fd00:10:244:i::/64."""
    return replace(rec(i, since=since, subnet6=f"fd00:10:244:{i:x}::/64"), **kw)  # type: ignore[arg-type]


def alive(*records: NodeRecord) -> list[PeerView]:
    return [PeerView(r, "alive", 0.0) for r in records]


# -- the conflict rule, per family ----------------------------------------------------------------


def test_each_family_is_resolved_on_its_own() -> None:
    # a is the oldest claim; b's IPv6 subnet overlaps a's, its IPv4 one overlaps nobody's.
    a = dual(1, since=100)
    b = dual(2, since=200, subnet6="fd00:10:244:1::/64")
    c = dual(3, since=300, subnet="10.244.2.0/24")  # IPv4 overlaps b's, IPv6 its own
    granted6, losers6 = model.resolve_claims([a, b, c], version=6)
    assert granted6 == {a.node_id, c.node_id} and losers6 == {b.node_id: a}
    # b lost its IPv6 subnet but still holds its IPv4 one: c, younger, loses that to b.
    granted4, losers4 = model.resolve_claims([a, b, c], version=4)
    assert granted4 == {a.node_id, b.node_id} and losers4 == {c.node_id: b}
    # Without a family: granted only what holds every subnet it claims; the holder of the
    # first family lost, IPv4 first.
    granted, losers = model.resolve_claims([a, b, c])
    assert granted == {a.node_id}
    assert losers == {b.node_id: a, c.node_id: b}


def test_ipv4_only_claims_resolve_as_before_dual_stack() -> None:
    old, new = rec(2, since=100), rec(3, since=200, subnet="10.244.2.0/24")
    assert model.resolve_claims([new, old]) == ({old.node_id}, {new.node_id: old})
    assert model.resolve_claims([new, old], version=6) == (set(), {})


def test_ipv6_only_and_dual_stack_claimants_contest_ipv6_subnets() -> None:
    v6only = rec(4, since=50, public_ip="fd00:99::4", subnet="fd00:10:244:1::/64")
    holder = dual(1, since=100)
    granted, losers = model.resolve_claims([holder, v6only])
    assert granted == {v6only.node_id}
    assert losers == {holder.node_id: v6only}
    # The IPv6-only node claims no IPv4 subnet: the dual-stack node keeps its IPv4 one.
    assert model.resolve_claims([holder, v6only], version=4) == ({holder.node_id}, {})


def test_a_wide_ipv6_claim_and_the_subnets_inside_it() -> None:
    wide = rec(5, since=1, public_ip="fd00:99::5", subnet="fd00:10:244::/56")
    inside = [dual(1, since=101), dual(2, since=102)]
    inside.append(dual(9, since=109, subnet6="fd00:10:244:100::/64"))  # outside the /56
    granted, losers = model.resolve_claims([*inside, wide], version=6)
    assert granted == {wide.node_id, inside[2].node_id}
    assert set(losers) == {inside[0].node_id, inside[1].node_id}


def test_certified_rank_per_family() -> None:
    # A fixed IPv6 grant outranks an older certificate's IPv6 pool claim, while in IPv4 that
    # older certificate's fixed grant holds.
    older = replace(dual(1), claim_rank=(RANK_POOL6, 1000.0))
    newer = replace(
        dual(2, subnet="10.244.1.0/24", subnet6="fd00:10:244:1::/64"),
        claim_rank=(RANK_POOL4, 2000.0),
    )
    assert model.resolve_claims([older, newer], version=6)[0] == {newer.node_id}
    assert model.resolve_claims([older, newer], version=4)[0] == {older.node_id}
    assert model.claim_order(older, 6)[1] == 1 and model.claim_order(older, 4)[1] == 0
    # An IPv4-only certificate's rank reads as it did before dual-stack.
    assert model.claim_order(replace(rec(3), claim_rank=(1, 5.0)))[1] == 1


def test_an_unparsable_subnet_of_the_family_raises() -> None:
    bad = replace(dual(1), subnet6="fd00:10:244:1::1/64")  # not validated: host bits
    with pytest.raises(ValueError, match="not an IPv6 network"):
        model.resolve_claims([bad], version=6)


# -- the prefix policy, per family ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "why"),
    [
        ("::/0", "whole IPv6 address space"),
        ("::/1", "overlaps"),  # holds ::1
        ("::1/128", "loopback ::1/128"),
        ("::/126", "unspecified ::/128"),
        ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ("fe80::/64", "link-local fe80::/10"),
        ("fe00::/7", "link-local fe80::/10"),  # contains it
        ("ff02::/16", "multicast ff00::/8"),
        ("fd00::1/64", "not a valid container subnet"),
        (NET6, "whole cluster network"),
        ("fd00:10:245::/64", f"outside network {NET6}"),
        ("fd00:10::/32", f"outside network {NET6}"),  # contains it
        ("fd00:10:244:7::/64", None),
        ("2001:db8:1::/64", "outside network"),
    ],
)
def test_ipv6_subnet_problem(subnet: str, why: str | None) -> None:
    got = model.subnet_problem(subnet, (NET4, NET6))
    assert got is None if why is None else (got is not None and why in got and "\n" not in got)


def test_each_subnet_meets_the_network_of_its_own_family() -> None:
    # An IPv4 network says nothing about IPv6 subnets, and the other way round.
    assert model.subnet_problem("2001:db8:1::/64", NET4) is None
    assert model.subnet_problem("10.1.0.0/24", NET6) is None
    assert model.subnet_problem("10.1.0.0/24", (NET4, NET6)) == (
        f"subnet 10.1.0.0/24 is outside network {NET4}"
    )
    assert model.subnet_problem("10.1.0.0/24", None) is None
    assert model.network_of((NET4, NET6), 6) == NET6
    assert model.network_of(NET6, 4) is None


def test_claimants_refuse_a_peer_for_any_of_its_subnets_or_addresses() -> None:
    peers = alive(
        dual(2),
        dual(3, subnet6="fe80::/64"),  # its IPv4 subnet is fine
        dual(4, public_ip6="ff02::1"),  # a multicast underlay address
        rec(5, public_ip="fd00:99::5", subnet="fd00:10:244:5::/64"),  # IPv6-only: fine
        rec(6, public_ip="::1", subnet="fd00:10:244:6::/64"),
        dual(7, subnet6="fd00:10:245::/64"),  # outside the IPv6 network
    )
    found = model.claimants("vxlan", (NET4, NET6), 300.0, rec(1), peers, 0.0)
    assert [r.name for r in found.records] == ["n2", "n5"]
    assert {name: why for name, (_, why) in found.refused.items()} == {
        "n3": "subnet fe80::/64 overlaps link-local fe80::/10",
        "n4": "public IP ff02::1 is in multicast ff00::/8",
        "n6": "public IP ::1 is in loopback ::1/128",
        "n7": f"subnet fd00:10:245::/64 is outside network {NET6}",
    }
    assert {flag for flag, _ in found.refused.values()} == {model.FLAG_REFUSED}


def test_the_data_plane_refuses_a_peer_outside_the_ipv6_network() -> None:
    from records import UL

    peers = alive(dual(2), dual(7, subnet6="fd00:10:245::/64"))
    sel = model.select_peers("vxlan", NET4, 300.0, dual(1), UL, peers, 0.0, network6=NET6)
    assert sel.flags == {"n7": model.FLAG_REFUSED}
    assert sel.reasons["n7"] == f"subnet fd00:10:245::/64 is outside network {NET6}"


def test_a_refused_ipv6_claim_takes_nothing_from_anyone() -> None:
    holder = dual(2, since=100)
    # An early claim on the whole IPv6 space would beat every member's; refused first.
    greedy = dual(3, since=1, subnet="10.244.3.0/24", subnet6="::/1")
    found = model.claimants("vxlan", (NET4, NET6), 300.0, rec(1), alive(holder, greedy), 0.0)
    assert [r.name for r in found.records] == ["n2"]
    assert model.resolve_claims(found.records) == ({holder.node_id}, {})


def test_contested_names_the_subnets_of_the_family_that_clashed() -> None:
    a = dual(1, since=100)
    b = dual(2, since=200, subnet6="fd00:10:244:1::/64")
    _, losers = model.resolve_claims([a, b])
    assert model.contested(b, losers[b.node_id]) == ("fd00:10:244:1::/64", "fd00:10:244:1::/64")
    c = rec(3, subnet="10.244.1.0/25")
    assert model.contested(c, a) == ("10.244.1.0/25", "10.244.1.0/24")
