"""Subnet allocation with no store: a node given the cluster network and no subnet takes a free
one of its own, and gives it up when the conflict rule says another member holds it.

Pure, like the model: the membership loop (and the simulator) hand in the member table and the
time. The decisions:

* **What is held**: every member's subnet but a left member's (``leave`` releases it at once),
  and a dead member's only while it is younger than the lease (``state_since + lease``).
* **Who holds a contested subnet**: `model.resolve_claims`, the rule every node already applies
  to program routes, over the same claimants (`model.claimants`), with the lease as the dead
  members' grace. With certificates the certificate decides (a fixed-subnet grant, then the
  older certificate, then the certified name): nothing a member asserts about itself.
* **What to take**: a subnet chosen uniformly at random among the free ones, so simultaneous
  joiners rarely pick alike; the loser of a collision picks again from what it knows then.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshd.dataplane import model, prefix
from meshd.dataplane.model import PeerView
from meshd.gossip.record import NodeRecord

MIN_LEN, MAX_LEN = 8, 30
"""Subnet lengths allocation hands out: a /30 still has two usable addresses."""
DEFAULT_LEN = 24
"""flannel's SubnetLen default."""


@dataclass(frozen=True, slots=True)
class Pool:
    """The subnets of ``length`` inside ``network``: what this node may take."""

    network: str
    length: int

    def __post_init__(self) -> None:
        problem = pool_problem(self.network, self.length)
        if problem is not None:
            raise ValueError(problem)

    @property
    def span(self) -> tuple[int, int]:
        s = prefix.span(self.network)
        assert s is not None  # checked in __post_init__
        return s

    @property
    def size(self) -> int:
        """How many subnets the pool has."""
        first, last = self.span
        return (last - first + 1) >> (32 - self.length)

    def describe(self) -> str:
        return f"network {self.network} ({self.size} subnets of /{self.length})"

    def contains(self, subnet: str) -> bool:
        """Is ``subnet`` one of the pool's subnets (inside the network, of the pool's length)?"""
        s = prefix.span(subnet)
        return s is not None and subnet.endswith(f"/{self.length}") and prefix.within(s, self.span)


def pool_problem(network: str, length: int) -> str | None:
    """Why ``network`` cannot hand out subnets of ``length`` (one line), or None."""
    s = prefix.span(network)
    if s is None:
        return f"network {network} is not an IPv4 network"
    # From the span, not the text: a bare address is a /32 (and "/08" an /8), never a crash.
    plen = 33 - (s[1] - s[0] + 1).bit_length()
    if not MIN_LEN <= length <= MAX_LEN:
        return f"subnet_len {length} is outside {MIN_LEN}..{MAX_LEN}"
    if length <= plen:
        return f"subnet_len /{length} must be longer than network {network}"
    return None


def held(peers: Sequence[PeerView], now: float, lease: float) -> list[tuple[int, int]]:
    """The spans other members hold: not left, and if dead, dead for less than ``lease``. Every
    announced subnet counts, even one the data plane refuses (it costs nothing to avoid)."""
    out = []
    for pv in peers:
        if pv.state == "left" or (pv.state == "dead" and pv.state_since + lease <= now):
            continue
        s = prefix.span(pv.record.subnet)
        if s is not None:
            out.append(s)
    return out


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def free_blocks(pool: Pool, taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pool's free subnets as runs ``(first index, count)``, in address order. A subnet is
    free when it overlaps nothing in ``taken`` and no special-purpose range."""
    first, last = pool.span
    shift = 32 - pool.length
    blocked = list(taken) + [s for _, s in prefix.SPECIAL]
    runs: list[tuple[int, int]] = []
    cursor = first  # first address not yet decided
    for b0, b1 in _merged(blocked):
        if b1 < cursor:
            continue
        if b0 > last:
            break
        # Subnets wholly between cursor and b0 are free.
        lo = cursor >> shift
        hi = (b0 >> shift) - 1  # the subnet holding b0 is blocked
        if hi >= lo:
            runs.append((lo, hi - lo + 1))
        # Skip every subnet the block touches.
        cursor = ((b1 >> shift) + 1) << shift
        if cursor > last:
            return runs
    lo, hi = cursor >> shift, last >> shift
    if hi >= lo:
        runs.append((lo, hi - lo + 1))
    return runs


def free_count(pool: Pool, taken: Iterable[tuple[int, int]]) -> int:
    return sum(n for _, n in free_blocks(pool, taken))


def pick(pool: Pool, taken: Iterable[tuple[int, int]], rng: random.Random) -> str | None:
    """A free subnet of the pool, uniformly at random among the free ones; None when the pool is
    full. O(H log H) in the taken spans, whatever the pool's size."""
    runs = free_blocks(pool, taken)
    total = sum(n for _, n in runs)
    if total == 0:
        return None
    r = rng.randrange(total)
    ends = []
    acc = 0
    for _, n in runs:
        acc += n
        ends.append(acc)
    i = bisect.bisect_right(ends, r)
    start, _ = runs[i]
    index = start + r - (ends[i] - runs[i][1])
    return f"{_ntoa(index << (32 - pool.length))}/{pool.length}"


def _ntoa(value: int) -> str:
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


def lost_to(
    local: NodeRecord,
    peers: Sequence[PeerView],
    now: float,
    lease: float,
    backend: str,
    network: str | None,
) -> NodeRecord | None:
    """The member that holds this node's subnet by the conflict rule, or None when this node
    does. Dead members count while younger than ``lease`` (at least the data plane's reap_after:
    a subnet the data plane still routes to a dead member is never taken)."""
    found = model.claimants(backend, network, lease, local, peers, now)
    _, losers = model.resolve_claims([*found.records, local])
    return losers.get(local.node_id)


def full_message(pool: Pool) -> str:
    """The one line a node with no free subnet reports."""
    return (
        f"{pool.describe()} is full: every subnet is held by a member "
        "(alive, or dead for less than subnet_lease); widen network, shorten subnet_len, "
        "or remove dead members (meshd leave on them, or wait for the lease)"
    )
