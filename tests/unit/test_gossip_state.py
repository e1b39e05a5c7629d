"""Member transitions of one GossipNode, driven by hand-made datagrams and an explicit clock."""

from __future__ import annotations

import random
from dataclasses import replace

from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord
from meshd.gossip.state import JOIN_GRACE
from meshd.sim import make_record

ME = make_record(0)
A = make_record(1)
B = make_record(2)
SRC = ("172.16.9.9", 7950)


def node(known: tuple[NodeRecord, ...] = (), cfg: GossipConfig | None = None) -> GossipNode:
    n = GossipNode(ME, cfg or GossipConfig(), random.Random(1), 0.0, known)
    n.join([], 0.0)
    return n


def feed(n: GossipNode, *msgs: m.Message, now: float = 1.0) -> None:
    n.receive_datagram(m.pack_datagram([m.encode(x) for x in msgs]), SRC, now)
    assert "error.internal" not in n.counters


def state(n: GossipNode, name: str) -> MemberState | None:
    return {x.record.name: x.state for x in n.members()}.get(name)


def kinds(n: GossipNode) -> list[tuple[str, str]]:
    return [(e.kind, e.member.record.name) for e in n.pop_events()]


def sent(n: GossipNode) -> list[tuple[list[m.Message], tuple[str, int]]]:
    return [(m.decode(d), a) for d, a, _ in n.datagrams_to_send()]


def test_new_node_alone_is_synced_and_lists_itself() -> None:
    n = node()
    assert n.synced
    (me,) = n.members()
    assert me.record == ME and me.state == MemberState.ALIVE


def test_alive_adds_a_member_and_is_rebroadcast() -> None:
    n = node()
    feed(n, m.Alive(A))
    assert state(n, "n1") == MemberState.ALIVE
    assert kinds(n) == [("join", "n1")]
    assert n.counters["msg.alive"] == 1 and n.counters["in"] == 1
    # The news is gossiped on: the next gossip round sends it to the new member.
    for _ in range(50):
        n.handle_timer(n.get_timer() or 0.0)
        if any(isinstance(x, m.Alive) for msgs, _ in sent(n) for x in msgs):
            break
    else:
        raise AssertionError("the alive was never gossiped")


def test_old_or_equal_incarnation_is_ignored_and_update_is_reported() -> None:
    n = node()
    feed(n, m.Alive(A.with_incarnation(3)))
    n.pop_events()
    feed(n, m.Alive(replace(A, mtu=1400, incarnation=3)), m.Alive(A.with_incarnation(2)))
    assert kinds(n) == []
    feed(n, m.Alive(A.with_incarnation(4)))  # bare incarnation bump: no event
    assert kinds(n) == []
    feed(n, m.Alive(replace(A, mtu=1400, incarnation=5)))
    assert kinds(n) == [("update", "n1")]
    assert [x.record.mtu for x in n.members() if x.record.name == "n1"] == [1400]


def test_suspect_then_refuted_by_higher_incarnation() -> None:
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    feed(n, m.Suspect(0, "n1", "n2"))
    assert state(n, "n1") == MemberState.SUSPECT
    feed(n, m.Alive(A))  # same incarnation does not refute
    assert state(n, "n1") == MemberState.SUSPECT
    feed(n, m.Alive(A.with_incarnation(1)))
    assert state(n, "n1") == MemberState.ALIVE
    assert kinds(n)[-2:] == [("suspect", "n1"), ("alive", "n1")]


