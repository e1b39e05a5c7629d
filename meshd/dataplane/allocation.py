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

Per IP family: a dual-stack node has a pool per family (``Pool`` knows its family from its
network), and each family is held, contested and picked on its own (``held``/``lost_to`` take
the ``version``), so a node that loses its IPv6 subnet moves that one only.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from meshd.dataplane import model, prefix
from meshd.dataplane.model import PeerView
from meshd.gossip.record import NodeRecord

MIN_LEN, MAX_LEN = 8, 30
"""IPv4 subnet lengths allocation hands out: a /30 still has two usable addresses."""
DEFAULT_LEN = 24
"""flannel's SubnetLen default."""
MIN_LEN6, MAX_LEN6 = 8, 124
"""IPv6 subnet lengths allocation hands out: up to the record's /124 (room for containers)."""
DEFAULT_LEN6 = 64
"""flannel's IPv6SubnetLen default, and Kubernetes' node-cidr-mask-size-ipv6: a /64 per node."""


def default_len(version: int) -> int:
    """The subnet length a pool of that family hands out when none is configured."""
    return DEFAULT_LEN6 if version == 6 else DEFAULT_LEN


@dataclass(frozen=True, slots=True)
class Pool:
    """The subnets of ``length`` inside ``network`` (IPv4 or IPv6): what this node may take."""

    network: str
    length: int

    def __post_init__(self) -> None:
        problem = pool_problem(self.network, self.length)
        if problem is not None:
            raise ValueError(problem)

    @property
    def version(self) -> int:
        """4 or 6: the pool's IP family."""
        return prefix.version(self.network)

    @property
    def bits(self) -> int:
        """Address width of the pool's family: 32 or 128."""
        return 128 if self.version == 6 else 32

    @property
    def span(self) -> tuple[int, int]:
        s = prefix.family_span(self.network)
        assert s is not None  # checked in __post_init__
        return s[1]

    @property
    def size(self) -> int:
        """How many subnets the pool has."""
        first, last = self.span
        return (last - first + 1) >> (self.bits - self.length)

    def describe(self) -> str:
        return f"network {self.network} ({self.size} subnets of /{self.length})"

    def contains(self, subnet: str) -> bool:
        """Is ``subnet`` one of the pool's subnets (inside the network, of the pool's length)?"""
        s = prefix.family_span(subnet)
        return (
            s is not None
            and s[0] == self.version
            and subnet.endswith(f"/{self.length}")
            and prefix.within(s[1], self.span)
        )


def pool_problem(network: str, length: int) -> str | None:
    """Why ``network`` cannot hand out subnets of ``length`` (one line), or None."""
    found = prefix.family_span(network)
    if found is None:
        return f"network {network} is not an IPv4 or IPv6 network"
    version, s = found
    bits = 128 if version == 6 else 32
    # From the span, not the text: a bare address is a /32 (and "/08" an /8), never a crash.
    plen = bits + 1 - (s[1] - s[0] + 1).bit_length()
    low, high = (MIN_LEN6, MAX_LEN6) if version == 6 else (MIN_LEN, MAX_LEN)
    if not low <= length <= high:
        key = "subnet_len6" if version == 6 else "subnet_len"
        return f"{key} {length} is outside {low}..{high}"
    if length <= plen:
        return f"subnet_len /{length} must be longer than network {network}"
    return None


def held(
    peers: Sequence[PeerView], now: float, lease: float, version: int = 4
) -> list[tuple[int, int]]:
    """The spans of IP ``version`` other members hold: not left, and if dead, dead for less
    than ``lease``. Every announced subnet counts, even one the data plane refuses (it costs
    nothing to avoid)."""
    out = []
    for pv in peers:
        if pv.state == "left" or (pv.state == "dead" and pv.state_since + lease <= now):
            continue
        subnet = pv.record.subnet_of(version)
        s = None if subnet is None else _span(subnet, version)
        if s is not None:
            out.append(s)
    return out


def _span(cidr: str, version: int) -> tuple[int, int] | None:
    return prefix.span(cidr) if version == 4 else prefix.span6(cidr)


def span_of(cidr: str, version: int) -> tuple[int, int] | None:
    """The span of a subnet of IP ``version`` (None when it is not one): what ``taken`` holds."""
    if prefix.version(cidr) != version:
        return None
    return _span(cidr, version)


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
    shift = pool.bits - pool.length
    specials = prefix.SPECIAL6 if pool.version == 6 else prefix.SPECIAL
    blocked = list(taken) + [s for _, s in specials]
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
    return f"{_ntoa(index << (pool.bits - pool.length), pool.version)}/{pool.length}"


def _ntoa(value: int, version: int = 4) -> str:
    if version == 6:
        return str(ipaddress.IPv6Address(value))
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


def with_subnet(rec: NodeRecord, version: int, subnet: str) -> NodeRecord:
    """``rec`` with its subnet of IP ``version`` replaced (or added), in the record's layout
    (``subnet`` first: IPv4 when there is one; ``subnet6`` the IPv6 one beside it)."""
    v4, v6 = rec.subnet_of(4), rec.subnet_of(6)
    if version == 6:
        v6 = subnet
    else:
        v4 = subnet
    if v4 is None:
        assert v6 is not None
        return replace(rec, subnet=v6, subnet6=None)
    return replace(rec, subnet=v4, subnet6=v6)


def lost_to(
    local: NodeRecord,
    peers: Sequence[PeerView],
    now: float,
    lease: float,
    backend: str,
    network: model.Networks,
    version: int = 4,
) -> NodeRecord | None:
    """The member that holds this node's subnet of IP ``version`` by the conflict rule, or None
    when this node does (or has no subnet of that family). Dead members count while younger
    than ``lease`` (at least the data plane's reap_after: a subnet the data plane still routes
    to a dead member is never taken)."""
    found = model.claimants(backend, network, lease, local, peers, now)
    _, losers = model.resolve_claims([*found.records, local], version)
    return losers.get(local.node_id)


def full_message(pool: Pool) -> str:
    """The one line a node with no free subnet reports."""
    return (
        f"{pool.describe()} is full: every subnet is held by a member "
        "(alive, or dead for less than subnet_lease); widen network, shorten subnet_len, "
        "or remove dead members (meshd leave on them, or wait for the lease)"
    )
