"""meshd/tunnelprobe.py over loopback: two probers answer each other, a silent target becomes
unreachable after ``fail_after`` lost probes and comes back, probing is bounded per round, and
malformed datagrams are dropped and counted."""

from __future__ import annotations

import asyncio
import random
import socket

from meshd import tunnelprobe as tp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wire_round_trip_and_rejects() -> None:
    assert tp.decode(tp.encode(tp.REQUEST, b"12345678")) == (tp.REQUEST, b"12345678")
    assert tp.decode(b"MDPRB1\x02" + b"x" * 8) is None  # unknown type
    assert tp.decode(b"XXXXXX\x00" + b"x" * 8) is None
    assert tp.decode(b"MDPRB1\x00" + b"x" * 9) is None  # wrong size


def test_probes_answer_and_a_silent_peer_becomes_unreachable() -> None:
    async def main() -> None:
        port = free_port()
        a = tp.TunnelProber(port, interval=0.05, timeout=0.2, rng=random.Random(1))
        b = tp.TunnelProber(port, interval=0.05, timeout=0.2)
        await a.set_local("127.0.0.1")
        await b.set_local("127.0.0.2")
        a.set_targets({"b": "127.0.0.2", "c": "127.0.0.3"})  # nobody answers on .3
        task = asyncio.create_task(a.run())
        try:
            for _ in range(100):
                h = a.health()
                if h["b"]["state"] == tp.OK and h["c"]["state"] == tp.UNREACHABLE:
                    break
                await asyncio.sleep(0.05)
            h = a.health()
            assert h["b"]["state"] == tp.OK and h["b"]["rtt_ms"] is not None, h
            assert h["b"]["last_ok"] and h["b"]["failures"] == 0
            assert h["c"]["state"] == tp.UNREACHABLE and h["c"]["failures"] >= 2, h
            assert a.unreachable() == ["c"] and b.counters["answered"] >= 1
            # probe_all (doctor): every target at once, two tries each.
            res = await a.probe_all(timeout=0.3)
            assert res["b"]["state"] == tp.OK and res["c"]["state"] == tp.UNREACHABLE
            # c starts answering: it is ok again after its next probe.
            c = tp.TunnelProber(port)
            await c.set_local("127.0.0.3")
            res = await a.probe_all(timeout=0.3)
            assert res["c"]["state"] == tp.OK
            c.close()
            # A target that goes away is forgotten; one whose address changed starts over.
            a.set_targets({"b": "127.0.0.9"})
            assert a.health() == {
                "b": {
                    "state": tp.UNKNOWN,
                    "address": "127.0.0.9",
                    "rtt_ms": None,
                    "last_ok": None,
                    "failures": 0,
                }
            }
        finally:
            a.close()
            b.close()
            task.cancel()

    asyncio.run(main())


def test_a_round_probes_at_most_per_round_peers() -> None:
    p = tp.TunnelProber(1, per_round=3, rng=random.Random(2))
    p.set_targets({f"n{i}": f"10.244.{i}.0" for i in range(10)})
    rounds = [p._next_round() for _ in range(4)]
    assert [len(r) for r in rounds] == [3, 3, 3, 1]
    assert sorted(n for r in rounds for n in r) == sorted(f"n{i}" for i in range(10))


def test_malformed_datagrams_are_dropped_and_counted() -> None:
    async def main() -> None:
        port = free_port()
        p = tp.TunnelProber(port)
        await p.set_local("127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            s.sendto(b"hello", ("127.0.0.1", port))
            s.sendto(tp.encode(tp.REPLY, b"unknown!"), ("127.0.0.1", port))
            s.sendto(tp.encode(tp.REQUEST, b"abcdefgh"), ("127.0.0.1", port))
            await asyncio.sleep(0.1)
            assert s.recv(100) == tp.encode(tp.REPLY, b"abcdefgh")  # same size: no amplification
        assert p.counters["drop.malformed"] == 1 and p.counters["drop.unexpected"] == 1
        p.close()

    asyncio.run(main())
