"""Probe counters, suspicion/death counters and the probe round-trip histogram."""

from __future__ import annotations

import math
import random

import pytest

from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import Histogram, MemberState
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord
from meshd.sim import Network, make_record

ME, A, B, C = (make_record(i) for i in range(4))
CFG = GossipConfig()


def node(*members: NodeRecord) -> GossipNode:
    n = GossipNode(ME, CFG, random.Random(1), 0.0)
    n.join([], 0.0)
    if members:
        feed(n, *(m.Alive(r) for r in members), now=0.0)
    n.datagrams_to_send()
    return n


def feed(n: GossipNode, *msgs: m.Message, now: float, src: tuple[str, int] = A.addr) -> None:
    n.receive_datagram(m.pack_datagram([m.encode(x) for x in msgs]), src, now)


def next_ping(n: GossipNode) -> tuple[float, m.Ping, tuple[str, int]]:
    """Run the timers until the node sends a probe; its time, the ping and where it went."""
    for _ in range(100):
        t = n.get_timer()
        assert t is not None
        started = n.counters["probe.sent"]
        n.handle_timer(t)
        for data, addr, _ in n.datagrams_to_send():
            msg = m.decode(data)[0]
            # Not the second direct ping of a probe's indirect stage: a new probe.
            if isinstance(msg, m.Ping) and n.counters["probe.sent"] > started:
                return t, msg, addr
    raise AssertionError("no probe was sent")


def sent_to(n: GossipNode, until: float) -> list[tuple[list[m.Message], tuple[str, int]]]:
    out = []
    while (t := n.get_timer()) is not None and t <= until:
        n.handle_timer(t)
        out += [(m.decode(d), a) for d, a, _ in n.datagrams_to_send()]
    return out


# --- the histogram ------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((0.1, 0.5, 1.0))
    for v in (0.05, 0.1, 0.3, 0.5, 2.0):
        h.observe(v)
    assert h.buckets == [(0.1, 2), (0.5, 4), (1.0, 4), (math.inf, 5)]
    assert h.count == 5 and h.sum == pytest.approx(2.95)


def test_histogram_starts_empty_and_refuses_bad_bounds() -> None:
    h = Histogram((1.0,))
    assert h.buckets == [(1.0, 0), (math.inf, 0)] and h.count == 0 and h.sum == 0.0
    for bad in ((1.0, 0.5), (1.0, 1.0), (1.0, math.inf)):
        with pytest.raises(ValueError):
            Histogram(bad)


# --- probes -------------------------------------------------------------------------------------


def test_direct_ack_counts_ok_and_times_the_round_trip() -> None:
    n = node(A)
    t, ping, addr = next_ping(n)
    assert addr == A.addr and n.counters["probe.sent"] == 1
    feed(n, m.Ack(ping.seq), now=t + 0.003)
    assert n.counters["probe.ok"] == 1
    assert n.probe_rtt.count == 1 and n.probe_rtt.sum == pytest.approx(0.003)
    assert dict(n.probe_rtt.buckets)[0.0025] == 0 and dict(n.probe_rtt.buckets)[0.005] == 1
    feed(n, m.Ack(ping.seq), now=t + 0.004)  # a duplicate ack changes nothing
    assert n.counters["probe.ok"] == 1 and n.probe_rtt.count == 1
    next_ping(n)  # concluding an acked probe is no failure
    assert n.counters["probe.failed"] == 0 and n.counters["probe.sent"] == 2


def test_ack_through_a_relay_counts_indirect_ok_and_is_not_timed() -> None:
    n = node(A, B, C)
    t, ping, target = next_ping(n)
    out = sent_to(n, t + CFG.probe_timeout)
    relays = {a for msgs, a in out if isinstance(msgs[0], m.IndirectPing)}
    assert relays == {A.addr, B.addr, C.addr} - {target}
    feed(n, m.Ack(ping.seq), now=t + 0.7, src=sorted(relays)[0])
    assert n.counters["probe.indirect_ok"] == 1 and n.counters["probe.ok"] == 0
    assert n.probe_rtt.count == 0
    next_ping(n)
    assert n.counters["probe.failed"] == 0