def test_suspicion_times_out_to_dead() -> None:
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    feed(n, m.Suspect(0, "n1", "n2"), now=10.0)
    # 3 members, k = 0: the minimum timeout, 4 * max(1, log10(3)) * 1 s = 4 s. Two probe
    # intervals before it runs out, n1 itself is asked (nobody answers here); unanswered, it is
    # asked once more an interval later, and dead when the timeout runs out.
    t, checked_at = 10.0, None
    while state(n, "n1") == MemberState.SUSPECT and t < 100:
        t = n.get_timer() or t
        n.handle_timer(t)
        s1 = n._state.suspicions.get("n1")
        if checked_at is None and s1 is not None and s1.check_seq >= 0:
            checked_at = t  # n1 asked (the node's own probes may check n2 too)
    assert state(n, "n1") == MemberState.DEAD
    assert checked_at is not None and abs(checked_at - 12.0) < 1e-9
    assert abs(t - 14.0) < 1e-9
    assert ("dead", "n1") in kinds(n)


def test_a_suspect_that_answers_the_check_is_not_declared_dead() -> None:
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    feed(n, m.Suspect(0, "n1", "n2"), now=10.0)
    n.datagrams_to_send()
    # Two probe intervals before the 4 s run out, n1 is asked itself (and again a probe
    # interval later), with the suspicion on
    # the ping (and through B as a relay).
    while (t := n.get_timer()) is not None and t <= 13.0:
        n.handle_timer(t)
    out = sent(n)
    asks = [x for x, addr in out if addr == A.addr and isinstance(x[0], m.Ping)]
    assert asks and isinstance(asks[-1][1], m.Suspect) and asks[-1][1].node == "n1"
    assert any(isinstance(x[0], m.IndirectPing) and x[0].target == "n1" for x, _ in out)
    ping = asks[-1][0]
    assert isinstance(ping, m.Ping)
    feed(n, m.Ack(ping.seq), now=13.01)  # its ack; the refutation got lost
    while (t := n.get_timer()) is not None and t <= 14.5:
        n.handle_timer(t)
    assert state(n, "n1") == MemberState.SUSPECT  # answered: no verdict
    assert n.counters["suspect.answered"] == 1 and ("dead", "n1") not in kinds(n)
    feed(n, m.Alive(A.with_incarnation(1)), now=15.0)
    assert state(n, "n1") == MemberState.ALIVE


def test_a_suspect_that_answers_only_the_second_check_is_not_declared_dead() -> None:
    # Under loss one check (a direct ping and relays) can go unanswered; the node asks once more
    # before the verdict, and an answer to that second ask saves the member.
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    feed(n, m.Suspect(0, "n1", "n2"), now=10.0)
    n.datagrams_to_send()
    asks: list[tuple[float, int]] = []  # (when, seq) of each check of n1
    while (t := n.get_timer()) is not None and t <= 13.6:
        n.handle_timer(t)  # asked at 12.0, no answer; asked again at 13.0
        s1 = n._state.suspicions.get("n1")
        if s1 is not None and s1.check_seq >= 0 and s1.check_seq not in [q for _, q in asks]:
            asks.append((t, s1.check_seq))
    assert state(n, "n1") == MemberState.SUSPECT
    assert [w for w, _ in asks] == [12.0, 13.0]
    feed(n, m.Ack(asks[1][1]), now=13.8)  # the second ask's answer
    while (t := n.get_timer()) is not None and t <= 15.5:
        n.handle_timer(t)
    assert state(n, "n1") == MemberState.SUSPECT
    assert n.counters["suspect.answered"] == 1 and ("dead", "n1") not in kinds(n)


def test_a_late_answer_to_the_first_check_counts_too() -> None:
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    feed(n, m.Suspect(0, "n1", "n2"), now=10.0)
    first = None
    while (t := n.get_timer()) is not None and t <= 13.6:
        n.handle_timer(t)
        s1 = n._state.suspicions.get("n1")
        if first is None and s1 is not None and s1.check_seq >= 0:
            first = s1.check_seq
    assert first is not None and n._state.suspicions["n1"].check_seq != first  # asked twice
    feed(n, m.Ack(first), now=13.7)
    while (t := n.get_timer()) is not None and t <= 15.5:
        n.handle_timer(t)
    assert state(n, "n1") == MemberState.SUSPECT
    assert n.counters["suspect.answered"] == 1 and ("dead", "n1") not in kinds(n)


