"""The per-source token bucket the transport applies before any decryption."""

from __future__ import annotations

from meshd.transport import BURST_SECONDS, SourceLimiter


def test_a_burst_then_the_rate_per_source() -> None:
    lim = SourceLimiter(100.0)
    burst = int(100 * BURST_SECONDS)
    assert all(lim.allow("10.0.0.1", 0.0) for _ in range(burst))
    assert not lim.allow("10.0.0.1", 0.0)  # the bucket is empty
    assert lim.allow("10.0.0.2", 0.0)  # another source has its own
    assert sum(lim.allow("10.0.0.1", 0.5) for _ in range(100)) == 50  # refilled at 100/s
    assert sum(lim.allow("10.0.0.1", 1000.0) for _ in range(burst + 10)) == burst  # capped


def test_the_table_is_bounded_and_forgets_the_least_recent() -> None:
    lim = SourceLimiter(1.0, max_sources=3)
    for _ in range(5):
        lim.allow("a", 0.0)
    assert not lim.allow("a", 0.0)
    for ip in ("b", "c", "d"):
        lim.allow(ip, 0.0)
    assert len(lim._buckets) == 3 and "a" not in lim._buckets
    assert lim.allow("a", 0.0)  # forgotten: a fresh bucket


def test_zero_means_no_limit() -> None:
    lim = SourceLimiter(0.0)
    assert all(lim.allow("10.0.0.1", 0.0) for _ in range(100_000))
    assert not lim._buckets
