"""Executing a ``model.Plan`` against the kernel: the one place the data plane writes.

Backend-agnostic: device steps first, then every step kind in ``plan.steps``, which is the order
the backend declared (``backends.base.Backend.steps``: removals first, then additions). Nothing
here decides anything; a failure is reported (one line each, one line per missing device rather
than per peer) and the reconciler's next pass re-reads the kernel and retries.

``NetlinkAPI`` is what the data plane calls on ``netlink.Netlink``: the reconciler takes any
object with these methods, so its unit tests drive an in-memory kernel (tests/unit/fake_netlink.py).
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from meshd.dataplane.model import DeviceOp, DeviceSpec, Plan, Route, WgPeer
from meshd.dataplane.netlink import (
    Event,
    Failure,
    FdbEntry,
    LinkInfo,
    NeighEntry,
    RouteEntry,
    error_code,
)
from meshd.errors import DataplaneError, MissingKernelFeature

log = logging.getLogger("meshd.dataplane")


class NetlinkAPI(Protocol):
    """The calls the reconciler and ``apply`` make (``netlink.Netlink`` implements them)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def link(self, name: str | None = None, index: int | None = None) -> LinkInfo | None: ...
    async def create_link(
        self, name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[Any]
    ) -> int: ...
    async def delete_link(self, index: int) -> None: ...
    async def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None: ...
    async def addresses(
        self, index: int | None = None, family: int = ...
    ) -> list[tuple[int, str, int, bool]]: ...
    async def add_address(self, index: int, cidr: str) -> None: ...
    async def del_address(self, index: int, cidr: str) -> None: ...
    async def dump_routes(
        self, proto: int, table: int = ..., family: int = ...
    ) -> list[RouteEntry]: ...
    async def dump_route_owners(
        self, table: int = ..., family: int = ...
    ) -> list[tuple[str, int]]: ...
    async def routes_apply(
        self, op: str, entries: Sequence[RouteEntry], proto: int, table: int = ...
    ) -> list[Failure]: ...
    async def dump_neighs(self, ifindex: int, family: int = ...) -> list[NeighEntry]: ...
    async def neighs_apply(
        self, op: str, ifindex: int, entries: Sequence[NeighEntry]
    ) -> list[Failure]: ...
    async def dump_fdb(self, ifindex: int) -> list[FdbEntry]: ...
    async def fdb_apply(
        self, op: str, ifindex: int, entries: Sequence[FdbEntry]
    ) -> list[Failure]: ...
    def events(self) -> AsyncIterator[Event]: ...
    async def sysctl(self, name: str, value: str | None = None) -> str: ...


WG_STEPS = ("wgpeer_set", "wgpeer_del")
"""Plan steps run through the ``WireGuardAPI`` rather than netlink."""


class WireGuardAPI(Protocol):
    """What ``apply`` calls for a wireguard device (``wgdevice.WireGuardDevices`` has it)."""

    async def create(self, nl: Any, spec: DeviceSpec) -> None: ...
    async def configure(self, name: str, listen_port: int) -> None: ...
    async def set_peers(self, name: str, peers: Sequence[WgPeer]) -> None: ...
    async def remove_peers(self, name: str, peers: Sequence[WgPeer]) -> None: ...


if TYPE_CHECKING:
    from meshd.dataplane.netlink import Netlink
    from meshd.dataplane.wgdevice import WireGuardDevices

    def _wgdevices_implement_the_protocol(w: WireGuardDevices) -> WireGuardAPI:
        return w

    def _netlink_implements_the_protocol(nl: Netlink) -> NetlinkAPI:
        return nl  # mypy fails here when Netlink and NetlinkAPI drift apart


@dataclass
class ApplyResult:
    applied: Counter[str] = field(default_factory=Counter)  # plan kind -> objects changed
    failures: list[str] = field(default_factory=list)  # one line each
    fatal: MissingKernelFeature | None = None  # retrying cannot help
    failed_devices: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.failures and self.fatal is None