def test_stale_suspect_and_dead_are_ignored() -> None:
    n = node()
    feed(n, m.Alive(A.with_incarnation(5)))
    feed(n, m.Suspect(4, "n1", "n2"), m.Dead(4, "n1", "n2"))
    assert state(n, "n1") == MemberState.ALIVE
    feed(n, m.Suspect(1, "nobody", "n2"), m.Dead(1, "nobody", "n2"))
    assert state(n, "nobody") is None


def test_suspect_or_dead_about_self_is_refuted() -> None:
    n = node()
    feed(n, m.Alive(A))
    feed(n, m.Suspect(0, "n0", "n1"))
    assert n.local.incarnation == 1
    feed(n, m.Dead(4, "n0", "n1"))
    assert n.local.incarnation == 5
    assert state(n, "n0") == MemberState.ALIVE
    assert n.counters["refute"] == 2
    feed(n, m.Suspect(2, "n0", "n1"))  # older than our incarnation: nothing to refute
    assert n.local.incarnation == 5
    assert n.health > 0  # being suspected counts against our own health (Lifeguard)


def test_outdated_alive_about_self_is_refuted() -> None:
    n = node()
    feed(n, m.Alive(replace(ME, mtu=1300, incarnation=2)))
    assert n.local.incarnation == 3 and n.local.mtu == ME.mtu


def test_leave_is_left_and_comes_back_only_with_higher_incarnation() -> None:
    n = node()
    feed(n, m.Alive(A.with_incarnation(2)))
    feed(n, m.Dead(3, "n1", "n1"))
    assert state(n, "n1") == MemberState.LEFT
    feed(n, m.Alive(A.with_incarnation(3)))
    assert state(n, "n1") == MemberState.LEFT
    feed(n, m.Alive(A.with_incarnation(4)))
    assert state(n, "n1") == MemberState.ALIVE
    assert kinds(n) == [("join", "n1"), ("left", "n1"), ("join", "n1")]


def test_dead_can_become_left_but_not_the_reverse() -> None:
    n = node()
    feed(n, m.Alive(A))
    feed(n, m.Dead(0, "n1", "n2"))
    assert state(n, "n1") == MemberState.DEAD
    feed(n, m.Dead(0, "n1", "n1"))
    assert state(n, "n1") == MemberState.LEFT
    feed(n, m.Dead(0, "n1", "n2"))
    assert state(n, "n1") == MemberState.LEFT


def test_name_conflict_refuses_the_newcomer_while_the_old_one_lives() -> None:
    n = node()
    feed(n, m.Alive(A))
    impostor = replace(A, node_id=b"\xff" * 16, incarnation=9)
    feed(n, m.Alive(impostor))
    assert n.counters["drop.name_conflict"] == 1
    assert [x.record.node_id for x in n.members() if x.record.name == "n1"] == [A.node_id]
    feed(n, m.Dead(0, "n1", "n2"))
    feed(n, m.Alive(impostor))
    assert [x.record.node_id for x in n.members() if x.record.name == "n1"] == [b"\xff" * 16]
    assert state(n, "n1") == MemberState.ALIVE


def test_our_name_with_another_node_id_is_a_conflict() -> None:
    n = node()
    feed(n, m.Alive(replace(ME, node_id=b"\xee" * 16, incarnation=5)))
    assert n.counters["drop.name_conflict"] == 1
    assert n.local == ME and len(n.members()) == 1


def test_ping_is_acked_to_the_source_address_with_piggyback() -> None:
    n = node(cfg=GossipConfig(eager_gossip=False))  # else the news left in its own round
    feed(n, m.Alive(A))
    feed(n, m.Ping(77, "n0", "n1", A.addr))
    ((msgs, addr),) = sent(n)
    assert addr == A.addr
    assert msgs[0] == m.Ack(77)
    assert m.Alive(A) in msgs[1:]  # the pending broadcast rode along


