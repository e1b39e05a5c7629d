"""This daemon's side of subnet allocation: which subnet it starts with, and when it must move.

The rules are pure and shared with the simulator (`meshd/dataplane/allocation.py`); this module
holds the one node's state between membership changes: its pool, the lease, what to keep out of
(the underlay's own network), the moves it made. The membership loop calls `review` after every
membership change and acts on the `Move` it gets (docs/allocation.md).

One allocator per IP family: its pool's. A dual-stack node allocating both families runs two,
each reviewing only its family's subnet (``NodeRecord.subnet_of``); a `Move` says its family,
and ``allocation.with_subnet`` puts the new subnet in the record's layout.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshd.dataplane import allocation, prefix
from meshd.dataplane.allocation import Pool
from meshd.dataplane.model import Networks, PeerView
from meshd.errors import AllocationError
from meshd.gossip.record import NodeRecord

log = logging.getLogger("meshd")


@dataclass(frozen=True, slots=True)
class Move:
    """This node lost ``old`` to ``holder`` and takes ``new`` (None: the pool is full), both of
    IP ``version``."""

    old: str
    new: str | None
    holder: NodeRecord
    version: int = 4


class Allocator:
    def __init__(
        self,
        pool: Pool,
        lease: float,
        backend: str,
        network: Networks,
        exclude: Sequence[str],
        rng: random.Random,
    ) -> None:
        self.pool = pool
        self.version = pool.version
        self.lease = lease
        self.backend = backend
        self.network = network
        """The cluster network(s) claims are judged against (``model.Networks``: one per
        family on a dual-stack cluster)."""
        # What this host keeps out of the pool: its own prefixes of the pool's family.
        self._exclude_text = [c for c in exclude if prefix.version(c) == self.version]
        self._exclude = [
            got[1]
            for got in (prefix.family_span(c, strict=False) for c in self._exclude_text)
            if got is not None
        ]
        self._rng = rng
        self.moves = 0
        self.last_move: str | None = None
        self.origin = ""
        """How this node came by its subnet: kept (state dir), reclaimed (stale), picked."""
        self.settled = False
        """The first full state exchange is done and no member holds our subnet (the membership
        loop sets it); until then subnet.env is not written: pods must not be given a subnet
        that may still move."""

    def usable(self, subnet: str | None) -> bool:
        """Is ``subnet`` one of the pool's, clear of what this host keeps out?"""
        if subnet is None or not self.pool.contains(subnet):
            return False
        s = allocation.span_of(subnet, self.version)
        return s is not None and not any(prefix.overlaps(s, x) for x in self._exclude)

    def first(
        self,
        stored: str | None,
        stored_since: int,
        saved_at: float,
        known: Sequence[NodeRecord],
        wall: float,
    ) -> tuple[str, int]:
        """The subnet to start with and its claim time: the stored one (its age kept when this
        node was last alive within the lease; claimed anew otherwise, so a member that took
        it meanwhile keeps it), else a free one by what the state dir knows. AllocationError
        (one line) when the pool has no subnet clear of the underlay at all."""
        if self.usable(stored):
            assert stored is not None
            if stored_since and saved_at and wall - saved_at <= self.lease:
                self.origin = "kept"
                return stored, stored_since
            self.origin = "reclaimed"
            return stored, int(wall)
        views = [PeerView(r, "alive", 0.0) for r in known]
        taken = allocation.held(views, 0.0, self.lease, self.version) + self._exclude
        subnet = allocation.pick(self.pool, taken, self._rng)
        if subnet is None:  # what the state dir knows may be stale: only the mesh can say full
            subnet = allocation.pick(self.pool, self._exclude, self._rng)
        if subnet is None:
            raise AllocationError(
                f"{self.pool.describe()}: no subnet is clear of this host's own network "
                f"({', '.join(self._exclude_text)})"
            )
        self.origin = "picked"
        return subnet, int(wall)

    def review(self, local: NodeRecord, peers: Sequence[PeerView], now: float) -> Move | None:
        """None while this node holds its subnet of the pool's family by the conflict rule (or
        has none); else the move to make."""
        mine = local.subnet_of(self.version)
        if mine is None:
            return None
        holder = allocation.lost_to(
            local, peers, now, self.lease, self.backend, self.network, self.version
        )
        if holder is None:
            return None
        taken = allocation.held(peers, now, self.lease, self.version) + self._exclude
        own = allocation.span_of(mine, self.version)
        if own is not None:
            taken.append(own)
        new = allocation.pick(self.pool, taken, self._rng)
        return Move(mine, new, holder, self.version)

    def moved(self, move: Move) -> None:
        self.moves += 1
        self.last_move = f"{move.old} held by {move.holder.name}, took {move.new}"
        self.origin = "picked"

    def status(self) -> dict[str, Any]:
        return {
            "network": self.pool.network,
            "subnet_len": self.pool.length,
            "size": self.pool.size,
            "lease": self.lease,
            "origin": self.origin,
            "settled": self.settled,
            "moves": self.moves,
            "last_move": self.last_move,
        }
