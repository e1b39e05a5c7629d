"""meshd/transport.py reads what the kernel already holds before the core draws a verdict, and
sends what the core queued before it ran.

asyncio's datagram transport reads one datagram per turn of the event loop. After the daemon was
kept off the CPU, the ack of a probe could wait behind other datagrams while the timer concluded
the probe had failed (issue 16: the suspicion storm of 100 daemons starting on 2 cores). A real
UDP socket on loopback; the core is a stub that records what it was fed, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import cast

from meshd.gossip.node import GossipNode
from meshd.gossip.security import Sealer
from meshd.transport import PROMPT_BYTES, Transport


@dataclass
class Opened:
    payload: bytes
    sender: bytes = b"peer"
    sent_at: int = 0
    to_any: bool = False


class PlainSealer:
    def seal(self, payload: bytes, wall: float, recipient: object) -> bytes:
        return payload

    def open(self, data: bytes, wall: float) -> Opened:
        return Opened(data)


class RecordingNode:
    """A core with one timer already due; it notes what it had received when the timer ran."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.seen_by_timer: list[bytes] | None = None
        self.deadline: float | None = 0.0  # long past on the transport's monotonic clock

    def advance_wall(self, wall: float) -> None:
        pass

    def receive_datagram(
        self, payload: bytes, addr: object, now: float, sender: bytes, to_any: bool
    ) -> None:
        self.received.append(payload)

    def handle_timer(self, now: float) -> None:
        if self.seen_by_timer is None:
            self.seen_by_timer = list(self.received)
        self.deadline = None

    def get_timer(self) -> float | None:
        return self.deadline

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int], bytes]]:
        return []

    def has_news(self) -> bool:
        return False


async def backlog(node: RecordingNode, count: int) -> tuple[Transport, list[bytes]]:
    """A started transport for ``node`` with ``count`` datagrams queued in the kernel for it
    (the event loop has not run since they were sent)."""
    t = Transport(
        cast(GossipNode, node), cast(Sealer, PlainSealer()), ("127.0.0.1", 0), wall=lambda: 0.0
    )
    await t.start()
    assert t._sock is not None
    addr = t._sock.getsockname()
    sent = [f"datagram {i}".encode() for i in range(count)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for d in sent:
            peer.sendto(d, addr)
    return t, sent


def test_the_timer_runs_after_every_datagram_already_received() -> None:
    async def main() -> None:
        node = RecordingNode()
        t, sent = await backlog(node, 20)
        task = asyncio.create_task(t._timer_loop())
        try:
            for _ in range(500):
                if node.seen_by_timer is not None:
                    break
                await asyncio.sleep(0.01)
            assert node.seen_by_timer == sent
            assert t.counters["recv.drained"] == len(sent)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            t.close()

    asyncio.run(main())


def test_the_receive_loop_takes_a_backlog_in_order_and_stops_when_closed() -> None:
    async def main() -> None:
        node = RecordingNode()
        node.deadline = None
        t, sent = await backlog(node, 50)
        task = asyncio.create_task(t._recv_loop())
        for _ in range(500):
            if len(node.received) == len(sent):
                break
            await asyncio.sleep(0.01)
        assert node.received == sent
        t.close()
        await asyncio.wait_for(task, 5)  # the closed socket ends the loop

    asyncio.run(main())


def test_what_the_core_queued_before_the_transport_ran_is_sent_at_once() -> None:
    """The join's requests are queued by `GossipNode.join` before the loops start; they must not
    wait for the core's first timer (here an hour away)."""

    async def main() -> None:
        node = RecordingNode()
        node.deadline = None
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        outbox = [(b"join", sink.getsockname(), b"")]

        def to_send() -> list[tuple[bytes, tuple[str, int], bytes]]:
            out = list(outbox)
            outbox.clear()
            return out

        node.datagrams_to_send = to_send  # type: ignore[method-assign]
        t = Transport(
            cast(GossipNode, node), cast(Sealer, PlainSealer()), ("127.0.0.1", 0), wall=lambda: 0.0
        )
        node.get_timer = lambda: t.clock() + 3600.0  # type: ignore[method-assign]
        await t.start()
        task = asyncio.create_task(t.run())
        loop = asyncio.get_running_loop()
        try:
            got = await asyncio.wait_for(loop.sock_recv(sink, 100), 10)
            assert got == b"join"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            t.close()
            sink.close()

    asyncio.run(main())


def test_small_datagrams_of_a_backlog_go_to_the_core_first() -> None:
    # A ping behind the chunks of a full state is answered before them: a starved joiner
    # answered its probers late, and was suspected, while it merged three full states.
    async def main() -> None:
        node = RecordingNode()
        node.deadline = None
        t = Transport(
            cast(GossipNode, node), cast(Sealer, PlainSealer()), ("127.0.0.1", 0), wall=lambda: 0.0
        )
        await t.start()
        assert t._sock is not None
        addr = t._sock.getsockname()
        big = [bytes([65 + i]) * (PROMPT_BYTES + 100) for i in range(4)]
        small = [f"ping {i}".encode() for i in range(3)]
        arrival = [big[0], big[1], small[0], big[2], small[1], big[3], small[2]]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for d in arrival:
                peer.sendto(d, addr)
        task = asyncio.create_task(t._recv_loop())
        for _ in range(500):
            if len(node.received) == len(arrival):
                break
            await asyncio.sleep(0.01)
        # Read at once, then fed small first, each kind in the order it came.
        assert node.received == [*small, *big]
        t.close()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