def test_ping_for_someone_else_is_not_acked() -> None:
    n = node()
    feed(n, m.Ping(77, "n5", "n1", A.addr))
    assert n.counters["drop.wrong_target"] == 1
    assert sent(n) == []


def test_indirect_ping_is_relayed_and_nacked_on_timeout() -> None:
    n = node()
    feed(n, m.IndirectPing(5, "n2", B.addr, "n1", A.addr, True), now=0.5)
    # A target we do not know has no node id to address the ping to: not relayed.
    assert sent(n) == [] and n.counters["drop.unknown_target"] == 1
    feed(n, m.Alive(B), now=0.5)
    n.datagrams_to_send()
    feed(n, m.IndirectPing(5, "n2", B.addr, "n1", A.addr, True), now=1.0)
    ((msgs, addr),) = sent(n)
    assert addr == B.addr and isinstance(msgs[0], m.Ping) and msgs[0].target == "n2"
    relay_seq = msgs[0].seq
    n.handle_timer(1.0 + GossipConfig().probe_timeout)
    nacks = [(x[0], a) for x, a in sent(n) if isinstance(x[0], m.Nack)]
    assert nacks == [(m.Nack(5), A.addr)]
    # Acked in time instead: the ack is forwarded with the requester's sequence number.
    feed(n, m.IndirectPing(6, "n2", B.addr, "n1", A.addr, True), now=2.0)
    relay_seq = sent(n)[0][0][0].seq  # type: ignore[union-attr]
    feed(n, m.Ack(relay_seq), now=2.1)
    assert [(msgs[0], a) for msgs, a in sent(n)] == [(m.Ack(6), A.addr)]


def test_known_members_are_tombstones_revived_at_the_same_incarnation() -> None:
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0, known=(A.with_incarnation(4), B))
    assert state(n, "n1") == MemberState.DEAD
    n.join([], 0.0)
    assert not n.synced
    # They are asked for their state straight away.
    assert {a for _, a, _ in n.datagrams_to_send()} == {A.addr, B.addr}
    feed(n, m.Alive(A.with_incarnation(4)))
    assert state(n, "n1") == MemberState.ALIVE
    assert kinds(n) == [("join", "n1")]


def test_push_pull_reply_merges_and_syncs() -> None:
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0)
    n.join([("192.0.2.1", 7950)], 0.0)
    (req,) = sent(n)
    assert req[1] == ("192.0.2.1", 7950)
    pp = req[0][0]
    assert isinstance(pp, m.PushPull) and not pp.reply and pp.sender == ME
    assert not n.synced
    # The seed was asked through "any" (its node id unknown): it answers with its record only,
    # and the joiner asks again, addressed to it.
    feed(n, m.PushPull(A, pp.sync_id, True, 0, 1, ()))
    assert not n.synced and n.counters["push_pull.any_answered"] == 1
    (again,) = [d for d in n.datagrams_to_send() if isinstance(m.decode(d[0])[0], m.PushPull)]
    assert again[1:] == (A.addr, A.node_id)
    pp = m.decode(again[0])[0]
    assert isinstance(pp, m.PushPull) and not pp.reply
    entries = (m.PushPullEntry(B, MemberState.ALIVE, 0),)
    feed(n, m.PushPull(A, pp.sync_id, True, 0, 1, entries))
    assert n.synced
    assert state(n, "n1") == MemberState.ALIVE and state(n, "n2") == MemberState.ALIVE


def test_push_pull_request_is_answered_once_per_sync_id() -> None:
    n = node(cfg=GossipConfig(eager_gossip=False))  # only the answer, no rounds for the news
    feed(n, m.Alive(B))
    n.datagrams_to_send()
    for index in (0, 1):
        feed(n, m.PushPull(A, 9, False, index, 2, ()))
    replies = sent(n)
    assert len(replies) == 1
    ((pp,), addr) = replies[0]
    assert addr == A.addr and isinstance(pp, m.PushPull) and pp.reply and pp.sync_id == 9
    assert {e.record.name for e in pp.entries} == {"n1", "n2"}


