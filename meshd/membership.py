"""The membership loop: forwards what the gossip core learned to the data plane, the filter,
the masquerade and the state dir.

Woken by the transport after every datagram or timer that brought news (`GossipNode.has_news`);
the filter and the masquerade also get a periodic forced apply, which restores rules changed by
hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from meshd import neightable
from meshd.allocator import Allocator
from meshd.dataplane import allocation, prefix
from meshd.dataplane.model import PeerView
from meshd.errors import AllocationError, DataplaneError
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord
from meshd.statestore import CrlStore, State, StateStore

log = logging.getLogger("meshd")
SAVE_EVERY = 2.0
"""Seconds between state-dir writes while membership changes (a crash loses at most this)."""
BATCH = 0.01
"""Membership news arrives in bursts: batch it (briefly: the data plane waits on it)."""
SAVE_HEARTBEAT = 60.0
"""Seconds between state-dir writes of an allocating node with no news: the file's ``saved_at``
is then when the node was last alive, which decides whether its subnet outlived the lease."""
WHY = {
    "join": "alive and new here, or back after dead or left",
    "update": "announced new record data",
    "suspect": "a probe of it failed",
    "alive": "refuted the suspicion",
    "dead": "suspicion timed out, or a member declared it dead",
    "left": "announced a graceful leave",
    "evicted": "certificate revoked or expired",
}
"""The ``reason`` of each member event's log line (event ``peer_<kind>``, gossip/events.py)."""


class PeerSink(Protocol):
    """The reconciler as this loop sees it."""

    def set_peers(self, peers: Sequence[PeerView], synced: bool, now: float) -> None: ...

    def set_local(self, local: NodeRecord, settled: bool = True) -> None: ...

    def peer_flags(self) -> dict[str, str]: ...


class Prober(Protocol):
    """The tunnel prober (meshd/tunnelprobe.py) as this loop drives it."""

    async def set_local(self, ip: str | None) -> None: ...

    def set_targets(self, targets: Mapping[str, str]) -> None: ...


class Filter(Protocol):
    """The firewall as this loop sees it."""

    async def apply(self, member_ips: Iterable[str], *, force: bool = False) -> bool: ...


class Nat(Protocol):
    """The masquerade (``ipmasq``) as this loop sees it."""

    async def apply(self, subnet: str, *, force: bool = False) -> bool: ...


