"""Data-plane health: is the tunnel to each peer carrying packets, not only gossip?

Gossip can say a peer is alive while its tunnel is broken (a firewall dropping UDP 8472, an MTU
black hole, a checksum bug). So each daemon also answers a tiny UDP echo on its **device
address** (its subnet's network address, on ``meshd.<vni>`` / ``meshd.ipip`` / ``meshd.wg``),
port = the gossip port, and probes its peers' device addresses: the request and the reply cross
the tunnel both ways, encapsulated like container traffic.

Bounded like SWIM's probing, not N² per second: every ``interval`` a daemon probes the next
``per_round`` peers of a shuffled round-robin, so its cost is ``per_round`` datagrams (15 bytes
of payload each) per interval whatever the mesh's size, and each peer is seen every
N / per_round intervals. A peer is ``ok`` after an answer, ``unreachable`` after ``fail_after``
probes in a row went unanswered within ``timeout``, ``unknown`` before its first probe ends.
``probe_all`` probes every target at once (``meshd doctor``).

The echo answers only well-formed requests, with a datagram of the same size (no amplification),
on the device address only (reachable through the tunnel or from this host). Malformed
datagrams are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("meshd.probe")

MAGIC = b"MDPRB1"
REQUEST, REPLY = 0, 1
WIRE = struct.Struct("!6sB8s")  # magic, type, nonce
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
OK, UNREACHABLE, UNKNOWN = "ok", "unreachable", "unknown"


def encode(kind: int, nonce: bytes) -> bytes:
    return WIRE.pack(MAGIC, kind, nonce)


def decode(data: bytes) -> tuple[int, bytes] | None:
    """(type, nonce) of a well-formed probe datagram, else None."""
    if len(data) != WIRE.size:
        return None
    magic, kind, nonce = WIRE.unpack(data)
    if magic != MAGIC or kind not in (REQUEST, REPLY):
        return None
    return kind, nonce


@dataclass
class PeerHealth:
    """What the probes say about one peer's tunnel."""

    address: str
    state: str = UNKNOWN
    rtt_ms: float | None = None
    last_ok: float | None = None  # unix seconds of the last answer
    failures: int = 0  # unanswered probes in a row

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "address": self.address,
            "rtt_ms": self.rtt_ms,
            "last_ok": self.last_ok,
            "failures": self.failures,
        }


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: TunnelProber) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP errors: loss, nothing more
        self.owner.counters["send_error"] += 1