def test_remote_dead_is_only_suspect_and_unknown_dead_is_a_quiet_tombstone() -> None:
    n = node()
    feed(n, m.Alive(A))
    n.pop_events()
    entries = (m.PushPullEntry(A, MemberState.DEAD, 0), m.PushPullEntry(B, MemberState.DEAD, 0))
    feed(n, m.PushPull(make_record(3), 1, True, 0, 1, entries))
    assert state(n, "n1") == MemberState.SUSPECT
    assert state(n, "n2") == MemberState.DEAD
    assert kinds(n) == [("join", "n3"), ("suspect", "n1")]


def test_push_pull_claiming_we_are_dead_makes_us_refute() -> None:
    n = node()
    entries = (m.PushPullEntry(ME, MemberState.DEAD, 0),)
    feed(n, m.PushPull(A, 1, False, 0, 1, entries))
    assert n.local.incarnation == 1
    (pp,) = [msgs[0] for msgs, _ in sent(n) if isinstance(msgs[0], m.PushPull)]
    assert isinstance(pp, m.PushPull) and pp.sender.incarnation == 1  # reply carries the refutation


def test_update_local_bumps_incarnation_and_broadcasts() -> None:
    n = node(cfg=GossipConfig(eager_gossip=False))
    feed(n, m.Alive(A))
    n.datagrams_to_send()
    n.update_local(replace(ME, subnet="10.99.0.0/24"), 2.0)
    assert n.local.incarnation == 1 and n.local.subnet == "10.99.0.0/24"
    assert sent(n) == []  # memberlist style: the news waits for a gossip round or a piggyback
    feed(n, m.Ping(1, "n0", "n1", A.addr), now=2.1)
    ((msgs, _),) = sent(n)
    assert m.Alive(n.local) in msgs


def test_eager_gossip_sends_news_at_once_but_no_more_rounds_than_the_ticker() -> None:
    from meshd.gossip.node import ROUND_BURST

    cfg = GossipConfig()
    assert cfg.eager_gossip
    interval = cfg.gossip_interval
    n = node(cfg=cfg)
    n.handle_timer(0.9)  # the node started at 0: run its first probe before the news
    n.datagrams_to_send()
    feed(n, m.Alive(A), m.Alive(B), now=1.0)
    first = sent(n)
    # In the same call, not at the next gossip tick: one datagram per gossip target.
    assert {addr for _, addr in first} == {A.addr, B.addr}
    assert all(m.Alive(A) in msgs and m.Alive(B) in msgs for msgs, _ in first)
    # A quiet node has ROUND_BURST rounds to spare; news beyond them waits for the bucket,
    # refilled at the ticker's rate of one round per interval.
    for inc in range(1, ROUND_BURST):
        feed(n, m.Alive(replace(A, incarnation=inc)), now=1.0)
        assert sent(n), inc
    late = m.Alive(replace(A, incarnation=ROUND_BURST))
    feed(n, late, now=1.0)
    assert sent(n) == []
    seen_at = None
    now = 1.0
    while seen_at is None and now < 1.0 + 3 * interval:
        now = max(now, n.get_timer() or now + interval)
        n.handle_timer(now)
        # A gossip round's datagrams hold broadcasts only (a probe's ping may carry it too).
        if any(late in msgs and not isinstance(msgs[0], m.Ping) for msgs, _ in sent(n)):
            seen_at = now
    assert seen_at is not None and 1.0 < seen_at <= 1.0 + 2 * interval