def test_late_direct_ack_after_indirect_probing_is_still_direct() -> None:
    n = node(A, B)
    t, ping, target = next_ping(n)
    sent_to(n, t + CFG.probe_timeout)
    feed(n, m.Ack(ping.seq), now=t + 0.8, src=target)
    assert n.counters["probe.ok"] == 1 and n.counters["probe.indirect_ok"] == 0
    assert n.probe_rtt.buckets[-2] == (1.0, 1)


def test_a_slow_direct_ack_counts_against_local_health_a_prompt_one_heals_it() -> None:
    # Later than the stall threshold (half a probe timeout): the host is probably starved,
    # whoever the target was (time heals it too: test_sim_lifeguard).
    n = node(A)
    t, ping, _ = next_ping(n)
    feed(n, m.Ack(ping.seq), now=t + 0.3)
    assert n.counters["probe.ok"] == 1 and n.counters["probe.slow"] == 1
    assert n.health == 1
    t, ping, _ = next_ping(n)  # probing is stretched meanwhile
    feed(n, m.Ack(ping.seq), now=t + 0.003)  # a prompt ack
    assert n.counters["probe.slow"] == 1 and n.health == 0


def test_a_prompt_ack_is_not_slow() -> None:
    n = node(A)
    t, ping, _ = next_ping(n)
    feed(n, m.Ack(ping.seq), now=t + 0.2)
    assert n.counters["probe.slow"] == 0 and n.health == 0


def test_failed_probe_raises_a_suspicion_that_is_refuted_or_declared_dead() -> None:
    n = node(A, B)
    _, ping, _ = next_ping(n)
    victim = ping.target
    other = B if victim == A.name else A
    next_ping(n)  # no ack came: the probe failed and the target is suspect
    assert n.counters["probe.failed"] == 1 and n.counters["suspect.raised"] == 1
    victim_rec = A if victim == A.name else B
    feed(n, m.Alive(victim_rec.with_incarnation(1)), now=n.get_timer() or 0.0)
    assert n.counters["suspect.refuted"] == 1
    # A suspicion from someone else runs out: declared dead, once. (Nobody acks anything here,
    # so the victim fails its next probes and dies too.)
    t = n.get_timer() or 0.0
    feed(n, m.Suspect(0, other.name, victim), now=t)
    assert n.counters["suspect.raised"] == 2
    sent_to(n, t + 60)
    states = {x.record.name: x.state for x in n.members()}
    assert states[other.name] == MemberState.DEAD
    dead = sum(1 for s in states.values() if s == MemberState.DEAD)
    assert n.counters["dead.declared"] == dead == 2


def test_a_graceful_leave_is_not_a_death() -> None:
    n = node(A)
    feed(n, m.Dead(1, A.name, A.name), now=1.0)
    assert n.counters["dead.declared"] == 0 and n.counters["suspect.raised"] == 0


# --- a whole mesh -------------------------------------------------------------------------------


def test_mesh_counters_add_up_under_loss() -> None:
    net = Network(seed=3, loss=0.1)
    recs = [make_record(i) for i in range(10)]
    net.converged(recs)
    net.run_for(30)
    net.crash(7)
    net.run_for(40)
    live = [net.nodes[i] for i in net.live()]
    for x in live:
        c = x.counters
        concluded = sum(
            c[k] for k in ("probe.ok", "probe.retry_ok", "probe.indirect_ok", "probe.failed")
        )
        assert c["probe.sent"] - concluded in (0, 1)  # at most the probe in flight
        assert x.probe_rtt.count == c["probe.ok"]
        assert x.probe_rtt.buckets[-1][1] == x.probe_rtt.count
        # Latency is 0.5-2 ms each way on this network.
        assert 0.001 <= x.probe_rtt.sum / x.probe_rtt.count <= 0.004
    assert sum(x.counters["probe.indirect_ok"] for x in live) > 0  # 10% loss needs relays
    # Each live node declared the crashed one dead, once; nobody else died.
    assert [x.counters["dead.declared"] for x in live] == [1] * 9
    assert all(x.counters["suspect.raised"] >= 1 for x in live)
    raised = sum(x.counters["suspect.raised"] for x in live)
    refuted = sum(x.counters["suspect.refuted"] for x in live)
    suspect_now = sum(1 for x in live for mem in x.members() if mem.state == MemberState.SUSPECT)
    # Every suspicion ended refuted, in a death (some deaths are heard of without a suspicion
    # first), or is still running.
    assert refuted + suspect_now <= raised <= refuted + suspect_now + 9
