"""What the gossip core tells the outside world: member snapshots and membership events.

Event kinds, each emitted by ``state.Membership`` at the moment the transition happens:

    join     a member we did not know, or knew as dead/left/stale, is alive
    update   an alive member announced new record data (a higher incarnation with other fields
             changed); a bare incarnation bump from a refutation is not an update
    suspect  an alive member failed a probe somewhere and is suspected
    alive    a suspected member refuted the suspicion
    dead     the suspicion timed out (or we heard someone else's verdict)
    left     the member announced a graceful leave

The core never emits events about itself.
"""

from __future__ import annotations

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


EventKind = Literal["join", "update", "suspect", "alive", "dead", "left"]


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
