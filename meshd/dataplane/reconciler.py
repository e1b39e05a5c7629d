"""The level-triggered loop: desired state (model) -> read back the kernel -> diff -> apply.

Nothing here decides what the kernel should hold (model.py does) or speaks netlink (netlink.py
does). This module owns the *when*:

* ``set_peers`` stores the table and wakes the loop; a burst is debounced (``debounce``, 150 ms);
* a periodic full resync (``ReconcilerConfig.resync_interval``) catches anything the monitor missed;
* a netlink monitor wakes the loop when a route, neighbour, FDB entry, address or device meshd
  depends on changes or disappears, so a hand-made deletion is repaired within about a second;
* a failed pass is retried with backoff (0.5 s doubling to 8 s); a missing kernel feature only
  at the resync interval, since retrying cannot help;
* the next reap deadline of a dead peer wakes the loop at that time.

Every pass reads the kernel back, so a restart adopts what is there: an entry that is already
right is never rewritten, and nothing is removed before ``set_peers(..., synced=True)``.

Both families: every pass reads meshd's IPv4 and IPv6 routes (proto 109, each family's dump
filtered by the kernel) and the mesh device's neighbours of both families, so IPv6 entries are
owned, adopted across a restart and repaired after drift exactly as IPv4 ones. IPv6 forwarding
(``net.ipv6.conf.all.forwarding``) is turned on only when this node has an IPv6 subnet: on a host
that takes its own IPv6 address from router advertisements it stops accepting them (unless
``accept_ra`` is 2), as with any IPv6 router.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from meshd.dataplane import backends, model
from meshd.dataplane.apply import ApplyResult, NetlinkAPI, WireGuardAPI, apply
from meshd.dataplane.model import (
    RTPROT_MESHD,
    Desired,
    Fdb,
    Neigh,
    Observed,
    ObservedDevice,
    PeerView,
    Plan,
    Route,
    Underlay,
)
from meshd.dataplane.netlink import Event, Netlink
from meshd.dataplane.objects import canonical
from meshd.dataplane.rtnl_wire import AF_INET6
from meshd.dataplane.wgdevice import Snapshot, params_of, peers_of
from meshd.errors import ConfigError, DataplaneError, MissingKernelFeature
from meshd.gossip.record import NodeRecord

log = logging.getLogger("meshd.dataplane")
E = TypeVar("E")
V = TypeVar("V")

MAX_ERRORS = 20  # status() keeps the most recent ones
RETRY_MIN, RETRY_MAX = 0.5, 8.0
WG_POLL = 5.0  # seconds between reads of a wireguard device (peer drift, handshakes)


class WireGuardDriver(WireGuardAPI, Protocol):
    """``wgdevice.WireGuardDevices``: what the reconciler reads of a wireguard device."""

    public_key: bytes

    async def read(self, name: str, kind: str) -> Snapshot | None: ...
    def status(self) -> dict[str, Any]: ...
    def handshakes(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class ReconcilerConfig:
    """What the reconciler reads of the daemon's configuration (``meshd.config.Config`` has the
    same names and documents each; the daemon copies them over)."""

    backend: str = "vxlan"  # a name in the backends registry
    network: str | None = None  # the cluster CIDR peers' subnets must lie in, if set
    network6: str | None = None  # the IPv6 one (a dual-stack or IPv6-only mesh), if set
    vni: int = 1
    vxlan_port: int = 8472
    wireguard_port: int = 51820
    bridge: str | None = None  # a bridge to hold the subnet's first address, if set
    subnet_env: str | Path = "/run/meshd/subnet.env"  # flannel-format env file for CNI
    ipmasq: bool = False  # only written to subnet_env
    forwarding_marker: str | Path | None = None  # keeps ip_forward's value before meshd set it
    resync_interval: float = 30.0  # seconds between full passes without any trigger
    reap_after: float = 300.0  # seconds a dead peer keeps its entries

    def __post_init__(self) -> None:
        backends.get(self.backend)  # ValueError naming the choices


class Reconciler:
    """Converges this node's kernel to the peer table. See the module docstring for triggers.

    ``netns`` runs every netlink call in ``/run/netns/<netns>`` instead of the current namespace
    (tests and the lab drive several "hosts" from one process). ``clock`` is the loop's clock;
    ``set_peers(now=...)`` tells the reconciler how the caller's clock relates to it. ``nl``
    replaces the netlink socket (unit tests pass an in-memory kernel). ``wg`` runs the
    wireguard backend's device (``wgdevice.WireGuardDevices``; required for that backend).
    """

    def __init__(
        self,
        cfg: ReconcilerConfig,
        local: NodeRecord,
        underlay: Underlay,
        *,
        netns: str | None = None,
        debounce: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
        nl: NetlinkAPI | None = None,
        settled: bool = True,
        wg: WireGuardDriver | None = None,
    ) -> None:
        if not local.subnet:
            raise DataplaneError("dataplane: this node has no subnet")
        self.cfg = cfg
        _check_local(local, cfg)  # the policy this node applies to peers applies to it first
        self.local = local
        self._settled = settled
        self._retired: set[str] = set()  # a bridge's addresses of subnets this node gave up
        self.underlay = underlay
        self.netns = netns
        self.debounce = debounce
        self._clock = clock
        self._offset = 0.0  # caller's clock minus ours
        self._nl: NetlinkAPI = nl if nl is not None else Netlink(netns)
        self._backend = backends.get(cfg.backend)
        if "wgpeer" in self._backend.peer_objects and wg is None:
            raise ConfigError(f"backend {cfg.backend}: this node has no WireGuard key")
        self._wg = wg
        self._wg_task: asyncio.Task[None] | None = None
        self._peers: tuple[PeerView, ...] = ()
        self._desired_key: tuple[Any, ...] | None = None
        self._model_memo: dict[str, tuple[Any, dict[Any, Any]]] = {}  # see _as_model
        self._synced = False
        self._wake = asyncio.Event()
        self._reason = "start"
        self._debounce_next = True
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._run_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._monitor_ready = asyncio.Event()
        # What the last pass saw and decided.
        self._onlink: tuple[str, ...] = (f"{underlay.ip}/{underlay.prefixlen}",)
        # Destinations of main-table routes meshd does not own (any protocol but ours), which
        # peers' subnets must not overlap. Read at start and whenever the monitor reports such
        # a route changing (or may have missed one), not on every pass.
        self._foreign: tuple[str, ...] = ()
        self._foreign_stale = True
        self._desired: Desired | None = None
        self._links: dict[str, int] = {underlay.ifname: underlay.ifindex}
        self._retry_at: float | None = None
        self._retry_delay = RETRY_MIN
        self._next_resync = 0.0
        self._flags: dict[str, str] = {}
        self._reasons: dict[str, str] = {}
        # Status.
        self._runs = 0
        self._applied: Counter[str] = Counter()
        self._applied_last: dict[str, int] = {}
        self._plan = Plan()
        self._last_change: tuple[float, Plan] | None = None
        self._last_run: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS)
        self._fatal: MissingKernelFeature | None = None
        self._env_text: str | None = None
        self._prev_failures: set[str] = set()

    # --- public API (docs/architecture.md) -------------------------------------------------------

    async def start(self) -> None:
        """Open netlink and run the first pass: ensure the device and its addresses, adopt what
        the kernel has. Raises MissingKernelFeature (also kept in status) when the backend cannot
        work on this kernel; other errors are reported in status and retried by ``run``."""
        if self._started:
            return
        try:
            await self._nl.open()
        except DataplaneError as exc:
            self._record_error(str(exc))
            raise
        self._started = True
        await self.reconcile_now("start")
        if self._fatal is not None:
            raise self._fatal

    def set_local(self, local: NodeRecord, settled: bool = True) -> None:
        """This node's record changed (an allocated subnet moved, or settled). ``settled``:
        subnet.env may be written (until then CNI must not hand out addresses in a subnet that
        may still move). The device's address follows the subnet on the next pass; a bridge
        gives up the old subnet's first address."""
        _check_local(local, self.cfg)
        if self.cfg.bridge:
            for old in self.local.subnets:
                if old not in local.subnets:
                    self._retired.add(model.first_address(old))
        for new in local.subnets:
            self._retired.discard(model.first_address(new))
        self.local = local
        self._settled = settled
        self._trigger("subnet", debounce=False)

    def set_peers(self, peers: Sequence[PeerView], synced: bool, now: float) -> None:
        """The full peer table (every member except self). ``synced``: the first full state
        exchange is done, so a peer missing from the table is really gone; sticky once True."""
        self._peers = tuple(p for p in peers if p.record.node_id != self.local.node_id)
        self._synced = self._synced or synced
        self._offset = now - self._clock()
        # Flags are pure; recompute now so `meshd peers` does not lag the debounce.
        sel = model.select_peers(
            self.cfg.backend,
            self.cfg.network,
            self.cfg.reap_after,
            self.local,
            self.underlay,
            self._peers,
            now,
            self._onlink,
            self._foreign,
            self.cfg.network6,
        )
        flags, reasons = dict(sel.flags), dict(sel.reasons)
        d = self._desired
        if d is not None:  # "partial" comes from the backend's entries: the last pass knows
            for name, flag in d.flags.items():
                if flag == model.FLAG_PARTIAL and name not in flags:
                    flags[name], reasons[name] = flag, d.reasons[name]
        self._flags, self._reasons = flags, reasons
        self._trigger("peers")

    async def run(self) -> None:
        """Reconcile on every trigger until ``close``. Starts the netlink monitor."""
        self._run_task = asyncio.current_task()
        delay = RETRY_MIN
        while not self._started and not self._closed:
            try:
                await self.start()
            except MissingKernelFeature:
                break  # reported in status; resyncs pick up a module loaded later
            except DataplaneError:
                await asyncio.sleep(delay)  # e.g. the namespace is not there yet
                delay = min(delay * 2, RETRY_MAX)
        if self._closed:
            return
        self._monitor_task = asyncio.create_task(self._monitor(), name="meshd-netlink-monitor")
        if self._wg is not None:
            self._wg_task = asyncio.create_task(self._wg_watch(), name="meshd-wireguard-watch")
        try:
            # Changes made between start() and the monitor's bind would go unseen: resync once
            # the monitor listens.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._monitor_ready.wait(), 5)
            self._foreign_stale = True
            self._trigger("monitor ready", debounce=False)
            while not self._closed:
                await self._wait()
                if self._closed:
                    break
                await self.reconcile_now(self._reason)
        finally:
            await self._stop_monitor()

    async def close(self) -> None:
        """Stop the loop and the monitor and close netlink. Never changes kernel state."""
        self._closed = True
        self._wake.set()
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_monitor()
        async with self._lock:
            await self._nl.close()

    def status(self) -> dict[str, Any]:
        """JSON-able: backend, device, underlay, last plan, applied counts, errors, peers."""
        d = self._desired
        flags, reasons = self._flags, self._reasons
        conflicted = {n for n, f in flags.items() if f == model.FLAG_CONFLICTED}
        return {
            "backend": self.cfg.backend,
            "device": d.device.name if d and d.device else None,
            "bridge": self.cfg.bridge,
            "underlay": self.underlay.to_dict(),
            "protocol": RTPROT_MESHD,
            "netns": self.netns,
            "synced": self._synced,
            "runs": self._runs,
            "last_run": self._last_run,
            "plan": self._plan.to_dict(),
            "last_change": (
                {"at": self._last_change[0], "plan": self._last_change[1].to_dict()}
                if self._last_change
                else None
            ),
            "applied": dict(self._applied),
            "applied_last": dict(self._applied_last),
            "applied_total": sum(self._applied.values()),
            "last_error": self._last_error,
            "errors": list(self._errors),
            "programmed": list(d.programmed) if d else [],
            "conflicts": {n: r for n, r in reasons.items() if n in conflicted},
            "skipped": {n: r for n, r in reasons.items() if n not in conflicted},
            "peer_flags": dict(flags),
            "local_conflict": d.local_conflict if d else None,
            "next_reap": d.next_deadline if d else None,
            "mtu": d.mtu if d else None,
            "subnet_env": str(self.cfg.subnet_env),
            **({"wireguard": self._wg.status()} if self._wg is not None else {}),
        }

    def handshakes(self) -> dict[str, int | None]:
        """Peer name -> unix seconds of its latest WireGuard handshake (None: none yet), for
        the peers the device has; empty for the other backends."""
        if self._wg is None:
            return {}
        seen = self._wg.handshakes()
        out: dict[str, int | None] = {}
        for p in self._peers:
            key = p.record.wg_key
            if key:
                k = base64.b64encode(key).decode()
                if k in seen:
                    out[p.record.name] = seen[k] or None
        return out

    def peer_flags(self) -> dict[str, str]:
        """peer name -> conflicted | incompatible | refused | not-on-link | reaped | partial
        (programmed, but one of its two subnets cannot be routed from here: ``status`` says
        why)."""
        return dict(self._flags)

    # --- the pass --------------------------------------------------------------------------------

    async def reconcile_now(self, reason: str = "manual") -> Plan:
        """One full pass now (no debounce). Returns the plan it computed; errors go to status."""
        async with self._lock:
            return await self._pass(reason)

    async def _pass(self, reason: str) -> Plan:
        t0 = time.monotonic()
        self._runs += 1
        plan = Plan()
        res = ApplyResult()
        try:
            ul = await self._refresh_underlay()
            await self._ensure_forwarding()
            self._onlink = (
                tuple(f"{ip}/{plen}" for _, ip, plen, _ in await self._nl.addresses(ul.ifindex, 0))
                or ul.cidrs()
            )
            if self._foreign_stale:
                await self._read_foreign()
            desired = self._desired_state(ul, self._clock() + self._offset)
            self._note_flags(desired)
            self._desired = desired
            observed = await self._observe(desired)
            plan = model.diff(desired, observed)
            res.failures += list(plan.problems)
            if not plan.empty:
                res = await apply(self._nl, plan, self._links, RTPROT_MESHD, self._wg)
                res.failures += list(plan.problems)
            if self._settled:
                self._write_subnet_env(desired.mtu)
        except MissingKernelFeature as exc:
            res.fatal = exc
            res.failures.append(str(exc))
        except DataplaneError as exc:
            res.failures.append(str(exc))
        self._finish(reason, t0, plan, res)
        return plan

    def _desired_state(self, ul: Underlay, now: float) -> Desired:
        """model.desired_state, computed again only when an input changed or a reap deadline
        passed (time enters only through those): a pass over a converged mesh of thousands of
        peers then costs its filtered dumps and the diff, not the model's work."""
        # An unchanged table compares equal (element by element, or at once when it is the same).
        key = (self._peers, self._synced, ul, self._onlink, self._foreign, self.local, self.cfg)
        d = self._desired
        if (
            d is not None
            and key == self._desired_key
            and (d.next_deadline is None or now < d.next_deadline)
        ):
            return d
        self._desired_key = key
        d = model.desired_state(
            backend=self.cfg.backend,
            local=self.local,
            underlay=ul,
            peers=self._peers,
            now=now,
            synced=self._synced,
            reap_after=self.cfg.reap_after,
            network=self.cfg.network,
            vni=self.cfg.vni,
            vxlan_port=self.cfg.vxlan_port,
            wireguard_port=self.cfg.wireguard_port,
            bridge=self.cfg.bridge,
            onlink=self._onlink,
            foreign=self._foreign,
            network6=self.cfg.network6,
        )
        if d.bridge is not None and self._retired:
            d = replace(d, bridge=replace(d.bridge, retired=tuple(sorted(self._retired))))
        return d

    async def _read_foreign(self) -> None:
        """The main table's routes that are not meshd's, for the model's overlap rule."""
        self._foreign_stale = False  # an event during the dump marks it stale again
        try:
            owners = await self._nl.dump_route_owners(model.MAIN_TABLE)
            owners += await _or_none(self._nl.dump_route_owners(model.MAIN_TABLE, AF_INET6))
        except BaseException:
            self._foreign_stale = True
            raise
        foreign = tuple(sorted({dst for dst, proto in owners if proto != RTPROT_MESHD}))
        if foreign != self._foreign:
            log.debug("main table: %d route(s) not meshd's", len(foreign))
        self._foreign = foreign

    def _finish(self, reason: str, t0: float, plan: Plan, res: ApplyResult) -> None:
        dur = time.monotonic() - t0
        self._plan = plan
        done = +res.applied  # drop kinds with nothing applied
        self._applied.update(done)
        self._applied_last = dict(done)
        # A failure that persists (say, someone else's route on a peer's subnet) is logged and
        # listed once, not on every retry.
        new = [f for f in res.failures if f not in self._prev_failures]
        self._prev_failures = set(res.failures)
        if not plan.empty and (done or new):
            self._last_change = (time.time(), plan)
            log.info(
                "dataplane (%s): %s",
                reason,
                _summary(plan, res),
                extra={
                    "event": "plan_applied",
                    "reason": reason,
                    "peers": _plan_peers(plan, self._peers),
                    **{k: n for k, n in plan.counts().items() if n},
                    "applied": sum(res.applied.values()),
                    "failed": len(res.failures),
                },
            )
        self._last_run = {"at": time.time(), "duration_ms": round(dur * 1000, 2), "reason": reason}
        self._fatal = res.fatal
        now = self._clock()
        self._next_resync = now + self.cfg.resync_interval
        if res.failures:
            self._last_error = (
                res.failures[0]
                if len(res.failures) == 1
                else (f"{res.failures[0]} (+{len(res.failures) - 1} more)")
            )
            for f in new[:MAX_ERRORS]:
                self._record_error(f, last=False)
            if res.fatal is None:
                self._retry_at = now + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            else:
                self._retry_at = None
        else:
            self._last_error = None
            self._retry_at = None
            self._retry_delay = RETRY_MIN

    def _record_error(self, line: str, last: bool = True) -> None:
        self._errors.append({"at": time.time(), "error": line})
        if last:
            self._last_error = line
        log.warning("dataplane: %s", line, extra={"event": "dataplane_error", "reason": line})

    async def _refresh_underlay(self) -> Underlay:
        """The underlay by name: it may have been deleted and recreated with a new ifindex."""
        info = await self._nl.link(self.underlay.ifname)
        if info is None:
            raise DataplaneError(f"underlay {self.underlay.ifname} is gone; waiting for it")
        ul = self.underlay
        if (info.index, info.mtu) != (ul.ifindex, ul.mtu):
            log.info(
                "underlay %s: ifindex %d mtu %d",
                ul.ifname,
                info.index,
                info.mtu,
                extra={
                    "event": "underlay_changed",
                    "reason": "ifindex or mtu changed",
                    "underlay": ul.ifname,
                    "ifindex": info.index,
                    "mtu": info.mtu,
                },
            )
            self._links.pop(ul.ifname, None)
            ul = replace(ul, ifindex=info.index, mtu=info.mtu)
            self.underlay = ul
        self._links[ul.ifname] = ul.ifindex
        return ul

    async def _ensure_forwarding(self) -> None:
        if self.local.subnet_of(6) is not None:
            await self._ensure_sysctl("net.ipv6.conf.all.forwarding")
        if self.local.subnet_of(4) is not None:
            await self._ensure_sysctl("net.ipv4.ip_forward")

    async def _ensure_sysctl(self, name: str) -> None:
        old = await self._nl.sysctl(name, "1")
        if old != "1":
            log.info(
                "enabled %s (was %s)%s",
                name,
                old,
                _in(self.netns),
                extra={"event": "forwarding_enabled", "reason": f"was {old}", "sysctl": name},
            )
            marker = forwarding_marker(self.cfg.forwarding_marker, name)
            if marker is not None and not Path(marker).exists():
                # what `meshd leave --purge` puts back; the first value meshd saw wins
                try:
                    Path(marker).write_text(f"{old}\n")
                except OSError as exc:
                    log.warning(
                        "cannot keep %s: %s",
                        marker,
                        exc.strerror,
                        extra={"event": "forwarding_marker_failed", "reason": exc.strerror},
                    )

    async def _observe(self, desired: Desired) -> Observed:
        devices: dict[str, ObservedDevice] = {}
        wgpeers: dict[str, model.WgPeer] = {}
        for spec in (desired.device, desired.bridge):
            if spec is None:
                continue
            info = await self._nl.link(spec.name)
            if info is None:
                self._links.pop(spec.name, None)
                continue
            self._links[spec.name] = info.index
            addrs = tuple(
                f"{ip}/{plen}" for _, ip, plen, _ in await self._nl.addresses(info.index, 0)
            )
            kind, params = info.kind, info.params
            if spec.kind == "wireguard" and self._wg is not None:
                snap = await self._wg.read(spec.name, info.kind)
                if snap is not None:  # else a device meshd cannot talk to: recreated
                    kind, params = "wireguard", params_of(snap.state)
                    wgpeers = peers_of(snap.state)
            devices[spec.name] = ObservedDevice(
                name=info.name,
                index=info.index,
                kind=kind,
                mtu=info.mtu,
                mac=(info.mac or "").lower() or None,
                up=info.up,
                addresses=addrs,
                params=params,
            )
        names = {i: n for n, i in self._links.items()}
        found = await self._nl.dump_routes(RTPROT_MESHD)
        found += await _or_none(self._nl.dump_routes(RTPROT_MESHD, model.MAIN_TABLE, AF_INET6))
        routes = {
            r.dst: r
            for r in self._as_model(
                ("route", *sorted(names.items())),
                found,
                lambda e: Route(
                    e.dst, e.gateway, names.get(e.oif, f"#{e.oif}"), e.onlink, e.encap6
                ),
            )
        }
        neighs: dict[str, Neigh] = {}
        fdb: frozenset[Fdb] = frozenset()
        mesh = desired.device
        kinds = self._backend.peer_objects
        if mesh is not None and mesh.name in devices:
            index = devices[mesh.name].index
            if "neigh" in kinds:
                got = await self._nl.dump_neighs(index)
                got += await _or_none(self._nl.dump_neighs(index, AF_INET6))
                neighs = {
                    n.dst: n
                    for n in self._as_model(("neigh",), got, lambda e: Neigh(e.dst, e.lladdr))
                }
            if "fdb" in kinds:
                fdb = frozenset(
                    self._as_model(
                        ("fdb",), await self._nl.dump_fdb(index), lambda e: Fdb(e.lladdr, e.dst)
                    )
                )
        return Observed(devices=devices, routes=routes, neighs=neighs, fdb=fdb, wgpeers=wgpeers)

    def _as_model(
        self, kind: tuple[Any, ...], entries: Sequence[E], make: Callable[[E], V]
    ) -> list[V]:
        """Model values for netlink entries, each built once and then looked up: a converged
        kernel answers with the same entries every pass. ``kind`` carries what ``make``
        depends on besides the entry (the ifindex -> name map for routes)."""
        made_for, memo = self._model_memo.get(kind[0], (None, {}))
        if made_for != kind or len(memo) > 2 * len(entries) + 1024:
            memo = {}
            self._model_memo[kind[0]] = (kind, memo)
        out: list[V] = []
        for e in entries:
            v = memo.get(e)
            if v is None:
                v = memo[e] = make(e)
            out.append(v)
        return out

    def _note_flags(self, desired: Desired) -> None:
        for name, reason in desired.reasons.items():
            if self._reasons.get(name) != reason or name not in self._flags:
                log.info(
                    "peer %s not programmed: %s",
                    name,
                    reason,
                    extra={
                        "event": "peer_not_programmed",
                        "peer": name,
                        "reason": reason,
                        "flag": desired.flags.get(name),
                    },
                )
        if desired.local_conflict and (self._desired is None or not self._desired.local_conflict):
            log.warning(
                "dataplane: %s",
                desired.local_conflict,
                extra={
                    "event": "subnet_conflict",
                    "reason": desired.local_conflict,
                    "subnet": self.local.subnet,
                },
            )
        self._flags, self._reasons = dict(desired.flags), dict(desired.reasons)

    def _write_subnet_env(self, mtu: int) -> None:
        """flannel-compatible env file for CNI; written atomically, and only when it changes."""
        text = model.subnet_env(
            self.cfg.network,
            self.local.subnet,
            mtu,
            self.cfg.ipmasq,
            subnet6=self.local.subnet6,
            network6=self.cfg.network6,
        )
        path = Path(self.cfg.subnet_env)
        if text == self._env_text and path.exists():
            return
        try:
            if path.exists() and path.read_text() == text:
                self._env_text = text
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".subnet.env.", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise DataplaneError(f"write {path}: {exc.strerror or exc}") from exc
        self._env_text = text
        log.info(
            "wrote %s (FLANNEL_MTU=%d)",
            path,
            mtu,
            extra={"event": "subnet_env_written", "path": str(path), "mtu": mtu},
        )

    # --- triggers --------------------------------------------------------------------------------

    def _trigger(self, reason: str, debounce: bool = True) -> None:
        if not self._wake.is_set():
            self._reason = reason
        self._debounce_next = debounce
        self._wake.set()

    async def _wait(self) -> None:
        """Sleep until a trigger (then debounce), a retry, a reap deadline or the resync."""
        now = self._clock()
        deadline = self._next_resync
        reason = "resync"
        if self._retry_at is not None and self._retry_at < deadline:
            deadline, reason = self._retry_at, "retry"
        d = self._desired
        if d is not None and d.next_deadline is not None:
            reap = d.next_deadline - self._offset + 0.01  # strictly after, so the peer is reaped
            if reap < deadline:
                deadline, reason = reap, "reap"
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - now))
        except TimeoutError:
            self._reason = reason
        else:
            if self._debounce_next:
                await asyncio.sleep(self.debounce)  # let a burst of changes settle
        self._wake.clear()

    async def _monitor(self) -> None:
        delay = RETRY_MIN
        while not self._closed:
            try:
                async for ev in self._nl.events():
                    if ev.kind == "ready":
                        self._monitor_ready.set()
                    elif self._relevant(ev):
                        self._trigger(
                            f"kernel: {ev.kind} {'new' if ev.new else 'del'} "
                            f"{ev.name or ev.dst or ev.index}"
                        )
                    delay = RETRY_MIN
            except DataplaneError as exc:
                self._record_error(f"monitor: {exc}", last=False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            self._foreign_stale = True
            self._trigger("monitor restarted")  # events may have been lost meanwhile

    async def _stop_monitor(self) -> None:
        for task in (self._monitor_task, self._wg_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor_task = self._wg_task = None

    async def _wg_watch(self) -> None:
        """WireGuard reports no peer change on netlink: read the device every ``WG_POLL``
        seconds (this also refreshes the handshakes ``peers`` shows) and wake the loop when it
        differs from the desired state (a peer removed or changed by hand)."""
        assert self._wg is not None
        while not self._closed:
            await asyncio.sleep(WG_POLL)
            d = self._desired
            if d is None or d.device is None:
                continue
            try:
                async with self._lock:
                    info = await self._nl.link(d.device.name)
                    snap = await self._wg.read(d.device.name, info.kind) if info else None
            except DataplaneError as exc:
                log.debug("wireguard watch: %s", exc)
                continue
            if snap is None or self._desired is not d:
                continue
            have = peers_of(snap.state)
            drift = [k for k, w in d.wgpeers.items() if have.get(k) != w]
            extra = [k for k in have if k not in d.wgpeers] if d.allow_remove else []
            wrong = [k for k, v in d.device.params if params_of(snap.state).get(k) != v]
            if drift or extra or wrong:
                self._trigger(
                    f"wireguard: {len(drift)} peer(s) differ, {len(extra)} extra"
                    + (f", {', '.join(wrong)} differ" if wrong else ""),
                    debounce=False,
                )

    def _relevant(self, ev: Event) -> bool:  # noqa: C901 - one case per event kind
        """Does this kernel event touch something meshd depends on? Our own changes echo back
        as events too; those that match the desired state are ignored, so a pass does not
        trigger another one."""
        d = self._desired
        if ev.kind == "overflow":
            self._foreign_stale = True  # a foreign route may have come or gone unseen
            return True
        if d is None:
            return True
        mesh = d.device
        names = {self.underlay.ifname} | {s.name for s in (mesh, d.bridge) if s is not None}
        if ev.kind == "link":
            if ev.name not in names and ev.index not in self._links.values():
                return False
            if ev.new and mesh is not None and ev.name == mesh.name:
                as_wanted = ev.up and ev.mtu == mesh.mtu and self._links.get(ev.name) == ev.index
                return not (as_wanted and (mesh.mac is None or ev.lladdr.lower() == mesh.mac))
            return True
        if ev.kind == "addr":
            # IPv6 link-local addresses are the kernel's (every device gets one, its DAD ends
            # a second later): meshd neither wants nor removes them.
            return ev.index in self._links.values() and not _link_local6(ev.dst)
        if ev.kind == "route":
            if ev.proto == RTPROT_MESHD:
                # Ours: deleted while wanted, or present while unwanted.
                return (ev.dst in d.routes) != ev.new
            if ev.table != model.MAIN_TABLE:
                return False
            # Someone else's route: the model refuses peers whose subnet it overlaps.
            self._foreign_stale = True
            return ev.dst in d.routes or model.touches_peers(ev.dst, self._peers)
        mesh_index = self._links.get(mesh.name) if mesh is not None else None
        if ev.index != mesh_index:
            return False
        if ev.kind == "neigh":
            want = d.neighs.get(ev.dst)
            if want is None:
                return ev.new and ev.permanent  # a stray permanent entry on our device
            return not ev.new or not ev.permanent or ev.lladdr != want.lladdr
        if ev.kind == "fdb":
            entry = Fdb(ev.lladdr, ev.dst)
            if not ev.new:
                return entry in d.fdb
            return bool(ev.dst) and entry not in d.fdb
        return False


def forwarding_marker(marker: str | Path | None, sysctl: str) -> Path | None:
    """The file keeping ``sysctl``'s value before meshd set it: ``marker`` for ip_forward, a
    sibling with ``.ipv6`` appended for IPv6 forwarding (``meshd leave --purge`` reads both)."""
    if marker is None:
        return None
    return Path(marker) if sysctl == "net.ipv4.ip_forward" else Path(f"{marker}.ipv6")


def _check_local(local: NodeRecord, cfg: ReconcilerConfig) -> None:
    """ConfigError when one of this node's own subnets breaks the policy it applies to peers
    (``model.subnet_problem``, per family: each subnet against the cluster network of its
    family)."""
    networks = tuple(n for n in (cfg.network, cfg.network6) if n)
    for sub in local.subnets:
        problem = model.subnet_problem(sub, networks)
        if problem is not None:
            raise ConfigError(f"subnet: {problem.removeprefix('subnet ')}")


async def _or_none(call: Awaitable[list[V]]) -> list[V]:
    """An IPv6 dump on a kernel without IPv6 (``ipv6.disable=1``): nothing of that family."""
    try:
        return await call
    except DataplaneError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP, errno.EINVAL):
            return []
        raise


def _link_local6(ip: str) -> bool:
    return ip[:3].lower() in ("fe8", "fe9", "fea", "feb")  # fe80::/10


def _in(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


def _plan_peers(plan: Plan, peers: Sequence[PeerView]) -> list[str]:
    """The peers whose entries ``plan`` changes (a route to its subnet, an FDB entry or a
    WireGuard endpoint at its public IP), by name, for the log line: a peer's entries outlive
    its record only after reaping, so removals mostly still find the name."""
    names: dict[str, str] = {}
    for p in peers:
        r = p.record
        for key in (*r.subnets, r.public_ip, r.public_ip6):
            if key:
                names[canonical(key)] = r.name
    keys = {r.dst for r in (*plan.route_add, *plan.route_replace, *plan.route_del)}
    keys.update(f.dst for f in (*plan.fdb_set, *plan.fdb_del))
    keys.update(
        w.endpoint.rpartition(":")[0].strip("[]") for w in (*plan.wgpeer_set, *plan.wgpeer_del)
    )
    return sorted({names[k] for k in keys if k in names})


def _summary(plan: Plan, res: ApplyResult) -> str:
    parts = [f"{k} {n}" for k, n in plan.counts().items() if n]
    done = sum(res.applied.values())
    out = ", ".join(parts) + f"; applied {done}"
    if res.failures:
        out += f", {len(res.failures)} failed"
    return out
