"""What the gossip core tells the outside world: member snapshots and membership events.

Event kinds, each emitted by ``state.Membership`` at the moment the transition happens:

    join     a member we did not know, or knew as dead/left/stale, is alive
    update   an alive member announced new record data (a higher incarnation with other fields
             changed); a bare incarnation bump from a refutation is not an update
    suspect  an alive member failed a probe somewhere and is suspected
    alive    a suspected member refuted the suspicion
    dead     the suspicion timed out (or we heard someone else's verdict)
    left     the member announced a graceful leave
    evicted  the member's certificate was revoked or expired: it is gone from the table at once
             (its routes, neighbours, FDB and firewall entry go with it) and its records are
             refused from now on

The core never emits events about itself.

`Histogram` is the one metric type beyond the node's counters: fixed buckets, so the daemon can
export it as a Prometheus histogram without translation.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from meshd.gossip.record import NodeRecord


class MemberState(StrEnum):
    """A member's state; the string values appear in `meshd peers --json` and on the wire."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


EventKind = Literal["join", "update", "suspect", "alive", "dead", "left", "evicted"]


@dataclass(frozen=True, slots=True)
class Member:
    """An immutable snapshot of one member; times are on the caller's clock (the `now` given)."""

    record: NodeRecord
    state: MemberState
    state_since: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member


PROBE_RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds. A LAN round trip is well under a millisecond; the top buckets catch acks that arrive
after ``probe_timeout`` (0.5 s) but before the next probe tick (``probe_interval``, 1 s)."""


class Histogram:
    """A fixed-bucket histogram, Prometheus style: ``buckets`` are cumulative counts of
    observations ``<=`` each upper bound, ending with ``(inf, count)``; ``sum`` and ``count``
    cover every observation."""

    __slots__ = ("bounds", "_counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not all(math.isfinite(b) for b in bounds):
            raise ValueError("histogram bounds must be finite, distinct and increasing")
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus "le").
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    @property
    def buckets(self) -> list[tuple[float, int]]:
        """``[(upper_bound, cumulative_count), ..., (inf, count)]``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out
