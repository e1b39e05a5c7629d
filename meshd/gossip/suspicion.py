"""Lifeguard: suspicion timeouts shortened by independent confirmations, and local health awareness.

Both follow hashicorp/memberlist (suspicion.go, awareness.go), which implements the Lifeguard paper
(Dadgar et al., 2018). Pure arithmetic on the caller's clock; the node schedules the timers.
"""

from __future__ import annotations

import math


def suspicion_timeout(mult: float, num_nodes: int, interval: float) -> float:
    """The shortest suspicion timeout: ``mult * log10(N) * interval``.

    The log factor never drops below 1 (as in memberlist), otherwise a 2..9 node mesh would declare
    a member dead faster than one probe round could refute it.
    """
    return mult * max(1.0, math.log10(max(1, num_nodes))) * interval


class Suspicion:
    """One member's suspicion: starts at ``max_timeout`` and approaches ``min_timeout`` as up to
    ``k`` other members independently report the same suspicion (confirmations).

    With k confirmations expected, after n of them the timeout is
    ``max - log(n + 1) / log(k + 1) * (max - min)``, never below ``min``: the first confirmations
    count most, since they make a local problem of the first suspector unlikely.
    """

    __slots__ = (
        "incarnation",
        "start",
        "k",
        "min",
        "max",
        "deadline",
        "check_seq",
        "answered",
        "asks",
        "asked_at",
        "_confirmed",
    )

    def __init__(
        self,
        sender: str,
        incarnation: int,
        k: int,
        min_timeout: float,
        max_timeout: float,
        now: float,
    ) -> None:
        self.incarnation = incarnation
        self.start = now
        self.k = k
        self.min = min_timeout
        self.max = max_timeout
        # With nobody to confirm, waiting for confirmations is pointless: use the minimum.
        self.deadline = now + (max_timeout if k >= 1 else min_timeout)
        self.check_seq = -1
        """The seq of the ping that asks the suspect itself before the verdict (-1: not yet)."""
        self.answered = False
        """The suspect acked that ping: no verdict this time (node.py)."""
        self.asks = 0
        """Checks sent in this round (node.py asks twice before a verdict)."""
        self.asked_at = now
        """When the last check was sent."""
        # The first suspector does not confirm itself.
        self._confirmed: set[str] = {sender}

    @property
    def confirmations(self) -> int:
        return len(self._confirmed) - 1

    def confirm(self, sender: str) -> bool:
        """Count an independent confirmation; True if it was new (and the deadline moved)."""
        if self.confirmations >= self.k or sender in self._confirmed:
            return False
        self._confirmed.add(sender)
        n = self.confirmations
        frac = math.log(n + 1.0) / math.log(self.k + 1.0)
        timeout = max(self.min, self.max - frac * (self.max - self.min))
        self.deadline = self.start + timeout
        return True


class Awareness:
    """Lifeguard local health: 0 is healthy, ``max_score - 1`` the worst.

    A node that misses nacks or fails probes is probably the slow one itself (CPU starvation, a
    lossy NIC), so it stretches its probe interval and timeout by ``score + 1`` instead of wrongly
    suspecting healthy peers.

    Our own stalls (node.py: timers that ran late, a starved CPU) count too, but that part of
    the score heals with time as well: a point per probe interval without a stall
    (``heal_stall``). Probes alone would take (score + 1) + score + ... intervals, ~35 s from the
    worst, to undo a few seconds of start-up load, and the mesh would detect failures slowly
    long after the CPU came back. What failed probes and refutations raised heals only by
    successful probes, as in memberlist.
    """

    __slots__ = ("score", "stalled", "_max")

    def __init__(self, max_score: int) -> None:
        self.score = 0
        self.stalled = 0
        """The part of the score our stalls raised and time has not healed yet."""
        self._max = max_score

    def apply(self, delta: int) -> None:
        self.score = min(self._max - 1, max(0, self.score + delta))
        self.stalled = min(self.stalled, self.score)

    def stall(self) -> None:
        before = self.score
        self.apply(1)
        self.stalled += self.score - before

    def heal_stall(self) -> None:
        if self.stalled:
            self.stalled -= 1
            self.score -= 1

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
