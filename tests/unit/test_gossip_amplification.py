"""Addressed datagrams and amplification (issue 12): a datagram is taken only by the member it is
for, and nothing a member sends in answer to a replayed or spoofed datagram outweighs it."""

from __future__ import annotations

from dataclasses import replace

from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.security import OVERHEAD
from meshd.sim import Addr, Network, make_record

VICTIM: Addr = ("198.51.100.7", 7950)
"""A spoofed source: no member lives there."""


def mesh(n: int, cfg: GossipConfig | None = None) -> Network:
    net = Network(cfg or GossipConfig(push_pull_interval=5.0), seed=7)
    recs = [make_record(i) for i in range(n)]
    net.add_node(recs[0], seeds=[])
    for rec in recs[1:]:
        net.add_node(rec, seeds=[recs[0].addr])
    assert net.run_until_true(net.fully_converged, 60)
    return net


Captured = tuple[int, bytes, Addr, bytes]


def capture(net: Network, seconds: float) -> list[Captured]:
    got: list[Captured] = []
    net.on_datagram = lambda src, data, addr, to: got.append((src, data, addr, to))
    net.run_for(seconds)
    net.on_datagram = None
    return got


def kind(data: bytes) -> str:
    """What a datagram is, by what it would cause: an anti-entropy opening rides on a ping."""
    msgs = m.decode(data)
    if any(isinstance(x, m.SyncDigest) and not x.reply for x in msgs):
        return "SyncDigest"
    first = msgs[0]
    if isinstance(first, m.PushPull):
        return "push_pull_reply" if first.reply else "push_pull_request"
    return type(first).__name__


def replay(net: Network, src: int, data: bytes, to: bytes, dst: int) -> tuple[int, int]:
    """Deliver a captured datagram to ``dst`` from the spoofed VICTIM address; (bytes in, bytes
    the member sent in answer), envelopes counted."""
    out: list[int] = []
    net.on_datagram = lambda s, d, a, t: out.append(len(d) + OVERHEAD)
    net.deliver(dst, data, VICTIM, net.nodes[src].local.node_id, to)
    net.on_datagram = None
    return len(data) + OVERHEAD, sum(out)


def test_every_datagram_names_the_member_it_goes_to() -> None:
    net = mesh(6)
    got = capture(net, 30)
    ids = {n.local.addr: n.local.node_id for n in net.nodes}
    assert got
    for _, _, addr, to in got:
        assert to == ids[addr]  # converged: nobody is addressed as "any"


def test_a_datagram_replayed_to_another_member_is_dropped_unopened() -> None:
    net = mesh(6)
    got = capture(net, 30)
    kinds = {kind(d) for _, d, _, _ in got}
    assert {"Ping", "SyncDigest", "Ack"} <= kinds
    before = [dict(n.counters) for n in net.nodes]
    dropped = net.misaddressed
    replays = 0
    for src, data, addr, to in got[:300]:
        for dst in range(len(net.nodes)):
            if net.addrs[dst] != addr and dst != src:
                net.deliver(dst, data, VICTIM, net.nodes[src].local.node_id, to)
                replays += 1
    assert replays > 500
    assert net.misaddressed - dropped == replays
    # No core saw any of them: not a counter moved (no drop.wrong_target, no answers).
    assert [dict(n.counters) for n in net.nodes] == before


def test_the_join_sent_to_any_is_answered_within_its_size_then_addressed() -> None:
    net = mesh(5)
    asked = net.nodes[0].counters["push_pull.any_request"]
    joiner = make_record(9)
    got: list[Captured] = []
    net.on_datagram = lambda src, data, addr, to: got.append((src, data, addr, to))
    j = net.add_node(joiner, seeds=[net.addrs[0]])
    assert net.run_until_true(net.fully_converged, 30)
    net.on_datagram = None
    first = [(d, to) for s, d, a, to in got if s == j and kind(d) == "push_pull_request"]
    (hello, to_any), (_, to_seed) = first[0], first[1]
    # Its first contact went to "any", padded to a full datagram; the second, to the seed's id.
    assert to_any == b"" and len(hello) + OVERHEAD == GossipConfig().max_datagram - 2
    assert to_seed == net.nodes[0].local.node_id
    short = [d for s, d, a, to in got if s == 0 and a == joiner.addr and kind(d).endswith("reply")]
    answer = m.decode(short[0])[0]
    assert isinstance(answer, m.PushPull) and answer.entries == () and len(short[0]) <= len(hello)
    assert net.nodes[0].counters["push_pull.any_request"] == asked + 1
    assert net.nodes[j].counters["push_pull.any_answered"] == 1

    # Replayed to every member from a spoofed source: each answers with at most what it got.
    for dst in range(len(net.nodes)):
        if dst != j:
            bytes_in, bytes_out = replay(net, j, hello, b"", dst)
            assert 0 < bytes_out <= bytes_in, (dst, bytes_out, bytes_in)