def test_has_news_is_set_by_events_and_cleared_by_pop_events() -> None:
    n = node()
    assert n.has_news()  # the initial sync state was never handed out
    n.pop_events()
    assert not n.has_news()
    feed(n, m.Ping(1, "n0", "n1", A.addr))  # a probe from a stranger changes nothing
    assert not n.has_news()
    feed(n, m.Alive(A))
    assert n.has_news()
    assert [e.kind for e in n.pop_events()] == ["join"]
    assert not n.has_news()


def test_leave_marks_self_left_and_finishes() -> None:
    n = node()
    assert not n.leave_done()
    n.leave(1.0)
    assert n.members()[0].state == MemberState.LEFT
    assert n.leave_done()  # nobody to tell
    n2 = node()
    feed(n2, m.Alive(A))
    n2.datagrams_to_send()
    n2.leave(2.0)
    assert not n2.leave_done()
    t = 2.0
    while not n2.leave_done() and t < 100:
        t = n2.get_timer() or t
        n2.handle_timer(t)
    assert t < 5.0
    dead = [x for msgs, _ in sent(n2) for x in msgs if isinstance(x, m.Dead)]
    assert dead and dead[0] == m.Dead(1, "n0", "n0")
    feed(n2, m.Suspect(1, "n0", "n1"), now=t)  # no refutation once leaving
    assert n2.local.incarnation == 1


def test_oversized_and_garbage_datagrams_are_counted() -> None:
    n = node()
    n.receive_datagram(b"\x00" * 2000, SRC, 1.0)
    n.receive_datagram(b"\xc1", SRC, 1.0)
    assert n.counters["drop.size"] == 1 and n.counters["drop.decode"] == 1
    assert n.counters["in"] == 2


def test_timers_are_never_in_the_past_after_handling() -> None:
    cfg = GossipConfig()
    n = node(cfg=cfg)
    feed(n, m.Alive(A), m.Alive(B))
    t = 0.0
    for _ in range(200):
        nxt = n.get_timer()
        assert nxt is not None
        t = max(t, nxt)
        n.handle_timer(t)
        n.datagrams_to_send()
        after = n.get_timer()
        # With members there is always a next probe: strictly later, and never further away
        # than one probe interval stretched by the worst local health (nobody answers here, so
        # Lifeguard's awareness climbs to its maximum).
        assert after is not None, f"no timer after handling t={t}"
        assert t < after <= t + cfg.probe_interval * cfg.awareness_max, (t, after)


def test_ack_carries_the_refutation_of_a_suspicion_riding_on_the_ping() -> None:
    n = node()
    feed(n, m.Alive(A))
    n.datagrams_to_send()
    # The buddy system: the prober tells us we are suspect in the ping itself.
    feed(n, m.Ping(8, "n0", "n1", A.addr), m.Suspect(0, "n0", "n1"))
    ((msgs, addr),) = [(x, a) for x, a in sent(n) if x[0] == m.Ack(8)]  # (+ an eager round)
    assert addr == A.addr
    assert m.Alive(n.local) in msgs and n.local.incarnation == 1


def test_probing_a_suspect_tells_it_so() -> None:
    n = node()
    feed(n, m.Alive(A))
    feed(n, m.Suspect(0, "n1", "n9"))
    t = 1.0
    pings: list[list[m.Message]] = []
    while not pings and t < 10:
        t = n.get_timer() or t
        n.handle_timer(t)
        pings = [msgs for msgs, _ in sent(n) if isinstance(msgs[0], m.Ping)]
    assert m.Suspect(0, "n1", "n0") in pings[0]


def test_ping_from_a_suspect_is_answered_with_the_suspicion() -> None:
    n = node()
    feed(n, m.Alive(A), m.Suspect(0, "n1", "n2"))
    n.datagrams_to_send()
    feed(n, m.Ping(3, "n0", "n1", A.addr))
    ((msgs, _),) = sent(n)
    assert msgs[0] == m.Ack(3) and m.Suspect(0, "n1", "n0") in msgs


