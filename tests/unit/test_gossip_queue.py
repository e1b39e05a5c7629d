from __future__ import annotations

import math

import pytest

from meshd.gossip.config import GossipConfig
from meshd.gossip.queue import BroadcastQueue, DeliveryEstimate, retransmit_limit


def test_retransmit_limit_follows_memberlist_when_asked() -> None:
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 1000) == 16


def test_default_retransmit_limit_is_the_fewest_copies_that_miss_at_most_retransmit_miss() -> None:
    """Issue 16: L = ceil(ln((N + 1) / miss)), the fewest copies per node for which the expected
    number of members missing every copy, (N + 1) e^-L, is at most ``miss``."""
    cfg = GossipConfig()
    assert (cfg.retransmit_mult, cfg.retransmit_miss) == (0, 0.025)
    limits = {n: retransmit_limit(0, n) for n in (1, 10, 30, 100, 1000, 10_000)}
    assert limits == {1: 5, 10: 7, 30: 8, 100: 9, 1000: 11, 10_000: 13}
    for n, limit in limits.items():
        assert (n + 1) * math.exp(-limit) <= 0.025 < (n + 1) * math.exp(-(limit - 1))
    assert retransmit_limit(0, 1000, miss=0.001) == 14  # a smaller miss buys more copies
    q = BroadcastQueue()  # the rule is the queue's default
    q.push("a", b"aaaa")
    assert sum(len(q.take(100, num_nodes=1000)) for _ in range(20)) == 11


def test_a_join_is_sent_to_a_smaller_miss_than_other_news() -> None:
    """A member that misses a join has no route to the newcomer until anti-entropy: joins are
    sent until (N + 1) e^-L <= JOIN_MISS (1/1000), other news to retransmit_miss (1/40)."""
    from meshd.gossip.queue import JOIN_MISS

    for n, joins, news in ((100, 12, 9), (1000, 14, 11), (10_000, 17, 13)):
        q = BroadcastQueue()
        q.push("new", b"join", join=True)
        q.push("old", b"news")
        sent = [p for _ in range(30) for p in q.take(100, num_nodes=n)]
        assert (sent.count(b"join"), sent.count(b"news")) == (joins, news)
        assert (n + 1) * math.exp(-joins) <= JOIN_MISS
    q = BroadcastQueue(retransmit_mult=4)  # memberlist's rule has one limit for everything
    q.push("new", b"join", join=True)
    assert sum(len(q.take(100, num_nodes=1000)) for _ in range(30)) == 16


def test_state_marks_joins_but_not_updates() -> None:
    import random
    from collections import Counter

    from meshd.gossip.state import Membership
    from meshd.sim import make_record

    q = BroadcastQueue()
    st = Membership(make_record(0), GossipConfig(), random.Random(1), q, Counter(), lambda *a: None)
    st.on_alive(make_record(1), 0.0)
    assert q._by_key["n1"].join
    st.on_alive(make_record(1).with_incarnation(1), 1.0)
    assert not q._by_key["n1"].join  # an update of a member it knew


def test_loss_buys_copies_so_that_as_many_arrive() -> None:
    """With a fraction ``delivery`` of datagrams arriving, ceil(ln((N + 1) / miss) / delivery)
    copies: 14 at N = 1,000 and 20 % loss (still under Serf's model's 14.7)."""
    assert retransmit_limit(0, 1000, delivery=0.8) == 14
    assert retransmit_limit(0, 1000, delivery=0.9) == 12
    assert retransmit_limit(4, 1000, delivery=0.5) == 16  # memberlist's rule ignores loss
    q = BroadcastQueue()
    q.delivery = 0.5
    q.push("a", b"aaaa")
    assert sum(len(q.take(100, num_nodes=1000)) for _ in range(30)) == 22


def test_broadcast_is_retired_after_the_limit() -> None:
    q = BroadcastQueue(retransmit_mult=2)
    q.push("a", b"aaaa")
    sent = [q.take(100, num_nodes=5) for _ in range(3)]
    assert sent == [[b"aaaa"], [b"aaaa"], []]
    assert len(q) == 0


def test_newer_broadcast_about_the_same_member_replaces_the_older() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.push("a", b"old1")
    q.take(100, 5)
    q.push("a", b"new1")
    assert len(q) == 1
    assert q.take(100, 5) == [b"new1"]


def test_least_sent_first_then_newest_and_budget_respected() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.push("a", b"A" * 10)
    q.take(100, 5)  # a: sent once
    q.push("b", b"B" * 10)
    q.push("c", b"C" * 10)
    assert q.take(25, 5) == [b"C" * 10, b"B" * 10]  # unsent first, newest first; a did not fit
    assert q.take(15, 5) == [b"C" * 10]  # all sent once now: newest first
    assert q.take(3, 5) == []


def test_oversized_items_are_skipped_not_blocking() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.push("big", b"x" * 50)
    q.push("small", b"y" * 5)
    assert q.take(20, 5) == [b"y" * 5]
    assert "big" in q


def test_delivery_is_the_square_root_of_the_answered_share_of_recent_probes() -> None:
    est = DeliveryEstimate(half_life=32, min_probes=4)
    assert est.update(concluded=3, answered=0) == 1.0  # too few probes to believe
    # 64 concluded, 36 answered by a direct ack: (1 - p)^2 = 0.5625, so p = 0.25.
    assert est.update(concluded=64, answered=36) == pytest.approx(0.75, abs=0.02)
    # Counters only grow; an unchanged count changes nothing.
    assert est.update(concluded=64, answered=36) == pytest.approx(0.75, abs=0.02)
    # Every probe failing: never below MIN_DELIVERY (at most twice the copies).
    assert est.update(concluded=400, answered=36) == 0.5
    # The link heals: after ten half-lives of answered probes the old losses weigh ~1/1000.
    assert est.update(concluded=720, answered=356) == pytest.approx(1.0, abs=0.01)