class Membership:
    def __init__(
        self,
        node: GossipNode,
        store: StateStore,
        reconciler: PeerSink,
        firewall: Filter | None,
        resync_interval: float,
        apply_key_ops: Callable[[], None],
        changed: asyncio.Event,
        crl_store: CrlStore | None = None,
        allocator: Allocator | Sequence[Allocator] | None = None,
        *,
        masquerade: Nat | None = None,
        masquerade6: Nat | None = None,
        underlay_version: int = 4,
    ) -> None:
        self.node = node
        if allocator is None:
            allocator = ()
        self.allocators: tuple[Allocator, ...] = (
            (allocator,) if isinstance(allocator, Allocator) else tuple(allocator)
        )
        """One per family this node allocates (a dual-stack node may allocate both)."""
        self.allocator = self.allocators[0] if self.allocators else None
        self.crl_store = crl_store
        self._crl_saved = node.crl_der
        self._revoked_logged = ""
        self.store = store
        self.reconciler = reconciler
        self.firewall = firewall
        self.resync_interval = resync_interval
        self.apply_key_ops = apply_key_ops
        self.changed = changed
        """Set by the transport when the core has news (`GossipNode.has_news`)."""
        self._last_save = 0.0
        self._saved_key: tuple[object, ...] = ()
        self._save_handle: asyncio.TimerHandle | None = None
        self._saved_peers = False
        """The last save held a member up to rejoin through."""
        self._fw_forced = 0.0
        self._fw_error: str | None = None
        self.masquerade = masquerade
        self.masquerade6 = masquerade6
        """The IPv6 masquerade (table ip6 meshd-nat) of a node with an IPv6 network; it follows
        the node's IPv6 subnet as ``masquerade`` follows the IPv4 one."""
        self._mq_error: str | None = None
        self.neigh_sysctls = neightable.SYSCTLS6 if underlay_version == 6 else neightable.SYSCTLS
        """The neighbour table gossip's underlay fills: IPv4's (ARP), or IPv6's (NDP)."""
        self.read_thresholds: Callable[[], tuple[int, int, int] | None] = lambda: neightable.read(
            self.neigh_sysctls
        )
        self._neigh_warned_for = 0  # peers counted at the last neighbour-table warning
        self._views_generation = 0  # counts the batches of member events (and sync changes)

    async def run(self) -> None:
        """Act on news only: member events, the first full sync, or a new local incarnation
        (a refutation must survive a crash)."""
        synced: bool | None = None
        incarnation = -1
        refutes = self.node.counters["refute"]
        for allocator in self.allocators:
            self.reallocate(allocator, self.peer_views())
        while True:
            await self.changed.wait()
            self.changed.clear()
            self.apply_key_ops()
            events = self.node.pop_events()
            for ev in events:
                r = ev.member.record
                log.info(
                    "member %s (%s %s): %s",
                    r.name,
                    r.public_ip,
                    r.subnet,
                    ev.kind,
                    extra={
                        "event": f"peer_{ev.kind}",
                        "peer": r.name,
                        "reason": WHY.get(ev.kind, ev.kind),
                        "state": str(ev.member.state.value),
                        "public_ip": r.public_ip,
                        "subnet": r.subnet,
                        "incarnation": r.incarnation,
                    },
                )
            if refutes != self.node.counters["refute"]:
                refutes = self.node.counters["refute"]
                log.info(
                    "refuted a suspicion of this node: incarnation %d",
                    self.node.local.incarnation,
                    extra={
                        "event": "self_refuted",
                        "peer": self.node.local.name,
                        "reason": "a member suspected this node, or an old record of it arrived",
                        "incarnation": self.node.local.incarnation,
                    },
                )
            if events or synced != self.node.synced:
                self._views_generation += 1
                synced = self.node.synced
                views = self.peer_views()
                for allocator in self.allocators:
                    self.reallocate(allocator, views)
                self.reconciler.set_peers(views, synced, time.monotonic())
                self.check_neighbours(sum(v.state in ("alive", "suspect") for v in views))
                await self.update_firewall()
                self.save_news(incarnation != self.node.local.incarnation)
            elif incarnation != self.node.local.incarnation:
                self.save(force=True)
            incarnation = self.node.local.incarnation
            if self._mq_error is None:  # after a failure, the periodic loop retries
                await self.update_masquerade()
            self.check_trust()
            await asyncio.sleep(BATCH)

    def reallocate(self, allocator: Allocator, views: Sequence[PeerView]) -> None:
        """Allocating: move when a member holds our subnet by the conflict rule, and say when the
        subnet settles. AllocationError (one line; the daemon exits) when, with a full view of
        the mesh, no subnet is left."""
        now = time.monotonic()
        move = allocator.review(self.node.local, views, now)
        if move is None:
            if self.node.synced and not allocator.settled:
                allocator.settled = True
                self.reconciler.set_local(self.node.local, settled=self.settled)
                mine = self.node.local.subnet_of(allocator.version)
                log.info(
                    "subnet %s settled (%s)",
                    mine,
                    allocator.origin,
                    extra={
                        "event": "subnet_settled",
                        "peer": self.node.local.name,
                        "reason": allocator.origin,
                        "subnet": mine,
                    },
                )
            return
        if move.new is None:
            if self.node.synced:
                raise AllocationError(
                    f"subnet {move.old} is held by {move.holder.name}, and "
                    + allocation.full_message(allocator.pool)
                )
            return  # keep the tentative claim until we know the whole mesh
        allocator.moved(move)
        log.warning(
            "subnet %s is held by %s (%s), which the conflict rule keeps; took %s",
            move.old,
            move.holder.name,
            move.holder.public_ip,
            move.new,
            extra={
                "event": "subnet_moved",
                "peer": move.holder.name,
                "reason": "the conflict rule gives the subnet to the peer",
                "old": move.old,
                "new": move.new,
            },
        )
        self.node.update_local(
            replace(
                allocation.with_subnet(self.node.local, move.version, move.new),
                since=int(time.time()),
            ),
            now,
        )
        allocator.settled = self.node.synced
        self.reconciler.set_local(self.node.local, settled=self.settled)
        self.save(force=True)

    @property
    def settled(self) -> bool:
        """Every allocated subnet is final (subnet.env may be written)."""
        return all(a.settled for a in self.allocators)

    async def heartbeat_loop(self) -> None:
        """Allocating: keep the state dir's ``saved_at`` fresh (see SAVE_HEARTBEAT)."""
        while True:
            await asyncio.sleep(SAVE_HEARTBEAT)
            self.save(force=True, heartbeat=True)

    def check_trust(self) -> None:
        """Certificate mode: keep the revocation list in force in the state dir, and say once
        when our own certificate stops holding (members then refuse our records)."""
        crl = self.node.crl_der
        if crl is not None and crl != self._crl_saved and self.crl_store is not None:
            self.crl_store.save(crl)
            self._crl_saved = crl
            log.info(
                "revocation list installed (%d bytes), saved to %s",
                len(crl),
                self.crl_store.path,
                extra={"event": "crl_installed", "path": str(self.crl_store.path)},
            )
        reason = self.node.local_revoked
        if reason != self._revoked_logged:
            self._revoked_logged = reason
            if reason:
                log.error(
                    "this node's certificate is %s: members refuse its records; "
                    "issue a new certificate (meshd ca sign) and reload (SIGHUP)",
                    "revoked" if reason == "revoked" else "expired",
                    extra={
                        "event": "certificate_refused",
                        "peer": self.node.local.name,
                        "reason": "revoked" if reason == "revoked" else "expired",
                    },
                )

    async def firewall_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            await self.update_firewall()

    async def update_firewall(self) -> None:
        """Accept encapsulated packets from every member that is not gone (dead ones too: their
        routes stay until reap_after, and so does their traffic)."""
        if self.firewall is None:
            return
        me = self.node.local.name
        ips = {
            m.record.public_ip
            for m in self.node.members()
            if m.record.name != me and str(m.state.value) != "left"
        }
        now = time.monotonic()
        force = now - self._fw_forced > self.resync_interval
        try:
            await self.firewall.apply(ips, force=force)
        except DataplaneError as exc:
            if str(exc) != self._fw_error:
                log.error("%s", exc, extra={"event": "filter_error", "reason": str(exc)})
            self._fw_error = str(exc)
            return
        self._fw_error = None
        if force:
            self._fw_forced = now

    async def probe_targets_loop(self, prober: Prober, every: float = 2.0) -> None:
        """Keep the tunnel prober bound to this node's device address and aimed at the
        programmed peers that gossip says are up (a dead peer's silence is no news)."""
        seen: tuple[object, ...] = ()
        while True:
            await prober.set_local(prefix.network_address(self.node.local.subnet))
            flags = self.reconciler.peer_flags()
            # Rebuilt only when a member event, our subnet or a flag changed: at 10,000 members
            # the rebuild every 2 s was most of an idle daemon's CPU.
            key = (self._views_generation, self.node.local.subnet, tuple(sorted(flags.items())))
            if key == seen:
                await asyncio.sleep(every)
                continue
            seen = key
            prober.set_targets(
                {
                    m.record.name: prefix.network_address(m.record.subnet)
                    for m in self.node.members()
                    if m.record.node_id != self.node.local.node_id
                    and str(m.state.value) in ("alive", "suspect")
                    and m.record.name not in flags
                }
            )
            await asyncio.sleep(every)

    async def masquerade_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            await self.update_masquerade(force=True)

    async def update_masquerade(self, force: bool = False) -> None:
        """The rules follow this node's subnet, which can change at runtime (allocation); nft
        runs only when it did, or when ``force`` (drift repair, and at start: an identical table
        is kept). Errors are logged once each and left in the masquerade's status."""
        local = self.node.local
        errors = []
        for nat, subnet in (
            (self.masquerade, local.subnet),
            (self.masquerade6, local.subnet_of(6) if self.masquerade6 is not None else None),
        ):
            if nat is None or subnet is None:
                continue
            try:
                await nat.apply(subnet, force=force)
            except DataplaneError as exc:
                errors.append(str(exc))
        for err in errors:
            if self._mq_error is None or err not in self._mq_error:
                log.error("%s", err, extra={"event": "masquerade_error", "reason": err})
        self._mq_error = "; ".join(errors) or None

    def check_neighbours(self, peers: int) -> None:
        """Warn, at the first shortfall and as the mesh grows, when the peers need more
        neighbour entries (of the underlay's family) than the kernel's table allows (one per
        peer on the underlay's L2 segment): past gc_thresh3 sends fail with ENOBUFS."""
        cur = self.read_thresholds()
        if cur is None or not neightable.warn_due(peers, cur[2], self._neigh_warned_for):
            return
        self._neigh_warned_for = peers
        want = neightable.recommended(peers)
        names = self.neigh_sysctls
        log.warning(
            "%d peers need up to %d neighbour (%s) entries on the underlay, more than "
            "%s = %d allows: sends will fail (ENOBUFS). "
            "Raise them: %s (and in /etc/sysctl.d/ to persist); peers behind a router need none",
            peers,
            neightable.wanted(peers),
            "NDP" if names == neightable.SYSCTLS6 else "ARP",
            names[2],
            cur[2],
            neightable.sysctl_command(want, names),
            extra={
                "event": "neighbour_table_small",
                "reason": "more peers than the kernel's neighbour table holds",
                "peers": peers,
                "gc_thresh3": cur[2],
            },
        )

    def save_news(self, own_incarnation: bool) -> None:
        """Member news is saved at most every SAVE_EVERY (a write and an fsync in the loop: per
        batch, 100 daemons starting on 2 cores spent more time there than in gossip). A new
        incarnation of our own is saved at once, and so is the first member to rejoin through:
        a daemon killed right after its join must find the mesh again from its state dir (a
        restart with no seeds)."""
        self.save(force=own_incarnation or not self._saved_peers)

    def _save_later(self, delay: float) -> None:
        """A save skipped for SAVE_EVERY happens when it is over (once, whatever comes
        meanwhile), so the last news is on disk within SAVE_EVERY even if none follows."""
        if self._save_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in the daemon's loop (a test): the next save writes it
        self._save_handle = loop.call_later(max(0.0, delay), self._save_due)

    def _save_due(self) -> None:
        self._save_handle = None
        self.save()

    def peer_views(self) -> list[PeerView]:
        me = self.node.local.name
        return [
            PeerView(record=m.record, state=str(m.state.value), state_since=m.state_since)
            for m in self.node.members()
            if m.record.name != me
        ]

    def save(self, force: bool = False, heartbeat: bool = False) -> None:
        """Persist identity, incarnation and the members worth rejoining through; skipped when
        nothing changed (unless ``heartbeat``), and at most every SAVE_EVERY seconds unless
        ``force``."""
        now = time.monotonic()
        members = self.node.members()
        key = (
            self.node.leaving,
            *((m.record.name, m.record.incarnation, str(m.state.value)) for m in members),
        )
        if key == self._saved_key and not heartbeat:
            return
        if not force and now - self._last_save < SAVE_EVERY:
            self._save_later(self._last_save + SAVE_EVERY - now)
            return
        self._saved_key, self._last_save = key, now
        me = self.node.local
        # An allocated subnet is released by a leave: the mesh may hand it out at once, so a
        # later start must not claim it back with its old age.
        released = bool(self.allocators) and self.node.leaving
        peers = [m for m in members if m.record.name != me.name and str(m.state.value) != "left"]
        self._saved_peers = any(str(m.state.value) in ("alive", "suspect") for m in peers)
        self.store.save(
            State(
                node_id=me.node_id,
                incarnation=me.incarnation,
                subnet=None if released else me.subnet,
                subnet_since=0 if released else me.since,
                subnet6=None if released else me.subnet6,
                saved_at=time.time(),
                members=[m.record for m in peers],
            )
        )