def test_stale_suspicion_of_us_is_answered_directly() -> None:
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    feed(n, m.Suspect(0, "n0", "n1"))  # refuted: incarnation 1
    n.datagrams_to_send()
    feed(n, m.Suspect(0, "n0", "n2"))  # n2 missed the refutation
    out = sent(n)
    assert any(addr == B.addr and m.Alive(n.local) in msgs for msgs, addr in out)
    assert n.local.incarnation == 1


def test_degraded_node_gives_suspects_longer() -> None:
    """Lifeguard: a node whose own health score is raised (it missed acks/nacks) scales the
    suspicion timeout, so its verdicts slow down; a healthy node keeps the 4 s above."""
    n = node()
    feed(n, m.Alive(A), m.Alive(B))
    n._state.awareness.apply(2)  # as after probes that went unanswered
    feed(n, m.Suspect(0, "n1", "n2"), now=10.0)
    t = 10.0
    while state(n, "n1") == MemberState.SUSPECT and t < 100:
        t = n.get_timer() or t
        n.handle_timer(t)
    assert state(n, "n1") == MemberState.DEAD
    assert t >= 10.0 + 3 * 4.0 - 1e-9  # (score + 1) * 4 s


def test_digest_that_differs_starts_a_full_push_pull() -> None:
    n = node()
    feed(n, m.Alive(A))
    n.datagrams_to_send()
    digest = m.pack_datagram([m.encode(m.SyncDigest(7, False, b"\0" * m.DIGEST_LEN, "n1"))])
    # From a source that is no member (no envelope sender, or not the member the digest names,
    # or a digest naming nobody): no answer at all.
    n.receive_datagram(digest, SRC, 1.0)
    n.receive_datagram(digest, SRC, 1.0, B.node_id)
    anonymous = m.pack_datagram([m.encode(m.SyncDigest(7, False, b"\0" * m.DIGEST_LEN))])
    n.receive_datagram(anonymous, SRC, 1.0, A.node_id)
    assert n.counters["drop.unknown_source"] == 3 and sent(n) == []
    n.receive_datagram(digest, SRC, 1.0, A.node_id)
    assert n.counters["push_pull.digest_differ"] == 1
    pps = [(msgs[0], addr) for msgs, addr in sent(n) if isinstance(msgs[0], m.PushPull)]
    # The full exchange goes to the member's record address, not to the datagram's source.
    assert pps and all(not pp.reply and addr == A.addr for pp, addr in pps)


def test_equal_views_exchange_digests_only() -> None:
    x = node()
    y = GossipNode(A, GossipConfig(), random.Random(2), 0.0)
    y.join([ME.addr], 0.0)
    peer = {ME.addr: (x, A.addr), A.addr: (y, ME.addr)}
    seen: list[tuple[str, m.Message]] = []

    def pump(now: float) -> None:  # deliver until quiet, recording what went each way
        moved = True
        while moved:
            moved = False
            for src in (x, y):
                for data, addr, to in src.datagrams_to_send():
                    dst, from_addr = peer[addr]
                    assert to in (b"", dst.local.node_id)  # addressed to the member it reaches
                    seen.extend((src.local.name, d) for d in m.decode(data))
                    dst.receive_datagram(data, from_addr, now, src.local.node_id, not to)
                    moved = True

    now = 0.0
    pump(now)
    assert x.synced and y.synced
    while now < 100 and not any(isinstance(d, m.SyncDigest) for _, d in seen):
        now = min(t for t in (x.get_timer(), y.get_timer()) if t is not None)
        seen.clear()  # keep only the step that opened the round
        for n in (x, y):
            n.handle_timer(now)
        pump(now)
    digests = [(who, d) for who, d in seen if isinstance(d, m.SyncDigest)]
    assert len(digests) == 2
    (opener, opening), (answerer, answer) = digests
    assert isinstance(opening, m.SyncDigest) and isinstance(answer, m.SyncDigest)
    assert opener != answerer and not opening.reply and answer.reply
    assert answer.digest == opening.digest and answer.sync_id == opening.sync_id
    assert not any(isinstance(d, m.PushPull) for _, d in seen)
    assert x.counters["push_pull.digest_same"] == 1 and y.counters["push_pull.digest_same"] == 1


