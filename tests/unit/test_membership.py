"""meshd/membership.py: the masquerade follows this node's subnet and reports errors once."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest
from logparse import events  # tests/unit is on sys.path (pytest prepend import mode)
from records import rec

from meshd import membership as membership_mod
from meshd.errors import DataplaneError
from meshd.gossip.events import EventKind, Member, MemberEvent, MemberState
from meshd.membership import WHY, Membership
from meshd.statestore import State, StateStore


@dataclass
class FakeNat:
    calls: list[tuple[str, bool]] = field(default_factory=list)
    fail: str | None = None

    async def apply(self, subnet: str, *, force: bool = False) -> bool:
        self.calls.append((subnet, force))
        if self.fail:
            raise DataplaneError(self.fail)
        return True


@dataclass
class FakeLocal:
    subnet: str


@dataclass
class FakeNode:
    local: FakeLocal
    crl_der: bytes | None = None


def membership(node: Any, nat: FakeNat | None) -> Membership:
    return Membership(node, None, None, None, 30.0, lambda: None, asyncio.Event(), masquerade=nat)  # type: ignore[arg-type]


def test_masquerade_follows_the_subnet(caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode(FakeLocal("10.244.1.0/24"))
    nat = FakeNat()
    m = membership(node, nat)
    asyncio.run(m.update_masquerade(force=True))
    node.local.subnet = "10.244.7.0/24"  # allocation moved us
    asyncio.run(m.update_masquerade())
    assert nat.calls == [("10.244.1.0/24", True), ("10.244.7.0/24", False)]

    nat.fail = "masquerade: nft: Could not process rule"
    with caplog.at_level(logging.ERROR, logger="meshd"):
        asyncio.run(m.update_masquerade(force=True))
        asyncio.run(m.update_masquerade(force=True))
    assert [r.getMessage() for r in caplog.records] == ["masquerade: nft: Could not process rule"]
    nat.fail = None
    asyncio.run(m.update_masquerade(force=True))
    assert len(nat.calls) == 5


def test_no_masquerade_is_a_no_op() -> None:
    m = membership(FakeNode(FakeLocal("10.244.1.0/24")), None)
    asyncio.run(m.update_masquerade(force=True))  # nothing to call, nothing raised
    assert m.masquerade is None


class Stop(Exception):
    """Raised by the fake reconciler: the loop has handled one batch."""


@dataclass
class EventNode:
    """The gossip node as the loop reads it, handing out one batch of events; a refutation of
    this node happens in the same batch."""

    local: Any
    batch: list[Any]
    counters: Counter[str] = field(default_factory=Counter)
    synced: bool = True
    leaving: bool = False
    crl_der: bytes | None = None
    local_revoked: str = ""

    def pop_events(self) -> list[Any]:
        out, self.batch = self.batch, []
        self.counters["refute"] += 1
        return out

    def members(self) -> list[Any]:
        return []


class StopSink:
    def set_peers(self, peers: Any, synced: bool, now: float) -> None:
        raise Stop

    def set_local(self, local: Any, settled: bool = True) -> None: ...


def test_member_events_are_logged_with_event_peer_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    me, peer = rec(1), rec(2)
    batch = [
        MemberEvent("join", Member(peer, MemberState.ALIVE, 0.0, 0.0)),
        MemberEvent("dead", Member(peer, MemberState.DEAD, 0.0, 0.0)),
    ]
    node = EventNode(me, batch)
    changed = asyncio.Event()
    changed.set()
    m = Membership(node, None, StopSink(), None, 30.0, lambda: None, changed)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="meshd"), pytest.raises(Stop):
        asyncio.run(m.run())
    got = events(caplog.records)
    assert [(e["event"], e["peer"]) for e in got] == [
        ("peer_join", "n2"),
        ("peer_dead", "n2"),
        ("self_refuted", "n1"),
    ]
    dead = got[1]
    assert dead["reason"] == WHY["dead"] and dead["state"] == "dead"
    assert (dead["subnet"], dead["public_ip"]) == ("10.244.2.0/24", "10.99.0.2")
    assert dead["msg"] == "member n2 (10.99.0.2 10.244.2.0/24): dead"  # the human message kept
    assert set(WHY) == set(get_args(EventKind))  # every kind has its reason


@dataclass
class ProbeNode:
    local: Any
    listed: list[Member]
    crl_der: bytes | None = None

    def members(self) -> list[Member]:
        return self.listed


@dataclass
class FakeProber:
    targets: list[dict[str, str]] = field(default_factory=list)
    local: list[str | None] = field(default_factory=list)

    async def set_local(self, ip: str | None) -> None:
        self.local.append(ip)

    def set_targets(self, targets: dict[str, str]) -> None:
        self.targets.append(dict(targets))


@dataclass
class FlagSink:
    flags: dict[str, str] = field(default_factory=dict)

    def peer_flags(self) -> dict[str, str]:
        return self.flags


def test_probe_targets_are_rebuilt_only_on_change() -> None:
    me = rec(1)
    peer = Member(rec(2), MemberState.ALIVE, 0.0, 0.0)
    node = ProbeNode(me, [Member(me, MemberState.ALIVE, 0.0, 0.0), peer])
    sink = FlagSink()
    m = Membership(node, None, sink, None, 30.0, lambda: None, asyncio.Event())  # type: ignore[arg-type]
    prober = FakeProber()

    async def run() -> None:
        task = asyncio.create_task(m.probe_targets_loop(prober, every=0.001))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # many turns, nothing changed: built once
        assert prober.targets == [{"n2": "10.244.2.0"}]
        sink.flags = {"n2": "conflict"}  # the reconciler refuses n2: no longer probed
        await asyncio.sleep(0.02)
        assert prober.targets[1:] == [{}]
        sink.flags = {}
        node.listed.append(Member(rec(3), MemberState.ALIVE, 0.0, 0.0))
        await asyncio.sleep(0.02)
        assert len(prober.targets) == 3  # flags changed back
        m._views_generation += 1  # a batch of member events (the run loop counts them)
        await asyncio.sleep(0.02)
        assert prober.targets[3:] == [{"n2": "10.244.2.0", "n3": "10.244.3.0"}]
        task.cancel()

    asyncio.run(run())
    assert set(prober.local) == {"10.244.1.0"}


@dataclass
class SaveNode:
    local: Any
    listed: list[Member]
    leaving: bool = False
    crl_der: bytes | None = None

    def members(self) -> list[Member]:
        return self.listed


def test_member_news_is_saved_at_most_every_save_every_and_the_last_of_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write and an fsync per batch of member events, in every daemon of a mesh that is
    # starting, cost more than the gossip: news waits for SAVE_EVERY, but never longer.
    monkeypatch.setattr(membership_mod, "SAVE_EVERY", 0.2)
    writes: list[int] = []
    store = StateStore(tmp_path)
    real = store.save

    def save(state: State) -> None:
        writes.append(len(state.members))
        real(state)

    monkeypatch.setattr(store, "save", save)
    me = rec(1)
    node = SaveNode(me, [Member(me, MemberState.ALIVE, 0.0, 0.0)])
    m = Membership(node, store, None, None, 30.0, lambda: None, asyncio.Event())  # type: ignore[arg-type]

    async def run() -> None:
        m.save()
        for i in (2, 3, 4):  # three batches of news within SAVE_EVERY: no write yet
            node.listed.append(Member(rec(i), MemberState.ALIVE, 0.0, 0.0))
            m.save()
        assert writes == [0]
        await asyncio.sleep(0.3)  # ... then one, with all of it
        assert writes == [0, 3]
        m.save()  # nothing new: nothing written
        assert writes == [0, 3]

    asyncio.run(run())
    assert [r.name for r in StateStore(tmp_path).load().members] == ["n2", "n3", "n4"]


def test_the_first_member_to_rejoin_through_is_saved_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed right after its join and restarted without seeds, a daemon finds the mesh again
    # only through its state dir (test_dataplane_e2e's restart): that first news cannot wait.
    monkeypatch.setattr(membership_mod, "SAVE_EVERY", 60.0)
    store = StateStore(tmp_path)
    me = rec(1)
    node = SaveNode(me, [Member(me, MemberState.ALIVE, 0.0, 0.0)])
    m = Membership(node, store, None, None, 30.0, lambda: None, asyncio.Event())  # type: ignore[arg-type]

    async def run() -> None:
        m.save(force=True)  # at start: nobody known
        node.listed.append(Member(rec(2), MemberState.ALIVE, 0.0, 0.0))
        m.save_news(own_incarnation=False)
        assert [r.name for r in StateStore(tmp_path).load().members] == ["n2"]
        node.listed.append(Member(rec(3), MemberState.ALIVE, 0.0, 0.0))
        m.save_news(own_incarnation=False)  # more news waits for SAVE_EVERY
        assert [r.name for r in StateStore(tmp_path).load().members] == ["n2"]
        m.save_news(own_incarnation=True)  # a new incarnation of ours does not
        assert [r.name for r in StateStore(tmp_path).load().members] == ["n2", "n3"]

    asyncio.run(run())
