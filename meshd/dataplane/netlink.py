"""The only netlink module the rest of meshd calls, and the one place netlink errors become a
``DataplaneError`` (one line, the kernel's errno as ``err.errno``; ``rtnl_wire.request_error``
words every one of them, pyroute2's included).

``Netlink`` works in the current network namespace or in a named one (so tests and the lab can
drive a namespace from the same process), on two request sockets:

* pyroute2's ``AsyncIPRoute`` for devices and addresses of both families (create, set, read
  back): a pass touches one or two devices, these are the most attribute-heavy messages
  (vxlan's linkinfo) and where kernel quirks live, so a maintained codec is worth its memory
  (+2.7 MiB of RSS on top of the daemon's other imports, imported the lean way: ``_pyroute2``);
* ``rtnl.Rtnl`` for the hot path -- routes, neighbours and FDB entries, one per peer -- behind
  the batch-shaped ``dump_*``/``*_apply`` methods, which take and return plain tuples. pyroute2
  costs ~0.5 ms per such object (~35x ``ip -batch``); the struct-packed messages of
  ``rtnl_wire`` cost ~10 us, sent hundreds per sendmsg with every ACK checked. Their dumps are
  filtered by the kernel (NETLINK_GET_STRICT_CHK with the filter in the request), not in Python:
  a host's main table may hold far more routes than meshd's. The default route is read there too.

``events()`` reads a third socket (``rtnl.Monitor``) bound to the multicast groups. Its flood is
routes, neighbours and FDB entries (thousands when a peer set changes), decoded by ``rtnl_wire``;
pyroute2 parses them ~12x slower (2.6 s for the 35,000 notifications of 5,000 vxlan peers added
and removed; docs/dataplane.md, "The monitor"). Its few link and address messages go through
pyroute2's parser, the same decode path as ``link()`` and ``addresses()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import socket
import sys
import types
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshd.dataplane.netns import netns_path, run_in_netns
from meshd.dataplane.rtnl import NETLINK_ROUTE, Monitor, Rtnl, open_socket
from meshd.dataplane.rtnl_wire import (
    AF_BRIDGE,
    AF_INET,
    AF_INET6,
    GONE,
    MAIN_TABLE,
    NUD_PERMANENT,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    Failure,
    FdbEntry,
    NeighEntry,
    RouteEntry,
    decode_neigh,
    decode_route,
    messages,
    ntop,
    os_error,
    pack_cidr,
    request_error,
    route_dump_request,
)
from meshd.errors import DataplaneError, MissingKernelFeature

__all__ = [
    "Event",
    "Failure",
    "FdbEntry",
    "LinkInfo",
    "NeighEntry",
    "Netlink",
    "RouteEntry",
    "error_code",
]

MONITOR_GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_NEIGH
)
IFF_UP = 0x1
# ip6tnl flags: the kernel reports its own IP6_TNL_F_CAP_* bits (0x10000 xmit, 0x20000 rcv,
# 0x40000 per packet; include/net/ip6_tunnel.h) beside the ones set (linux/ip6_tunnel.h, all
# below 0x10000): only those are configuration, compared with what a backend asked for.
IP6TNL_USER_FLAGS = 0xFFFF
MODULES = {"ip6tnl": "ip6_tunnel"}  # device kinds whose kernel module is named otherwise
IFA_F_SECONDARY = 0x01  # IPv6: IFA_F_TEMPORARY (a privacy address), the same bit
IFA_F_NODAD = 0x02
SKIP_STATS = 1 << 3  # RTEXT_FILTER_SKIP_STATS: a link's counters, which meshd never reads


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
    table: int = 0  # routes: the routing table (254 = main)
    permanent: bool = False
    up: bool = False
    mtu: int = 0


# --- pyroute2, imported the lean way ------------------------------------------------------------


class _Pyroute2(types.SimpleNamespace):
    AsyncIPRoute: Any
    NetlinkError: type[Exception]
    ifinfmsg: Any
    ifaddrmsg: Any


_PR2: _Pyroute2 | None = None


def _pyroute2() -> _Pyroute2:
    """The pieces of pyroute2 meshd uses. ``pyroute2/__init__.py`` imports every module of the
    library (NDB, IPDB, nftables, wireless, ...): +8.5 MiB of RSS on top of meshd.daemon, where
    these pieces take +2.7.
    So unless something already imported the package, it is registered without running its
    ``__init__``, and only ``pyroute2.iproute.linux`` is imported; a later ``import pyroute2``
    that asks for a name the package would have defined gets the full package then."""
    global _PR2
    if _PR2 is None:
        if "pyroute2" not in sys.modules:
            _register_lean_package()
        from pyroute2.iproute.linux import AsyncIPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        _PR2 = _Pyroute2(
            AsyncIPRoute=AsyncIPRoute,
            NetlinkError=NetlinkError,
            ifinfmsg=ifinfmsg,
            ifaddrmsg=ifaddrmsg,
        )
    return _PR2


def _register_lean_package() -> None:
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        raise DataplaneError("pyroute2 is not installed (python3 -m pip install pyroute2)")
    pkg = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        # A submodule (``from pyroute2 import config`` inside the library) is imported alone;
        # any other name (``__version__`` too) needs the package's own __init__, run once, in
        # this module object.
        with contextlib.suppress(ModuleNotFoundError):
            return importlib.import_module(f"pyroute2.{name}")
        del pkg.__getattr__
        loader.exec_module(pkg)
        return getattr(pkg, name)

    pkg.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["pyroute2"] = pkg


# --- errors: the one place ----------------------------------------------------------------------


def error_code(err: BaseException) -> int | None:
    """The kernel's errno behind a DataplaneError (``err.errno``), if any."""
    return err.errno if isinstance(err, DataplaneError) else None


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """pyroute2's and the OS's exceptions inside the block, as one-line DataplaneErrors."""
    try:
        yield
    except DataplaneError:
        raise
    except OSError as exc:
        raise os_error(what, exc) from exc
    except Exception as exc:
        netlink_error = _pyroute2().NetlinkError
        code = getattr(exc, "code", None)
        if isinstance(exc, netlink_error) and isinstance(code, int) and code > 0:
            detail = str(exc.args[1]) if len(exc.args) > 1 else ""
            raise request_error(what, code, detail) from exc
        if isinstance(exc, (ValueError, KeyError, TypeError, RuntimeError, netlink_error)):
            raise DataplaneError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise


