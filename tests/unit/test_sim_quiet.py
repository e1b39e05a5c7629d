"""The simulator's pieces for a mesh simulated only where it meets a real daemon
(benchmarks/simbridge.py `QuietMesh`): asleep nodes answer but run no timers, intercepted
datagrams are not delivered, and the model, driven against a GossipNode that stands in for the
daemon, gives it every member, the stand-in probes and every leave."""

from __future__ import annotations

import collections
import importlib
import random
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from meshd.gossip import messages
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.node import GossipNode
from meshd.sim import Addr, Network, make_record

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def converged(n: int) -> Network:
    net = Network(seed=3, record_events=False)
    net.converged([make_record(i) for i in range(n)])
    return net


def test_an_asleep_node_runs_no_timers_but_answers_then_wakes() -> None:
    net = converged(6)
    net.sleep(2)
    net.run_for(30)
    assert net.nodes[2].counters["probe.sent"] == 0
    assert net.nodes[2].counters["msg.ping"] > 0  # probed by the others, and it answered:
    assert net.all_see("n2", MemberState.ALIVE)
    net.wake(2)
    net.run_for(5)
    assert net.nodes[2].counters["probe.sent"] > 0
    assert net.fully_converged()


def test_an_intercepted_datagram_is_not_delivered() -> None:
    net = converged(4)
    to3 = net.addrs[3]
    net.intercept = lambda src, data, addr, to: addr == to3
    net.run_for(10)
    assert net.nodes[3].counters["in"] == 0
    assert net.intercepted > 0
    assert net.nodes[0].counters["in"] > 0


class FakeBridge:
    """What QuietMesh needs of simbridge.Bridge, wired to a GossipNode in the daemon's place."""

    def __init__(self, net: Network, daemon: GossipNode) -> None:
        self.net = net
        self.daemon = daemon
        self.counters: collections.Counter[str] = collections.Counter()
        self.before_deliver = None
        self.on_tick = None
        net.on_datagram = self._outbound

    def _outbound(self, src: int, payload: bytes, addr: Addr, to: bytes) -> None:
        if addr == self.daemon.local.addr:
            self.send(src, payload, addr, to)

    def send(self, src: int, payload: bytes, addr: Addr, to: bytes) -> None:
        self.counters["to_daemon"] += 1
        sender = self.net.nodes[src].local.node_id
        self.daemon.receive_datagram(payload, self.net.addrs[src], self.net.now, sender, not to)

    def run(self, model: object, until: float, step: float = 0.01) -> None:
        net, daemon = self.net, self.daemon
        me = daemon.local
        while net.now < until:
            now = net.now + step
            net.run_until(now)
            model._tick(now)  # type: ignore[attr-defined]
            t = daemon.get_timer()
            if t is not None and t <= now:
                daemon.handle_timer(now)
            for data, addr, to in daemon.datagrams_to_send():
                i = net._by_addr.get(addr)  # noqa: SLF001
                if i is not None:
                    model._before_deliver(i, data, me.addr, me.node_id, to)  # type: ignore[attr-defined]
                    net.deliver(i, data, me.addr, me.node_id, to)
            daemon.pop_events()


def test_quiet_mesh_gives_the_daemon_every_member_and_every_leave() -> None:
    n, leave = 300, 30
    simbridge = load("simbridge")
    net = converged(n)
    daemon = GossipNode(make_record(5000), GossipConfig(), random.Random(1), 0.0)
    bridge = FakeBridge(net, daemon)
    model = simbridge.QuietMesh(bridge, speakers=10, seed=1)
    assert len(net.dormant) == n - 10
    daemon.join([net.addrs[1]], 0.0)
    bridge.run(model, 20.0)
    view = {m.record.name: m.state for m in daemon.members()}
    assert len(view) == n + 1 and set(view.values()) == {MemberState.ALIVE}
    # ~1 stand-in probe a second, and the members learnt the daemon (an item of the model).
    assert 10 <= bridge.counters["model.stand_in_ping"] <= 35
    assert daemon.counters["msg.ping"] >= bridge.counters["model.stand_in_ping"]
    gone = random.Random(2).sample(range(2, n), leave)
    for i in gone:
        model.leave(i)
    bridge.run(model, 30.0)
    view = {m.record.name: m.state for m in daemon.members()}
    assert {view[f"n{i}"] for i in gone} == {MemberState.LEFT}
    assert sum(1 for s in view.values() if s == MemberState.ALIVE) == n + 1 - leave
    assert bridge.counters["model.redirected"] > 0
    # The leavers are gone once their leave was sent; nobody else was suspected.
    assert all(net.down[i] for i in gone)
    assert daemon.counters["suspect.raised"] == 0


def test_an_asleep_relay_nacks_for_a_member_that_is_gone() -> None:
    simbridge = load("simbridge")
    net = converged(20)
    daemon = GossipNode(make_record(5000), GossipConfig(), random.Random(1), 0.0)
    bridge = FakeBridge(net, daemon)
    model = simbridge.QuietMesh(bridge, speakers=2, seed=1)
    daemon.join([net.addrs[1]], 0.0)
    bridge.run(model, 5.0)
    relay, gone, up = [i for i in range(2, 20) if i not in model.speakers][:3]
    net.crash(gone)
    me = daemon.local
    for seq, target in ((901, gone), (902, up)):
        ask = messages.IndirectPing(seq, f"n{target}", net.addrs[target], me.name, me.addr, True)
        data = messages.pack_datagram([messages.encode(ask)])
        model._before_deliver(relay, data, me.addr, me.node_id, net.nodes[relay].local.node_id)
        net.deliver(relay, data, me.addr, me.node_id, net.nodes[relay].local.node_id)
    bridge.run(model, 6.0)
    assert bridge.counters["model.relay_nack"] == 1  # for the gone member only
    assert daemon.counters["ack.unmatched"] >= 1  # the member that is up answered through it


def test_spend_gossip_uses_up_what_an_asleep_member_would_have_gossiped() -> None:
    net = Network(seed=4)
    recs = [make_record(i) for i in range(1, 6)]
    net.converged(recs)
    net.sleep(0)
    net.update_local(0, replace(recs[0], incarnation=recs[0].incarnation + 1))
    node = net.nodes[0]
    spent = node.spend_gossip(1000)
    # Each broadcast goes its retransmit count, several to a datagram: some, never all 1,000.
    assert 0 < spent < 1000
    assert node.spend_gossip(1000) == 0  # the queue is empty: nothing rides on its next answer
