"""The only netlink module the rest of meshd calls; every netlink error becomes a DataplaneError
here (pyroute2's in ``_translate``, the raw socket's in ``rtnl``).

``Netlink`` opens, in the current network namespace or in a named one (so tests and the lab can
drive a namespace from the same process):

* a pyroute2 socket for devices, addresses and the default route (pyroute2 forks a small helper to
  open it in a namespace), and, for ``events()``, a second one bound to multicast groups;
* an ``rtnl.Rtnl`` socket for the hot path -- routes, neighbours and FDB entries, one per peer --
  behind the batch-shaped ``dump_*``/``*_apply`` methods, which take and return plain tuples.
  pyroute2 costs ~0.5 ms per such object; the struct-packed messages there cost ~10 us, sent
  hundreds per sendmsg with every ACK checked (issue 7).

Dumps of the hot objects are filtered by the kernel (NETLINK_GET_STRICT_CHK with the filter in
the request: rtm_protocol + rtm_table for routes, NDA_IFINDEX / ndm_ifindex for neighbours and
FDB), not in Python: a host's main table may hold far more routes than meshd's.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (
    RTM_GETROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshd.dataplane.netns import NETNS_DIR, run_in_netns
from meshd.dataplane.rtnl import Rtnl
from meshd.dataplane.rtnl_wire import GONE as _GONE
from meshd.dataplane.rtnl_wire import MAIN_TABLE, Failure, FdbEntry, NeighEntry, RouteEntry
from meshd.errors import DataplaneError, MissingKernelFeature

IFF_UP = 1

__all__ = ["Event", "Failure", "FdbEntry", "LinkInfo", "NeighEntry", "Netlink", "RouteEntry",
           "error_code"]


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


# --- error translation: the one place --------------------------------------------------------


def _translate(exc: BaseException, what: str, kind: str | None = None) -> DataplaneError:
    if isinstance(exc, NetlinkError):
        code = exc.code
        text = str(exc.args[1]) if len(exc.args) > 1 else os.strerror(code or 0)
        if kind and code == errno.EOPNOTSUPP:
            return MissingKernelFeature(
                f"kernel has no {kind} support (module {kind}): {what}: {text}"
            )
        return DataplaneError(f"{what}: {text} (errno {code})")
    if isinstance(exc, FileNotFoundError):
        return DataplaneError(f"{what}: not found: {exc.filename or exc}")
    if isinstance(exc, OSError):
        return DataplaneError(f"{what}: {exc.strerror or exc}")
    return DataplaneError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _errors(what: str, kind: str | None = None) -> Iterator[None]:
    try:
        yield
    except DataplaneError:
        raise
    except (NetlinkError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise _translate(exc, what, kind) from exc


def error_code(err: BaseException) -> int | None:
    """The errno behind a translated error (kept as its ``__cause__``), if any."""
    cause = err.__cause__
    if isinstance(cause, NetlinkError):
        return int(cause.code) if cause.code is not None else None
    if isinstance(cause, OSError):
        return cause.errno
    return None


# --- the socket ----------------------------------------------------------------------------------


class Netlink:
    """rtnetlink in the current namespace (``netns=None``) or in ``/run/netns/<netns>``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: Any = None
        self._rtnl = Rtnl(netns)

    def _kwargs(self) -> dict[str, Any]:
        # flags=0: without it pyroute2 silently *creates* a mistyped namespace.
        kw: dict[str, Any] = {"strict_check": True, "ext_ack": True}
        if self.netns is not None:
            kw.update(netns=self.netns, flags=0)
        return kw

    async def open(self) -> None:
        if self.netns is not None and not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            raise DataplaneError(f"network namespace {self.netns} does not exist")
        with _errors(f"open netlink{self._where()}"):
            self._ipr = AsyncIPRoute(**self._kwargs())
            await self._ipr.setup_endpoint()
        try:
            self._rtnl.open()
        except DataplaneError:
            await self.close()
            raise

    def _where(self) -> str:
        return f" in netns {self.netns}" if self.netns else ""

    async def close(self) -> None:
        self._rtnl.close()
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            with contextlib.suppress(Exception):
                ipr.close()

    async def __aenter__(self) -> Netlink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            raise DataplaneError("netlink socket is not open")
        return self._ipr

    async def _dump(self, req: Any, msg_type: int) -> Any:
        """A dump whose filter travels in ``req`` (honoured by the kernel on a strict socket)."""
        return await self.ipr.nlm_request(req, msg_type, NLM_F_REQUEST | NLM_F_DUMP)

    # --- links ---------------------------------------------------------------------------------

    @staticmethod
    def _link_info(msg: Any) -> LinkInfo:
        params: dict[str, Any] = {}
        data = msg.get(("linkinfo", "data"))
        if data is not None:
            for name, value in data.get("attrs", []):
                if name.startswith("IFLA_") and name != "UNKNOWN":
                    params[name[5:].lower()] = value
        return LinkInfo(
            index=int(msg["index"]),
            name=str(msg.get("ifname")),
            kind=str(msg.get(("linkinfo", "kind")) or ""),
            mtu=int(msg.get("mtu") or 0),
            mac=msg.get("address"),
            up=bool(msg["flags"] & IFF_UP),
            params=params,
        )

    async def link(self, name: str | None = None, index: int | None = None) -> LinkInfo | None:
        """The device called ``name`` (or with ``index``), or None if there is none."""
        what = f"get link {name or index}"
        try:
            with _errors(what):
                if name is not None:
                    msgs = await self.ipr.link("get", ifname=name)
                else:
                    msgs = await self.ipr.link("get", index=index)
        except DataplaneError as exc:
            if error_code(exc) in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return self._link_info(msgs[0]) if msgs else None

    async def create_link(
        self, name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[Any]
    ) -> int:
        """Create a device with everything that is fixed at creation, MAC included (set later,
        systemd's MACAddressPolicy could race us). Returns its ifindex."""
        kw: dict[str, Any] = dict(params)
        if mtu is not None:
            kw["mtu"] = mtu
        if mac is not None:
            kw["address"] = mac
        with _errors(f"create {kind} device {name}", kind=kind):
            await self.ipr.link("add", ifname=name, kind=kind, **kw)
        info = await self.link(name)
        if info is None:
            raise DataplaneError(f"create {kind} device {name}: gone right after creation")
        return info.index

    async def delete_link(self, index: int) -> None:
        try:
            with _errors(f"delete link {index}"):
                await self.ipr.link("del", index=index)
        except DataplaneError as exc:
            if error_code(exc) not in _GONE:
                raise

    async def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        kw: dict[str, Any] = {}
        if mtu is not None:
            kw["mtu"] = mtu
        if mac is not None:
            kw["address"] = mac
        if up is not None:
            kw["state"] = "up" if up else "down"
        with _errors(f"set link {index} {kw}"):
            await self.ipr.link("set", index=index, **kw)

    async def default_route_oif(self) -> int | None:
        """ifindex of the main table's IPv4 default route (lowest metric), if any."""
        best: tuple[int, int] | None = None
        with _errors("dump routes for the default route"):
            req = rtmsg()
            req["family"] = socket.AF_INET
            req["table"] = MAIN_TABLE
            async for r in await self._dump(req, RTM_GETROUTE):
                if r["dst_len"] == 0 and r.get("table") == MAIN_TABLE and r.get("oif"):
                    cand = (int(r.get("priority") or 0), int(r.get("oif")))
                    best = cand if best is None or cand < best else best
        return best[1] if best else None

    # --- addresses -----------------------------------------------------------------------------

    async def addresses(self, index: int | None = None) -> list[tuple[int, str, int, bool]]:
        """IPv4 addresses as (ifindex, ip, prefixlen, secondary), optionally of one device."""
        out: list[tuple[int, str, int, bool]] = []
        with _errors("dump addresses"):
            kw: dict[str, Any] = {"family": socket.AF_INET}
            if index is not None:
                kw["index"] = index
            async for a in await self.ipr.addr("dump", **kw):
                if a["family"] != socket.AF_INET or (index is not None and a["index"] != index):
                    continue
                out.append((a["index"], a.get("address"), a["prefixlen"], bool(a["flags"] & 1)))
        return out

    async def add_address(self, index: int, cidr: str) -> None:
        ip, _, plen = cidr.partition("/")
        try:
            with _errors(f"add address {cidr} to link {index}"):
                await self.ipr.addr("add", index=index, address=ip, prefixlen=int(plen))
        except DataplaneError as exc:
            if error_code(exc) != errno.EEXIST:
                raise

    async def del_address(self, index: int, cidr: str) -> None:
        ip, _, plen = cidr.partition("/")
        try:
            with _errors(f"delete address {cidr} from link {index}"):
                await self.ipr.addr("del", index=index, address=ip, prefixlen=int(plen))
        except DataplaneError as exc:
            if error_code(exc) not in _GONE:
                raise

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
        second socket. Yields ``Event("overflow")`` when the socket lost messages (resync)."""
        with _errors(f"open netlink monitor{self._where()}"):
            mon = AsyncIPRoute(**self._kwargs())
        try:
            with _errors("bind netlink monitor"):
                await mon.bind(
                    groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH
                )
            yield Event("ready", True)  # subscribed: from here on no change goes unseen
            while True:
                try:
                    # get() yields the messages of one datagram, then returns.
                    async for msg in mon.get():
                        ev = _event(msg)
                        if ev is not None:
                            yield ev
                except NetlinkError as exc:
                    if exc.code != errno.ENOBUFS:
                        raise _translate(exc, "netlink monitor") from exc
                    yield Event("overflow", True)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise _translate(exc, "netlink monitor") from exc
                    yield Event("overflow", True)
        finally:
            with contextlib.suppress(Exception):
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

        with _errors(f"sysctl {name}"):
            if self.netns is None:
                return work()
            return await asyncio.get_running_loop().run_in_executor(
                None, run_in_netns, os.path.join(NETNS_DIR, self.netns), work
            )


def _event(msg: Any) -> Event | None:
    ev = str(msg.get("event") or "")
    new = ev.startswith("RTM_NEW")
    if ev in ("RTM_NEWLINK", "RTM_DELLINK"):
        return Event(
            "link", new, index=int(msg["index"]), name=str(msg.get("ifname") or ""),
            up=bool(msg["flags"] & IFF_UP), mtu=int(msg.get("mtu") or 0),
            lladdr=str(msg.get("address") or ""),
        )
    if ev in ("RTM_NEWADDR", "RTM_DELADDR"):
        return Event("addr", new, index=int(msg["index"]), dst=str(msg.get("address") or ""))
    if ev in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        if msg["family"] != socket.AF_INET:
            return None
        return Event(
            "route", new, index=int(msg.get("oif") or 0),
            dst=f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}", proto=int(msg["proto"]),
        )
    if ev in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
        kind = "fdb" if msg["family"] == socket.AF_BRIDGE else "neigh"
        if kind == "neigh" and msg["family"] != socket.AF_INET:
            return None
        return Event(
            kind, new, index=int(msg["ifindex"]), dst=str(msg.get("dst") or ""),
            lladdr=str(msg.get("lladdr") or ""), permanent=bool(msg["state"] & NUD_PERMANENT),
        )
    return None
