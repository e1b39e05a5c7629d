"""meshd's raw NETLINK_ROUTE sockets for the per-peer objects -- routes, neighbours, FDB entries,
packed by ``rtnl_wire`` (~10 us each where pyroute2 spends ~0.5 ms) -- and ``Monitor``, the socket
``netlink.Netlink.events()`` reads, subscribed to multicast groups. netlink.py delegates to
``Rtnl`` and stays the only module the rest of meshd calls; devices and addresses go through
pyroute2 there, not here.

Requests, dumps and batches on one ``Rtnl`` take turns (a lock): answers are read back in order.
Every error becomes a one-line DataplaneError with its ``errno`` (``rtnl_wire.request_error``).

Batches: up to ``window`` requests go out in one ``sendmsg``, each with NLM_F_ACK and its own
sequence number. The kernel handles the whole datagram inside ``sendmsg`` and queues one ACK per
request, so the window is bounded by what the receive buffer holds (raised with SO_RCVBUFFORCE).
Every ACK is read and matched by sequence number; an error becomes a one-line DataplaneError for
that request alone ("route add 10.244.2.0/24 via ...: File exists (EEXIST)"). If ACKs are lost
anyway (ENOBUFS), the requests without one are reported as failed and the window is halved: the
reconciler's retry re-reads the kernel (a resync) and sends only what is still missing.

Dumps carry their filter in the request and the socket sets NETLINK_GET_STRICT_CHK, so the kernel
sends only meshd's entries. Every entry is re-checked here as well, which keeps a kernel without
strict checking (before 4.20) correct, only slower.

In a named network namespace a socket is opened by a short-lived thread that joined it
(``netns.run_in_netns``): no helper process is forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from meshd.dataplane.netns import netns_path, run_in_netns
from meshd.dataplane.rtnl_wire import (
    AF_INET,
    HDR,
    I32,
    MAIN_TABLE,
    NLM_F_DUMP_FILTERED,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    Failure,
    FdbEntry,
    Memo,
    NeighEntry,
    Request,
    RouteEntry,
    decode_error,
    decode_route,
    encode_fdb,
    encode_neigh,
    encode_route,
    fdb_dump_request,
    fdb_entry,
    frame,
    neigh_dump_request,
    neigh_entry,
    os_error,
    request_error,
    route_dump_request,
    route_entry,
    what_route,
)
from meshd.errors import DataplaneError

T = TypeVar("T")
_HDR_LEN = 16

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
RCVBUF = 8 << 20  # asked for; without CAP_NET_ADMIN net.core.rmem_max caps it (Debian: 208 KiB)
SNDBUF = 1 << 20  # one datagram carries a whole window of requests
ACK_COST = 1280  # receive-buffer bytes one queued ACK takes (skb truesize; ~900 on 6.18) + margin
# Requests per sendmsg. One per sendmsg costs ~2x (5,000 neighbours: 85 ms); from 16 on it is flat
# (30-45 ms at 16..1024). The kernel handles a whole window inside one sendmsg, during which the
# event loop (gossip) waits: 256 routes with distinct gateways take the kernel ~25 ms.
MAX_WINDOW = 256
MIN_WINDOW = 16
RECV_SIZE = 64 << 10  # the kernel fills dump datagrams up to 32 KiB
TIMEOUT = 5.0  # seconds to wait for an answer; the kernel answers inside sendmsg: a safety net
MEMO_SLACK = 1024  # decoded dump entries kept beyond twice the last dump's size
DUMP_RETRIES = 3  # a dump the kernel marks interrupted (the table changed meanwhile) is redone


# --- the socket ----------------------------------------------------------------------------------


class Rtnl:
    """A NETLINK_ROUTE socket for batched route / neighbour / FDB requests and filtered dumps,
    in the current network namespace (``netns=None``) or in ``/run/netns/<netns>``.

    ``strict_check=False`` skips NETLINK_GET_STRICT_CHK (tests use it to check the user-space
    filtering old kernels need). ``window`` caps the requests per sendmsg (default: what the
    receive buffer holds, at most MAX_WINDOW). Callers take turns (``_lock``): ACKs and dump
    parts are read back in order.
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        rcvbuf: int = RCVBUF,
        strict_check: bool = True,
        window: int | None = None,
    ) -> None:
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.strict = strict_check
        self.window = window or MAX_WINDOW
        self.filtered = False  # did the last dump come back marked NLM_F_DUMP_FILTERED?
        self.lost_acks = 0  # requests whose ACK the kernel dropped (ENOBUFS), since open
        self._fixed_window = window is not None
        self._sock: socket.socket | None = None
        self._buf = bytearray(RECV_SIZE)
        self._seq = 0
        self._memos: dict[tuple[Any, ...], Memo] = {}
        self._lock = asyncio.Lock()

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        if self._sock is None:
            self._sock = open_socket(self.netns, self._make_socket)

    def _make_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, self.rcvbuf)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF)
            # Error ACKs without the request echoed back; the kernel's reason as text.
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_NETLINK, opt, 1)
            if self.strict:
                try:
                    sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
                except OSError:
                    self.strict = False  # kernel < 4.20: dumps are filtered here instead
            sock.bind((0, 0))
            sock.setblocking(False)
            if not self._fixed_window:
                got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                self.window = max(MIN_WINDOW, min(MAX_WINDOW, got // ACK_COST))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            raise DataplaneError("rtnetlink socket is not open")
        return self._sock

    def _next_seq(self, n: int) -> int:
        if self._seq + n >= 1 << 31:
            self._seq = 0
        first = self._seq + 1
        self._seq += n
        return first

    async def _recv(self) -> int:
        """Bytes of the next datagram in ``self._buf``. The kernel answers inside sendmsg (and
        fills the next dump part inside recvmsg), so the wait is only a safety net."""
        sock = self.sock
        try:
            return sock.recv_into(self._buf)
        except BlockingIOError:
            pass
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv_into(sock, self._buf), TIMEOUT)
        except TimeoutError:
            raise DataplaneError(
                f"rtnetlink: no answer from the kernel within {TIMEOUT:g}s"
            ) from None

    # --- batches -------------------------------------------------------------------------------

    async def batch(self, reqs: Sequence[Request]) -> list[Failure]:
        """Send every request and check every ACK; returns the ones that failed. A request whose
        errno is in its ``ok`` counts as done."""
        async with self._lock:
            return await self._batch(reqs)

    async def _batch(self, reqs: Sequence[Request]) -> list[Failure]:
        fails: list[Failure] = []
        i = 0
        while i < len(reqs):
            chunk = reqs[i : i + self.window]
            seq0 = self._next_seq(len(chunk))
            data = b"".join([frame(r, seq0 + k) for k, r in enumerate(chunk)])
            try:
                self.sock.send(data)
            except OSError as exc:
                raise os_error("rtnetlink send", exc) from exc
            lost = await self._acks(chunk, seq0, fails)
            if lost:
                self.lost_acks += lost
                self.window = max(MIN_WINDOW, self.window // 2)
            i += len(chunk)
            if i < len(reqs):
                await asyncio.sleep(0)  # let gossip run between chunks
        return fails

    async def _acks(self, chunk: Sequence[Request], seq0: int, fails: list[Failure]) -> int:
        """Read the ACKs of one chunk into ``fails``; returns how many the kernel dropped."""
        n = len(chunk)
        seen = bytearray(n)
        left = n
        overrun = False
        buf = self._buf
        unpack_hdr, unpack_i32 = HDR.unpack_from, I32.unpack_from
        while left:
            try:
                if overrun:
                    size = self.sock.recv_into(buf)  # drain what is queued, then stop
                else:
                    size = await self._recv()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise os_error("rtnetlink receive", exc) from exc
                overrun = True
                continue
            off = 0
            while off + _HDR_LEN <= size:
                length, kind, flags, seq, _ = unpack_hdr(buf, off)
                if length < _HDR_LEN:
                    break
                k = seq - seq0
                if kind == NLMSG_ERROR and 0 <= k < n and not seen[k]:
                    seen[k] = 1
                    left -= 1
                    if unpack_i32(buf, off + _HDR_LEN)[0]:
                        code, detail = decode_error(buf, off + _HDR_LEN, off + length, flags)
                        req = chunk[k]
                        if code not in req.ok:
                            fails.append(Failure(req.what, request_error(req.what, code, detail)))
                off += (length + 3) & ~3
        if left:
            for k in range(n):
                if not seen[k]:
                    what = chunk[k].what
                    fails.append(
                        Failure(
                            what,
                            request_error(
                                what, errno.ENOBUFS, "ACK lost; the next pass re-reads the kernel"
                            ),
                        )
                    )
        return left

    # --- dumps ---------------------------------------------------------------------------------

    async def dump(
        self, req: Request, decoder: Callable[[bytearray, int, int], T], msg_type: int
    ) -> list[T]:
        """Every ``msg_type`` message of the dump ``req``, decoded. Redone when the kernel marks
        it interrupted; on EINVAL under strict checking (a filter this kernel refuses), strict
        checking is switched off and the dump redone unfiltered."""
        attempt = 0
        while True:
            try:
                async with self._lock:
                    out, intr = await self._exchange(req, decoder, msg_type)
            except DataplaneError as exc:
                if exc.errno == errno.EINVAL and self.strict:
                    self.strict = False
                    with contextlib.suppress(OSError):
                        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 0)
                    continue
                raise
            attempt += 1
            if not intr or attempt >= DUMP_RETRIES:
                return out

    async def _exchange(
        self,
        req: Request,
        decoder: Callable[[bytearray, int, int], T] | None,
        msg_type: int,
    ) -> tuple[list[T], bool]:
        """Send ``req``; read its answers up to NLMSG_DONE (a dump) or the ACK (a request)."""
        seq = self._next_seq(1)
        try:
            self.sock.send(frame(req, seq))
        except OSError as exc:
            raise os_error(req.what, exc) from exc
        out: list[T] = []
        intr = False
        filtered = False
        buf = self._buf
        unpack_hdr = HDR.unpack_from
        parts = 0
        while True:
            try:
                size = await self._recv()
            except OSError as exc:
                raise os_error(req.what, exc) from exc
            parts += 1
            off = 0
            while off + _HDR_LEN <= size:
                length, kind, flags, mseq, _ = unpack_hdr(buf, off)
                if length < _HDR_LEN:
                    break
                if mseq == seq:
                    if kind == msg_type and decoder is not None:
                        out.append(decoder(buf, off + _HDR_LEN, off + length))
                        intr = intr or bool(flags & NLM_F_DUMP_INTR)
                        filtered = filtered or bool(flags & NLM_F_DUMP_FILTERED)
                    elif kind == NLMSG_DONE:
                        self.filtered = filtered
                        return out, intr or bool(flags & NLM_F_DUMP_INTR)
                    elif kind == NLMSG_ERROR:
                        code, detail = decode_error(buf, off + _HDR_LEN, off + length, flags)
                        if code == 0:
                            return out, intr  # the ACK: the request is done
                        if code in req.ok:
                            return [], False
                        raise request_error(req.what, code, detail)
                off += (length + 3) & ~3
            if parts % 64 == 0:
                await asyncio.sleep(0)

    # --- the hot path, as netlink.Netlink offers it ---------------------------------------------

    async def routes_apply(
        self, op: str, entries: Sequence[RouteEntry], proto: int, table: int = MAIN_TABLE
    ) -> list[Failure]:
        return await self._apply(
            entries, lambda e: encode_route(op, e, proto, table), lambda e: what_route(op, e)
        )

    async def neighs_apply(
        self, op: str, ifindex: int, entries: Sequence[NeighEntry]
    ) -> list[Failure]:
        return await self._apply(
            entries,
            lambda e: encode_neigh(op, ifindex, e),
            lambda e: f"neigh {op} {e.dst} lladdr {e.lladdr}",
        )

    async def fdb_apply(self, op: str, ifindex: int, entries: Sequence[FdbEntry]) -> list[Failure]:
        return await self._apply(
            entries,
            lambda e: encode_fdb(op, ifindex, e),
            lambda e: f"fdb {op} {e.lladdr} dst {e.dst}",
        )

    async def _apply(
        self, entries: Sequence[T], encode: Callable[[T], Request], what: Callable[[T], str]
    ) -> list[Failure]:
        reqs: list[Request] = []
        fails: list[Failure] = []
        for e in entries:
            try:
                reqs.append(encode(e))
            except ValueError as exc:
                w = what(e)
                fails.append(Failure(w, DataplaneError(f"{w}: {exc}")))
        return fails + await self.batch(reqs)

    async def dump_routes(
        self, proto: int, table: int = MAIN_TABLE, family: int = AF_INET
    ) -> list[RouteEntry]:
        """Routes of ``family`` (AF_INET or AF_INET6) with ``proto`` in ``table``."""
        memo = self._memo(("route", proto, table, family))
        got = await self.dump(
            route_dump_request(proto, table, family),
            lambda b, o, e: route_entry(b, o, e, proto, table, memo, family),
            RTM_NEWROUTE,
        )
        return self._kept(memo, got)

    async def dump_route_owners(
        self, table: int = MAIN_TABLE, family: int = AF_INET
    ) -> list[tuple[str, int]]:
        """(destination, protocol) of every route of ``family`` in ``table``, whoever owns it:
        what the model checks peers' subnets against. Only read when the table changed (the
        reconciler follows the monitor), so the general decoder is fast enough."""

        def owner(b: bytearray, o: int, e: int) -> tuple[str, int] | None:
            m = decode_route(b, o, e)
            return (m.dst, m.proto) if m.family == family and m.table == table else None

        got = await self.dump(route_dump_request(0, table, family), owner, RTM_NEWROUTE)
        return [x for x in got if x is not None]

    async def dump_neighs(self, ifindex: int, family: int = AF_INET) -> list[NeighEntry]:
        """Permanent neighbours of ``family`` on one device (others are the kernel's cache)."""
        memo = self._memo(("neigh", ifindex, family))
        got = await self.dump(
            neigh_dump_request(ifindex, family),
            lambda b, o, e: neigh_entry(b, o, e, ifindex, memo, family),
            RTM_NEWNEIGH,
        )
        return self._kept(memo, got)

    async def dump_fdb(self, ifindex: int) -> list[FdbEntry]:
        """Unicast FDB entries with a remote dst on one (vxlan) device."""
        memo = self._memo(("fdb", ifindex))
        got = await self.dump(
            fdb_dump_request(ifindex),
            lambda b, o, e: fdb_entry(b, o, e, ifindex, memo),
            RTM_NEWNEIGH,
        )
        return self._kept(memo, got)

    def _memo(self, key: tuple[Any, ...]) -> Memo:
        return self._memos.setdefault(key, {})

    @staticmethod
    def _kept(memo: Memo, got: list[T | None]) -> list[T]:
        # Stale keys (entries since changed or gone) pile up slowly; start afresh past twice
        # what the kernel holds.
        if len(memo) > 2 * len(got) + MEMO_SLACK:
            memo.clear()
        return [x for x in got if x is not None]


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    """SO_*BUFFORCE passes net.core.[rw]mem_max with CAP_NET_ADMIN; else the capped option."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def open_socket(netns: str | None, make: Callable[[], socket.socket]) -> socket.socket:
    """``make()`` in the current namespace, or in a thread that joined ``/run/netns/<netns>``
    (a socket keeps the namespace it was made in). OSErrors become one-line DataplaneErrors."""
    where = f" in netns {netns}" if netns else ""
    try:
        if netns is None:
            return make()
        path = netns_path(netns)
        if not os.path.exists(path):
            raise DataplaneError(f"network namespace {netns} does not exist")
        return run_in_netns(path, make)
    except OSError as exc:
        raise os_error(f"open rtnetlink socket{where}", exc) from exc


# --- notifications -------------------------------------------------------------------------------


class Monitor:
    """A NETLINK_ROUTE socket subscribed to ``groups`` (RTMGRP_* bits): every change the kernel
    announces there, one datagram per ``read``. Subscribed once ``open`` returns."""

    def __init__(self, netns: str | None, groups: int, *, rcvbuf: int = RCVBUF) -> None:
        self.netns = netns
        self.groups = groups
        self.rcvbuf = rcvbuf
        self._sock: socket.socket | None = None

    def open(self) -> None:
        if self._sock is None:
            self._sock = open_socket(self.netns, self._make_socket)

    def _make_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            # A burst (a device deleted with its thousands of routes) must fit, else the kernel
            # drops notifications (ENOBUFS) and the reconciler has to re-read everything.
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, self.groups))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    async def read(self) -> bytes:
        """The next datagram of notifications. Raises OSError(ENOBUFS) when the kernel had to
        drop some (the receive buffer was full): the caller must re-read what it watches."""
        if self._sock is None:
            raise DataplaneError("rtnetlink monitor is not open")
        return await asyncio.get_running_loop().sock_recv(self._sock, RECV_SIZE)
