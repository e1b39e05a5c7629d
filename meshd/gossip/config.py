"""SWIM + Lifeguard tuning of the gossip core: the ``[gossip]`` table of the config file.

It lives in the core so the core needs nothing outside itself; `meshd/config.py` validates the
TOML/flag values and builds it. Every default says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """SWIM + Lifeguard tuning. Defaults are memberlist's DefaultLANConfig unless noted."""

    probe_interval: float = 1.0
    """Seconds between failure-detection probes (memberlist: 1 s)."""
    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before probing indirectly (memberlist: 500 ms)."""
    indirect_checks: int = 3
    """Peers asked to probe indirectly when a direct probe times out (memberlist: 3)."""
    suspicion_mult: float = 4.0
    """Suspicion timeout = suspicion_mult * log10(max(1, N)) * probe_interval (memberlist: 4)."""
    suspicion_max_timeout_mult: float = 6.0
    """Upper bound of the suspicion timeout before confirmations shorten it (memberlist: 6)."""
    gossip_interval: float = 0.2
    """Seconds between gossip rounds (memberlist: 200 ms)."""
    gossip_nodes: int = 3
    """Random peers each gossip round is sent to (memberlist: 3)."""
    eager_gossip: bool = True
    """Gossip news at once, from a bucket of rounds refilled at one per gossip_interval (10 at
    most): a hop costs a round trip in a quiet mesh, and a busy one runs no more rounds than the
    ticker (meshd; memberlist always waits for the tick)."""
    retransmit_miss: float = 0.025
    """Each broadcast is sent ceil(ln((N+1) / retransmit_miss) / delivery) times, delivery being
    the share of its datagrams a node sees arrive (from its own probes, 0.5 to 1): the expected
    number of members that miss every copy is at most this (queue.py). 7 sends at N = 10, 11 at
    1,000, 13 at 10,000 without loss, under Serf's model's bytes per update at 1,000 and 10,000
    (meshd; memberlist's rule sends 16 and 20, see retransmit_mult)."""
    retransmit_mult: int = 0
    """0: the rule above. k > 0: memberlist's rule instead, each broadcast sent
    k * ceil(log10(N+1)) times (memberlist: k = 4)."""
    push_pull_interval: float = 30.0
    """Seconds between full state exchanges with one random peer (memberlist: 30 s)."""
    push_pull_min_interval: float = 0.5
    """Seconds between two full states sent to one peer (replies to its requests, exchanges its
    digest starts); more are dropped (``drop.push_pull_rate``), so forged or replayed requests
    cannot turn a member into a firehose (meshd). Honest peers ask far less often: the closest
    two full states to one peer come is a join and the joiner's first digest round,
    JOIN_SETTLE = 2 probe intervals apart."""
    gossip_to_the_dead: float = 30.0
    """Dead members keep receiving gossip for this long, so they learn they were declared dead."""
    dead_probe_interval: float = 10.0
    """Seconds between probes of one random tombstone, so healed partitions rejoin by themselves."""
    tombstone_ttl: float = 86400.0
    """Seconds a dead or left member is remembered before it is forgotten entirely."""
    awareness_max: int = 8
    """Lifeguard local health: probe timeout/interval are scaled by up to this (memberlist: 8)."""
    reap_after: float = 300.0
    """Seconds a dead member's routes are kept before the data plane removes them."""
    max_members: int = 20_000
    """Members (tombstones included) the table holds; news of more is refused and counted
    (``drop.max_members``), so no peer can grow our memory without bound. Twice the largest mesh
    the simulator measures (meshd)."""
    max_datagram: int = 1400
    """Largest datagram on the wire in bytes, envelope included (hard protocol limit)."""