async def apply(
    nl: NetlinkAPI,
    plan: Plan,
    links: dict[str, int],
    proto: int,
    wg: WireGuardAPI | None = None,
) -> ApplyResult:
    """Execute ``plan``. ``links`` maps device names to ifindexes and is updated for devices
    created or deleted here. Routes are written with protocol ``proto``. ``wg`` creates and
    configures a wireguard device (the wireguard backend's plans need it)."""
    res = ApplyResult()
    await _devices(nl, plan, links, res, wg)
    if res.fatal is None:
        for step in plan.steps:
            if step in WG_STEPS:
                await _wgpeers(wg, step, plan, links, res)
            else:
                await _STEPS[step](nl, plan, links, proto, res)
    return res


# --- devices -------------------------------------------------------------------------------------


async def _devices(
    nl: NetlinkAPI,
    plan: Plan,
    links: dict[str, int],
    res: ApplyResult,
    wg: WireGuardAPI | None = None,
) -> None:
    specs = {d.name: d for d in plan.devices}
    for op in plan.device_ops:
        if op.device in res.failed_devices:
            continue  # the earlier step failed; later ones would only add noise
        try:
            await _device_op(nl, op, specs[op.device], links, wg)
            res.applied["device_ops"] += 1
            log.info(
                "device: %s",
                op,
                extra={
                    "event": "device_changed",
                    "device": op.device,
                    "action": op.action,
                    "arg": op.arg or None,
                },
            )
        except MissingKernelFeature as exc:
            res.fatal = exc
            res.failures.append(str(exc))
            res.failed_devices.add(op.device)
        except DataplaneError as exc:
            res.failures.append(str(exc))
            res.failed_devices.add(op.device)


async def _device_op(
    nl: NetlinkAPI,
    op: DeviceOp,
    spec: DeviceSpec,
    links: dict[str, int],
    wg: WireGuardAPI | None = None,
) -> None:
    if op.action == "create" and spec.kind == "wireguard":
        await _need(wg, op).create(nl, spec)
        info = await nl.link(spec.name)
        if info is None:
            raise DataplaneError(f"{op}: gone right after creation")
        links[spec.name] = info.index
        if spec.mtu is not None and info.mtu != spec.mtu:
            await nl.set_link(info.index, mtu=spec.mtu)  # wireguard-go starts at 1420
        return
    if op.action == "create":
        links[spec.name] = await nl.create_link(
            spec.name, spec.kind, spec.mtu, spec.mac, spec.params
        )
        return
    if op.action == "set-params":
        await _need(wg, op).configure(spec.name, int(dict(spec.params)["listen_port"]))
        return
    index = links.get(spec.name)
    if index is None:
        raise DataplaneError(f"{op}: device {spec.name} does not exist")
    if op.action == "delete":
        await nl.delete_link(index)
        del links[spec.name]
    elif op.action == "set-mtu":
        await nl.set_link(index, mtu=int(op.arg))
    elif op.action == "set-mac":
        # Some drivers refuse a MAC change while up; go down only for this rare step.
        try:
            await nl.set_link(index, mac=op.arg)
        except DataplaneError:
            await nl.set_link(index, up=False)
            await nl.set_link(index, mac=op.arg, up=True)
    elif op.action == "set-up":
        await nl.set_link(index, up=True)
    elif op.action == "addr-add":
        await nl.add_address(index, op.arg)
    elif op.action == "addr-del":
        await nl.del_address(index, op.arg)
    else:  # pragma: no cover - model emits only the actions above
        raise DataplaneError(f"unknown device step {op}")


def _need(wg: WireGuardAPI | None, op: DeviceOp) -> WireGuardAPI:
    if wg is None:
        raise DataplaneError(f"{op}: no WireGuard driver (this node has no WireGuard key)")
    return wg


# --- per-peer entries ----------------------------------------------------------------------------


async def _routes(
    nl: NetlinkAPI,
    op: str,
    routes: Sequence[Route],
    links: dict[str, int],
    proto: int,
    res: ApplyResult,
) -> None:
    if not routes:
        return
    entries: list[RouteEntry] = []
    missing: Counter[str] = Counter()
    for r in routes:
        oif = links.get(r.dev)
        if op != "del" and (oif is None or r.dev in res.failed_devices):
            missing[r.dev] += 1
            continue
        entries.append(RouteEntry(r.dst, r.gateway, oif or 0, r.onlink, r.encap6))
    for dev, n in missing.items():  # one line per device, not one per peer
        res.failures.append(f"route {op}: device {dev} is missing; {n} route(s) not programmed")
    if entries:
        _record(f"route_{op}", len(entries), await nl.routes_apply(op, entries, proto), res)


