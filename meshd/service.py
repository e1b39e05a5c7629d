"""What the control socket's commands do, and what `GET /metrics` reads: the running node seen
from outside.

Each handler takes a typed request and returns a typed reply (meshd/control/protocol.py); the
control server only parses JSON and dispatches (`Service.commands`). Key ops are applied here,
through the pure `keyops.apply_to_keyring`, and the resulting ring is persisted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshd import __version__
from meshd.control.protocol import (
    CRL_INSTALL,
    CrlInstall,
    CrlReply,
    DoctorReply,
    KeyInstall,
    KeyList,
    KeyRef,
    LeaveReply,
    PeerRow,
    StatusReply,
    UnderlayInfo,
    UpdateReply,
)
from meshd.control.server import Handler
from meshd.errors import ControlError, MeshdError
from meshd.gossip.certificate import CertError, parse_certificate, parse_crl, pem_to_der_list
from meshd.gossip.keyops import KeyringOutcome, apply_to_keyring
from meshd.gossip.messages import KeyOp
from meshd.gossip.node import GossipNode
from meshd.gossip.security import MAX_KEYS, KeyFormatError, Sealer, decode_key, key_id
from meshd.keyfile import load_keyring, save_keyring
from meshd.metrics import Family, Snapshot, families

log = logging.getLogger("meshd")
LEAVE_TIMEOUT = 5.0
"""Upper bound on how long `meshd leave` waits for the left broadcast to spread."""


class Kickable(Protocol):
    """The transport as the service sees it: counters, and a nudge after changing the core."""

    counters: Counter[str]

    def kick(self) -> None: ...


class HasStatus(Protocol):
    """The reconciler and the filter as the service sees them: a JSON-able status."""

    def status(self) -> dict[str, Any]: ...


class TunnelView(HasStatus, Protocol):
    def health(self) -> dict[str, dict[str, Any]]: ...
    async def probe_all(
        self, timeout: float = ..., tries: int = ...
    ) -> dict[str, dict[str, Any]]: ...


class DataplaneView(HasStatus, Protocol):
    def peer_flags(self) -> dict[str, str]: ...
    def handshakes(self) -> dict[str, int | None]: ...


@dataclass
class Service:
    node: GossipNode
    transport: Kickable
    sealer: Sealer
    underlay: UnderlayInfo
    key_file: Path
    stop: Callable[[], None]
    """Called once `leave` has answered: the daemon exits."""
    reconciler: DataplaneView | None = None
    firewall: HasStatus | None = None
    started: float = 0.0
    allocator: HasStatus | None = None
    """Set when this node allocates its subnet (meshd/allocator.py)."""
    masquerade: HasStatus | None = None
    allocator6: HasStatus | None = None
    """A dual-stack node allocating its IPv6 subnet too (``allocator``: the IPv4 one)."""
    masquerade6: HasStatus | None = None
    """The IPv6 masquerade of a node with an IPv6 network beside an IPv4 one."""
    prober: TunnelView | None = None
    """Probes through the tunnel (None for host-gw: nothing encapsulated to probe)."""
    doctor: Callable[[], Awaitable[DoctorReply]] | None = None
    """`meshd doctor`'s checks (meshd/doctor.py, wired by the daemon)."""

    def commands(self) -> dict[str, Handler]:
        """The control socket's command table: raw JSON request -> typed call."""

        async def keys_list(req: dict[str, Any]) -> KeyList:
            return self.key_list()

        async def keys_install(req: dict[str, Any]) -> KeyList:
            return await self.keys_install(KeyInstall.parse(req))

        async def keys_use(req: dict[str, Any]) -> KeyList:
            return await self.keys_use(KeyRef.parse(req))

        async def keys_remove(req: dict[str, Any]) -> KeyList:
            return await self.keys_remove(KeyRef.parse(req))

        async def peers(req: dict[str, Any]) -> list[PeerRow]:
            return self.peers()

        async def status(req: dict[str, Any]) -> StatusReply:
            return self.status()

        async def leave(req: dict[str, Any]) -> LeaveReply:
            return await self.leave()

        async def update(req: dict[str, Any]) -> UpdateReply:
            return self.update()

        async def doctor(req: dict[str, Any]) -> DoctorReply:
            if self.doctor is None:
                raise ControlError("doctor: not available in this daemon")
            reply: DoctorReply = await self.doctor()
            return reply

        async def crl_install(req: dict[str, Any]) -> CrlReply:
            return await self.crl_install(CrlInstall.parse(req))

        return {
            "peers": peers,
            "status": status,
            "leave": leave,
            "update": update,
            "doctor": doctor,
            "keys.list": keys_list,
            "keys.install": keys_install,
            "keys.use": keys_use,
            "keys.remove": keys_remove,
            CRL_INSTALL: crl_install,
        }

    # ---------------------------------------------------------------- reading
    def peers(self) -> list[PeerRow]:
        now = time.monotonic()
        flags = self.reconciler.peer_flags() if self.reconciler else {}
        shakes = self.reconciler.handshakes() if self.reconciler else {}
        tunnel = self.prober.health() if self.prober else {}
        me = self.node.local.name
        trust = "shared-key" if self.node.trust is None else "certificate"
        out: list[PeerRow] = []
        for m in sorted(self.node.members(), key=lambda m: m.record.name):
            r = m.record
            is_self = r.name == me
            out.append(
                {
                    "name": r.name,
                    "public_ip": r.public_ip,
                    "public_ip6": r.public_ip6,
                    "subnet": r.subnet,
                    "subnet6": r.subnet6,
                    "backend": r.backend,
                    "vtep_mac": r.vtep_mac,
                    "state": str(m.state.value),
                    "incarnation": r.incarnation,
                    "last_seen": 0.0 if is_self else round(max(0.0, now - m.last_seen), 1),
                    "self": is_self,
                    "node_id": r.node_id.hex(),
                    "flag": flags.get(r.name),
                    "handshake": shakes.get(r.name),
                    "tunnel": tunnel.get(r.name),
                    "trust": trust,
                }
            )
        return out

    def members_by_state(self) -> dict[str, int]:
        by_state = Counter(str(m.state.value) for m in self.node.members())
        return {s: by_state.get(s, 0) for s in ("alive", "suspect", "dead", "left")}

    def counters(self) -> Counter[str]:
        """Transport counters (datagrams and bytes on the wire, envelope drops) merged with the
        core's (messages by type, decode drops, probes); the core's own in/out count payloads
        that passed the envelope, so they are kept apart as ``payload_in``/``payload_out``."""
        merged: Counter[str] = Counter(self.transport.counters)
        for k, v in self.node.counters.items():
            merged[f"payload_{k}" if k in ("in", "out") else k] += v
        return merged

    def status(self) -> StatusReply:
        counters = self.counters()
        st: StatusReply = {
            "version": __version__,
            # The certificate and signature are in `trust` (readable); not 800 hex digits here.
            "node": {
                k: v for k, v in self.node.local.to_dict().items() if k not in ("cert", "sig")
            },
            "underlay": self.underlay,
            "uptime": round(time.monotonic() - self.started, 1),
            "synced": self.node.synced,
            "members": self.members_by_state(),
            "counters": dict(sorted(counters.items())),
            "dropped": {k[5:]: v for k, v in sorted(counters.items()) if k.startswith("drop.")},
            "lost_sends": {
                k[11:]: v for k, v in sorted(counters.items()) if k.startswith("send_error.")
            },
            "keys": self.sealer.keyring.ids(),
            "trust": self.trust_status(),
            "dataplane": self.reconciler.status() if self.reconciler else {},
            "tunnel": self.prober.status() if self.prober else None,
            "filter": self.firewall.status() if self.firewall else {"enabled": False},
            "allocation": self.allocator.status() if self.allocator else {},
            "masquerade": self.masquerade.status() if self.masquerade else {"enabled": False},
            "protocol": self.node.protocol_status(),
        }
        if self.allocator6 is not None:
            st["allocation6"] = self.allocator6.status()
        if self.masquerade6 is not None:
            st["masquerade6"] = self.masquerade6.status()
        return st

    def trust_status(self) -> dict[str, Any]:
        trust = self.node.trust
        if trust is None:
            return {
                "mode": "shared-key",
                "authenticated": False,
                "warning": "unauthenticated mesh: any holder of the mesh key is believed about "
                "every member (docs/security.md); use certificates (--ca, --cert)",
            }
        local = self.node.local
        out: dict[str, Any] = {
            "mode": "certificates",
            "authenticated": True,
            "ca": [
                {"name": a.name, "network": a.network, "fingerprint": a.fingerprint.hex()}
                for a in trust.authorities
            ],
            "local": self.node.local_revoked,
        }
        try:
            info = parse_certificate(local.cert)
        except CertError:  # pragma: no cover - our own certificate was checked at start
            info = None
        if info is not None:
            out["cert"] = {
                "name": info.name,
                "serial": f"{info.serial:x}",
                "fingerprint": info.fingerprint.hex(),
                "not_after": info.not_after,
                "grant": info.grant.describe(),
            }
        revs = trust.revocations
        out["crl"] = (
            None
            if revs is None
            else {"number": revs.number, "revoked": len(revs.serials), "issuer": revs.issuer}
        )
        return out

    async def crl_install(self, req: CrlInstall) -> CrlReply:
        """Install a revocation list on this member; it spreads from here over gossip."""
        trust = self.node.trust
        if trust is None:
            raise ControlError("crl: this mesh runs in shared-key mode (no ca): nothing to revoke")
        ders = pem_to_der_list(req.crl, "X509 CRL")
        if len(ders) != 1:
            raise ControlError("crl: expected exactly one PEM CRL")
        try:
            revs = parse_crl(ders[0], trust.authorities)
        except CertError as exc:
            raise ControlError(f"crl: {exc}") from None
        installed = self.node.install_crl(ders[0], time.monotonic())
        self.transport.kick()
        current = trust.revocations
        if not installed and (current is None or current.number < revs.number):
            raise ControlError("crl: refused by the gossip core (see status counters)")
        assert current is not None
        return {
            "number": current.number,
            "issuer": current.issuer,
            "revoked": sorted(f"{s:x}" for s in current.serials),
            "installed": installed,
        }

    def snapshot(self) -> Snapshot:
        rtt = self.node.probe_rtt
        local = self.node.local
        return Snapshot(
            counters=self.counters(),
            members=self.members_by_state(),
            rtt_buckets=rtt.buckets,
            rtt_sum=rtt.sum,
            rtt_count=rtt.count,
            health=self.node.health,
            dataplane=self.reconciler.status() if self.reconciler else {},
            tunnel=self.prober.status() if self.prober else {},
            version=__version__,
            name=local.name,
            backend=local.backend,
        )

    def metric_families(self) -> list[Family]:
        """What `GET /metrics` serves (the names live in meshd/metrics.py)."""
        return families(self.snapshot())

    # ---------------------------------------------------------------- changing
    def update(self) -> UpdateReply:
        """Re-announce this node with a higher incarnation (memberlist's UpdateNode): what a
        changed record would do, used to measure dissemination."""
        at = time.time()
        self.node.update_local(self.node.local, time.monotonic())
        self.transport.kick()
        return {"incarnation": self.node.local.incarnation, "at": at}

    async def leave(self) -> LeaveReply:
        self.node.leave(time.monotonic())
        self.transport.kick()
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while not self.node.leave_done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        spread = self.node.leave_done()
        why = "broadcast spread" if spread else "timed out waiting"
        log.info(
            "left the mesh (%s)",
            why,
            extra={"event": "self_left", "peer": self.node.local.name, "reason": why},
        )
        # Answer first, then stop.
        asyncio.get_running_loop().call_later(0.1, self.stop)
        return {"left": True, "spread": spread}

    # ---------------------------------------------------------------- keyring
    def apply_key_ops(self) -> None:
        """Apply the key ops the core hands out (ours and the mesh's) and persist the ring.
        Ordering and redelivery are the core's business (gossip/keyops.py)."""
        ops = self.node.pop_key_ops()
        if not ops:
            return
        change = apply_to_keyring(self.sealer.keyring, ops)
        for op, outcome in change.outcomes:
            _log_key_op(op, outcome)
            if outcome == "full":
                self.node.counters["keyring.full"] += 1
        if change.changed:
            self.sealer.set_keyring(change.keyring)
            try:
                save_keyring(self.key_file, change.keyring)
            except MeshdError as exc:
                log.error(
                    "keyring: %s (the change holds until restart)",
                    exc,
                    extra={"event": "keyring_save_failed", "reason": str(exc)},
                )

    def reload_key_file(self) -> bool:
        """Re-read ``key_file`` and make its ring the sealer's (SIGHUP). A file that does not
        load leaves the current ring in place: one error line, and False. Keys the mesh
        installed over gossip were saved to this same file, so reloading keeps them."""
        try:
            keyring = load_keyring(self.key_file)
        except MeshdError as exc:
            log.error(
                "reload: %s; keeping the current keyring",
                exc,
                extra={"event": "reload_failed", "reason": str(exc)},
            )
            return False
        before = self.sealer.keyring.ids()
        self.sealer.set_keyring(keyring)
        after = keyring.ids()
        if after == before:
            log.info(
                "reload: keyring unchanged (%d key(s))",
                len(after),
                extra={"event": "keyring_reloaded", "keys": len(after)},
            )
        else:
            log.info(
                "reload: keyring from %s: primary %s, %d key(s)",
                self.key_file,
                after[0],
                len(after),
                extra={"event": "keyring_reloaded", "primary": after[0], "keys": len(after)},
            )
        return True

    def key_list(self) -> KeyList:
        ids = self.sealer.keyring.ids()
        return {"primary": ids[0], "keys": ids}

    def _known(self, ref: KeyRef) -> bytes:
        if ref.key_id.hex() not in self.sealer.keyring.ids():
            raise ControlError(f"key id {ref.key_id.hex()} is not in this node's keyring")
        return ref.key_id

    async def _key_op(self, op: str, arg: bytes) -> KeyList:
        self.node.broadcast_key_op(op, arg, time.monotonic())
        self.apply_key_ops()
        self.transport.kick()
        return self.key_list()

    async def keys_install(self, req: KeyInstall) -> KeyList:
        try:
            key = decode_key(req.key)
        except KeyFormatError as exc:
            raise ControlError(f"key: {exc}") from None
        ring = self.sealer.keyring
        if key not in ring.keys and len(ring.keys) >= MAX_KEYS:
            raise ControlError(
                f"keyring is full ({MAX_KEYS} keys): `meshd keys remove` an old one first"
            )
        return await self._key_op("install", key)

    async def keys_use(self, req: KeyRef) -> KeyList:
        return await self._key_op("use", self._known(req))

    async def keys_remove(self, req: KeyRef) -> KeyList:
        kid = self._known(req)
        if kid == key_id(self.sealer.keyring.primary):
            raise ControlError(f"key {kid.hex()} is the primary: `meshd keys use` another first")
        return await self._key_op("remove", kid)


def _log_key_op(op: KeyOp, outcome: KeyringOutcome) -> None:
    kid = (key_id(op.key) if op.op == "install" else op.key).hex()
    # event key_<outcome>: key_installed, key_primary, key_removed, key_unknown, ...
    extra = {"event": f"key_{outcome}", "peer": op.origin, "key": kid, "op": op.op}
    if outcome == "installed":
        log.info("keyring: installed key %s (from %s)", kid, op.origin, extra=extra)
    elif outcome == "primary":
        log.info("keyring: key %s is primary now (from %s)", kid, op.origin, extra=extra)
    elif outcome == "removed":
        log.info("keyring: removed key %s (from %s)", kid, op.origin, extra=extra)
    elif outcome == "unknown":
        log.warning("keyring: cannot use unknown key %s (yet)", kid, extra=extra)
    elif outcome == "refused":
        log.warning("keyring: refusing to remove the primary key %s", kid, extra=extra)
    elif outcome == "full":
        log.warning("keyring: no room for key %s (%d keys at most)", kid, MAX_KEYS, extra=extra)
