"""Subnet allocation on the simulator (meshd/sim.py `add_allocating`): simultaneous joiners end
with distinct subnets every member agrees on; a dead member's subnet is held for the lease, a
left member's is free at once."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.dataplane import allocation
from meshd.dataplane.allocation import Pool
from meshd.gossip.events import MemberState
from meshd.sim import Network, make_record, peer_views


def join_within_a_second(net: Network, n: int, seed: int) -> None:
    rng = random.Random(seed)
    starts = sorted(rng.uniform(0, 1) for _ in range(n))
    records = [make_record(i) for i in range(n)]
    seeds = [r.addr for r in records[:3]]
    for i, at in enumerate(starts):
        net.run_until(at)
        net.add_allocating(records[i], seeds=[a for a in seeds if a != records[i].addr])


@pytest.mark.parametrize(("signed", "n", "network"), [(False, 100, "10.0.0.0/17"),
                                                      (True, 40, "10.0.0.0/18")])  # fmt: skip
def test_simultaneous_joiners_end_distinct_and_agreed(signed: bool, n: int, network: str) -> None:
    pool = Pool(network, 24)
    net = Network(seed=4, record_events=False, signed=signed, pool=pool)
    join_within_a_second(net, n, seed=4)
    assert net.run_until_true(net.subnets_settled, timeout=60, step=0.1)
    subnets = [node.local.subnet for node in net.nodes]
    assert len(set(subnets)) == n and all(pool.contains(s) for s in subnets)
    assert net.overlapping() == []
    # n joiners in a pool not much larger than n: first picks collide, and the losers moved.
    assert net.repicks() > 0
    if signed:  # every record carries a pool grant, ranked as one
        assert all(node.local.claim_rank is not None for node in net.nodes)
        assert all(node.local.claim_rank[0] == 1 for node in net.nodes)  # type: ignore[index]


def two_nodes_fill_the_pool(lease: float) -> tuple[Network, int, int]:
    net = Network(seed=9, record_events=False, pool=Pool("10.0.0.0/23", 24), lease=lease)
    a = net.add_allocating(make_record(0))
    b = net.add_allocating(make_record(1), seeds=[net.addrs[a]])
    assert net.run_until_true(net.subnets_settled, timeout=30)
    return net, a, b


def test_a_dead_members_subnet_is_held_for_the_lease_then_taken() -> None:
    lease = 120.0
    net, a, b = two_nodes_fill_the_pool(lease)
    old = net.nodes[a].local.subnet
    net.crash(a)
    assert net.run_until_true(lambda: net.view(b).get("n0") == MemberState.DEAD, timeout=60)
    c = net.add_allocating(make_record(2), seeds=[net.addrs[b]])
    joined = net.now
    # Within the lease the newcomer holds nothing: whatever it announces, it loses.
    while net.now < joined + lease - 1:
        net.run_for(1.0)
        local = net.nodes[c].local
        winner = allocation.lost_to(local, peer_views(net.nodes[c]), net.now, lease, "vxlan",
                                    "10.0.0.0/23")  # fmt: skip
        assert winner is not None, f"{local.subnet} taken at {net.now - joined:.0f} s"
    assert net.allocators[c].full
    # Once the lease has run out (counted from when each node learned of the death), it is free.
    assert net.run_until_true(lambda: net.subnets_settled([b, c]), timeout=lease)
    assert net.nodes[c].local.subnet == old
    assert not net.allocators[c].full


def test_a_left_members_subnet_is_free_at_once() -> None:
    net, a, b = two_nodes_fill_the_pool(lease=86400.0)
    old = net.nodes[a].local.subnet
    net.leave(a)
    assert net.run_until_true(lambda: net.view(b).get("n0") == MemberState.LEFT, timeout=30)
    c = net.add_allocating(make_record(2), seeds=[net.addrs[b]])
    joined = net.now
    assert net.run_until_true(lambda: net.subnets_settled([b, c]), timeout=30)
    assert net.nodes[c].local.subnet == old
    assert net.now - joined < 30  # simulated seconds: nowhere near the day-long lease


def test_add_allocating_needs_a_pool_and_a_free_subnet() -> None:
    with pytest.raises(ValueError, match="no pool"):
        Network().add_allocating(make_record(0))
    net = Network(pool=Pool("10.0.0.0/24", 25))
    known = [
        replace(make_record(1), subnet="10.0.0.0/25"),
        replace(make_record(2), subnet="10.0.0.128/25"),
    ]
    with pytest.raises(ValueError, match=r"network 10\.0\.0\.0/24 \(2 subnets of /25\) is full"):
        net.add_allocating(make_record(0), known=known)


def test_allocation_scenario_cli_reports_a_settled_run(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import sim_scenarios

    assert sim_scenarios.main(["--allocate", "10.0.0.0/19", "--nodes", "24", "--seed", "2"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["phase"] == "allocation" and line["pool"] == 32 and line["join_spread"] == 1.0
    assert line["settled"] is True and line["overlapping"] == []
    assert line["distinct_s"] <= line["settled_s"]
