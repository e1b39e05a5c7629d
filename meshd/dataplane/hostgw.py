"""host-gw backend, and the applying steps every backend shares.

Kernel objects per peer (only when the peer's underlay IP is on-link on the underlay device):
  - route  ``<peer.subnet> via <peer.public_ip> dev <underlay> proto 109``  (main table)
No device is created. Peers that are not on-link get nothing and are flagged ``not-on-link``.

host-gw is the base case: every backend installs one route per peer. ``IpipBackend`` and
``VxlanBackend`` extend this class with their device and, for vxlan, neighbours and FDB entries.
Backends decide nothing: they execute a ``model.Plan`` in order and report what happened.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshd.dataplane.model import DeviceOp, DeviceSpec, Plan, Route
from meshd.dataplane.netlink import Failure, Netlink, RouteEntry, error_code
from meshd.errors import DataplaneError, MissingKernelFeature

log = logging.getLogger("meshd.dataplane")


@dataclass
class ApplyResult:
    applied: Counter[str] = field(default_factory=Counter)  # plan kind -> objects changed
    failures: list[str] = field(default_factory=list)  # one line each
    fatal: MissingKernelFeature | None = None  # retrying cannot help
    failed_devices: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.failures and self.fatal is None


class HostGwBackend:
    name = "host-gw"

    def __init__(self, nl: Netlink, proto: int) -> None:
        self.nl = nl
        self.proto = proto

    async def apply(self, plan: Plan, links: dict[str, int]) -> ApplyResult:
        """Execute ``plan``. ``links`` maps device names to ifindexes and is updated for devices
        created or deleted here."""
        res = ApplyResult()
        await self.apply_devices(plan, links, res)
        if res.fatal is None:
            await self.apply_entries(plan, links, res)
        return res

    async def apply_devices(self, plan: Plan, links: dict[str, int], res: ApplyResult) -> None:
        specs = {d.name: d for d in plan.devices}
        for op in plan.device_ops:
            if op.device in res.failed_devices:
                continue  # the earlier step failed; later ones would only add noise
            try:
                await self._device_op(op, specs[op.device], links)
                res.applied["device_ops"] += 1
                log.info("device: %s", op)
            except MissingKernelFeature as exc:
                res.fatal = exc
                res.failures.append(str(exc))
                res.failed_devices.add(op.device)
            except DataplaneError as exc:
                res.failures.append(str(exc))
                res.failed_devices.add(op.device)

    async def _device_op(self, op: DeviceOp, spec: DeviceSpec, links: dict[str, int]) -> None:
        nl = self.nl
        if op.action == "create":
            links[spec.name] = await nl.create_link(
                spec.name, spec.kind, spec.mtu, spec.mac, spec.params
            )
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

    async def apply_entries(self, plan: Plan, links: dict[str, int], res: ApplyResult) -> None:
        """Removals first (a freed subnet may be re-claimed in the same plan), then additions."""
        await self.apply_routes("del", plan.route_del, links, res)
        await self.apply_routes("add", plan.route_add, links, res)
        await self.apply_routes("replace", plan.route_replace, links, res)

    async def apply_routes(
        self, op: str, routes: Sequence[Route], links: dict[str, int], res: ApplyResult
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
            entries.append(RouteEntry(r.dst, r.gateway, oif or 0, r.onlink))
        for dev, n in missing.items():  # one line per device, not one per peer
            res.failures.append(f"route {op}: device {dev} is missing; {n} route(s) not programmed")
        fails = await self.nl.routes_apply(op, entries, self.proto)
        self.record(f"route_{op}", len(entries), fails, res)

    @staticmethod
    def record(kind: str, attempted: int, fails: list[Failure], res: ApplyResult) -> None:
        res.applied[kind] += attempted - len(fails)
        for f in fails:
            if kind == "route_add" and error_code(f.error) == errno.EEXIST:
                res.failures.append(
                    f"{f.what}: a route to this subnet exists that meshd does not own "
                    "(not proto 109); not replacing it"
                )
            else:
                res.failures.append(str(f.error))
