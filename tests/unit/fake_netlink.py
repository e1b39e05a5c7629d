"""An in-memory kernel implementing ``meshd.dataplane.apply.NetlinkAPI``, for unit tests of the
reconciler's logic (the real-kernel tests in tests/integration stay the authority on netlink).

It keeps what the data plane reads and writes -- devices, addresses, main-table routes with
their protocol, permanent neighbours and FDB entries per device, sysctls -- and answers the way
the kernel does where the reconciler depends on it: ``add`` of a route whose prefix exists fails
with EEXIST (whoever owns it), deleting what is gone is done, deleting a device drops its
neighbours, FDB entries and routes. ``writes`` logs every change meshd asked for, so a test can
assert that a pass wrote nothing. ``hand_*`` methods change state behind meshd's back and post
the kernel's notification, as an operator's ``ip`` command would.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from meshd.dataplane.netlink import Event, Failure, FdbEntry, LinkInfo, NeighEntry, RouteEntry
from meshd.errors import DataplaneError, MissingKernelFeature

MAIN_TABLE = 254


def _fam(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def kernel_error(what: str, code: int) -> DataplaneError:
    """A DataplaneError carrying ``code`` as netlink.py's do (``netlink.error_code`` reads it)."""
    err = DataplaneError(f"{what}: {os.strerror(code)} ({errno.errorcode[code]})")
    err.__cause__ = OSError(code, os.strerror(code))
    vars(err)["errno"] = code  # the attribute form, where DataplaneError has one
    return err


@dataclass
class Link:
    index: int
    name: str
    kind: str
    mtu: int
    mac: str | None
    up: bool
    params: dict[str, Any] = field(default_factory=dict)

    def info(self) -> LinkInfo:
        return LinkInfo(
            self.index, self.name, self.kind, self.mtu, self.mac, self.up, dict(self.params)
        )


@dataclass
class Route:
    entry: RouteEntry
    proto: int
    table: int = MAIN_TABLE


