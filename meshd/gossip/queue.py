"""Transmit-limited broadcasts (memberlist's TransmitLimitedQueue).

Every membership change is queued once here as an encoded message, keyed by the member it is about.
Each time a datagram leaves, `take` fills its spare room with the broadcasts sent least often so far
(newest first among equals) and retires a broadcast after ``retransmit_mult * ceil(log10(N + 1))``
transmissions: enough for epidemic spread to reach everyone with high probability, and no more.
A newer broadcast about the same member replaces the older one, which would only be noise.
"""

from __future__ import annotations

import math

MIN_MESSAGE = 4
"""Smallest encoded gossip message; below this much spare room a datagram is full."""


class _Item:
    __slots__ = ("key", "payload", "size", "transmits", "id")

    def __init__(self, key: str, payload: bytes, ident: int) -> None:
        self.key = key
        self.payload = payload
        self.size = len(payload)
        self.transmits = 0
        self.id = ident


def retransmit_limit(mult: int, num_nodes: int) -> int:
    """How many times each broadcast is sent in a mesh of ``num_nodes`` (memberlist formula)."""
    return mult * max(1, math.ceil(math.log10(num_nodes + 1)))


class BroadcastQueue:
    def __init__(self, retransmit_mult: int) -> None:
        self._mult = retransmit_mult
        self._by_key: dict[str, _Item] = {}
        # _buckets[t] holds the items transmitted t times, oldest first (dicts keep insert order).
        self._buckets: list[dict[int, _Item]] = [{}]
        self._next_id = 0
        self.pushes = 0
        """Broadcasts queued so far (monotonic): the node compares it to see if news came in."""
        self._limit = (0, 0)  # (num_nodes, retransmit_limit) of the last take
        self._smallest = MIN_MESSAGE
        """Size of the smallest broadcast ever queued: once the room left is under it, nothing
        else can fit, and a long queue need not be scanned to the end."""

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def push(self, key: str, payload: bytes) -> None:
        """Queue ``payload``; replaces any broadcast queued earlier under ``key``."""
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._buckets[old.transmits][old.id]
        self._next_id += 1
        self.pushes += 1
        item = _Item(key, payload, self._next_id)
        if len(self._by_key) == 0 or item.size < self._smallest:
            self._smallest = max(MIN_MESSAGE, item.size)
        self._by_key[key] = item
        self._buckets[0][item.id] = item

    def take(self, budget: int, num_nodes: int) -> list[bytes]:
        """Broadcasts whose encoded sizes sum to at most ``budget``; counts them as transmitted."""
        if not self._by_key or budget < MIN_MESSAGE:
            return []
        if self._limit[0] != num_nodes:
            self._limit = (num_nodes, retransmit_limit(self._mult, num_nodes))
        limit = self._limit[1]
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
            if item.transmits >= limit:
                del self._by_key[item.key]
                continue
            if item.transmits == len(self._buckets):
                self._buckets.append({})
            self._buckets[item.transmits][item.id] = item
        return [item.payload for item in chosen]

    def clear(self) -> None:
        self._by_key.clear()
        self._buckets = [{}]