def _done_if(codes: tuple[int, ...], exc: DataplaneError) -> None:
    """Re-raise ``exc`` unless its errno is one of ``codes`` (it then counts as done)."""
    if exc.errno not in codes:
        raise exc


# --- the sockets ---------------------------------------------------------------------------------


class Netlink:
    """rtnetlink in the current namespace (``netns=None``) or in ``/run/netns/<netns>``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: Any = None
        self._rtnl = Rtnl(netns)

    def _where(self) -> str:
        return f" in netns {self.netns}" if self.netns else ""

    async def open(self) -> None:
        if self.netns is not None and not os.path.exists(netns_path(self.netns)):
            raise DataplaneError(f"network namespace {self.netns} does not exist")
        self._rtnl.open()
        try:
            if self._ipr is None:
                self._ipr = await self._open_iproute()
        except BaseException:
            await self.close()
            raise

    async def _open_iproute(self) -> Any:
        kw: dict[str, Any] = {"strict_check": True, "ext_ack": True}
        if self.netns is not None:
            # The socket comes from a thread that joined the namespace, as rtnl's do: pyroute2's
            # own netns= forks a helper process (and creates a mistyped namespace unless
            # flags=0). pyroute2 owns it from here, and closes it.
            kw["fileno"] = open_socket(self.netns, _iproute_socket).detach()
        try:
            with _errors(f"open netlink socket{self._where()}"):
                ipr = _pyroute2().AsyncIPRoute(**kw)
        except BaseException:
            if "fileno" in kw:
                os.close(kw["fileno"])
            raise
        try:
            with _errors(f"open netlink socket{self._where()}"):
                await ipr.setup_endpoint()
        except BaseException:
            with contextlib.suppress(Exception):
                ipr.close()
            raise
        return ipr

    async def close(self) -> None:
        self._rtnl.close()
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()

    async def __aenter__(self) -> Netlink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _ip(self) -> Any:
        if self._ipr is None:
            raise DataplaneError("netlink socket is not open")
        return self._ipr

    # --- links (pyroute2) ----------------------------------------------------------------------

    async def link(self, name: str | None = None, index: int | None = None) -> LinkInfo | None:
        """The device called ``name`` (or with ``index``), or None if there is none."""
        if name is None and not index:
            raise DataplaneError("get link: neither a name nor an index")
        try:
            with _errors(f"get link {name or index}"):
                if name is not None:
                    msgs = await self._ip.link("get", ifname=name, ext_mask=SKIP_STATS)
                else:
                    msgs = await self._ip.link("get", index=index, ext_mask=SKIP_STATS)
        except DataplaneError as exc:
            _done_if((errno.ENODEV, errno.ENOENT), exc)
            return None
        return _link_info(msgs[0]) if msgs else None

    async def links(self) -> list[LinkInfo]:
        """Every device in the namespace."""
        out: list[LinkInfo] = []
        with _errors("dump links"):
            async for m in await self._ip.link("dump", ext_mask=SKIP_STATS):
                out.append(_link_info(m))
        return out

    async def create_link(
        self, name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[Any]
    ) -> int:
        """Create a device with everything that is fixed at creation, MAC included (set later,
        systemd's MACAddressPolicy could race us). Returns its ifindex. A kernel without the
        kind (EOPNOTSUPP, "Unknown device type") raises MissingKernelFeature."""
        what = f"create {kind} device {name}"
        kw: dict[str, Any] = dict(params)
        if mtu is not None:
            kw["mtu"] = mtu
        if mac is not None:
            kw["address"] = mac
        try:
            with _errors(what):
                await self._ip.link("add", ifname=name, kind=kind, **kw)
        except DataplaneError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise MissingKernelFeature(
                    f"kernel has no {kind} support (module {MODULES.get(kind, kind)}): {exc}",
                    exc.errno,
                ) from exc.__cause__
            if exc.errno == errno.EEXIST and kind == "ip6tnl" and kw.get("ip6tnl_collect_metadata"):
                # The kernel keeps one external ip6tnl per namespace (ip6n->collect_md_tun).
                raise DataplaneError(
                    f"{exc}: another external ip6tnl device may exist in this network namespace "
                    "(the kernel allows one)",
                    exc.errno,
                ) from exc.__cause__
            raise
        info = await self.link(name)
        if info is None:
            raise DataplaneError(f"{what}: gone right after creation")
        return info.index

    async def delete_link(self, index: int) -> None:
        """Delete a device; one already gone counts as done."""
        try:
            with _errors(f"delete link {index}"):
                await self._ip.link("del", index=index)
        except DataplaneError as exc:
            _done_if(GONE, exc)

    async def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        """Set MTU, MAC and up/down in one message (the kernel sets the MAC before the flags:
        ``mac=..., up=True`` brings the device up with the new MAC)."""
        kw: dict[str, Any] = {}
        what = [f"set link {index}"]
        if mtu is not None:
            kw["mtu"] = mtu
            what.append(f"mtu {mtu}")
        if mac is not None:
            kw["address"] = mac
            what.append(f"address {mac}")
        if up is not None:
            kw["state"] = "up" if up else "down"
            what.append(kw["state"])
        with _errors(" ".join(what)):
            await self._ip.link("set", index=index, **kw)

    async def default_route_oif(self, family: int = AF_INET) -> int | None:
        """ifindex of the main table's default route of ``family`` (lowest metric), if any."""
        req = route_dump_request(0, MAIN_TABLE, family)._replace(
            what="dump routes for the default route"
        )
        best: tuple[int, int] | None = None
        for r in await self._rtnl.dump(req, decode_route, RTM_NEWROUTE):
            if r.family == family and r.dst.endswith("/0") and r.table == MAIN_TABLE and r.oif:
                cand = (r.priority, r.oif)
                best = cand if best is None or cand < best else best
        return best[1] if best else None

    # --- addresses (pyroute2) ------------------------------------------------------------------

    async def addresses(
        self, index: int | None = None, family: int = AF_INET
    ) -> list[tuple[int, str, int, bool]]:
        """Addresses of ``family`` (AF_INET, AF_INET6, or 0 for both) as (ifindex, ip,
        prefixlen, secondary), optionally of one device. IPv6 link-local addresses (fe80::/10,
        which the kernel gives every device) are left out: meshd never uses them, never removes
        them. An IPv6 "secondary" is a temporary (privacy) address."""
        kw: dict[str, Any] = {"family": family} if family else {}
        if index is not None:
            kw["index"] = index
        out: list[tuple[int, str, int, bool]] = []
        families = (family,) if family else (AF_INET, AF_INET6)
        with _errors("dump addresses" + (f" of link {index}" if index is not None else "")):
            async for a in await self._ip.addr("dump", **kw):
                if a["family"] in families and (index is None or a["index"] == index):
                    entry = _addr(a)
                    if not entry[1].lower().startswith(("fe8", "fe9", "fea", "feb")):
                        out.append(entry)
        return out

    async def add_address(self, index: int, cidr: str) -> None:
        """Add an address (IPv4, or IPv6 without duplicate address detection: the mesh device's
        /128 is this node's alone); one already there counts as done."""
        await self._address(
            "add", index, cidr, f"add address {cidr} to link {index}", (errno.EEXIST,)
        )

    async def del_address(self, index: int, cidr: str) -> None:
        """Delete an address; one already gone (or its device) counts as done."""
        await self._address("del", index, cidr, f"delete address {cidr} from link {index}", GONE)

    async def _address(
        self, op: str, index: int, cidr: str, what: str, ok: tuple[int, ...]
    ) -> None:
        try:
            ip, plen = pack_cidr(cidr)
        except ValueError as exc:
            raise DataplaneError(f"{what}: {exc}") from None
        kw: dict[str, Any] = {"family": AF_INET6 if len(ip) == 16 else AF_INET}
        if len(ip) == 16 and op == "add":
            kw["flags"] = IFA_F_NODAD
        try:
            with _errors(what):
                await self._ip.addr(op, index=index, address=ntop(ip), prefixlen=plen, **kw)
        except DataplaneError as exc:
            _done_if(ok, exc)

    # --- hot path: routes, neighbours, FDB (rtnl.py: struct-packed, batched, kernel-filtered) -

    async def dump_routes(
        self, proto: int, table: int = MAIN_TABLE, family: int = AF_INET
    ) -> list[RouteEntry]:
        """Routes of ``family`` with ``proto`` in ``table``."""
        return await self._rtnl.dump_routes(proto, table, family)

    async def dump_route_owners(
        self, table: int = MAIN_TABLE, family: int = AF_INET
    ) -> list[tuple[str, int]]:
        """(destination, protocol) of every route of ``family`` in ``table``, anyone's."""
        return await self._rtnl.dump_route_owners(table, family)

    async def routes_apply(
        self, op: str, entries: Sequence[RouteEntry], proto: int, table: int = MAIN_TABLE
    ) -> list[Failure]:
        """``op``: add (fails with EEXIST on any existing route: never overwrite another owner's),
        replace, or del (only a route with ``proto``; already gone counts as done)."""
        return await self._rtnl.routes_apply(op, entries, proto, table)

    async def dump_neighs(self, ifindex: int, family: int = AF_INET) -> list[NeighEntry]:
        """Permanent neighbours of ``family`` on one device (others are the kernel's cache)."""
        return await self._rtnl.dump_neighs(ifindex, family)

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
        """Kernel notifications for links, addresses and routes (both families) and
        neighbours/FDB, on a separate socket. Yields ``Event("ready")`` once subscribed, and
        ``Event("overflow")`` when the socket lost messages (the caller resyncs)."""
        mon = Monitor(self.netns, MONITOR_GROUPS)
        mon.open()
        try:
            yield Event("ready", True)  # subscribed: from here on no change goes unseen
            while True:
                try:
                    data = await mon.read()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise os_error("netlink monitor", exc) from exc
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
                None, run_in_netns, netns_path(self.netns), work
            )
        except FileNotFoundError as exc:
            raise DataplaneError(
                f"sysctl {name}: not found: {exc.filename or exc}", exc.errno
            ) from exc
        except OSError as exc:
            raise os_error(f"sysctl {name}", exc) from exc


