"""The state directory: node id, incarnation and last known members, so a restarted daemon keeps
its identity and rejoins without seeds. One JSON file, written atomically."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from meshd.errors import ConfigError
from meshd.gossip.record import NODE_ID_LEN, NodeRecord, RecordError
from meshd.securefile import write_file

log = logging.getLogger(__name__)
STATE_FILE = "state.json"


@dataclass
class State:
    node_id: bytes
    incarnation: int = 0
    members: list[NodeRecord] = field(default_factory=list)
    subnet: str | None = None
    """The subnet this node claimed, and since when (unix s): an unchanged subnet keeps its
    age across restarts, which is what the conflict rule orders claims by."""
    subnet_since: int = 0
    subnet6: str | None = None
    """The IPv6 subnet claimed beside an IPv4 ``subnet`` (a dual-stack overlay), like the
    record's: ``subnet`` is the IPv6 one when the node has no IPv4 subnet."""
    saved_at: float = 0.0
    """Unix time of the save (0: unknown). A running daemon saves at least every
    ``SAVE_HEARTBEAT`` seconds, so this is when it was last known alive: a node that was down
    longer than the subnet lease may find its allocated subnet taken, and claims it anew."""

    def subnet_of(self, version: int) -> str | None:
        """The saved subnet of IP version 4 or 6, if any."""
        for s in (self.subnet, self.subnet6):
            if s is not None and (":" in s) == (version == 6):
                return s
        return None


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"state_dir: cannot create {directory}: {exc.strerror}") from None

    def load(self) -> State:
        """The stored state, or a fresh identity when there is none (or it is unreadable)."""
        try:
            raw = json.loads(self.path.read_text())
            node_id = bytes.fromhex(raw["node_id"])
            if len(node_id) != NODE_ID_LEN:
                raise ValueError("node_id length")
            inc = int(raw.get("incarnation", 0))
        except FileNotFoundError:
            return State(node_id=os.urandom(NODE_ID_LEN))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "state file %s unreadable (%s): new identity",
                self.path,
                exc,
                extra={"event": "state_unreadable", "path": str(self.path), "reason": str(exc)},
            )
            return State(node_id=os.urandom(NODE_ID_LEN))
        members = []
        for m in raw.get("members", []):
            try:
                members.append(NodeRecord.from_dict(m))
            except (RecordError, TypeError, AttributeError):
                continue
        subnet = _subnet(raw.get("subnet"))
        subnet6 = _subnet(raw.get("subnet6"), 6)
        since = raw.get("subnet_since", 0)
        since = since if isinstance(since, int) and since >= 0 else 0
        saved_at = raw.get("saved_at", 0.0)
        saved_at = float(saved_at) if isinstance(saved_at, int | float) and saved_at > 0 else 0.0
        return State(
            node_id=node_id,
            incarnation=inc,
            members=members,
            subnet=subnet,
            subnet_since=since,
            subnet6=subnet6 if subnet is not None and ":" not in subnet else None,
            saved_at=saved_at,
        )

    def save(self, state: State) -> None:
        data = {
            "node_id": state.node_id.hex(),
            "incarnation": state.incarnation,
            "members": [m.to_dict() for m in state.members],
            "subnet": state.subnet,
            "subnet_since": state.subnet_since,
            **({"subnet6": state.subnet6} if state.subnet6 else {}),
            "saved_at": state.saved_at,
        }
        tmp = self.path.with_name(f".{STATE_FILE}.tmp")
        try:
            with open(tmp, "w") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error(
                "cannot save state to %s: %s",
                self.path,
                exc.strerror,
                extra={
                    "event": "state_save_failed",
                    "path": str(self.path),
                    "reason": exc.strerror,
                },
            )


def _subnet(value: object, version: int | None = None) -> str | None:
    """A saved subnet if it is one (of ``version``, when given); anything else is forgotten
    (the node then claims anew, as with no state)."""
    if not isinstance(value, str):
        return None
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        return None
    return str(net) if version is None or net.version == version else None


CRL_FILE = "crl.der"
MAX_CRL_FILE = 64 * 1024


class CrlStore:
    """The revocation list in force (certificate mode), kept in the state dir so a restarted
    daemon refuses revoked members before it hears from anyone. Its signature is checked again
    when it is installed; this only stores bytes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CRL_FILE

    def load(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "cannot read %s: %s",
                self.path,
                exc.strerror,
                extra={"event": "crl_unreadable", "path": str(self.path), "reason": exc.strerror},
            )
            return None
        return data if 0 < len(data) <= MAX_CRL_FILE else None

    def save(self, der: bytes) -> None:
        try:
            write_file(self.path, der, "revocation list", ConfigError, mode=0o644)
        except ConfigError as exc:
            log.error("%s", exc, extra={"event": "crl_save_failed", "reason": str(exc)})
