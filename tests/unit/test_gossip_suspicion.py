from __future__ import annotations

from meshd.gossip.suspicion import Awareness, Suspicion, suspicion_timeout


def test_suspicion_timeout_formula() -> None:
    assert suspicion_timeout(4, 1, 1.0) == 4.0  # log factor floored at 1
    assert suspicion_timeout(4, 100, 1.0) == 8.0
    assert abs(suspicion_timeout(4, 1000, 0.5) - 6.0) < 1e-9


def test_confirmations_shorten_suspicion_towards_min() -> None:
    s = Suspicion("a", 1, k=2, min_timeout=4.0, max_timeout=24.0, now=100.0)
    assert s.deadline == 124.0
    assert not s.confirm("a")  # the original suspector does not count
    assert s.confirm("b")
    assert 100 + 4 < s.deadline < 124  # log(2)/log(3) of the way
    assert not s.confirm("b")
    assert s.confirm("c")
    assert s.deadline == 104.0
    assert not s.confirm("d")  # k reached


def test_no_confirmations_expected_means_min_timeout() -> None:
    s = Suspicion("a", 1, k=0, min_timeout=4.0, max_timeout=24.0, now=0.0)
    assert s.deadline == 4.0


def test_awareness_is_bounded_and_scales() -> None:
    a = Awareness(8)
    a.apply(-1)
    assert a.score == 0 and a.scale(0.5) == 0.5
    a.apply(3)
    assert a.scale(1.0) == 4.0
    a.apply(100)
    assert a.score == 7