class FakeNetlink:
    """One network namespace's worth of kernel state (see the module docstring)."""

    def __init__(
        self,
        underlay: tuple[str, str, int, int] = ("eth0", "10.99.0.1", 24, 1500),
        missing_kinds: Sequence[str] = (),
    ) -> None:
        name, ip, plen, mtu = underlay
        self.links: dict[int, Link] = {2: Link(2, name, "", mtu, "52:54:00:00:00:01", True)}
        self.addrs: dict[int, list[tuple[str, int]]] = {2: [(ip, plen)]}
        self.routes: dict[str, Route] = {}
        self.neighs: dict[int, dict[str, str]] = {}
        self.fdb: dict[int, set[tuple[str, str]]] = {}
        self.sysctls = {"net.ipv4.ip_forward": "0"}
        self.missing_kinds = set(missing_kinds)
        self.writes: list[str] = []
        self.refuse_routes: set[str] = set()  # route adds the "kernel" refuses (EPERM)
        self.opened = False
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._next_index = 10

    # --- helpers for tests -----------------------------------------------------------------------

    def index_of(self, name: str) -> int | None:
        return next((i for i, ln in self.links.items() if ln.name == name), None)

    def our_routes(self, proto: int) -> dict[str, RouteEntry]:
        return {d: r.entry for d, r in self.routes.items() if r.proto == proto}

    def post(self, ev: Event) -> None:
        self._events.put_nowait(ev)

    def hand_delete_route(self, dst: str) -> None:
        r = self.routes.pop(dst)
        self.post(Event("route", False, index=r.entry.oif, dst=dst, proto=r.proto, table=r.table))

    def hand_add_route(self, dst: str, gateway: str, oif: int, proto: int) -> None:
        self.routes[dst] = Route(RouteEntry(dst, gateway, oif, False), proto)
        self.post(Event("route", True, index=oif, dst=dst, proto=proto, table=MAIN_TABLE))

    def hand_set_mtu(self, name: str, mtu: int) -> None:
        ln = self.links[self.index_of(name) or -1]
        ln.mtu = mtu
        self.post(
            Event(
                "link", True, index=ln.index, name=ln.name, up=ln.up, mtu=mtu, lladdr=ln.mac or ""
            )
        )

    # --- NetlinkAPI ------------------------------------------------------------------------------

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    async def link(self, name: str | None = None, index: int | None = None) -> LinkInfo | None:
        i = index if index is not None else self.index_of(name or "")
        ln = self.links.get(i) if i is not None else None
        return ln.info() if ln is not None else None

    async def create_link(
        self, name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[Any]
    ) -> int:
        what = f"create {kind} device {name}"
        if kind in self.missing_kinds:
            raise MissingKernelFeature(
                f"kernel has no {kind} support (module {kind}): {what}: Unknown device type"
            )
        if self.index_of(name) is not None:
            raise kernel_error(what, errno.EEXIST)
        self.writes.append(what)
        i = self._next_index
        self._next_index += 1
        self.links[i] = Link(i, name, kind, mtu or 1500, mac, False, dict(params))
        self.addrs[i] = []
        return i

    async def delete_link(self, index: int) -> None:
        self.writes.append(f"delete link {index}")
        self.links.pop(index, None)
        self.addrs.pop(index, None)
        self.neighs.pop(index, None)
        self.fdb.pop(index, None)
        self.routes = {d: r for d, r in self.routes.items() if r.entry.oif != index}

    async def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        ln = self.links.get(index)
        if ln is None:
            raise kernel_error(f"set link {index}", errno.ENODEV)
        self.writes.append(f"set link {index} mtu={mtu} mac={mac} up={up}")
        self.links[index] = replace(
            ln,
            mtu=ln.mtu if mtu is None else mtu,
            mac=ln.mac if mac is None else mac,
            up=ln.up if up is None else up,
        )

    async def addresses(
        self, index: int | None = None, family: int = socket.AF_INET
    ) -> list[tuple[int, str, int, bool]]:
        return [
            (i, ip, plen, n > 0)
            for i, addrs in self.addrs.items()
            if index is None or i == index
            for n, (ip, plen) in enumerate(addrs)
            if not family or _fam(ip) == family
        ]

    async def add_address(self, index: int, cidr: str) -> None:
        ip, plen = cidr.split("/")
        if (ip, int(plen)) not in self.addrs.setdefault(index, []):
            self.writes.append(f"add address {cidr} to link {index}")
            self.addrs[index].append((ip, int(plen)))

    async def del_address(self, index: int, cidr: str) -> None:
        ip, plen = cidr.split("/")
        if (ip, int(plen)) in self.addrs.get(index, []):
            self.writes.append(f"delete address {cidr} from link {index}")
            self.addrs[index].remove((ip, int(plen)))

    async def dump_routes(
        self, proto: int, table: int = MAIN_TABLE, family: int = socket.AF_INET
    ) -> list[RouteEntry]:
        return [
            r.entry
            for d, r in self.routes.items()
            if r.proto == proto and r.table == table and _fam(d) == family
        ]

    async def dump_route_owners(
        self, table: int = MAIN_TABLE, family: int = socket.AF_INET
    ) -> list[tuple[str, int]]:
        return [
            (d, r.proto) for d, r in self.routes.items() if r.table == table and _fam(d) == family
        ]

    async def routes_apply(
        self, op: str, entries: Sequence[RouteEntry], proto: int, table: int = MAIN_TABLE
    ) -> list[Failure]:
        fails: list[Failure] = []
        for e in entries:
            what = f"route {op} {e.dst} via {e.gateway}"
            have = self.routes.get(e.dst)
            if op in ("add", "replace") and e.dst in self.refuse_routes:
                fails.append(Failure(what, kernel_error(what, errno.EPERM)))
                continue
            if op == "add" and have is not None:
                fails.append(Failure(what, kernel_error(what, errno.EEXIST)))
                continue
            if op in ("add", "replace"):
                if e.oif not in self.links:
                    fails.append(Failure(what, kernel_error(what, errno.ENODEV)))
                    continue
                self.routes[e.dst] = Route(e, proto, table)
            elif have is not None and have.proto == proto:  # del: only ours; gone is done
                del self.routes[e.dst]
            self.writes.append(what)
        return fails

    async def dump_neighs(self, ifindex: int, family: int = socket.AF_INET) -> list[NeighEntry]:
        return [
            NeighEntry(d, m) for d, m in self.neighs.get(ifindex, {}).items() if _fam(d) == family
        ]

    async def neighs_apply(
        self, op: str, ifindex: int, entries: Sequence[NeighEntry]
    ) -> list[Failure]:
        table = self.neighs.setdefault(ifindex, {})
        for e in entries:
            self.writes.append(f"neigh {op} {e.dst} lladdr {e.lladdr}")
            if op == "replace":
                table[e.dst] = e.lladdr
            else:
                table.pop(e.dst, None)
        return []

    async def dump_fdb(self, ifindex: int) -> list[FdbEntry]:
        return [FdbEntry(m, d) for m, d in sorted(self.fdb.get(ifindex, set()))]

    async def fdb_apply(self, op: str, ifindex: int, entries: Sequence[FdbEntry]) -> list[Failure]:
        table = self.fdb.setdefault(ifindex, set())
        for e in entries:
            self.writes.append(f"fdb {op} {e.lladdr} dst {e.dst}")
            if op == "replace":  # one dst per MAC, like `bridge fdb replace`
                table -= {x for x in table if x[0] == e.lladdr}
                table.add((e.lladdr, e.dst))
            else:
                table.discard((e.lladdr, e.dst))
        return []

    async def events(self) -> AsyncIterator[Event]:
        yield Event("ready", True)
        while True:
            yield await self._events.get()

    async def sysctl(self, name: str, value: str | None = None) -> str:
        old = self.sysctls.get(name, "0")
        if value is not None and value != old:
            self.writes.append(f"sysctl {name}={value}")
            self.sysctls[name] = value
        return old
