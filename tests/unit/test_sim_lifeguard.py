"""Lifeguard on the simulator (issue 16 item 4): a starved node accuses nobody, and loss alone
declares no live member dead."""

from __future__ import annotations

import math

import pytest

from meshd.gossip import node as gossip_node
from meshd.gossip.events import MemberEvent
from meshd.gossip.suspicion import Awareness
from meshd.sim import Network, make_record

SLOW = 3


def starved_mesh(seed: int, period: float) -> tuple[Network, int]:
    """Ten converged nodes; after 5 s node SLOW's event loop runs only every ``period`` s. Runs
    two minutes; returns the network and where its log stood when the starvation began."""
    net = Network(seed=seed)
    net.converged([make_record(i) for i in range(10)])
    net.run_for(5)
    net.starve(SLOW, period)
    assert net.log is not None
    start = len(net.log)
    net.run_for(120)
    return net, start


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_starved_node_accuses_nobody(seed: int) -> None:
    # Its loop runs every 3 s, three probe intervals: every probe it starts, and every
    # suspicion it holds, runs out before it has read the answers that came in time.
    net, start = starved_mesh(seed, 3.0)
    assert net.log is not None
    log = net.log[start:]
    slow = net.nodes[SLOW]
    # Nobody died, the starved node included (it refutes at its next turn).
    assert not [x for x in log if x[2] in ("dead", "left")]
    # The only member ever suspected is the starved one, whose answers come late: it
    # suspected nobody, so nobody suspected anyone because of it.
    assert {about for _, _, kind, about, _ in log if kind == "suspect"} <= {slow.local.name}
    assert slow.counters["probe.failed"] == 0 and slow.counters["suspect.raised"] == 0
    # It noticed: stalls counted against its local health, probes left without a verdict.
    assert slow.counters["stall"] > 0 and slow.health > 0
    # ... and once it is fed again it is a healthy member.
    net.starve(SLOW, 0)
    assert net.run_until_true(net.fully_converged, 30)


def _health_after_feeding(seconds: float) -> tuple[int, int]:
    net, _ = starved_mesh(1, 3.0)
    slow = net.nodes[SLOW]
    starved = slow.health
    net.starve(SLOW, 0)
    net.run_for(seconds)
    return starved, slow.health


def test_a_starved_node_heals_its_local_health_once_fed() -> None:
    # What stalls raised heals a point per stall-free probe interval: fed again, the node
    # probes at the normal rate within seconds (by probes alone, 7 + 6 + ... intervals).
    starved, healed = _health_after_feeding(8.0)
    assert starved >= 5 and healed == 0


def test_by_probes_alone_local_health_would_heal_slowly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Awareness, "heal_stall", lambda self: None)
    starved, healed = _health_after_feeding(8.0)
    assert starved >= 5 and healed >= 3


def test_without_the_stall_rule_the_starved_node_would_accuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same mesh, with the rule off (a stall never noticed): the starved node concludes
    # probes before reading their acks and suspects healthy members. What the test above
    # shows is the rule's doing, not the scenario's mildness.
    monkeypatch.setattr(gossip_node, "STALL_FRACTION", math.inf)
    net, start = starved_mesh(1, 3.0)
    slow = net.nodes[SLOW]
    assert slow.counters["probe.failed"] > 0 and slow.counters["suspect.raised"] > 0
    assert net.log is not None
    suspected = {about for _, _, kind, about, _ in net.log[start:] if kind == "suspect"}
    assert suspected - {slow.local.name}


def test_loss_alone_declares_no_live_member_dead() -> None:
    # 200 nodes at 20 % loss for a minute: ~1,000 suspicions of healthy members, each gossiped
    # to all. Before issue 16 this seed ended with 3 live members declared dead somewhere (an
    # observer missed every copy of a refutation for a whole suspicion timeout).
    net = Network(seed=5, loss=0.2, record_events=False)
    dead: list[MemberEvent] = []
    suspects = 0

    def on_event(now: float, idx: int, ev: MemberEvent) -> None:
        nonlocal suspects
        if ev.kind in ("dead", "left"):
            dead.append(ev)
        suspects += ev.kind == "suspect"

    net.on_event = on_event
    net.converged([make_record(i) for i in range(200)])
    net.run_until(60)
    assert suspects > 10_000  # the loss did its work
    assert dead == []
