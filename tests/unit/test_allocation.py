"""Subnet allocation with no store (dataplane/allocation.py): the pool, its free runs, the
uniform pick, what the members hold, and the conflict rule a joiner applies to its own claim."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from meshd.dataplane import allocation, prefix
from meshd.dataplane.allocation import Pool
from meshd.dataplane.model import PeerView
from meshd.gossip.certificate import Grant
from meshd.gossip.record import NodeRecord
from meshd.gossip.trust import Signer
from meshd.sim import DAY, SIM_WALL, SimPKI, make_record

NET = "10.244.0.0/16"
LEASE = 600.0


def span(cidr: str) -> tuple[int, int]:
    s = prefix.span(cidr)
    assert s is not None
    return s


def subnets(pool: Pool, runs: list[tuple[int, int]]) -> list[str]:
    """The runs of `free_blocks` as CIDRs (index << host bits)."""
    out = []
    for start, n in runs:
        for k in range(start, start + n):
            v = k << (32 - pool.length)
            out.append(f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}/{pool.length}")
    return out


def rec(i: int, subnet: str, since: int = 0, **kw: object) -> NodeRecord:
    return replace(make_record(i), subnet=subnet, since=since, **kw)  # type: ignore[arg-type]


def pv(r: NodeRecord, state: str = "alive", since: float = 0.0) -> PeerView:
    return PeerView(record=r, state=state, state_since=since)


# --- the pool -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "length", "size"),
    [("10.244.0.0/16", 24, 256), ("10.0.0.0/14", 24, 1024), ("10.0.0.0/12", 24, 4096),
     ("10.0.0.0/8", 30, 1 << 22), ("192.168.0.0/24", 26, 4), ("0.0.0.0/0", 8, 256)],
)  # fmt: skip
def test_pool_size(network: str, length: int, size: int) -> None:
    pool = Pool(network, length)
    assert pool.size == size
    assert pool.describe() == f"network {network} ({size} subnets of /{length})"


@pytest.mark.parametrize(
    ("network", "length", "words"),
    [("10.244.0.0/16", 16, "must be longer"), ("10.244.0.0/16", 12, "must be longer"),
     ("10.244.0.0/16", 31, "outside 8..30"), ("0.0.0.0/4", 7, "outside 8..30"),
     ("10.244.0.1/16", 24, "not an IPv4 or IPv6 network"),
     ("fd00::1/48", 64, "not an IPv4 or IPv6 network"),
     ("nonsense", 24, "not an IPv4 or IPv6 network"),
     ("fd00::/48", 48, "must be longer"), ("fd00::/48", 125, "subnet_len6 125 is outside 8..124"),
     ("fd00::", 64, "must be longer"),  # a bare IPv6 address is a /128
     ("10.244.0.0", 24, "must be longer")],  # a bare address is a /32, not a crash
)  # fmt: skip
def test_pool_problem_is_one_line_and_pool_refuses(network: str, length: int, words: str) -> None:
    problem = allocation.pool_problem(network, length)
    assert problem is not None and words in problem and "\n" not in problem
    with pytest.raises(ValueError, match=words):
        Pool(network, length)


def test_pool_contains_only_its_own_length_inside_the_network() -> None:
    pool = Pool(NET, 24)
    assert allocation.pool_problem(NET, 24) is None
    assert pool.contains("10.244.7.0/24")
    assert not pool.contains("10.244.7.0/25")  # inside, wrong length
    assert not pool.contains("10.244.0.0/16")  # the whole network
    assert not pool.contains("10.245.7.0/24")  # outside
    assert not pool.contains("10.244.7.1/24")  # not a network address
    assert not pool.contains("junk")


def test_full_message_names_the_network_and_its_size() -> None:
    msg = allocation.full_message(Pool("10.0.0.0/22", 24))
    assert "network 10.0.0.0/22 (4 subnets of /24) is full" in msg and "\n" not in msg


# --- free runs ------------------------------------------------------------------------------------


def test_free_blocks_of_an_empty_pool_is_one_run() -> None:
    pool = Pool(NET, 24)
    assert allocation.free_blocks(pool, []) == [(span(NET)[0] >> 8, 256)]
    assert allocation.free_count(pool, []) == 256


def test_free_blocks_around_taken_spans_nested_partial_and_outside() -> None:
    pool = Pool("10.0.0.0/22", 24)  # 10.0.0.0 .. 10.0.3.0
    taken = [
        span("10.0.1.0/24"),
        span("10.0.1.128/25"),  # nested in the one above
        span("10.0.3.64/26"),  # partial: blocks all of 10.0.3.0/24
        span("192.168.0.0/16"),  # outside the pool
    ]
    free = subnets(pool, allocation.free_blocks(pool, taken))
    assert free == ["10.0.0.0/24", "10.0.2.0/24"]
    # A span wider than the pool blocks all of it; spans touching the start block the first.
    assert allocation.free_blocks(pool, [span("10.0.0.0/16")]) == []
    assert subnets(
        pool, allocation.free_blocks(pool, [span("9.255.255.0/24"), span("10.0.0.0/25")])
    ) == [
        "10.0.1.0/24",
        "10.0.2.0/24",
        "10.0.3.0/24",
    ]
    # Adjacent spans merge without losing the subnet after them.
    adjacent = [span("10.0.0.0/24"), span("10.0.1.0/24")]
    assert subnets(pool, allocation.free_blocks(pool, adjacent)) == ["10.0.2.0/24", "10.0.3.0/24"]


def test_free_blocks_skip_special_purpose_ranges() -> None:
    # 0.0.0.0/6 holds this-network 0.0.0.0/8; 168.0.0.0/6 holds link-local 169.254.0.0/16;
    # 224.0.0.0/3 is multicast and reserved (and broadcast) throughout.
    pool = Pool("0.0.0.0/6", 8)
    assert subnets(pool, allocation.free_blocks(pool, [])) == [
        "1.0.0.0/8",
        "2.0.0.0/8",
        "3.0.0.0/8",
    ]
    pool = Pool("168.0.0.0/6", 16)
    free = set(subnets(pool, allocation.free_blocks(pool, [])))
    assert len(free) == 4 * 256 - 1 and "169.254.0.0/16" not in free
    assert {"169.253.0.0/16", "169.255.0.0/16"} <= free
    pool = Pool("224.0.0.0/3", 8)
    assert allocation.free_blocks(pool, []) == []
    assert allocation.pick(pool, [], random.Random(1)) is None
    pool = Pool("126.0.0.0/7", 9)  # 126/8 free, 127/8 loopback
    assert subnets(pool, allocation.free_blocks(pool, [])) == ["126.0.0.0/9", "126.128.0.0/9"]


# --- pick -----------------------------------------------------------------------------------------


def test_pick_never_returns_a_taken_subnet_and_reaches_every_free_one() -> None:
    pool = Pool("10.0.0.0/20", 24)  # 16 subnets
    taken = [span("10.0.0.0/23"), span("10.0.5.0/24"), span("10.0.9.128/25"), span("10.0.15.0/24")]
    free = set(subnets(pool, allocation.free_blocks(pool, taken)))
    assert len(free) == 16 - 2 - 1 - 1 - 1
    rng = random.Random(7)
    counts = Counter(allocation.pick(pool, taken, rng) for _ in range(3000))
    assert set(counts) == free  # every free subnet, nothing else (None included)
    # Uniform enough: 3000 draws over 11 subnets is ~273 each; none under half or over double.
    assert all(136 < n < 546 for n in counts.values()), counts


def test_pick_is_uniform_across_runs_of_different_lengths() -> None:
    pool = Pool("10.0.0.0/21", 24)  # 8 subnets; free: 10.0.0 and 10.0.2..7 (runs of 1 and 6)
    taken = [span("10.0.1.0/24")]
    rng = random.Random(3)
    counts = Counter(allocation.pick(pool, taken, rng) for _ in range(7000))
    assert counts["10.0.0.0/24"] > 500  # a lone subnet gets its ~1/7 share, not half or nothing
    assert len(counts) == 7 and "10.0.1.0/24" not in counts


def test_pick_in_a_full_pool_is_none() -> None:
    pool = Pool("10.0.0.0/22", 24)
    taken = [span(f"10.0.{i}.0/24") for i in range(4)]
    assert allocation.pick(pool, taken, random.Random(0)) is None
    assert allocation.free_count(pool, taken) == 0
    assert allocation.pick(pool, taken[:3], random.Random(0)) == "10.0.3.0/24"


def test_pick_is_cheap_in_a_huge_pool() -> None:
    # 4 million /30s: the pick works on the runs, never on the subnets one by one.
    pool = Pool("10.0.0.0/8", 30)
    taken = [span(f"10.{i}.0.0/16") for i in range(0, 256, 2)]
    got = allocation.pick(pool, taken, random.Random(5))
    assert got is not None and pool.contains(got)
    assert not any(prefix.overlaps(span(got), t) for t in taken)


# --- held -----------------------------------------------------------------------------------------


def test_held_honours_left_at_once_and_dead_for_the_lease() -> None:
    now = 10_000.0
    peers = [
        pv(rec(1, "10.244.1.0/24")),
        pv(rec(2, "10.244.2.0/24"), "suspect", now - 5),
        pv(rec(3, "10.244.3.0/24"), "left", now - 1),  # released at once
        pv(rec(4, "10.244.4.0/24"), "dead", now - LEASE + 1),  # still within the lease
        pv(rec(5, "10.244.5.0/24"), "dead", now - LEASE),  # the lease just ran out
    ]
    got = allocation.held(peers, now, LEASE)
    assert got == [span(f"10.244.{i}.0/24") for i in (1, 2, 4)]
    pool = Pool(NET, 24)
    free = set(subnets(pool, allocation.free_blocks(pool, got)))
    assert {"10.244.3.0/24", "10.244.5.0/24"} <= free
    assert not {"10.244.1.0/24", "10.244.2.0/24", "10.244.4.0/24"} & free


# --- lost_to: shared-key mode ---------------------------------------------------------------------


def test_lost_to_earlier_since_wins_in_shared_key_mode() -> None:
    me = rec(9, "10.244.7.0/24", since=1_700_000_100)
    older = rec(5, "10.244.7.0/24", since=1_700_000_000)
    newer = rec(3, "10.244.7.0/24", since=1_700_000_200)
    other = rec(4, "10.244.8.0/24", since=1)
    assert allocation.lost_to(me, [pv(older), pv(other)], 0.0, LEASE, "vxlan", NET) == older
    assert allocation.lost_to(me, [pv(newer), pv(other)], 0.0, LEASE, "vxlan", NET) is None
    assert allocation.lost_to(me, [pv(other)], 0.0, LEASE, "vxlan", NET) is None


def test_lost_to_same_second_the_node_id_breaks_the_tie() -> None:
    low = rec(1, "10.244.7.0/24", since=1_700_000_000)  # node id 2 (little-endian first byte)
    high = rec(2, "10.244.7.0/24", since=1_700_000_000)
    assert low.node_id < high.node_id
    assert allocation.lost_to(high, [pv(low)], 0.0, LEASE, "vxlan", NET) == low
    assert allocation.lost_to(low, [pv(high)], 0.0, LEASE, "vxlan", NET) is None


def test_lost_to_a_dead_holder_only_within_the_lease_and_never_to_a_left_one() -> None:
    me = rec(9, "10.244.7.0/24", since=1_700_000_100)
    holder = rec(5, "10.244.7.0/24", since=1_700_000_000)
    now = 5_000.0
    within = pv(holder, "dead", now - LEASE + 1)
    assert allocation.lost_to(me, [within], now, LEASE, "vxlan", NET) == holder
    expired = pv(holder, "dead", now - LEASE)
    assert allocation.lost_to(me, [expired], now, LEASE, "vxlan", NET) is None
    assert allocation.lost_to(me, [pv(holder, "left", now)], now, LEASE, "vxlan", NET) is None


def test_lost_to_overlap_counts_and_refused_claims_do_not() -> None:
    me = rec(9, "10.244.7.0/24", since=1_700_000_100)
    wide = rec(5, "10.244.0.0/20", since=1_700_000_000)  # overlaps, older
    assert allocation.lost_to(me, [pv(wide)], 0.0, LEASE, "vxlan", NET) == wide
    # Outside the network, another backend: the data plane refuses them, so do we.
    outside = rec(5, "10.0.0.0/8", since=1)
    assert allocation.lost_to(me, [pv(outside)], 0.0, LEASE, "vxlan", NET) is None
    foreign = rec(5, "10.244.7.0/24", since=1, backend="host-gw", vtep_mac=None)
    assert allocation.lost_to(me, [pv(foreign)], 0.0, LEASE, "vxlan", NET) is None


# --- lost_to: certificate mode --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> SimPKI:
    return SimPKI(seed=13, network="10.0.0.0/8")


def certified(pki: SimPKI, r: NodeRecord, signer: Signer) -> NodeRecord:
    got, reason = pki.trust.fork().verify(signer.sign(r), SIM_WALL)
    assert got is not None, reason
    assert got.claim_rank is not None
    return got


POOL = Grant.from_pool(NET, 24)


def test_certified_fixed_grant_beats_pool_grant_whatever_since_says(pki: SimPKI) -> None:
    a, b = make_record(1), make_record(2)
    fixed = certified(pki, replace(a, subnet="10.244.7.0/24", since=1_700_000_500),
                      pki.issue(replace(a, subnet="10.244.7.0/24")))  # fmt: skip
    pooled = certified(
        pki,
        replace(b, subnet="10.244.7.0/24", since=1),
        pki.issue(b, grant=POOL, not_before=SIM_WALL - 300 * DAY),  # older, but only a pool
    )
    assert allocation.lost_to(pooled, [pv(fixed)], 0.0, LEASE, "vxlan", NET) == fixed
    assert allocation.lost_to(fixed, [pv(pooled)], 0.0, LEASE, "vxlan", NET) is None


def test_certified_older_certificate_wins_and_lying_since_does_not_help(pki: SimPKI) -> None:
    a, b = make_record(3), make_record(4)
    old = certified(
        pki,
        replace(a, subnet="10.244.9.0/24", since=1_700_000_000),
        pki.issue(a, grant=POOL, not_before=SIM_WALL - 9 * DAY),
    )
    liar = certified(
        pki,
        replace(b, subnet="10.244.9.0/24", since=1),  # claims to have held it since 1970
        pki.issue(b, grant=POOL, not_before=SIM_WALL - 2 * DAY),
    )
    assert allocation.lost_to(liar, [pv(old)], 0.0, LEASE, "vxlan", NET) == old
    assert allocation.lost_to(old, [pv(liar)], 0.0, LEASE, "vxlan", NET) is None


def test_certified_ties_go_to_the_certified_name_not_the_node_id(pki: SimPKI) -> None:
    when = SIM_WALL - 5 * DAY
    # "n10" < "n7" as names, while n7's node id (8) is below n10's (11).
    a, b = make_record(7), make_record(10)
    assert a.node_id < b.node_id and b.name < a.name
    ra = certified(pki, replace(a, subnet="10.244.3.0/24", since=1),
                   pki.issue(a, grant=POOL, not_before=when))  # fmt: skip
    rb = certified(pki, replace(b, subnet="10.244.3.0/24", since=1_700_000_000),
                   pki.issue(b, grant=POOL, not_before=when))  # fmt: skip
    assert ra.claim_rank == rb.claim_rank
    assert allocation.lost_to(ra, [pv(rb)], 0.0, LEASE, "vxlan", NET) == rb
    assert allocation.lost_to(rb, [pv(ra)], 0.0, LEASE, "vxlan", NET) is None


def test_certified_claim_beats_an_unverified_one(pki: SimPKI) -> None:
    a, b = make_record(5), make_record(6)
    cert = certified(pki, replace(a, subnet="10.244.4.0/24", since=1_700_000_000),
                     pki.issue(a, grant=POOL))  # fmt: skip
    bare = replace(b, subnet="10.244.4.0/24", since=1)  # no claim_rank: self-asserted only
    assert allocation.lost_to(bare, [pv(cert)], 0.0, LEASE, "vxlan", NET) == cert
    assert allocation.lost_to(cert, [pv(bare)], 0.0, LEASE, "vxlan", NET) is None


# -- IPv6 pools (dual-stack) ----------------------------------------------------------------------

NET6 = "fd00:10:244::/48"


def dual(i: int, subnet6: str, since: int = 0) -> NodeRecord:
    return replace(make_record(i), subnet6=subnet6, since=since)


def test_an_ipv6_pool_counts_and_picks_its_own_family() -> None:
    pool = Pool(NET6, allocation.DEFAULT_LEN6)
    assert (pool.version, pool.bits, pool.size) == (6, 128, 65536)
    assert pool.describe() == f"network {NET6} (65536 subnets of /64)"
    assert pool.contains("fd00:10:244:ffff::/64")
    for outside in ("fd00:10:245::/64", "fd00:10:244::/63", "10.244.0.0/24", "fd00:10:244::1/64"):
        assert not pool.contains(outside), outside
    rng = random.Random(3)
    picks = {allocation.pick(pool, [], rng) for _ in range(200)}
    assert all(p is not None and pool.contains(p) for p in picks)
    assert len(picks) > 190  # uniform over 65,536: collisions in 200 picks are rare


def test_an_ipv6_pick_avoids_what_members_hold_of_that_family_only() -> None:
    pool = Pool("fd00:10:244::/62", 64)  # four subnets
    members = [PeerView(dual(i, f"fd00:10:244:{i}::/64"), "alive", 0.0) for i in (0, 1, 2)]
    taken6 = allocation.held(members, 0.0, LEASE, 6)
    assert allocation.free_count(pool, taken6) == 1
    assert allocation.pick(pool, taken6, random.Random(1)) == "fd00:10:244:3::/64"
    # Their IPv4 subnets are another family's: they leave the IPv6 pool whole.
    assert allocation.free_count(pool, allocation.held(members, 0.0, LEASE)) == 4
    last = allocation.span_of("fd00:10:244:3::/64", 6)
    assert last is not None and allocation.span_of("fd00:10:244:3::/64", 4) is None
    assert allocation.pick(pool, [*taken6, last], random.Random(1)) is None


def test_an_ipv6_pool_never_hands_out_a_special_range() -> None:
    pool = Pool("fe00::/8", 10)  # fe80::/10 is the pool's third subnet of /10
    got = {allocation.pick(pool, [], random.Random(s)) for s in range(50)}
    assert got == {"fe00::/10", "fe40::/10", "fec0::/10"}


def test_lost_to_per_family() -> None:
    older = dual(2, "fd00:10:244:1::/64", since=100)
    local = dual(1, "fd00:10:244:1::/64", since=200)  # its IPv4 subnet overlaps nobody's
    peers = [PeerView(older, "alive", 0.0)]
    assert allocation.lost_to(local, peers, 0.0, LEASE, "vxlan", NET6, 6) == older
    assert allocation.lost_to(local, peers, 0.0, LEASE, "vxlan", NET6, 4) is None
    # A node that claims no IPv6 subnet loses none.
    assert allocation.lost_to(make_record(1), peers, 0.0, LEASE, "vxlan", None, 6) is None


def test_with_subnet_keeps_the_records_layout() -> None:
    r = make_record(1)
    both = allocation.with_subnet(r, 6, "fd00::/64")
    assert (both.subnet, both.subnet6) == (r.subnet, "fd00::/64")
    assert allocation.with_subnet(both, 4, "10.9.0.0/24").subnets == ("10.9.0.0/24", "fd00::/64")
    v6only = replace(r, subnet="fd00::/64")
    moved = allocation.with_subnet(v6only, 6, "fd00:1::/64")
    assert (moved.subnet, moved.subnet6) == ("fd00:1::/64", None)
    added = allocation.with_subnet(v6only, 4, "10.9.0.0/24")
    assert (added.subnet, added.subnet6) == ("10.9.0.0/24", "fd00::/64")
