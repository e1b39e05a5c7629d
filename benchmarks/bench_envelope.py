"""Envelope v2 costs and the amplification factor (issue 12), on real cores and real sealers.

    python benchmarks/bench_envelope.py [--n 30] [--seed 1]

Prints JSON lines. ``amplification``: a mesh of ``--n`` simulated members (meshd/sim.py) runs
until converged, a joiner comes in through one seed, and every datagram on the wire is captured
and sealed exactly as its sender's transport seals it (security.Sealer, the sender's and
recipient's node ids in the associated data). The view of every member then changes (one member
updates its record), so every captured anti-entropy digest differs from every view, as in the
attack of issue 12. Each captured datagram of a kind is then replayed, with a spoofed source
address, to every member: its own recipient (after the original got there) and every other
member. Every replay goes through the receiving member's Sealer.open and, if it opens, its core;
bytes out are everything the member sends in answer, envelopes included. ``factor`` = bytes out /
bytes in; issue 12 measured 133 for digests on the previous envelope at N = 300.

``nonce_cache``: bytes per remembered nonce (tracemalloc) and the cache's size when full.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tracemalloc
from collections import defaultdict
from dataclasses import replace

from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.security import NONCE_CACHE_MAX, NONCE_LEN, Keyring, OpenError, Sealer
from meshd.sim import Addr, Network, make_record

SPOOFED: Addr = ("198.51.100.7", 7950)


def kind(payload: bytes, to: bytes) -> str | None:
    msgs = m.decode(payload)
    if any(isinstance(x, m.SyncDigest) and not x.reply for x in msgs):
        return "sync_digest"
    first = msgs[0]
    if isinstance(first, m.PushPull) and not first.reply:
        return "join_to_any" if not to else "push_pull_request"
    if isinstance(first, m.Ping):
        return "ping"
    if isinstance(first, m.IndirectPing):
        return "indirect_ping"
    if isinstance(first, m.Alive | m.Suspect | m.Dead):
        return "gossip"
    return None


def amplification(n: int = 30, seed: int = 1) -> list[dict[str, object]]:
    """Replay captured datagrams to every member with a spoofed source; totals per kind."""
    net = Network(GossipConfig(push_pull_interval=5.0), seed=seed)
    recs = [make_record(i) for i in range(n + 1)]
    net.add_node(recs[0], seeds=[])
    for rec in recs[1:n]:
        net.add_node(rec, seeds=[recs[0].addr])
    assert net.run_until_true(net.fully_converged, 120), "mesh did not converge"
    keyring = Keyring((os.urandom(32),))
    captured: list[tuple[int, bytes, Addr, bytes]] = []
    net.on_datagram = lambda src, data, addr, to: captured.append((src, data, addr, to))
    net.add_node(recs[n], seeds=[recs[0].addr])  # a joiner: its first contact goes to "any"
    net.run_for(30.0)
    net.on_datagram = None
    sealers = [Sealer(keyring, node.local.node_id) for node in net.nodes]
    by_addr = {a: i for i, a in enumerate(net.addrs)}
    # Every view changes: captured digests now differ everywhere.
    net.update_local(1, replace(net.nodes[1].local, mtu=1450))
    net.run_for(10.0)
    for node in net.nodes:
        node.datagrams_to_send()
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for src, payload, addr, to in captured:
        k = kind(payload, to)
        if k is None:
            continue
        wire = sealers[src].seal(payload, 1_800_000_000.0, to)
        dst0 = by_addr.get(addr)
        if dst0 is not None:  # the original delivery: its recipient has seen this nonce
            with contextlib.suppress(OpenError):
                sealers[dst0].open(wire, 1_800_000_000.0)
        row = per_kind[k]
        row[4] += 1
        for dst, node in enumerate(net.nodes):
            if dst == src:
                continue
            row[0] += len(wire)
            try:
                opened = sealers[dst].open(wire, 1_800_000_000.0)
            except OpenError as exc:
                row[2 if exc.reason == "misaddressed" else 3] += 1
                continue
            node.receive_datagram(opened.payload, SPOOFED, net.now, opened.sender, opened.to_any)
            row[1] += sum(len(d) + len(wire) - len(payload) for d, _, _ in node.datagrams_to_send())
    out: list[dict[str, object]] = []
    for k, (b_in, b_out, misaddressed, other, count) in sorted(per_kind.items()):
        out.append(
            {
                "bench": "envelope",
                "metric": "amplification",
                "n": n,
                "kind": k,
                "captured": count,
                "replays": count * n,
                "bytes_in": b_in,
                "bytes_out": b_out,
                "factor": round(b_out / b_in, 4) if b_in else 0.0,
                "dropped_misaddressed": misaddressed,
                "dropped_other": other,
            }
        )
    return out


def nonce_cache() -> dict[str, object]:
    sealer = Sealer(Keyring((os.urandom(32),)), b"\x01" * 16)
    count = NONCE_CACHE_MAX // 4
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        sealer._seen[os.urandom(NONCE_LEN)] = 1_800_000_000.0 + i / 1000
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per = used / count
    return {
        "bench": "envelope",
        "metric": "nonce_cache",
        "entries_max": NONCE_CACHE_MAX,
        "bytes_per_entry": round(per, 1),
        "mib_when_full": round(per * NONCE_CACHE_MAX / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for row in amplification(args.n, args.seed):
        print(json.dumps(row))
    print(json.dumps(nonce_cache()))


if __name__ == "__main__":
    main()
