from __future__ import annotations

from meshd.gossip.queue import BroadcastQueue, retransmit_limit


def test_retransmit_limit_follows_memberlist() -> None:
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 1000) == 16


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