def _mesh_index(
    kind: str, n: int, plan: Plan, links: dict[str, int], res: ApplyResult, adding: bool
) -> int | None:
    """The mesh device's ifindex for neighbour/FDB steps; a missing device is one line when
    there was something to add (removals from a missing device have nothing left to remove)."""
    dev = plan.device
    index = links.get(dev) if dev is not None else None
    if index is None or dev in res.failed_devices:
        if adding:
            res.failures.append(f"{kind}: device {dev} is missing; {n} entries not programmed")
        return None
    return index


async def _neighs(
    nl: NetlinkAPI, op: str, plan: Plan, links: dict[str, int], res: ApplyResult
) -> None:
    items = plan.neigh_set if op == "replace" else plan.neigh_del
    if not items:
        return
    index = _mesh_index("neighbour", len(items), plan, links, res, op == "replace")
    if index is not None:
        entries = [NeighEntry(n.dst, n.lladdr) for n in items]
        kind = "neigh_set" if op == "replace" else "neigh_del"
        _record(kind, len(entries), await nl.neighs_apply(op, index, entries), res)


async def _fdb(
    nl: NetlinkAPI, op: str, plan: Plan, links: dict[str, int], res: ApplyResult
) -> None:
    items = plan.fdb_set if op == "replace" else plan.fdb_del
    if not items:
        return
    index = _mesh_index("fdb", len(items), plan, links, res, op == "replace")
    if index is not None:
        entries = [FdbEntry(f.lladdr, f.dst) for f in items]
        kind = "fdb_set" if op == "replace" else "fdb_del"
        _record(kind, len(entries), await nl.fdb_apply(op, index, entries), res)


async def _wgpeers(
    wg: WireGuardAPI | None, step: str, plan: Plan, links: dict[str, int], res: ApplyResult
) -> None:
    items = plan.wgpeer_set if step == "wgpeer_set" else plan.wgpeer_del
    if not items:
        return
    adding = step == "wgpeer_set"
    if _mesh_index("wireguard peer", len(items), plan, links, res, adding) is None:
        return
    assert plan.device is not None  # _mesh_index found it
    try:
        if wg is None:
            raise DataplaneError("wireguard peers: no WireGuard driver")
        if adding:
            await wg.set_peers(plan.device, items)
        else:
            await wg.remove_peers(plan.device, items)
    except DataplaneError as exc:
        res.failures.append(f"{len(items)} wireguard peer(s): {exc}")
        return
    res.applied[step] += len(items)


def _record(kind: str, attempted: int, fails: list[Failure], res: ApplyResult) -> None:
    res.applied[kind] += attempted - len(fails)
    for f in fails:
        if kind == "route_add" and error_code(f.error) == errno.EEXIST:
            res.failures.append(
                f"{f.what}: a route to this subnet exists that meshd does not own "
                "(not proto 109); not replacing it"
            )
        else:
            res.failures.append(str(f.error))


_Step = Callable[[NetlinkAPI, Plan, dict[str, int], int, ApplyResult], Awaitable[None]]
_STEPS: dict[str, _Step] = {
    "route_del": lambda nl, p, ln, pr, r: _routes(nl, "del", p.route_del, ln, pr, r),
    "route_add": lambda nl, p, ln, pr, r: _routes(nl, "add", p.route_add, ln, pr, r),
    "route_replace": lambda nl, p, ln, pr, r: _routes(nl, "replace", p.route_replace, ln, pr, r),
    "neigh_del": lambda nl, p, ln, pr, r: _neighs(nl, "del", p, ln, r),
    "neigh_set": lambda nl, p, ln, pr, r: _neighs(nl, "replace", p, ln, r),
    "fdb_del": lambda nl, p, ln, pr, r: _fdb(nl, "del", p, ln, r),
    "fdb_set": lambda nl, p, ln, pr, r: _fdb(nl, "replace", p, ln, r),
}
"""Plan step kind -> how it is applied (see ``backends.base.PEER_OBJECTS``)."""
