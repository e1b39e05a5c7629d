"""The composition root: wires config, keyring, state dir, gossip core, transport, data plane and
control socket together, and owns the daemon's lifecycle (signals, leave, shutdown).

What runs is elsewhere: the transport drives the gossip core (transport.py), the membership loop
feeds the data plane, the filter and the state dir (membership.py), the control commands and the
metrics read the node through the service (service.py).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from meshd import __version__, doctor, identity
from meshd.allocator import Allocator
from meshd.config import Config, parse_seed
from meshd.control.protocol import DoctorReply, UnderlayInfo
from meshd.control.server import ControlServer, group_id
from meshd.dataplane import allocation, backends, model
from meshd.dataplane.allocation import Pool
from meshd.dataplane.firewall import Firewall
from meshd.dataplane.masquerade import FAMILY, FAMILY6, Masquerade, remove_table
from meshd.dataplane.objects import Underlay
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.dataplane.underlay import discover_underlay
from meshd.dataplane.wgdevice import WireGuardDevices
from meshd.errors import ConfigError, DataplaneError, MeshdError
from meshd.gossip.messages import MAX_INCARNATION
from meshd.gossip.node import GossipNode
from meshd.gossip.record import PROTOCOL_VERSION, NodeRecord, RecordError, certified_vtep_seed
from meshd.gossip.security import Sealer
from meshd.gossip.trust import Signer, Trust, TrustError
from meshd.keyfile import WIREGUARD_KEY, load_keyring, load_or_create_wireguard_key
from meshd.membership import Membership
from meshd.metrics import MetricsServer
from meshd.purge import FORWARDING_MARKER
from meshd.service import Service
from meshd.statestore import CrlStore, StateStore
from meshd.systemd import sd_notify
from meshd.transport import Transport
from meshd.tunnelprobe import TunnelProber

log = logging.getLogger("meshd")


SKEW_FRESH = 300.0  # seconds: an older clock-skew sample is not reported by doctor


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._stop = asyncio.Event()
        # Everything that holds a socket, in the order setup opens them; None until then.
        self.transport: Transport | None = None
        self.reconciler: Reconciler | None = None
        self.firewall: Firewall | None = None
        self.masquerade: Masquerade | None = None
        self.masquerade6: Masquerade | None = None
        """The IPv6 table (ip6 meshd-nat) beside an IPv4 one: a dual-stack cluster network."""
        self.prober: TunnelProber | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None

    async def setup(self) -> None:
        """Wire everything up. When a step fails, what earlier steps opened (the UDP socket,
        netlink, the control socket) is closed before the error propagates."""
        try:
            await self._setup()
        except BaseException:
            await self._close()
            raise

    async def _setup(self) -> None:
        cfg = self.cfg
        wall = time.time()
        cred = None
        network, network6 = cfg.network, cfg.network6
        subnet_s, subnet6_s = cfg.subnet, cfg.subnet6
        pool: Pool | None = None
        pool6: Pool | None = None
        if cfg.ca is not None:
            assert cfg.cert is not None and cfg.cert_key is not None  # config.build ensures it
            cred = identity.load(cfg.ca, cfg.cert, cfg.cert_key, wall)
            identity.check_name(cred, cfg.name)
            subnet_s = identity.subnet_for(cred, cfg.subnet, 4)
            subnet6_s = identity.subnet_for(cred, cfg.subnet6, 6)
            network = identity.cluster_network(cred, cfg.network, 4)
            network6 = identity.cluster_network(cred, cfg.network6, 6)
            if subnet_s is None:
                pool = identity.pool_for(cred, cfg.subnet_len, 4)
            if subnet6_s is None:
                pool6 = identity.pool_for(cred, cfg.subnet_len6, 6)
        elif subnet6_s is None and network6 is not None:
            pool6 = Pool(network6, cfg.subnet_len6 or allocation.DEFAULT_LEN6)  # build checked
        if cred is None and subnet_s is None and network is not None:
            pool = Pool(network, cfg.subnet_len or allocation.DEFAULT_LEN)  # config.build checked
        if subnet_s is None and pool is None and subnet6_s is None and pool6 is None:
            raise ConfigError(
                "subnet: required, e.g. --subnet 10.244.1.0/24, or --network to allocate one"
            )
        keyring = load_keyring(cfg.key_file)
        store = StateStore(cfg.state_dir)
        state = store.load()
        underlay = await self._underlay(
            cred, ipv6_overlay=subnet6_s is not None or pool6 is not None
        )
        if cred is not None:
            identity.check_public_ip(cred, underlay.ip, underlay.ip6)
        ul_nets = [ipaddress.ip_network(c, strict=False) for c in underlay.cidrs()]
        # One allocator per family this node allocates (docs/allocation.md), judging claims
        # against the cluster network of each family.
        networks = tuple(n for n in (network, network6) if n is not None)
        exclude = [str(n) for n in ul_nets]
        known_now = [m for m in state.members if m.node_id != state.node_id]
        self.allocators: list[Allocator] = []
        claimed: list[int] = []
        for version, family_pool in ((4, pool), (6, pool6)):
            if family_pool is None:
                continue
            allocator = Allocator(
                family_pool,
                cfg.subnet_lease,
                cfg.backend,
                networks,
                exclude,
                random.Random(os.urandom(16)),
            )
            got, got_since = allocator.first(
                state.subnet_of(version), state.subnet_since, state.saved_at, known_now, wall
            )
            if version == 4:
                subnet_s = got
            else:
                subnet6_s = got
            claimed.append(got_since)
            self.allocators.append(allocator)
        self.allocator = self.allocators[0] if self.allocators else None
        subnets = [s for s in (subnet_s, subnet6_s) if s is not None]  # IPv4 first
        for sub, net in ((subnet_s, network), (subnet6_s, network6)):
            if sub is not None:
                check_subnet(sub, net, ul_nets)
        fixed = [s for s, p in ((subnet_s, pool), (subnet6_s, pool6)) if s and p is None]
        if fixed:  # a fixed subnet keeps its age while it stays what it was
            same = all(state.subnet_of(ipaddress.ip_network(s).version) == s for s in fixed)
            claimed.append(state.subnet_since if same and state.subnet_since else int(wall))
        # The record has one claim time for both families: the latest, so a subnet claimed now
        # never outranks an incumbent's claim by the age of its sibling.
        since = max(claimed)
        # The wireguard backend's key pair: made on first start, kept in the state dir.
        wg_devices = None
        if "wgpeer" in backends.get(cfg.backend).peer_objects:
            wg_devices = WireGuardDevices(load_or_create_wireguard_key(cfg.state_dir))
        # A restart announces a higher incarnation so it overrides any suspicion about us (at
        # the ceiling, an older release's state file: stay there rather than fail to start).
        local = NodeRecord(
            name=cfg.name,
            node_id=state.node_id,
            public_ip=underlay.ip,
            public_ip6=underlay.ip6 if underlay.version == 4 else None,
            port=cfg.port,
            subnet=subnets[0],
            subnet6=subnets[1] if len(subnets) > 1 else None,
            backend=cfg.backend,
            # Certificate mode derives the MAC from the certified name, which members check.
            vtep_mac=backends.get(cfg.backend).vtep_mac(
                state.node_id if cred is None else certified_vtep_seed(cfg.name)
            ),
            mtu=underlay.mtu,
            incarnation=min(state.incarnation + 1, MAX_INCARNATION),
            version=PROTOCOL_VERSION,
            since=since,
            cert=cred.cert.der if cred is not None else b"",
            wg_key=wg_devices.public_key if wg_devices is not None else b"",
        )
        known = [m for m in state.members if m.node_id != state.node_id and m.name != cfg.name]
        trust = signer = None
        if cred is not None:
            trust = Trust(cred.authorities)
            signer = Signer(cred.key, cred.cert.der)
        try:
            node = GossipNode(
                local,
                cfg.gossip,
                random.Random(os.urandom(16)),
                time.monotonic(),
                known=known,
                trust=trust,
                signer=signer,
                wall=wall,
            )
        except (RecordError, TrustError) as exc:  # e.g. an MTU no record can carry (lo: 65536)
            raise ConfigError(f"this node's record: {exc}") from None
        self.crl_store = CrlStore(cfg.state_dir)
        if trust is not None:
            saved = self.crl_store.load()
            if saved is not None and not node.install_crl(saved, time.monotonic()):
                log.warning(
                    "state: the saved revocation list was not taken (stale or not our CA's)",
                    extra={"event": "crl_refused", "reason": "stale or not our CA's"},
                )
        sealer = Sealer(keyring, state.node_id, max_datagram=cfg.gossip.max_datagram)
        changed = asyncio.Event()
        # Bound to the underlay address only (always one of this host's: discover_underlay
        # checks), so the gossip port is not open on every other interface.
        self.transport = Transport(
            node,
            sealer,
            (underlay.ip, cfg.port),
            on_change=changed.set,
            source_rate=cfg.source_rate_limit,
        )
        await self.transport.start()
        # The reconciler's own config: the Config fields it reads (docs/dataplane.md).
        rcfg = ReconcilerConfig(
            backend=cfg.backend,
            network=network,
            network6=network6,
            vni=cfg.vni,
            vxlan_port=cfg.vxlan_port,
            wireguard_port=cfg.wireguard_port,
            forwarding_marker=cfg.state_dir / FORWARDING_MARKER,
            bridge=cfg.bridge,
            subnet_env=cfg.subnet_env,
            ipmasq=cfg.ipmasq,
            resync_interval=cfg.resync_interval,
            reap_after=cfg.gossip.reap_after,
        )
        # An allocated subnet may still move until the first full state exchange says no member
        # holds it: subnet.env waits for that (the membership loop settles it).
        self.reconciler = Reconciler(
            rcfg, local, underlay, settled=not self.allocators, wg=wg_devices
        )
        if cfg.filter:
            self.firewall = Firewall(cfg.backend, cfg.backend_port or cfg.vxlan_port)
        if backends.get(cfg.backend).overhead:  # a tunnel to probe (host-gw has none)
            self.prober = TunnelProber(cfg.port)
        if cfg.ipmasq:
            if network is None and network6 is None:  # config.build refuses it
                raise ConfigError("ipmasq: needs network")
            # One table per family (ip meshd-nat, ip6 meshd-nat), each following its subnet.
            if network is not None and subnet_s is not None:
                self.masquerade = Masquerade(network)
            if network6 is not None:
                if self.masquerade is None:  # an IPv6-only node: its one table is the IPv6 one
                    self.masquerade = Masquerade(network6)
                else:
                    self.masquerade6 = Masquerade(network6)
        self.service = Service(
            node,
            self.transport,
            sealer,
            underlay_info(underlay),
            cfg.key_file,
            self._stop.set,
            self.reconciler,
            self.firewall,
            time.monotonic(),
            allocator=self.allocator,
            masquerade=self.masquerade,
            prober=self.prober,
            doctor=self.run_doctor,
            allocator6=self.allocators[1] if len(self.allocators) > 1 else None,
            masquerade6=self.masquerade6,
        )
        self.membership = Membership(
            node,
            store,
            self.reconciler,
            self.firewall,
            cfg.resync_interval,
            self.service.apply_key_ops,
            changed,
            self.crl_store,
            self.allocators,
            masquerade=self.masquerade,
            masquerade6=self.masquerade6,
            underlay_version=local.ip_version,
        )
        self.membership.save(force=True)
        seeds = await self._resolve_seeds(node.local)
        node.join(seeds, time.monotonic())
        try:
            await self.reconciler.start()
        except DataplaneError as exc:
            # Membership still works; `status` reports the data-plane error.
            log.error("data plane: %s", exc, extra={"event": "dataplane_error", "reason": str(exc)})
        if not cfg.filter and shutil.which("nft"):
            # The filter was switched off: drop the table an earlier run may have left.
            with contextlib.suppress(DataplaneError):
                await Firewall(cfg.backend, cfg.backend_port or cfg.vxlan_port).remove()
        await self._start_masquerade()
        # Kept only once listening: closing a server that failed to start would unlink the
        # socket of the daemon that holds it.
        control = ControlServer(
            cfg.socket, self.service.commands(), group=group_id(cfg.control_group)
        )
        await control.start()
        self.control = control
        if cfg.metrics:
            metrics = MetricsServer(cfg.metrics, self.service.metric_families)
            await metrics.start()
            self.metrics = metrics
        log.info(
            "meshd %s: %s (%s) subnet %s backend %s on %s, %d known member(s), %d seed(s)",
            __version__,
            local.name,
            ",".join(a for a in (local.public_ip, local.public_ip6) if a),
            ",".join(local.subnets),
            local.backend,
            underlay.ifname,
            len(known),
            len(seeds),
            extra={
                "event": "daemon_started",
                "peer": local.name,
                "version": __version__,
                "public_ip": local.public_ip,
                **({"public_ip6": local.public_ip6} if local.public_ip6 else {}),
                "subnet": local.subnet,
                **({"subnet6": local.subnet6} if local.subnet6 else {}),
                "backend": local.backend,
                "underlay": underlay.ifname,
                "members": len(known),
                "seeds": len(seeds),
            },
        )

    async def _start_masquerade(self) -> None:
        """ipmasq: install the rules now (an identical table left by the previous run is kept,
        so a restart leaves no gap); off: drop the table an earlier run may have left."""
        nats = [m for m in (self.masquerade, self.masquerade6) if m is not None]
        if nats:
            # Like the data plane: membership works without it; `status` reports the error.
            await self.membership.update_masquerade(force=True)
        if shutil.which("nft"):
            for family in (FAMILY, FAMILY6):
                if not any(m.family == family for m in nats):
                    with contextlib.suppress(DataplaneError):
                        await remove_table(family=family)

    async def _underlay(self, cred: identity.Credentials | None, *, ipv6_overlay: bool) -> Underlay:
        """The underlay: gossip goes over ``public_ip`` (IPv4) when given, else ``public_ip6``,
        else what discovery finds (IPv4 first). Beside an IPv4 address, ``public_ip6`` or, for
        a node with an IPv6 subnet, the device's IPv6 address is announced too (the data plane
        routes IPv6 over it: host-gw). With a certificate, only the IPv6 address it names
        (members refuse any other)."""
        cfg = self.cfg
        second = cfg.public_ip6 if cfg.public_ip else None
        if cred is not None and second is None and cfg.public_ip6 is None:
            second = identity.certified_ip6(cred)
        return await discover_underlay(
            cfg.iface,
            cfg.public_ip or cfg.public_ip6,
            public_ip6=second,
            dual_stack=ipv6_overlay and cred is None,
        )

    async def _resolve_seeds(self, local: NodeRecord) -> list[tuple[str, int]]:
        """Seeds as addresses of the family gossip uses (that of ``local.public_ip``): a name
        resolves to one of that family; an address of the other family is skipped with one
        line (this socket cannot reach it)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if local.ip_version == 6 else socket.AF_INET
        out: list[tuple[str, int]] = []
        for seed in self.cfg.seeds:
            host, port = parse_seed(seed, self.cfg.port)
            literal = _ip_version(host)
            if literal is not None and literal != local.ip_version:
                reason = (
                    f"an IPv{literal} address, but this node gossips over "
                    f"IPv{local.ip_version} ({local.public_ip})"
                )
                log.warning(
                    "seed %s: %s; skipping it",
                    seed,
                    reason,
                    extra={"event": "seed_unresolved", "seed": seed, "reason": reason},
                )
                continue
            try:
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning(
                    "seed %s: cannot resolve (%s); skipping it",
                    seed,
                    exc,
                    extra={"event": "seed_unresolved", "seed": seed, "reason": str(exc)},
                )
                continue
            addr = (str(ipaddress.ip_address(infos[0][4][0])), port)
            if addr != (local.public_ip, local.port):
                out.append(addr)
        return out

    async def run(self) -> int:
        await self.setup()
        assert self.transport is not None and self.reconciler is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        sd_notify("READY=1")
        tasks = [
            asyncio.create_task(self.transport.run(), name="transport"),
            asyncio.create_task(self.reconciler.run(), name="reconciler"),
            asyncio.create_task(self.membership.run(), name="membership"),
        ]
        if self.firewall is not None:
            tasks.append(asyncio.create_task(self.membership.firewall_loop(), name="filter"))
        if self.allocator is not None:
            tasks.append(asyncio.create_task(self.membership.heartbeat_loop(), name="heartbeat"))
        if self.masquerade is not None:  # the loop repairs the IPv6 table too
            tasks.append(asyncio.create_task(self.membership.masquerade_loop(), name="masquerade"))
        if self.prober is not None:
            tasks.append(
                asyncio.create_task(
                    self.membership.probe_targets_loop(self.prober), name="probe-targets"
                )
            )
            tasks.append(asyncio.create_task(self.prober.run(), name="tunnel-probe"))
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        rc = 0
        fatal: MeshdError | None = None
        for t in done:
            if t is not stop and t.exception() is not None:
                exc = t.exception()
                if isinstance(exc, MeshdError):  # said on purpose, in one line: the CLI prints it
                    fatal = exc
                else:
                    log.error(
                        "%s stopped: %s",
                        t.get_name(),
                        exc,
                        exc_info=exc,
                        extra={"event": "task_failed", "task": t.get_name(), "reason": str(exc)},
                    )
                rc = 1
        sd_notify("STOPPING=1")
        await self.shutdown(tasks + [stop])
        if fatal is not None:
            raise fatal
        return rc

    def reload(self) -> bool:
        """SIGHUP (``systemctl reload meshd``): re-read the files the daemon holds in memory.
        Each part validates its file before replacing anything and keeps the current state on
        error (one log line). True when every part reloaded."""
        ok = self.service.reload_key_file()
        if self.cfg.ca is not None:
            ok = self.reload_certificates() and ok
        return ok

    def reload_certificates(self) -> bool:
        """Re-read the CA bundle, this node's certificate and key (a renewal, a CA rotation):
        checked like at start, then our record is announced under them. On any error the
        current ones stay (one log line)."""
        cfg = self.cfg
        assert cfg.ca is not None and cfg.cert is not None and cfg.cert_key is not None
        node = self.service.node
        try:
            cred = identity.load(cfg.ca, cfg.cert, cfg.cert_key, time.time())
            identity.check_name(cred, cfg.name)
            signer = Signer(cred.key, cred.cert.der)
            node.renew_credentials(cred.authorities, signer, time.monotonic())
        except (MeshdError, TrustError) as exc:
            log.error(
                "reload: certificates: %s; keeping the current ones",
                exc,
                extra={"event": "reload_failed", "reason": str(exc)},
            )
            return False
        self.service.transport.kick()
        log.info(
            "reload: certificate serial %x (expires %s) announced at incarnation %d",
            cred.cert.serial,
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cred.cert.not_after)),
            node.local.incarnation,
            extra={
                "event": "certificate_reloaded",
                "serial": f"{cred.cert.serial:x}",
                "incarnation": node.local.incarnation,
            },
        )
        return True

    async def run_doctor(self) -> DoctorReply:
        """`meshd doctor`: the checks of meshd/doctor.py against this daemon's view."""
        return cast(DoctorReply, await doctor.run(self._doctor_sources()))

    def _doctor_sources(self) -> doctor.Sources:
        cfg = self.cfg
        assert self.reconciler is not None and self.transport is not None
        reconciler, transport, service = self.reconciler, self.transport, self.service
        node = service.node
        be = backends.get(cfg.backend)

        def peers() -> list[doctor.Peer]:
            flags = reconciler.peer_flags()
            now = time.time()
            out = []
            for m in node.members():
                r = m.record
                if r.node_id == node.local.node_id:
                    continue
                skew = transport.skew.get(r.node_id)
                out.append(
                    doctor.Peer(
                        name=r.name,
                        state=str(m.state.value),
                        public_ip=r.public_ip,
                        mtu=r.mtu,
                        flag=flags.get(r.name),
                        skew=skew[0] if skew and now - skew[1] < SKEW_FRESH else None,
                        address=_network_address(r.subnet_of(4)),
                        address6=_network_address(r.subnet_of(6)),
                    )
                )
            return out

        def cert_not_after() -> float | None:
            cert = service.trust_status().get("cert") or {}
            return cert.get("not_after")

        def expected_env() -> dict[str, str]:
            if not all(a.settled for a in self.allocators):
                return {}
            mtu = reconciler.status().get("mtu")
            want = {
                key: model.first_address(sub)
                for key, version in (("FLANNEL_SUBNET", 4), ("FLANNEL_IPV6_SUBNET", 6))
                if (sub := node.local.subnet_of(version)) is not None
            }
            return {**want, **({"FLANNEL_MTU": str(mtu)} if mtu else {})}

        secrets = [cfg.key_file]
        if cfg.cert_key is not None:
            secrets.append(cfg.cert_key)
        if "wgpeer" in be.peer_objects:
            secrets.append(cfg.state_dir / WIREGUARD_KEY)
        encap = be.encapsulation(cfg.backend_port or 0)
        return doctor.Sources(
            backend=cfg.backend,
            gossip_port=cfg.port,
            backend_port=cfg.backend_port,
            ip_protocol=encap.number if encap is not None and encap.protocol == "ip" else None,
            overhead=be.overhead,
            dataplane=reconciler.status,
            peers=peers,
            probe_all=self.prober.probe_all if self.prober is not None else None,
            secret_files=secrets,
            cert_not_after=cert_not_after,
            subnet_env=Path(cfg.subnet_env),
            expected_env=expected_env,
            lost_sends=transport.lost_sends,
            subnet_families=tuple(v for v in (4, 6) if node.local.subnet_of(v) is not None),
            underlay_families=tuple(
                v
                for v in sorted((4, 6), key=lambda v: v != node.local.ip_version)
                if node.local.underlay_of(v) is not None
            ),
        )

    async def shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Quiet stop: save state, close sockets; never touch kernel state."""
        self.membership.save(force=True)
        await self._close()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def _close(self) -> None:
        """Close whatever is open, newest first; safe after a partial setup."""
        if self.metrics is not None:
            await self.metrics.close()
        if self.control is not None:
            await self.control.close()
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.prober is not None:
            self.prober.close()
        if self.transport is not None:
            self.transport.close()


def underlay_info(underlay: Underlay) -> UnderlayInfo:
    """What `status` says of the underlay (``ip6``: a dual-stack underlay's second address)."""
    info: UnderlayInfo = {
        "ifname": underlay.ifname,
        "ip": underlay.ip,
        "prefixlen": underlay.prefixlen,
        "mtu": underlay.mtu,
    }
    if underlay.ip6:
        info["ip6"], info["prefixlen6"] = underlay.ip6, underlay.prefixlen6
    return info


def _ip_version(host: str) -> int | None:
    """4 or 6 for an address literal, None for a name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def check_subnet(
    subnet: str,
    network: str | None,
    underlay: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> None:
    """This node's subnet of one family: not overlapping an underlay network of this host, and
    inside the cluster network of its family (when there is one). ConfigError otherwise."""
    net = ipaddress.ip_network(subnet)
    for ul in underlay:
        if ul.version == net.version and net.overlaps(ul):
            raise ConfigError(f"subnet: {net} overlaps the underlay network {ul}")
    if network is not None:
        cluster = ipaddress.ip_network(network)
        if cluster.version != net.version or not net.subnet_of(cluster):  # type: ignore[arg-type]
            raise ConfigError(f"subnet: {net} is outside network {network}")


async def serve(cfg: Config) -> int:
    return await Daemon(cfg).run()


def _network_address(subnet: str | None) -> str:
    """``10.244.2.0/24`` -> ``10.244.2.0``, ``fd00:1::/64`` -> ``fd00:1::``; "" for None."""
    return str(ipaddress.ip_network(subnet).network_address) if subnet else ""