def _iproute_socket() -> socket.socket:
    # SOCK_DGRAM (netlink treats it as SOCK_RAW): asyncio's datagram endpoint wants that type.
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


# --- decoding: pyroute2's messages (devices, addresses), rtnl_wire's (the rest) ------------------


def _link_info(msg: Any) -> LinkInfo:
    # get_attr with the attribute's own name: pyroute2's get("ifname") resolves the name and
    # walks the message again on every call (~4x slower for the half dozen read here).
    params: dict[str, Any] = {}
    kind = ""
    info = msg.get_attr("IFLA_LINKINFO")
    if info is not None:
        kind = str(info.get_attr("IFLA_INFO_KIND") or "")
        data = info.get_attr("IFLA_INFO_DATA")
        if data is not None and not isinstance(data, (bytes, str)):
            for name, value in data["attrs"]:
                if name == "IFLA_IP6TNL_FLAGS":
                    value &= IP6TNL_USER_FLAGS
                if name.startswith("IFLA_") and name != "UNKNOWN":
                    params[name[5:].lower()] = value
    return LinkInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME") or ""),
        kind=kind,
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=_mac(msg),
        up=bool(msg["flags"] & IFF_UP),
        params=params,
    )


def _mac(msg: Any) -> str | None:
    """IFLA_ADDRESS as colon-separated hex. pyroute2 reads it as 6 bytes whatever its length;
    a tunnel's is 4 (an IPv4 address), the rest belongs to the next attribute."""
    mac = msg.get_attr("IFLA_ADDRESS")
    if mac is None:
        return None
    size = int(msg.nla("IFLA_ADDRESS").length) - 4
    return str(mac) if size >= 6 else ":".join(str(mac).split(":")[:size])


