"""The only UDP socket code: seals and opens datagrams and drives the sans-IO gossip core.

Two loops share one GossipNode: the receiver feeds every authenticated datagram to the core, the
timer loop sleeps until the core's next deadline. After either, whatever the core wants to send
is sealed for the member it is for and sent at once. Datagrams that fail to open are counted by
reason and never parsed.

Before any decryption, each source IP is held to a token bucket (`SourceLimiter`): a flood from
one address is dropped (``drop.rate``) at the cost of a dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

import asyncio_dgram

from meshd.errors import ConfigError
from meshd.gossip.node import GossipNode
from meshd.gossip.security import OpenError, Sealer

log = logging.getLogger(__name__)
RCVBUF = 4 * 1024 * 1024
"""Ask for a large receive buffer: gossip bursts (push-pull chunks) arrive back to back."""
SOURCES_MAX = 4096
"""Source IPs with a token bucket; the least recently seen is forgotten (a fresh, full bucket if
it comes back): memory stays bounded whatever the sources."""
BURST_SECONDS = 5.0
"""A source's bucket holds this many seconds' worth of its rate."""


SKEW_MAX = 16384  # senders whose clock skew is remembered (authentic senders only)


class SourceLimiter:
    """A token bucket per source IP: ``rate`` datagrams per second, ``rate * BURST_SECONDS`` at
    once; ``rate`` 0 lets everything through."""

    def __init__(self, rate: float, max_sources: int = SOURCES_MAX) -> None:
        self.rate = rate
        self.burst = rate * BURST_SECONDS
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """ip -> (tokens, when they were counted), least recently seen first."""

    def allow(self, ip: str, now: float) -> bool:
        if not self.rate:
            return True
        buckets = self._buckets
        got = buckets.pop(ip, None)
        tokens = self.burst if got is None else min(self.burst, got[0] + (now - got[1]) * self.rate)
        ok = tokens >= 1.0
        buckets[ip] = (tokens - 1.0 if ok else tokens, now)
        if len(buckets) > self.max_sources:
            buckets.popitem(last=False)
        return ok


class Transport:
    def __init__(
        self,
        node: GossipNode,
        sealer: Sealer,
        bind: tuple[str, int],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        source_rate: float = 0.0,
    ) -> None:
        self.node = node
        self.sealer = sealer
        self.limiter = SourceLimiter(source_rate)
        self.bind = bind
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self.counters: Counter[str] = Counter()
        self.skew: dict[bytes, tuple[float, float]] = {}
        """Sender node id -> (its clock minus ours, seconds; when measured, our wall clock),
        from the sealed timestamp of its latest authentic datagram (whole seconds, so +-1 s)."""
        self._stream: asyncio_dgram.aio.DatagramServer | None = None
        self._wake = asyncio.Event()
        self._sleeping_until = -math.inf

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind(self.bind)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"port: cannot bind UDP {self.bind[0]}:{self.bind[1]}: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        stream = await asyncio_dgram.from_socket(sock)
        assert isinstance(stream, asyncio_dgram.aio.DatagramServer)  # unconnected socket
        self._stream = stream

    def kick(self) -> None:
        """Wake the timer loop: call after changing the core from outside (leave, update)."""
        self._wake.set()

    async def run(self) -> None:
        assert self._stream is not None
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._recv_loop())
            tg.create_task(self._timer_loop())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    async def _recv_loop(self) -> None:
        assert self._stream is not None
        while True:
            try:
                data, addr = await self._stream.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:
                # asyncio reports a failed sendto() (EPERM from a local firewall, ENETUNREACH,
                # ICMP errors) through the receiving side: it is loss, not a reason to stop.
                self.counters["send_error"] += 1
                log.debug("socket error: %s", exc)
                continue
            self.counters["in"] += 1
            self.counters["in_bytes"] += len(data)
            host, port = addr[0], addr[1]  # type: ignore[index]  # AF_INET: (str, int)
            if not self.limiter.allow(str(host), self.clock()):
                self.counters["drop.rate"] += 1
                continue
            wall = self.wall()
            try:
                opened = self.sealer.open(data, wall)
            except OpenError as exc:
                self.counters[f"drop.{exc.reason}"] += 1
                if exc.sent_at is not None:
                    self._note_skew(exc.sender, exc.sent_at, wall)
                continue
            self._note_skew(opened.sender, opened.sent_at, wall)
            try:
                self.node.advance_wall(wall)
                self.node.receive_datagram(
                    opened.payload,
                    (str(host), int(port)),
                    self.clock(),
                    opened.sender,
                    opened.to_any,
                )
            except Exception:  # a bug in the core: one authenticated datagram must not stop us
                self.counters["error.internal"] += 1
                log.exception("gossip core failed on a datagram from %s:%s", host, port)
            await self._flush()
            self._after()

    def _note_skew(self, sender: bytes, sent_at: int, wall: float) -> None:
        if sender not in self.skew and len(self.skew) >= SKEW_MAX:
            self.skew.pop(next(iter(self.skew)))
        self.skew[sender] = (sent_at - wall, wall)

    def _after(self) -> None:
        """After the core ran: wake the timer loop if the core now wants an earlier deadline
        than the one it sleeps for (a relayed ping's nack, the next eager round), and tell the
        daemon only when there is news (most datagrams are probes that change nothing)."""
        deadline = self.node.get_timer()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()
        if self.node.has_news():
            self.on_change()

    async def _timer_loop(self) -> None:
        # One TimerHandle per sleep rather than asyncio.wait_for, which wraps every wait in a
        # Task: at a few wakeups per second that was a visible share of the idle CPU.
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            deadline = self.node.get_timer()
            delay = 1.0 if deadline is None else deadline - self.clock()
            if delay > 0 and not wake.is_set():
                self._sleeping_until = self.clock() + delay
                handle = loop.call_later(delay, wake.set)
                await wake.wait()
                handle.cancel()
                self._sleeping_until = -math.inf
            wake.clear()
            self.node.advance_wall(self.wall())
            self.node.handle_timer(self.clock())
            await self._flush()
            self._after()

    def _drain_errors(self) -> None:
        """asyncio_dgram raises a queued error of an earlier sendto() (EPERM from a local
        firewall, ICMP unreachable) on the next send, and would drop that datagram, to another
        peer, unsent: consume those errors first, as the loss they are."""
        assert self._stream is not None
        while True:
            try:
                _ = self._stream.exception
            except OSError:
                self.counters["send_error"] += 1
                continue
            return

    async def _flush(self) -> None:
        assert self._stream is not None
        for payload, addr, recipient in self.node.datagrams_to_send():
            data = self.sealer.seal(payload, self.wall(), recipient)
            self._drain_errors()
            try:
                await self._stream.send(data, addr)
            except (OSError, asyncio_dgram.TransportClosed) as exc:
                self.counters["send_error"] += 1
                log.debug("send to %s:%s failed: %s", addr[0], addr[1], exc)
                continue
            self.counters["out"] += 1
            self.counters["out_bytes"] += len(data)
