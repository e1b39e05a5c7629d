"""The only netlink module the rest of meshd calls; every netlink error becomes a one-line
DataplaneError here or in ``rtnl`` (the errno kept as its ``__cause__``: ``error_code``).

``Netlink`` opens, in the current network namespace or in a named one (so tests and the lab can
drive a namespace from the same process), one ``rtnl.Rtnl`` socket for everything it asks:

* devices, IPv4 addresses and the default route, as ``rtnl_link`` packs them (a pass touches
  one or two devices);
* the hot path -- routes, neighbours and FDB entries, one per peer -- behind the batch-shaped
  ``dump_*``/``*_apply`` methods, which take and return plain tuples. pyroute2 costs ~0.5 ms
  per such object; the struct-packed messages of ``rtnl_wire`` cost ~10 us, sent hundreds per
  sendmsg with every ACK checked;

and, for ``events()``, a second socket (``rtnl.Monitor``) bound to the multicast groups.

No pyroute2: importing it cost the daemon ~11 MiB of its ~47 (issue 7). The tests still use it,
to check every message packed here against its codec and every answer against its reading of
the kernel.

Dumps are filtered by the kernel (NETLINK_GET_STRICT_CHK with the filter in the request:
rtm_protocol + rtm_table for routes, NDA_IFINDEX / ndm_ifindex for neighbours and FDB,
ifa_index for addresses), not in Python: a host's main table may hold far more routes than
meshd's.
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshd.dataplane.netns import NETNS_DIR, run_in_netns
from meshd.dataplane.rtnl import Monitor, Rtnl
from meshd.dataplane.rtnl_link import (
    IFA_F_SECONDARY,
    IFF_UP,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    LinkMsg,
    addr_dump_request,
    decode_addr,
    decode_link,
    encode_addr,
    encode_link_create,
    encode_link_delete,
    encode_link_set,
    link_get_request,
)
from meshd.dataplane.rtnl_wire import (
    AF_BRIDGE,
    GONE,
    MAIN_TABLE,
    NUD_PERMANENT,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    Failure,
    FdbEntry,
    NeighEntry,
    Request,
    RouteEntry,
    decode_neigh,
    decode_route,
    messages,
    route_dump_request,
)
from meshd.errors import DataplaneError, MissingKernelFeature

__all__ = ["Event", "Failure", "FdbEntry", "LinkInfo", "NeighEntry", "Netlink", "RouteEntry",
           "error_code"]

MONITOR_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    kind: str  # "" for devices without linkinfo (veth shows "veth", plain eth "")
    mtu: int
    mac: str | None
    up: bool
    params: dict[str, Any] = field(default_factory=dict)  # linkinfo data, pyroute2 names


@dataclass(frozen=True, slots=True)
class Event:
    """A kernel notification, reduced to what the reconciler decides on."""

    kind: str  # link | addr | route | neigh | fdb | overflow | ready
    new: bool  # RTM_NEW* (else RTM_DEL*)
    index: int = 0  # ifindex (link, addr, neigh, fdb) or oif (route)
    name: str = ""  # ifname for link events
    dst: str = ""  # route CIDR, neighbour IP, FDB dst
    lladdr: str = ""
    proto: int = 0
    permanent: bool = False
    up: bool = False
    mtu: int = 0


# --- errors --------------------------------------------------------------------------------------


def error_code(err: BaseException) -> int | None:
    """The errno behind a translated error (kept as its ``__cause__``), if any."""
    cause = err.__cause__
    return cause.errno if isinstance(cause, OSError) else None


def _encode(what: str, build: Callable[[], Request]) -> Request:
    """A request, or a one-line DataplaneError for input that cannot be packed."""
    try:
        return build()
    except ValueError as exc:
        raise DataplaneError(f"{what}: {exc}") from exc


# --- the socket ----------------------------------------------------------------------------------


class Netlink:
    """rtnetlink in the current namespace (``netns=None``) or in ``/run/netns/<netns>``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._rtnl = Rtnl(netns)

    async def open(self) -> None:
        self._rtnl.open()

    async def close(self) -> None:
        self._rtnl.close()

    async def __aenter__(self) -> Netlink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- links ---------------------------------------------------------------------------------

    @staticmethod
    def _link_info(m: LinkMsg) -> LinkInfo:
        return LinkInfo(m.ifindex, m.name, m.kind, m.mtu, m.mac, bool(m.flags & IFF_UP), m.params)

    async def link(self, name: str | None = None, index: int | None = None) -> LinkInfo | None:
        """The device called ``name`` (or with ``index``), or None if there is none."""
        req = _encode(f"get link {name or index}", lambda: link_get_request(name, index))
        msgs = await self._rtnl.call(
            req._replace(ok=(errno.ENODEV, errno.ENOENT)), decode_link, RTM_NEWLINK
        )
        return self._link_info(msgs[0]) if msgs else None

    async def create_link(
        self, name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[Any]
    ) -> int:
        """Create a device with everything that is fixed at creation, MAC included (set later,
        systemd's MACAddressPolicy could race us). Returns its ifindex. A kernel without the
        kind (EOPNOTSUPP, "Unknown device type") raises MissingKernelFeature."""
        what = f"create {kind} device {name}"
        req = _encode(what, lambda: encode_link_create(name, kind, mtu, mac, params))
        try:
            await self._rtnl.call(req)
        except DataplaneError as exc:
            if error_code(exc) == errno.EOPNOTSUPP:
                raise MissingKernelFeature(
                    f"kernel has no {kind} support (module {kind}): {exc}"
                ) from exc.__cause__
            raise
        info = await self.link(name)
        if info is None:
            raise DataplaneError(f"{what}: gone right after creation")
        return info.index

    async def delete_link(self, index: int) -> None:
        """Delete a device; one already gone counts as done."""
        await self._rtnl.call(encode_link_delete(index))

    async def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        req = _encode(f"set link {index}", lambda: encode_link_set(index, mtu=mtu, mac=mac, up=up))
        await self._rtnl.call(req)

    async def default_route_oif(self) -> int | None:
        """ifindex of the main table's IPv4 default route (lowest metric), if any."""
        req = route_dump_request(0, MAIN_TABLE)._replace(what="dump routes for the default route")
        best: tuple[int, int] | None = None
        for r in await self._rtnl.dump(req, decode_route, RTM_NEWROUTE):
            if (r.family == socket.AF_INET and r.dst.endswith("/0") and r.table == MAIN_TABLE
                    and r.oif):
                cand = (r.priority, r.oif)
                best = cand if best is None or cand < best else best
        return best[1] if best else None

    # --- addresses -----------------------------------------------------------------------------

    async def addresses(self, index: int | None = None) -> list[tuple[int, str, int, bool]]:
        """IPv4 addresses as (ifindex, ip, prefixlen, secondary), optionally of one device."""
        return [
            (a.ifindex, a.address, a.prefixlen, bool(a.flags & IFA_F_SECONDARY))
            for a in await self._rtnl.dump(addr_dump_request(index), decode_addr, RTM_NEWADDR)
            if a.family == socket.AF_INET and (index is None or a.ifindex == index)
        ]

    async def add_address(self, index: int, cidr: str) -> None:
        """Add an IPv4 address; one already there counts as done."""
        what = f"add address {cidr} to link {index}"
        await self._rtnl.call(
            _encode(what, lambda: encode_addr("add", index, cidr, ok=(errno.EEXIST,)))
        )

    async def del_address(self, index: int, cidr: str) -> None:
        """Delete an IPv4 address; one already gone (or its device) counts as done."""
        what = f"delete address {cidr} from link {index}"
        await self._rtnl.call(_encode(what, lambda: encode_addr("del", index, cidr, ok=GONE)))

    # --- hot path: routes, neighbours, FDB (rtnl.py: struct-packed, batched, kernel-filtered) -

    async def dump_routes(self, proto: int, table: int = MAIN_TABLE) -> list[RouteEntry]:
        """IPv4 routes with ``proto`` in ``table``."""
        return await self._rtnl.dump_routes(proto, table)

    async def routes_apply(
        self, op: str, entries: Sequence[RouteEntry], proto: int, table: int = MAIN_TABLE
    ) -> list[Failure]:
        """``op``: add (fails with EEXIST on any existing route: never overwrite another owner's),
        replace, or del (only a route with ``proto``; already gone counts as done)."""
        return await self._rtnl.routes_apply(op, entries, proto, table)

    async def dump_neighs(self, ifindex: int) -> list[NeighEntry]:
        """Permanent IPv4 neighbours of one device (others are the kernel's own cache)."""
        return await self._rtnl.dump_neighs(ifindex)

    async def neighs_apply(
        self, op: str, ifindex: int, entries: Sequence[NeighEntry]
    ) -> list[Failure]:
        """``op``: replace (create or overwrite, permanent) or del (already gone is done)."""
        return await self._rtnl.neighs_apply(op, ifindex, entries)

    async def dump_fdb(self, ifindex: int) -> list[FdbEntry]:
        """Unicast FDB entries with a remote dst on one (vxlan) device."""
        return await self._rtnl.dump_fdb(ifindex)

    async def fdb_apply(self, op: str, ifindex: int, entries: Sequence[FdbEntry]) -> list[Failure]:
        """``op``: replace (one dst per MAC, ``self permanent``) or del (already gone is done)."""
        return await self._rtnl.fdb_apply(op, ifindex, entries)

    # --- monitoring ----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Kernel notifications for links, IPv4 addresses, routes and neighbours/FDB, on a
        second socket. Yields ``Event("ready")`` once subscribed, and ``Event("overflow")`` when
        the socket lost messages (the caller resyncs)."""
        mon = Monitor(self.netns, MONITOR_GROUPS)
        mon.open()
        try:
            yield Event("ready", True)  # subscribed: from here on no change goes unseen
            while True:
                try:
                    data = await mon.read()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise DataplaneError(
                            f"netlink monitor: {exc.strerror or exc}"
                        ) from exc
                    yield Event("overflow", True)
                    continue
                for kind, _, off, end in messages(data, len(data)):
                    ev = _event(kind, data, off, end)
                    if ev is not None:
                        yield ev
        finally:
            mon.close()

    # --- sysctl --------------------------------------------------------------------------------

    async def sysctl(self, name: str, value: str | None = None) -> str:
        """Read (and with ``value``, write) ``/proc/sys/<name>`` in this namespace. Returns the
        value before the write. /proc/sys/net is per network namespace: a thread that joined the
        namespace opens it, so no process is forked."""
        path = "/proc/sys/" + name.replace(".", "/")

        def work() -> str:
            with open(path) as f:
                old = f.read().strip()
            if value is not None and old != value:
                with open(path, "w") as f:
                    f.write(value)
            return old

        try:
            if self.netns is None:
                return work()
            return await asyncio.get_running_loop().run_in_executor(
                None, run_in_netns, os.path.join(NETNS_DIR, self.netns), work
            )
        except FileNotFoundError as exc:
            raise DataplaneError(f"sysctl {name}: not found: {exc.filename or exc}") from exc
        except OSError as exc:
            raise DataplaneError(f"sysctl {name}: {exc.strerror or exc}") from exc


def _event(kind: int, buf: bytes, off: int, end: int) -> Event | None:
    """The Event for one notification whose body spans ``off``..``end``, if meshd reads it."""
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        ln = decode_link(buf, off, end)
        return Event(
            "link", kind == RTM_NEWLINK, index=ln.ifindex, name=ln.name,
            up=bool(ln.flags & IFF_UP), mtu=ln.mtu, lladdr=ln.mac or "",
        )
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        a = decode_addr(buf, off, end)
        return Event("addr", kind == RTM_NEWADDR, index=a.ifindex, dst=a.address)
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        r = decode_route(buf, off, end)
        if r.family != socket.AF_INET:
            return None
        return Event("route", kind == RTM_NEWROUTE, index=r.oif, dst=r.dst, proto=r.proto)
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
        n = decode_neigh(buf, off, end)
        if n.family not in (socket.AF_INET, AF_BRIDGE):
            return None
        return Event(
            "fdb" if n.family == AF_BRIDGE else "neigh", kind == RTM_NEWNEIGH, index=n.ifindex,
            dst=n.dst, lladdr=n.lladdr, permanent=bool(n.state & NUD_PERMANENT),
        )
    return None