def _addr(msg: Any) -> tuple[int, str, int, bool]:
    ip = msg.get("address") or msg.get("local") or ""
    return int(msg["index"]), str(ip), int(msg["prefixlen"]), bool(msg["flags"] & IFA_F_SECONDARY)


def _parse(cls: Any, buf: bytes, off: int) -> Any:
    """One pyroute2 message whose body starts at ``off`` (its header 16 bytes before)."""
    msg = cls(buf, offset=off - 16)
    msg.decode()
    return msg


def _event(kind: int, buf: bytes, off: int, end: int) -> Event | None:
    """The Event for one notification whose body spans ``off``..``end``, if meshd reads it."""
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        r = decode_route(buf, off, end)
        if r.family not in (AF_INET, AF_INET6):
            return None
        return Event(
            "route", kind == RTM_NEWROUTE, index=r.oif, dst=r.dst, proto=r.proto, table=r.table
        )
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
        n = decode_neigh(buf, off, end)
        if n.family not in (AF_INET, AF_INET6, AF_BRIDGE):
            return None
        return Event(
            "fdb" if n.family == AF_BRIDGE else "neigh",
            kind == RTM_NEWNEIGH,
            index=n.ifindex,
            dst=n.dst,
            lladdr=n.lladdr,
            permanent=bool(n.state & NUD_PERMANENT),
        )
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        ln = _link_info(_parse(_pyroute2().ifinfmsg, buf, off))
        return Event(
            "link",
            kind == RTM_NEWLINK,
            index=ln.index,
            name=ln.name,
            up=ln.up,
            mtu=ln.mtu,
            lladdr=ln.mac or "",
        )
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        index, ip, _, _ = _addr(_parse(_pyroute2().ifaddrmsg, buf, off))
        return Event("addr", kind == RTM_NEWADDR, index=index, dst=ip)
    return None