class TunnelProber:
    """Probes peers' device addresses through the tunnel and answers their probes.

    ``set_local(ip)`` binds to this node's device address (again when it moves; IP_FREEBIND, so
    before the device has it); ``set_targets({name: device address})`` says whom to probe."""

    def __init__(
        self,
        port: int,
        *,
        per_round: int = 3,
        interval: float = 1.0,
        timeout: float = 1.0,
        fail_after: int = 2,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self.per_round = per_round
        self.interval = interval
        self.timeout = timeout
        self.fail_after = fail_after
        self.counters: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._wall = wall
        self._local: str | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._health: dict[str, PeerHealth] = {}
        self._order: deque[str] = deque()
        self._pending: dict[bytes, tuple[str, float, asyncio.Future[float] | None]] = {}
        self._closed = False

    # --- state ---------------------------------------------------------------------------------

    def set_targets(self, targets: Mapping[str, str]) -> None:
        """The peers to probe (name -> device address); results of peers gone are forgotten,
        a peer whose address changed starts over."""
        for name in list(self._health):
            if targets.get(name) != self._health[name].address:
                del self._health[name]
        for name, addr in targets.items():
            self._health.setdefault(name, PeerHealth(addr))
        self._order = deque(n for n in self._order if n in self._health)

    def health(self) -> dict[str, dict[str, Any]]:
        """Peer name -> its probe results (JSON-able)."""
        return {n: h.to_dict() for n, h in sorted(self._health.items())}

    def unreachable(self) -> list[str]:
        return sorted(n for n, h in self._health.items() if h.state == UNREACHABLE)

    def status(self) -> dict[str, Any]:
        return {
            "local": self._local,
            "port": self.port,
            "bound": self._transport is not None,
            "targets": len(self._health),
            "unreachable": self.unreachable(),
            "per_round": self.per_round,
            "interval": self.interval,
            "counters": dict(self.counters),
        }

    # --- the socket ----------------------------------------------------------------------------

    async def set_local(self, ip: str | None) -> None:
        """Bind the echo to ``ip`` (this node's device address); None closes it."""
        if ip == self._local and self._transport is not None:
            return
        self._close_socket()
        self._local = ip
        if ip is None or self._closed:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.setblocking(False)
            sock.bind((ip, self.port))
        except OSError as exc:
            sock.close()
            self.counters["bind_error"] += 1
            log.warning(
                "tunnel probe: cannot bind %s:%d: %s",
                ip,
                self.port,
                exc.strerror,
                extra={"event": "tunnel_probe_bind_failed", "reason": exc.strerror},
            )
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        self._transport = transport

    def _close_socket(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        self._closed = True
        self._close_socket()
        for _, _, fut in self._pending.values():
            if fut is not None and not fut.done():
                fut.cancel()
        self._pending.clear()

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = decode(data)
        if msg is None:
            self.counters["drop.malformed"] += 1
            return
        kind, nonce = msg
        if kind == REQUEST:
            self.counters["answered"] += 1
            if self._transport is not None:
                self._transport.sendto(encode(REPLY, nonce), addr)
            return
        entry = self._pending.pop(nonce, None)
        if entry is None:
            self.counters["drop.unexpected"] += 1
            return
        name, sent, fut = entry
        rtt = time.monotonic() - sent
        self.counters["replies"] += 1
        h = self._health.get(name)
        if h is not None:
            if h.state == UNREACHABLE:
                log.info(
                    "tunnel to %s (%s) answers again",
                    name,
                    h.address,
                    extra={"event": "tunnel_ok", "peer": name, "reason": "probe answered"},
                )
            h.state, h.rtt_ms, h.last_ok, h.failures = OK, round(rtt * 1000, 2), self._wall(), 0
        if fut is not None and not fut.done():
            fut.set_result(rtt)

    def _send(self, name: str, fut: asyncio.Future[float] | None = None) -> None:
        h = self._health.get(name)
        if h is None or self._transport is None:
            return
        nonce = os.urandom(8)
        self._pending[nonce] = (name, time.monotonic(), fut)
        self.counters["probes"] += 1
        self._transport.sendto(encode(REQUEST, nonce), (h.address, self.port))

    def _expire(self) -> None:
        now = time.monotonic()
        for nonce, (name, sent, fut) in list(self._pending.items()):
            if now - sent < self.timeout:
                continue
            del self._pending[nonce]
            self.counters["timeouts"] += 1
            h = self._health.get(name)
            if h is not None:
                h.failures += 1
                if h.failures >= self.fail_after and h.state != UNREACHABLE:
                    h.state = UNREACHABLE
                    log.warning(
                        "tunnel to %s (%s) does not answer: %d probes in a row lost",
                        name,
                        h.address,
                        h.failures,
                        extra={
                            "event": "tunnel_unreachable",
                            "peer": name,
                            "reason": f"{h.failures} probes in a row lost",
                            "address": h.address,
                        },
                    )
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError())

    # --- loops ---------------------------------------------------------------------------------

    def _next_round(self) -> list[str]:
        if not self._order:
            names = list(self._health)
            self._rng.shuffle(names)
            self._order.extend(names)
        out: list[str] = []
        while self._order and len(out) < self.per_round:
            out.append(self._order.popleft())
        return out

    async def run(self) -> None:
        """Probe ``per_round`` peers every ``interval`` until closed."""
        while not self._closed:
            self._expire()
            for name in self._next_round():
                self._send(name)
            await asyncio.sleep(self.interval)
            self._expire()

    async def probe_all(self, timeout: float = 2.0, tries: int = 2) -> dict[str, dict[str, Any]]:
        """Probe every target now (``meshd doctor``); a peer gets ``tries`` chances. Results
        also update the periodic state."""
        loop = asyncio.get_running_loop()
        names = list(self._health)
        answered: set[str] = set()
        for _ in range(tries):
            futs: dict[str, asyncio.Future[float]] = {}
            for name in names:
                if name not in answered:
                    futs[name] = loop.create_future()
                    self._send(name, futs[name])
            if not futs:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*futs.values(), return_exceptions=True), timeout
                )
            for name, fut in futs.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    answered.add(name)
                elif not fut.done():
                    fut.cancel()
            self._expire_all(set(futs))
        return {n: self._health[n].to_dict() for n in names if n in self._health}

    def _expire_all(self, names: set[str]) -> None:
        """Count still-pending probes of ``names`` as lost now (probe_all's deadline passed)."""
        for nonce, (name, sent, fut) in list(self._pending.items()):
            if name in names:
                self._pending[nonce] = (name, sent - self.timeout, fut)
        self._expire()
