"""The composition root: wires config, keyring, state dir, gossip core, transport, data plane and
control socket together, and owns the daemon's lifecycle (signals, leave, shutdown).

Shutdown by SIGTERM/SIGINT is quiet: no leave broadcast and no change to kernel state, so a
restart disturbs neither peers nor packets. Only `meshd leave` announces a departure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import shutil
import signal
import socket
import time
from collections import Counter
from typing import Any

from meshd import __version__
from meshd.config import Config, parse_seed
from meshd.control.server import ControlServer
from meshd.dataplane.firewall import Firewall
from meshd.dataplane.model import PeerView
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.dataplane.underlay import discover_underlay
from meshd.errors import ConfigError, ControlError, DataplaneError, MeshdError
from meshd.gossip.node import GossipNode
from meshd.gossip.record import PROTOCOL_VERSION, NodeRecord, vtep_mac_for
from meshd.gossip.security import KeyFormatError, Keyring, Sealer, decode_key, key_id
from meshd.keyfile import load_keyring, save_keyring
from meshd.metrics import Family, MetricsServer
from meshd.statestore import State, StateStore
from meshd.transport import Transport

log = logging.getLogger("meshd")
LEAVE_TIMEOUT = 5.0
"""Upper bound on how long `meshd leave` waits for the left broadcast to spread."""
SAVE_EVERY = 2.0
"""Seconds between state-dir writes while membership changes (a crash loses at most this)."""


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._last_save = 0.0
        self._saved_key: tuple[Any, ...] = ()
        self.reconciler: Reconciler | None = None
        self.firewall: Firewall | None = None
        self._fw_forced = 0.0
        self._fw_error: str | None = None

    # ---------------------------------------------------------------- setup
    async def setup(self) -> None:
        cfg = self.cfg
        if cfg.subnet is None:
            raise ConfigError("subnet: required, e.g. --subnet 10.244.1.0/24")
        keyring = load_keyring(cfg.key_file)
        self.store = StateStore(cfg.state_dir)
        state = self.store.load()
        self.underlay = await discover_underlay(cfg.iface, cfg.public_ip)
        subnet = ipaddress.IPv4Network(cfg.subnet)
        ul_net = ipaddress.IPv4Network(
            f"{self.underlay.ip}/{self.underlay.prefixlen}", strict=False
        )
        if subnet.overlaps(ul_net):
            raise ConfigError(f"subnet: {subnet} overlaps the underlay network {ul_net}")
        if cfg.network and not subnet.subnet_of(ipaddress.IPv4Network(cfg.network)):
            raise ConfigError(f"subnet: {subnet} is outside network {cfg.network}")
        # A restart announces a higher incarnation so it overrides any suspicion about us.
        local = NodeRecord(
            name=cfg.name,
            node_id=state.node_id,
            public_ip=self.underlay.ip,
            port=cfg.port,
            subnet=str(subnet),
            backend=cfg.backend,
            vtep_mac=vtep_mac_for(state.node_id) if cfg.backend == "vxlan" else None,
            mtu=self.underlay.mtu,
            incarnation=state.incarnation + 1,
            version=PROTOCOL_VERSION,
            since=state.subnet_since if state.subnet == str(subnet) and state.subnet_since
            else int(time.time()),
        )
        known = [m for m in state.members if m.node_id != state.node_id and m.name != cfg.name]
        now = time.monotonic()
        self.node = GossipNode(local, cfg.gossip, random.Random(os.urandom(16)), now, known=known)
        self.sealer = Sealer(keyring)
        self.transport = Transport(
            self.node, self.sealer, ("0.0.0.0", cfg.port), on_change=self._changed.set
        )
        await self.transport.start()
        self._save(force=True)
        seeds = await self._resolve_seeds()
        self.node.join(seeds, time.monotonic())
        # The reconciler's own config: the Config fields it reads (docs/dataplane.md).
        rcfg = ReconcilerConfig(
            backend=cfg.backend, network=cfg.network, vni=cfg.vni, vxlan_port=cfg.vxlan_port,
            bridge=cfg.bridge, subnet_env=cfg.subnet_env, ipmasq=cfg.ipmasq,
            resync_interval=cfg.resync_interval, reap_after=cfg.gossip.reap_after,
        )
        self.reconciler = Reconciler(rcfg, local, self.underlay)
        try:
            await self.reconciler.start()
        except DataplaneError as exc:
            # Membership still works; `status` reports the data-plane error.
            log.error("data plane: %s", exc)
        if cfg.filter:
            self.firewall = Firewall(cfg.backend, cfg.vxlan_port)
        elif shutil.which("nft"):
            # The filter was switched off: drop the table an earlier run may have left.
            with contextlib.suppress(DataplaneError):
                await Firewall(cfg.backend, cfg.vxlan_port).remove()
        self.control = ControlServer(
            cfg.socket,
            {
                "peers": self._cmd_peers,
                "status": self._cmd_status,
                "leave": self._cmd_leave,
                "update": self._cmd_update,
                "keys.list": self._cmd_keys_list,
                "keys.install": self._cmd_keys_install,
                "keys.use": self._cmd_keys_use,
                "keys.remove": self._cmd_keys_remove,
            },
            group=_group_id(cfg.control_group),
        )
        await self.control.start()
        self.metrics: MetricsServer | None = None
        if cfg.metrics:
            self.metrics = MetricsServer(cfg.metrics, self.metric_families)
            await self.metrics.start()
        log.info(
            "meshd %s: %s (%s) subnet %s backend %s on %s, %d known member(s), %d seed(s)",
            __version__, local.name, local.public_ip, local.subnet, local.backend,
            self.underlay.ifname, len(known), len(seeds),
        )

    async def _resolve_seeds(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        out: list[tuple[str, int]] = []
        for seed in self.cfg.seeds:
            host, port = parse_seed(seed, self.cfg.port)
            try:
                infos = await loop.getaddrinfo(host, port, family=socket.AF_INET,
                                               type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("seed %s: cannot resolve (%s); skipping it", seed, exc)
                continue
            addr = (str(infos[0][4][0]), port)
            if addr != (self.node.local.public_ip, self.node.local.port):
                out.append(addr)
        return out

    # ---------------------------------------------------------------- run
    async def run(self) -> int:
        await self.setup()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        _sd_notify("READY=1")
        assert self.reconciler is not None
        tasks = [
            asyncio.create_task(self.transport.run(), name="transport"),
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self._membership_loop(), name="membership"),
        ]
        if self.firewall is not None:
            tasks.append(asyncio.create_task(self._firewall_loop(), name="filter"))
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        rc = 0
        for t in done:
            if t is not stop and t.exception() is not None:
                exc = t.exception()
                log.error("%s stopped: %s", t.get_name(), exc, exc_info=exc)
                rc = 1
        _sd_notify("STOPPING=1")
        await self.shutdown(tasks + [stop])
        return rc

    async def shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Quiet stop: save state, close sockets; never touch kernel state."""
        self._save(force=True)
        await self.control.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self.reconciler is not None:
            await self.reconciler.close()
        self.transport.close()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def _membership_loop(self) -> None:
        """Forward membership changes to the reconciler, the filter and the state dir.

        Woken after every datagram and timer, but it only acts on news: member events, the first
        full sync, or a new local incarnation (a refutation must survive a crash)."""
        assert self.reconciler is not None
        synced: bool | None = None
        incarnation = -1
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._apply_key_ops()
            events = self.node.pop_events()
            for ev in events:
                m = ev.member
                log.info("member %s (%s %s): %s", m.record.name, m.record.public_ip,
                         m.record.subnet, ev.kind)
            if events or synced != self.node.synced:
                synced = self.node.synced
                self.reconciler.set_peers(self._peer_views(), synced, time.monotonic())
                await self._update_firewall()
                self._save(force=True)
            elif incarnation != self.node.local.incarnation:
                self._save(force=True)
            incarnation = self.node.local.incarnation
            # Membership news arrives in bursts: batch it (briefly: the data plane waits on it).
            await asyncio.sleep(0.01)

    async def _firewall_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            await self._update_firewall()

    async def _update_firewall(self) -> None:
        """Accept encapsulated packets from every member that is not gone (dead ones too: their
        routes stay until reap_after, and so does their traffic); a periodic forced apply
        restores rules deleted by hand."""
        if self.firewall is None:
            return
        me = self.node.local.name
        ips = {m.record.public_ip for m in self.node.members()
               if m.record.name != me and str(m.state.value) != "left"}
        now = time.monotonic()
        force = now - self._fw_forced > self.cfg.resync_interval
        try:
            await self.firewall.apply(ips, force=force)
        except DataplaneError as exc:
            if str(exc) != self._fw_error:
                log.error("%s", exc)
            self._fw_error = str(exc)
            return
        self._fw_error = None
        if force:
            self._fw_forced = now

    def _peer_views(self) -> list[PeerView]:
        me = self.node.local.name
        return [
            PeerView(record=m.record, state=str(m.state.value), state_since=m.state_since)
            for m in self.node.members()
            if m.record.name != me
        ]

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        key = tuple(
            (m.record.name, m.record.incarnation, str(m.state.value)) for m in self.node.members()
        )
        if key == self._saved_key or (not force and now - self._last_save < SAVE_EVERY):
            return
        self._saved_key, self._last_save = key, now
        me = self.node.local
        members = [
            m.record for m in self.node.members()
            if m.record.name != me.name and str(m.state.value) != "left"
        ]
        self.store.save(State(node_id=me.node_id, incarnation=me.incarnation, members=members,
                              subnet=me.subnet, subnet_since=me.since))

    # ---------------------------------------------------------------- control
    async def _cmd_peers(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.monotonic()
        flags = self.reconciler.peer_flags() if self.reconciler else {}
        me = self.node.local.name
        out = []
        for m in sorted(self.node.members(), key=lambda m: m.record.name):
            r = m.record
            is_self = r.name == me
            out.append({
                "name": r.name,
                "public_ip": r.public_ip,
                "subnet": r.subnet,
                "backend": r.backend,
                "vtep_mac": r.vtep_mac if r.backend == "vxlan" else None,
                "state": str(m.state.value),
                "incarnation": r.incarnation,
                "last_seen": 0.0 if is_self else round(max(0.0, now - m.last_seen), 1),
                "self": is_self,
                "node_id": r.node_id.hex(),
                "flag": flags.get(r.name),
            })
        return out

    async def _cmd_status(self, req: dict[str, Any]) -> dict[str, Any]:
        by_state: Counter[str] = Counter(str(m.state.value) for m in self.node.members())
        counters = self.counters()
        return {
            "version": __version__,
            "node": self.node.local.to_dict(),
            "underlay": {"ifname": self.underlay.ifname, "ip": self.underlay.ip,
                         "prefixlen": self.underlay.prefixlen, "mtu": self.underlay.mtu},
            "uptime": round(time.monotonic() - self.started, 1),
            "synced": self.node.synced,
            "members": {s: by_state.get(s, 0) for s in ("alive", "suspect", "dead", "left")},
            "counters": dict(sorted(counters.items())),
            "dropped": {k[5:]: v for k, v in sorted(counters.items()) if k.startswith("drop.")},
            "keys": self.sealer.keyring.ids(),
            "dataplane": self.reconciler.status() if self.reconciler else {},
            "filter": self.firewall.status() if self.firewall else {"enabled": False},
        }

    # ---------------------------------------------------------------- keyring
    def _apply_key_ops(self) -> None:
        """Apply the key ops the core hands out (ours and the mesh's), idempotently, and persist
        the ring. Ordering and redelivery are the core's business (gossip/keyops.py)."""
        ring = list(self.sealer.keyring.keys)
        before = tuple(ring)
        for op in self.node.pop_key_ops():
            ids = [key_id(k) for k in ring]
            if op.op == "install":
                if op.key not in ring:
                    ring.append(op.key)
                    log.info("keyring: installed key %s (from %s)", key_id(op.key).hex(), op.origin)
            elif op.op == "use":
                if op.key not in ids:
                    log.warning("keyring: cannot use unknown key %s (yet)", op.key.hex())
                elif ids.index(op.key) != 0:
                    ring.insert(0, ring.pop(ids.index(op.key)))
                    log.info("keyring: key %s is primary now (from %s)", op.key.hex(), op.origin)
            elif op.op == "remove" and op.key in ids:
                if ids.index(op.key) == 0:
                    log.warning("keyring: refusing to remove the primary key %s", op.key.hex())
                else:
                    ring.pop(ids.index(op.key))
                    log.info("keyring: removed key %s (from %s)", op.key.hex(), op.origin)
        if tuple(ring) != before:
            new = Keyring(tuple(ring))
            self.sealer.set_keyring(new)
            try:
                save_keyring(self.cfg.key_file, new)
            except MeshdError as exc:
                log.error("keyring: %s (the change holds until restart)", exc)

    def _key_list(self) -> dict[str, Any]:
        ids = self.sealer.keyring.ids()
        return {"primary": ids[0], "keys": ids}

    async def _cmd_keys_list(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._key_list()

    def _key_id_arg(self, req: dict[str, Any]) -> bytes:
        raw = req.get("key_id")
        try:
            kid = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            kid = b""
        if len(kid) != 4:
            raise ControlError(f"key id {raw!r}: expected 8 hex digits (see `meshd keys list`)")
        if kid.hex() not in self.sealer.keyring.ids():
            raise ControlError(f"key id {kid.hex()} is not in this node's keyring")
        return kid

    async def _key_op(self, op: str, arg: bytes) -> dict[str, Any]:
        self.node.broadcast_key_op(op, arg, time.monotonic())
        self._apply_key_ops()
        self.transport.kick()
        return self._key_list()

    async def _cmd_keys_install(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            key = decode_key(str(req.get("key", "")))
        except KeyFormatError as exc:
            raise ControlError(f"key: {exc}") from None
        return await self._key_op("install", key)

    async def _cmd_keys_use(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self._key_op("use", self._key_id_arg(req))

    async def _cmd_keys_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        kid = self._key_id_arg(req)
        if kid == key_id(self.sealer.keyring.primary):
            raise ControlError(f"key {kid.hex()} is the primary: `meshd keys use` another first")
        return await self._key_op("remove", kid)

    def counters(self) -> Counter[str]:
        """Transport counters (datagrams and bytes on the wire, envelope drops) merged with the
        core's (messages by type, decode drops, probes); the core's own in/out count payloads
        that passed the envelope, so they are kept apart as ``payload_in``/``payload_out``."""
        merged: Counter[str] = Counter(self.transport.counters)
        for k, v in self.node.counters.items():
            merged[f"payload_{k}" if k in ("in", "out") else k] += v
        return merged

    async def _cmd_update(self, req: dict[str, Any]) -> dict[str, Any]:
        """Re-announce this node with a higher incarnation (memberlist's UpdateNode): what a
        changed record would do, used to measure dissemination."""
        at = time.time()
        self.node.update_local(self.node.local, time.monotonic())
        self.transport.kick()
        return {"incarnation": self.node.local.incarnation, "at": at}

    async def _cmd_leave(self, req: dict[str, Any]) -> dict[str, Any]:
        self.node.leave(time.monotonic())
        self.transport.kick()
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while not self.node.leave_done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        spread = self.node.leave_done()
        log.info("left the mesh (%s)", "broadcast spread" if spread else "timed out waiting")
        # Answer first, then stop.
        asyncio.get_running_loop().call_later(0.1, self._stop.set)
        return {"left": True, "spread": spread}


    def metric_families(self) -> list[Family]:
        """Everything `GET /metrics` shows; names follow Prometheus conventions."""
        c = self.counters()
        fams: list[Family] = []
        fam = Family("meshd_members", "gauge", "Members by state, this node included.")
        by_state = Counter(str(m.state.value) for m in self.node.members())
        for st in ("alive", "suspect", "dead", "left"):
            fam.add(by_state.get(st, 0), {"state": st})
        fams.append(fam)
        fam = Family("meshd_datagrams_total", "counter", "UDP datagrams on the wire.")
        fams.append(fam.add(c["in"], {"direction": "in"}).add(c["out"], {"direction": "out"}))
        fam = Family("meshd_bytes_total", "counter", "UDP payload bytes on the wire (sealed).")
        fams.append(fam.add(c["in_bytes"], {"direction": "in"})
                    .add(c["out_bytes"], {"direction": "out"}))
        fam = Family("meshd_messages_received_total", "counter", "Gossip messages by type.")
        for k, v in sorted(c.items()):
            if k.startswith("msg."):
                fam.add(v, {"type": k[4:]})
        fams.append(fam)
        fam = Family("meshd_dropped_total", "counter", "Datagrams dropped, by reason.")
        for k, v in sorted(c.items()):
            if k.startswith("drop."):
                fam.add(v, {"reason": k[5:]})
        fams.append(fam)
        fam = Family("meshd_probes_total", "counter", "Failure-detection probes by result.")
        for k, v in sorted(c.items()):
            if k.startswith("probe."):
                fam.add(v, {"result": k[6:]})
        fams.append(fam)
        fam = Family("meshd_anti_entropy_total", "counter",
                     "Anti-entropy digests: sent, and received ones whose view was the same, "
                     "differed (a full push-pull followed) or changed before the answer (late).")
        for result in ("sent", "same", "differ", "late"):
            fam.add(c[f"push_pull.digest_{result}"], {"result": result})
        fams.append(fam)
        fams.append(Family("meshd_suspicions_total", "counter",
                           "Members this node started suspecting.").add(c["suspect.raised"]))
        rtt = self.node.probe_rtt
        fam = Family("meshd_probe_rtt_seconds", "histogram", "Probe round-trip time.")
        for le, n in rtt.buckets:
            fam.add(n, {"le": "+Inf" if le == float("inf") else f"{le:g}"}, "_bucket")
        fams.append(fam.add(rtt.sum, None, "_sum").add(rtt.count, None, "_count"))
        fams.append(Family("meshd_local_health", "gauge",
                           "Lifeguard local health score (0 is healthy).").add(self.node.health))
        dp = self.reconciler.status() if self.reconciler else {}
        fams.append(Family("meshd_reconcile_runs_total", "counter",
                           "Data-plane reconcile passes.").add(dp.get("runs", 0)))
        last = dp.get("last_run") or {}
        fams.append(Family("meshd_reconcile_duration_seconds", "gauge",
                           "Duration of the last reconcile pass.")
                    .add(last.get("duration_ms", 0) / 1000))
        fam = Family("meshd_reconcile_changes_total", "counter",
                     "Kernel changes applied, by kind.")
        for kind, n in sorted((dp.get("applied") or {}).items()):
            fam.add(n, {"kind": kind})
        fams.append(fam)
        fams.append(Family("meshd_reconcile_errors", "gauge",
                           "Recent data-plane errors (bounded list in `meshd status`).")
                    .add(len(dp.get("errors") or [])))
        fams.append(Family("meshd_info", "gauge", "Build and node information.").add(
            1, {"version": __version__, "name": self.node.local.name,
                "backend": self.node.local.backend}))
        return fams


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"control_group: no group named {name!r}") from None


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald reads the level from the prefix and adds the
    timestamp itself (SyslogLevelPrefix=yes is systemd's default)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelname, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


async def serve(cfg: Config) -> int:
    return await Daemon(cfg).run()



