"""Transmit-limited broadcasts (memberlist's TransmitLimitedQueue).

Every membership change is queued once here as an encoded message, keyed by the member it is about.
Each time a datagram leaves, `take` fills its spare room with the broadcasts sent least often so far
(newest first among equals) and retires a broadcast after `retransmit_limit` transmissions: enough
for epidemic spread to reach everyone with high probability, and no more.
A newer broadcast about the same member replaces the older one, which would only be noise.

The limit (meshd's rule, issue 16): every node that has the news sends it L times, each copy to a
member picked at random, so a given member misses all N * L copies with probability ~e^-L and the
expected number of members left out is (N + 1) e^-L (push gossip with fanout ln N + c reaches
everyone with probability ~exp(-e^-c): Kermarrec, Massoulie, Ganesh 2003). L = ceil(ln((N + 1) /
miss)) holds that expectation at or under ``miss`` (GossipConfig.retransmit_miss, 1/40): 7 copies
at N = 10, 9 at 100, 11 at 1,000, 13 at 10,000. memberlist's rule, mult * ceil(log10(N + 1)),
grows 4 copies per decade where ln grows 2.3, and its ceil counts N = 1,000 as four decades: 16
and 20 copies at 1,000 and 10,000, a miss expectation of 1e-4 and 2e-5 bought with 9 % and 53 %
more bytes per update than Serf's model (docs/performance.md).

Loss p delivers only (1 - p) L of the copies (at 20 % and N = 1,000 the expectation would be 0.15
members, and those wait for anti-entropy), so the limit is divided by ``delivery``, the fraction
of its datagrams that the node sees arrive (node.py measures it on its own probes): as many copies
arrive as in a lossless mesh, and the bytes grow only where loss is (14 copies at N = 1,000 and
20 % loss, still under the model's 14.7). ``retransmit_mult`` > 0 selects memberlist's rule
instead, which ignores loss.
"""

from __future__ import annotations

import math

MIN_MESSAGE = 4
"""Smallest encoded gossip message; below this much spare room a datagram is full."""

JOIN_MISS = 0.001
"""The miss expectation of a join (a member new to the sender, or back from dead): a member that
misses one has no route to the newcomer until anti-entropy (up to a push-pull interval, tens of
seconds), so joins get ln(25) ~ 3.2 more copies than other news: 12 at N = 100 (memberlist's
12), 14 at 1,000 (16), 17 at 10,000 (20). At N = 100, 99 joins at 1/40 each left ~1-2 members
without a route for ~40 s in one start-up of 100 daemons out of two (bench_daemons.py)."""

MIN_DELIVERY = 0.5
"""Lowest delivery rate the limit is scaled for: at most twice the copies of a lossless mesh, so
that a node whose own probes fail (a starved CPU, a cut link) does not flood the others."""


class _Item:
    __slots__ = ("key", "payload", "size", "transmits", "id", "join")

    def __init__(self, key: str, payload: bytes, ident: int, join: bool) -> None:
        self.key = key
        self.payload = payload
        self.size = len(payload)
        self.transmits = 0
        self.id = ident
        self.join = join


def retransmit_limit(mult: int, num_nodes: int, miss: float = 0.025, delivery: float = 1.0) -> int:
    """How many times each broadcast is sent in a mesh of ``num_nodes``: ceil(ln((N + 1) /
    miss) / delivery) (meshd, see above), or with ``mult`` > 0 memberlist's
    mult * ceil(log10(N + 1)) whatever the delivery."""
    if mult > 0:
        return mult * max(1, math.ceil(math.log10(num_nodes + 1)))
    return max(1, math.ceil(math.log((max(1, num_nodes) + 1) / miss) / delivery))


