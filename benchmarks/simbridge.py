"""The simulator's members on a real UDP socket: a `meshd.sim.Network` run in real time, whose
datagrams to any address that is not a simulated member are sealed with the real key and sent
through one socket, and whose socket receives, opened, are delivered to the member they were
sent to.

One socket serves every member. It is bound to ``0.0.0.0:<port>`` in a namespace where the
members' public IPs are local (``ip route add local 172.16.0.0/16 dev lo``, the kernel's
"AnyIP"): ``IP_PKTINFO`` names the address each datagram was sent to, so the member it is for,
and ``sendmsg`` with ``IP_PKTINFO`` sends from the member's own address, so the daemon sees each
member at its own ``public_ip:port``, as it would on a real network.

The simulator's clock is ``time.monotonic() - start``. When the members' work takes longer than
the time it simulates, the simulator falls behind: ``lag`` (the worst, seconds) says by how much,
and a benchmark must report it (a member that answers late looks slow to the real daemon).

Every member seals with a `Sealer` of its own node id, made on first use; the replay window and
the addressing checks are the real ones. The members themselves run in the simulator as usual
(`Network.deliver` applies its addressing checks too).
"""

from __future__ import annotations

import collections
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from meshd.gossip import messages
from meshd.gossip.security import ANY, Keyring, OpenError, Sealer
from meshd.sim import Network

Addr = tuple[str, int]
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
CMSG_SPACE = socket.CMSG_SPACE(_PKTINFO.size)
SOCKBUF = 8 * 1024 * 1024
"""Socket buffers: a push-pull answer for 10,000 members arrives as one burst."""
MAX_SLEEP = 0.01
"""Longest wait for the socket between two runs of the simulator (seconds)."""


class Bridge:
    """Drives ``net`` in real time and joins it to ``sock`` (bound, ``IP_PKTINFO`` on)."""

    def __init__(
        self, net: Network, sock: socket.socket, keyring: Keyring, by_type: bool = True
    ) -> None:
        """``by_type``: count what the members send out by message type (``out.<Type>``)."""
        self.net = net
        self.sock = sock
        self.keyring = keyring
        self.port = sock.getsockname()[1]
        self.by_type = by_type
        self.start = time.monotonic() - net.now
        self.counters: collections.Counter[str] = collections.Counter()
        self.lag = 0.0
        """The most the simulator's clock fell behind real time, seconds."""
        self._sealers: dict[int, Sealer] = {}
        self._by_ip: dict[str, int] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._stop = threading.Event()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        net.on_datagram = self._outbound

    # --- outside the simulator -------------------------------------------------------------------

    def clock(self) -> float:
        return time.monotonic() - self.start

    def behind(self) -> float:
        """How far the simulator's clock is behind real time now (callable from another thread:
        `lag` is only updated when a run of the simulator returns, and one run can take long)."""
        got = self.clock() - self.net.now
        self.lag = max(self.lag, got)
        return got

    def member(self, ip: str) -> int | None:
        if len(self._by_ip) != len(self.net.addrs):
            self._by_ip = {a[0]: i for i, a in enumerate(self.net.addrs) if a[1] == self.port}
        return self._by_ip.get(ip)

    def sealer(self, idx: int) -> Sealer:
        got = self._sealers.get(idx)
        if got is None:
            got = self._sealers[idx] = Sealer(self.keyring, self.net.nodes[idx].local.node_id)
        return got

    def _outbound(self, src: int, payload: bytes, addr: Addr, to: bytes) -> None:
        if self.member(addr[0]) is not None and addr[1] == self.port:
            return  # another simulated member: the simulator delivers it
        data = self.sealer(src).seal(payload, time.time(), to or ANY)
        if self.by_type:
            for msg in messages.decode(payload):
                self.counters[f"out.{type(msg).__name__}"] += 1
        pktinfo = _PKTINFO.pack(0, socket.inet_aton(self.net.addrs[src][0]), bytes(4))
        try:
            self.sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, addr)
        except OSError as exc:
            self.counters[f"send_error.{exc.errno}"] += 1
            return
        self.counters["out"] += 1
        self.counters["out_bytes"] += len(data)

    def _receive(self) -> int:
        """Hand every datagram waiting on the socket to its member; how many there were."""
        got = 0
        while True:
            try:
                data, anc, _flags, src = self.sock.recvmsg(65535, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError as exc:  # an ICMP error of an earlier send
                self.counters[f"recv_error.{exc.errno}"] += 1
                continue
            got += 1
            self.counters["in"] += 1
            self.counters["in_bytes"] += len(data)
            dst = next(
                (
                    socket.inet_ntoa(_PKTINFO.unpack(d)[2])
                    for lvl, typ, d in anc
                    if lvl == socket.IPPROTO_IP and typ == IP_PKTINFO
                ),
                None,
            )
            idx = None if dst is None else self.member(dst)
            if idx is None:
                self.counters["drop.no_member"] += 1
                continue
            sealer = self.sealer(idx)
            try:
                opened = sealer.open(data, time.time())
            except OpenError as exc:
                self.counters[f"drop.{exc.reason}"] += 1
                continue
            to = b"" if opened.to_any else sealer.local_id
            self.net.deliver(idx, opened.payload, (src[0], src[1]), opened.sender, to)

    # --- running ---------------------------------------------------------------------------------

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the bridge's loop (the simulator is not thread-safe)."""
        self._calls.append(fn)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Until `stop`: advance the simulator to real time, deliver what the socket holds,
        wait for the socket until the next simulated event (at most MAX_SLEEP)."""
        net = self.net
        heap = net._heap  # noqa: SLF001 - the next event's time, to sleep until it
        while not self._stop.is_set():
            while self._calls:
                self._calls.popleft()()
            now = self.clock()
            net.run_until(now)
            self.lag = max(self.lag, self.clock() - now)
            if self._receive():
                continue
            wait = MAX_SLEEP if not heap else min(MAX_SLEEP, heap[0][0] - self.clock())
            if wait > 0:
                select.select([self.sock], [], [], wait)