def test_any_addressed_answers_are_capped_at_the_request_size() -> None:
    # Whatever rides in an any-addressed datagram (not what joiners send), the answers are cut
    # to its size: a ping with a queue of broadcasts to piggyback gets no ack bigger than itself.
    net = mesh(4, GossipConfig(push_pull_interval=5.0, eager_gossip=False))
    n0 = net.nodes[0]
    n0.update_local(replace(n0.local, mtu=1400), net.now)  # queued: news to piggyback
    ping = m.pack_datagram([m.encode(m.Ping(9, "n0", "n1", VICTIM))])
    bytes_in, bytes_out = replay(net, 1, ping, b"", 0)
    assert bytes_out <= bytes_in
    assert n0.counters["drop.answer_size"] >= 1


def test_replayed_digests_and_requests_cannot_amplify() -> None:
    net = mesh(8)
    got = capture(net, 30)
    # Views change after the capture, so every captured digest now differs from every view.
    net.update_local(3, replace(net.nodes[3].local, mtu=1450))
    net.run_for(5)
    total_in = total_out = 0
    seen = set()
    for src, data, addr, to in got:
        k = kind(data)
        if k not in ("SyncDigest", "push_pull_request", "Ping", "IndirectPing"):
            continue
        seen.add(k)
        for dst in range(len(net.nodes)):
            if dst != src and net.addrs[dst] != addr:
                bytes_in, bytes_out = replay(net, src, data, to, dst)
                total_in += bytes_in
                total_out += bytes_out
    assert {"SyncDigest", "Ping"} <= seen
    assert total_in > 10_000
    assert total_out / total_in <= 1.0
    assert total_out == 0  # all addressed to someone else: nothing answers


def test_full_states_go_to_members_at_most_once_per_interval() -> None:
    net = mesh(4)
    net.run_for(GossipConfig().push_pull_min_interval)  # past the join's own full states
    n0, n1 = net.nodes[0], net.nodes[1]
    n0.update_local(replace(n0.local, mtu=1450), net.now)  # views differ from here on
    n0.datagrams_to_send()
    digest = m.pack_datagram([m.encode(m.SyncDigest(1, False, b"\0" * m.DIGEST_LEN, "n1"))])
    sent: list[tuple[Addr, bytes]] = []
    net.on_datagram = lambda s, d, a, t: sent.append((a, d))
    for _ in range(5):  # a burst of forged digests naming n1, from a spoofed source
        net.deliver(0, digest, VICTIM, n1.local.node_id, n0.local.node_id)
    net.on_datagram = None
    full = [a for a, d in sent if kind(d) == "push_pull_request"]
    assert full and set(full) == {n1.local.addr}  # to n1's record address, not the source
    assert n0.counters["drop.push_pull_rate"] == 4
    # After push_pull_min_interval, the next one is allowed again.
    net.run_for(GossipConfig().push_pull_min_interval)
    before = n0.counters["push_pull.digest_differ"]
    net.deliver(0, digest, VICTIM, n1.local.node_id, n0.local.node_id)
    assert n0.counters["push_pull.digest_differ"] == before + 1
    assert n0.counters["drop.push_pull_rate"] == 4
    # A digest from a sender that is no member, or not the member it names: no answer at all.
    stranger = make_record(40).node_id
    net.deliver(0, digest, VICTIM, stranger, n0.local.node_id)
    assert n0.counters["drop.unknown_source"] >= 1


def test_a_seed_back_under_a_new_node_id_is_reached_through_any() -> None:
    net = mesh(3)
    old = net.nodes[1].local
    net.crash(1)
    # Node 1's host comes back with a wiped state dir: same address, a new node id. Node 2
    # restarts knowing only the old one.
    reborn = replace(old, node_id=make_record(50).node_id)
    net.addrs[1] = ("0.0.0.0", 1)  # the crashed node no longer owns the address
    net._by_addr.pop(old.addr)
    b = net.add_node(reborn, seeds=[])
    c = net.add_node(make_record(60), known=[old], seeds=[])
    assert net.run_until_true(lambda: net.nodes[c].synced, 30)
    assert net.nodes[b].counters["push_pull.any_request"] >= 1
