"""The only UDP socket code: seals and opens datagrams and drives the sans-IO gossip core.

Two loops share one GossipNode: the receiver feeds every authenticated datagram to the core, the
timer loop sleeps until the core's next deadline. After either, whatever the core wants to send
is sealed for the member it is for and sent at once. Datagrams that fail to open are counted by
reason and never parsed.

Both loops first read everything the kernel already holds for us (`_drain`): asyncio's datagram
transport reads one datagram per turn of the event loop, so after our process was kept off the
CPU (100 interpreters starting on 2 cores) the ack of a probe could sit behind a dozen gossip
datagrams while the timer concluded the probe had failed. The core must see what arrived before a
deadline before it is asked for a verdict on it. ``recv.drained`` counts the datagrams read that
way (at N = 100, 61 % of all during start-up); acks that came after the verdict
(``ack.unmatched``) fell from 722 to 65 across the mesh, failed probes from 94 to 10
(docs/performance.md, "Real daemons at N = 100").

Before any decryption, each source IP is held to a token bucket (`SourceLimiter`): a flood from
one address is dropped (``drop.rate``) at the cost of a dict lookup.

Gossip goes over IPv4 or IPv6, the socket's family being the bind address's (IPV6_RECVERR is
IP_RECVERR's twin, and everything below holds for both). A member whose address is of the other
family cannot be reached from this socket: such a send is counted as lost (``family``).

Lost sends are seen and counted by reason (``send_error.<errno>``, and ``send_error`` in all).
The socket sets IP_RECVERR: without it a UDP socket's sendto() reports success when the kernel
drops the datagram for want of a neighbour entry (ENOBUFS, only ``Udp SndbufErrors`` in
/proc/net/snmp), and ICMP errors for an unconnected socket are not reported at all. With it, the
kernel also queues each ICMP error (port or host unreachable) on the socket's error queue *and*
makes the next recvfrom() or sendto() fail with it: that sendto's datagram, to another peer, is
not sent. So every socket error drains the error queue (counting each queued error once) and a
send that failed only for an earlier datagram's error is tried again. An undrained error queue
would also keep the socket readable (POLLERR) and spin the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from meshd import neightable
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
DRAIN_MAX = 1024
"""Datagrams `_drain` reads at once: one turn of the loop stays bounded (the rest wait)."""
RECV_MAX = 65535
"""recvfrom() buffer: any UDP datagram."""


SKEW_MAX = 16384  # senders whose clock skew is remembered (authentic senders only)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # linux/in.h; Python does not export it
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)  # linux/in6.h; the same for an IPv6 socket
RECVERR = {
    socket.AF_INET: (socket.IPPROTO_IP, IP_RECVERR),
    socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_RECVERR),
}
"""The socket option (level, name) that queues a socket's errors, by address family; an error
queue entry comes back as a control message of the same level and type."""
SO_EE_ORIGIN_LOCAL = 1  # the error queue entry is the sendto() error itself, already counted
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err: errno, origin, type, code, pad...
PROMPT_BYTES = 512
"""Datagrams up to this size (probes, acks, digests, a little gossip) are fed to the core before
larger ones (push-pull chunks, full gossip rounds) that arrived with them."""
ERRQUEUE_BATCH = 256  # errors read at once; the rest wait for the next POLLERR
ERRQUEUE_ANCILLARY = socket.CMSG_SPACE(_EE.size + 28)  # + the offender's sockaddr_in6 (or _in)

ADVICE = {
    "enobufs": "the kernel's neighbour (ARP) table is full: raise "
    + ", ".join(neightable.SYSCTLS)
    + " (meshd doctor names values)",
    "ehostunreach": "a peer's address does not answer ARP or a router says unreachable: check "
    "that the host is up and on the underlay",
    "enetunreach": "no route to a peer's underlay address: check this host's routes",
    "econnrefused": "a peer's host answers but nothing listens on the gossip port: is meshd "
    "running there, on the same port?",
    "eperm": "a local firewall rejects meshd's outgoing gossip: allow UDP to the gossip port",
    "emsgsize": "a datagram is larger than the path MTU: check the underlay MTU",
    "family": "a member's underlay address is not of the family this node gossips over (an "
    "IPv4-only and an IPv6-only host cannot reach each other): give every host an address of "
    "one family (public_ip)",
}
"""What to do about each kind of lost send; logged once per reason (`send_failed`)."""


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address, else AF_INET (what the gossip socket is opened with)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reason_of(err: int | None) -> str:
    """``enobufs``, ``ehostunreach``, ...: the counter and log key for an errno."""
    return errno.errorcode.get(err or 0, f"errno{err or 0}").lower()


class _Protocol(asyncio.DatagramProtocol):
    """Received datagrams into a queue; socket errors to the transport, synchronously (so the
    error queue is drained before the event loop polls again)."""

    def __init__(self, on_error: Callable[[OSError], None]) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]] | None] = asyncio.Queue()
        self.drained = asyncio.Event()
        self.drained.set()
        self.on_error = on_error
        self.sending = False
        self.send_error: OSError | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        if not isinstance(exc, OSError):
            return
        if self.sending:
            self.send_error = exc
        else:
            self.on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()


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
        self.family = family_of(bind[0])
        """The socket's family, from the bind address: gossip goes over IPv4 or over IPv6."""
        self._recverr = RECVERR[self.family]
        self._sock: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._warned: set[str] = set()  # reasons of lost sends already logged
        self._wake = asyncio.Event()
        self._sleeping_until = -math.inf

    async def start(self) -> None:
        host, port = self.bind
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(*self._recverr, 1)
            if self.family == socket.AF_INET6:
                # Bound to one address anyway; never IPv4-mapped peers on an IPv6 socket.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"
            raise ConfigError(f"port: cannot bind UDP {where}: {exc.strerror}") from None
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._sock = sock
        self._transport, self._protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self._socket_error), sock=sock
        )

    def kick(self) -> None:
        """Wake the timer loop: call after changing the core from outside (leave, update)."""
        self._wake.set()

    async def run(self) -> None:
        assert self._protocol is not None
        # What the core queued before we ran (the join's push-pull requests) goes out now, not
        # with whatever its first timer sends (up to a probe interval later).
        await self._flush()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._recv_loop())
            tg.create_task(self._timer_loop())

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def _recv_loop(self) -> None:
        assert self._protocol is not None
        queue = self._protocol.queue
        while True:
            got = await queue.get()
            if got is None:  # closed
                return
            self._drain()
            if not await self._receive_queued(got):
                return

    def _drain(self) -> None:
        """Move every datagram the kernel holds for us into the receive queue (module docstring).

        Same socket as asyncio's transport, same thread: its next read finds the queue empty."""
        sock, proto = self._sock, self._protocol
        if sock is None or proto is None or self._transport is None:
            return
        for _ in range(DRAIN_MAX):
            if self._transport.is_closing():
                return
            try:
                data, addr = sock.recvfrom(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    return
                self._socket_error(exc)  # an ICMP error reported by recvfrom (IP_RECVERR)
                continue
            self.counters["recv.drained"] += 1
            proto.datagram_received(data, addr)

    async def _receive_queued(self, first: tuple[bytes, tuple[str, int]] | None = None) -> bool:
        """Feed the core every datagram already in the queue (after ``first``); False once the
        socket closed. Small ones first (PROMPT_BYTES): a ping waiting behind the chunks of a
        full state is answered after them, which for a starved joiner (three full states of
        100 members in its first seconds) was later than its prober waited."""
        assert self._protocol is not None
        queue = self._protocol.queue
        batch = [first] if first is not None else []
        closed = False
        while not queue.empty():
            got = queue.get_nowait()
            if got is None:
                closed = True
                break
            batch.append(got)
        if len(batch) > 1:
            batch.sort(key=lambda g: len(g[0]) > PROMPT_BYTES)  # stable: arrival order kept
        for got in batch:
            await self._receive(got)
        if closed:
            queue.put_nowait(None)  # for the receive loop, which then stops
            return False
        return True

    async def _receive(self, got: tuple[bytes, tuple[str, int]]) -> None:
        """One datagram: rate limit, open, feed the core, send what it answers."""
        data, (host, port) = got
        self.counters["in"] += 1
        self.counters["in_bytes"] += len(data)
        if not self.limiter.allow(host, self.clock()):
            self.counters["drop.rate"] += 1
            return
        wall = self.wall()
        try:
            opened = self.sealer.open(data, wall)
        except OpenError as exc:
            self.counters[f"drop.{exc.reason}"] += 1
            if exc.sent_at is not None:
                self._note_skew(exc.sender, exc.sent_at, wall)
            return
        self._note_skew(opened.sender, opened.sent_at, wall)
        try:
            self.node.advance_wall(wall)
            self.node.receive_datagram(
                opened.payload,
                (host, port),
                self.clock(),
                opened.sender,
                opened.to_any,
            )
        except Exception:  # a bug in the core: one authenticated datagram must not stop us
            self.counters["error.internal"] += 1
            log.exception(
                "gossip core failed on a datagram from %s:%s",
                host,
                port,
                extra={"event": "gossip_internal_error", "addr": f"{host}:{port}"},
            )
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
            # What arrived before the deadline is read before the core draws a verdict from it.
            self._drain()
            await self._receive_queued()
            self.node.advance_wall(self.wall())
            self.node.handle_timer(self.clock())
            await self._flush()
            self._after()

    # ------------------------------------------------------------------ lost sends

    def lost(self, reason: str, n: int = 1) -> None:
        """Count ``n`` lost sends for ``reason``; the first of each reason is logged with what
        to do (later ones only counted: at scale they come by the thousand)."""
        self.counters["send_error"] += n
        self.counters[f"send_error.{reason}"] += n
        if reason in self._warned:
            return
        self._warned.add(reason)
        advice = ADVICE.get(reason, "see docs/operations.md, troubleshooting")
        if reason == "enobufs" and self.family == socket.AF_INET6:
            advice = advice.replace("(ARP)", "(NDP)").replace(
                ", ".join(neightable.SYSCTLS), ", ".join(neightable.SYSCTLS6)
            )
        log.warning(
            "gossip sends are failing (%s): %s; `meshd status` counts them (lost sends)",
            reason.upper(),
            advice,
            extra={"event": "send_failed", "reason": reason},
        )

    def lost_sends(self) -> dict[str, int]:
        """Gossip sends lost, by reason (``enobufs``: 3, ...)."""
        return {
            k[len("send_error.") :]: v
            for k, v in sorted(self.counters.items())
            if k.startswith("send_error.")
        }

    def _read_errqueue(self) -> int:
        """Count the ICMP errors queued on the socket (IP_RECVERR), by reason; returns how many
        there were. Reading them also clears the socket's pending error."""
        if self._sock is None:
            return 0
        found = 0
        for _ in range(ERRQUEUE_BATCH):
            try:
                _, anc, _, _ = self._sock.recvmsg(0, ERRQUEUE_ANCILLARY, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed, or nothing a queue read can explain
                break
            for level, kind, data in anc:
                if (level, kind) != self._recverr or len(data) < _EE.size:
                    continue
                err, origin = _EE.unpack_from(data)[:2]
                if origin == SO_EE_ORIGIN_LOCAL:
                    continue  # sendto() itself failed with it: counted there
                found += 1
                self.lost(reason_of(err))
        return found

    def _socket_error(self, exc: OSError) -> None:
        """An error asyncio met outside our sendto(): the recvfrom() after an ICMP error (its
        queued copy is what we count), or a buffered sendto() that failed later."""
        if not self._read_errqueue():
            self.lost(reason_of(exc.errno))

    def _send(self, data: bytes, addr: tuple[str, int]) -> bool:
        """sendto() once, or twice when the first failed only with the pending error of an
        earlier datagram (IP_RECVERR). Returns whether it was sent."""
        assert self._transport is not None and self._protocol is not None
        proto = self._protocol
        if family_of(addr[0]) != self.family:  # the socket cannot carry it: say why, once
            self.lost("family")
            return False
        for attempt in (0, 1):
            proto.sending, proto.send_error = True, None
            try:
                self._transport.sendto(data, addr)
            finally:
                proto.sending = False
            err = proto.send_error
            if err is None:
                return True
            if self._read_errqueue() and attempt == 0:
                continue
            self.lost(reason_of(err.errno))
            log.debug("send to %s:%s failed: %s", addr[0], addr[1], err)
            return False
        return False

    async def _flush(self) -> None:
        assert self._protocol is not None and self._transport is not None
        for payload, addr, recipient in self.node.datagrams_to_send():
            data = self.sealer.seal(payload, self.wall(), recipient)
            if self._transport.is_closing():
                self.lost("closed")
                continue
            if not self._send(data, addr):
                continue
            self.counters["out"] += 1
            self.counters["out_bytes"] += len(data)
            if not self._protocol.drained.is_set():  # the kernel's send buffer is full
                await self._protocol.drained.wait()