class DeliveryEstimate:
    """Fraction of a node's datagrams that arrive, from its probes: a probe is answered by a
    direct ack only if its ping and the ack both arrive, (1 - p)^2 at one-way loss p, so the
    square root of the answered share. Each probe's weight halves every ``half_life`` probes
    after it (a link that degrades or heals is followed within a minute or so); 1 until
    ``min_probes`` (weighted) concluded; never below MIN_DELIVERY."""

    def __init__(self, half_life: float, min_probes: float) -> None:
        self._half_life = half_life
        self._min = min_probes
        self._seen = (0, 0)  # the counters at the last update
        self._weighted = (0.0, 0.0)  # (concluded, answered), each probe weighted by its age

    def update(self, concluded: int, answered: int) -> float:
        """The estimate, given the node's running totals of concluded and answered probes."""
        new = concluded - self._seen[0]
        if new > 0:
            keep = 0.5 ** (new / self._half_life)
            total, ok = self._weighted
            self._weighted = (total * keep + new, ok * keep + (answered - self._seen[1]))
            self._seen = (concluded, answered)
        total, ok = self._weighted
        if total < self._min:
            return 1.0
        return max(MIN_DELIVERY, min(1.0, math.sqrt(max(0.0, ok) / total)))


class BroadcastQueue:
    def __init__(self, retransmit_mult: int = 0, retransmit_miss: float = 0.025) -> None:
        self._mult = retransmit_mult
        self._miss = retransmit_miss
        self.delivery = 1.0
        """Fraction of our datagrams that arrive, as the node measures it (MIN_DELIVERY..1): the
        limit is divided by it, so that as many copies arrive under loss as without."""
        self._by_key: dict[str, _Item] = {}
        # _buckets[t] holds the items transmitted t times, oldest first (dicts keep insert order).
        self._buckets: list[dict[int, _Item]] = [{}]
        self._next_id = 0
        self.pushes = 0
        """Broadcasts queued so far (monotonic): the node compares it to see if news came in."""
        self._limit = (0, 1.0, 0, 0)  # (num_nodes, delivery, limit, a join's limit) last taken
        self._smallest = MIN_MESSAGE
        """Size of the smallest broadcast ever queued: once the room left is under it, nothing
        else can fit, and a long queue need not be scanned to the end."""

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def push(self, key: str, payload: bytes, join: bool = False) -> None:
        """Queue ``payload``; replaces any broadcast queued earlier under ``key``. ``join``: it
        announces a member new to this node (sent to JOIN_MISS instead of ``retransmit_miss``)."""
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._buckets[old.transmits][old.id]
        self._next_id += 1
        self.pushes += 1
        item = _Item(key, payload, self._next_id, join)
        if len(self._by_key) == 0 or item.size < self._smallest:
            self._smallest = max(MIN_MESSAGE, item.size)
        self._by_key[key] = item
        self._buckets[0][item.id] = item

    def take(self, budget: int, num_nodes: int) -> list[bytes]:
        """Broadcasts whose encoded sizes sum to at most ``budget``; counts them as transmitted."""
        if not self._by_key or budget < MIN_MESSAGE:
            return []
        cached = self._limit
        if cached[0] != num_nodes or cached[1] != self.delivery:
            limit = retransmit_limit(self._mult, num_nodes, self._miss, self.delivery)
            joins = retransmit_limit(
                self._mult, num_nodes, min(self._miss, JOIN_MISS), self.delivery
            )
            self._limit = cached = (num_nodes, self.delivery, limit, joins)
        limit, join_limit = cached[2], cached[3]
        chosen: list[_Item] = []
        room = budget
        full = self._smallest
        for bucket in self._buckets:
            if not bucket:
                continue
            for item in reversed(bucket.values()):
                if item.size <= room:
                    chosen.append(item)
                    room -= item.size
                    if room < full:
                        break
            if room < full:
                break
        # Re-file oldest first, so that iterating a bucket backwards still yields newest first.
        for item in reversed(chosen):
            del self._buckets[item.transmits][item.id]
            item.transmits += 1
            if item.transmits >= (join_limit if item.join else limit):
                del self._by_key[item.key]
                continue
            if item.transmits == len(self._buckets):
                self._buckets.append({})
            self._buckets[item.transmits][item.id] = item
        return [item.payload for item in chosen]

    def clear(self) -> None:
        self._by_key.clear()
        self._buckets = [{}]