def test_digest_of_the_wrong_length_is_dropped() -> None:
    n = node()
    bad = m.pack_datagram([bytes([0x94, 9, 1, 0xC2, 0xC4, 3, 1, 2, 3])])
    n.receive_datagram(bad, SRC, 1.0)
    assert n.counters["drop.malformed"] == 1 and sent(n) == []


def test_a_learned_tombstone_is_dated_by_the_senders_age_and_ages_on() -> None:
    n = node()
    dead = m.PushPullEntry(B, MemberState.DEAD, B.incarnation, 100)
    feed(n, m.PushPull(A, 7, True, 0, 1, (dead,)), now=500.0)
    b = {x.record.name: x for x in n.members()}[B.name]
    assert b.state == MemberState.DEAD and b.state_since == 400.0
    # What we tell the next joiner: dead for 100 s plus the time since.
    sent_entries = [e for e in entries_of(n._state.entries(530.0)) if e.record.name == B.name]
    assert [(e.state, e.age) for e in sent_entries] == [(MemberState.DEAD, 130)]
    # A tombstone older than we would keep one is not learned at all.
    fresh = node()
    old = m.PushPullEntry(B, MemberState.DEAD, B.incarnation, int(GossipConfig().tombstone_ttl))
    feed(fresh, m.PushPull(A, 8, True, 0, 1, (old,)), now=500.0)
    assert state(fresh, B.name) is None


def test_push_pull_entries_without_an_age_are_read_as_age_zero() -> None:
    three = m.encode_entry(B, MemberState.DEAD, 3)
    four = m.encode_entry(B, MemberState.DEAD, 3, 42)
    assert three[0] == 0x93 and four[0] == 0x94
    assert [e.age for e in entries_of([three])] == [0]
    assert [e.age for e in entries_of([four])] == [42]


def entries_of(raw: list[bytes]) -> list[m.PushPullEntry]:
    """Encoded push-pull entries as a receiver decodes them."""
    out: list[m.PushPullEntry] = []
    for chunk in m.encode_push_pull(A, 1, True, raw, 1 << 30, []):
        for msg in m.decode(m.pack_datagram([chunk])):
            assert isinstance(msg, m.PushPull)
            out += msg.entries
    return out


def test_a_member_that_just_joined_is_not_probed_for_the_join_grace() -> None:
    # It is taking in the mesh's state: on a busy host its acks come late, and probing it only
    # raised suspicions it refuted. After JOIN_GRACE probe intervals it is probed as usual.
    n = node()
    feed(n, m.Alive(A), now=1.0)
    n.datagrams_to_send()
    pinged: list[float] = []
    while (t := n.get_timer()) is not None and t <= 1.0 + JOIN_GRACE + 2:
        n.handle_timer(t)
        if any(isinstance(x[0], m.Ping) for x, addr in sent(n) if addr == A.addr):
            pinged.append(t)
    assert pinged and pinged[0] >= 1.0 + JOIN_GRACE * GossipConfig().probe_interval


def test_members_learned_while_joining_are_probed_at_once() -> None:
    # Not new to the mesh, only to us: the grace is for members that join after we did.
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0)
    n.join([A.addr], 0.0)
    assert not n.synced
    feed(n, m.Alive(A), now=0.5)
    n.datagrams_to_send()
    pinged: list[float] = []
    while not pinged and (t := n.get_timer()) is not None and t <= 2.5:
        n.handle_timer(t)
        if any(isinstance(x[0], m.Ping) for x, addr in sent(n) if addr == A.addr):
            pinged.append(t)
    assert pinged and n.counters["probe.sent"] >= 1
