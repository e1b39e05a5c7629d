"""The node record: what every member announces about itself, and its validation.

Kept small on purpose: it travels in every alive broadcast and in every push-pull.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any

PROTOCOL_VERSION = 1
WIRE_BACKEND_CODES = ("host-gw", "ipip", "vxlan")
"""Frozen: how protocol version 1 numbered the backends on the wire, kept so older members read
our records. Any other backend travels as its name. Which backends exist, and whether a peer's is
compatible, is the data plane's business (``meshd.dataplane.backends``), not the record's."""
_BACKEND_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
NODE_ID_LEN = 16
MAX_NAME_LEN = 63
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class RecordError(ValueError):
    """A record field is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One member's identity and data-plane parameters.

    ``incarnation`` is bumped only by the node itself (to refute suspicion or announce a change).
    """

    name: str
    node_id: bytes
    public_ip: str
    port: int
    subnet: str
    backend: str
    vtep_mac: str | None
    mtu: int
    incarnation: int = 0
    version: int = PROTOCOL_VERSION
    since: int = 0
    """Unix time (s) this node began claiming ``subnet``, kept across restarts: the conflict
    rule gives an overlapping subnet to the earliest claim, so an incumbent is never displaced
    by a newcomer. 0 = unknown (sorts last)."""

    @property
    def addr(self) -> tuple[str, int]:
        return (self.public_ip, self.port)

    def with_incarnation(self, incarnation: int) -> NodeRecord:
        return replace(self, incarnation=incarnation)

    def to_wire(self) -> list[Any]:
        """Compact positional form for msgpack (field order is part of the protocol)."""
        return [
            self.name,
            self.node_id,
            ipaddress.IPv4Address(self.public_ip).packed,
            self.port,
            _pack_subnet(self.subnet),
            _backend_to_wire(self.backend),
            bytes.fromhex(self.vtep_mac.replace(":", "")) if self.vtep_mac else b"",
            self.mtu,
            self.incarnation,
            self.version,
            self.since,
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> NodeRecord:
        """Decode and validate; raises RecordError naming the first bad field."""
        if not isinstance(obj, list) or len(obj) < 10:
            raise RecordError("record: not a 10-field list")
        name, node_id, ip, port, subnet, backend, mac, mtu, inc, ver = obj[:10]
        # Fields are only ever appended; an older peer sends 10, a newer one may send more.
        since = obj[10] if len(obj) > 10 else 0
        if not isinstance(ip, bytes) or len(ip) != 4:
            raise RecordError("public_ip: not 4 bytes")
        if not isinstance(subnet, bytes) or len(subnet) != 5:
            raise RecordError("subnet: not 5 bytes")
        if _is_int(backend):
            if not 0 <= backend < len(WIRE_BACKEND_CODES):
                raise RecordError("backend: unknown wire code")
            backend = WIRE_BACKEND_CODES[backend]
        elif not isinstance(backend, str):
            raise RecordError("backend: not a code or a name")
        if not isinstance(mac, bytes) or len(mac) not in (0, 6):
            raise RecordError("vtep_mac: not 0 or 6 bytes")
        rec = cls(
            name=name,
            node_id=node_id,
            public_ip=str(ipaddress.IPv4Address(ip)),
            port=port,
            subnet=_unpack_subnet(subnet),
            backend=backend,
            vtep_mac=":".join(f"{b:02x}" for b in mac) if mac else None,
            mtu=mtu,
            incarnation=inc,
            version=ver,
            since=since,
        )
        validate(rec)
        return rec

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": self.node_id.hex(),
            "public_ip": self.public_ip,
            "port": self.port,
            "subnet": self.subnet,
            "backend": self.backend,
            "vtep_mac": self.vtep_mac,
            "mtu": self.mtu,
            "incarnation": self.incarnation,
            "version": self.version,
            "since": self.since,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeRecord:
        try:
            rec = cls(
                name=d["name"],
                node_id=bytes.fromhex(d["node_id"]),
                public_ip=d["public_ip"],
                port=d["port"],
                subnet=d["subnet"],
                backend=d["backend"],
                vtep_mac=d.get("vtep_mac"),
                mtu=d["mtu"],
                incarnation=d.get("incarnation", 0),
                version=d.get("version", PROTOCOL_VERSION),
                since=d.get("since", 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"record: {exc}") from exc
        validate(rec)
        return rec


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _backend_to_wire(name: str) -> int | str:
    return WIRE_BACKEND_CODES.index(name) if name in WIRE_BACKEND_CODES else name


def _pack_subnet(cidr: str) -> bytes:
    net = ipaddress.IPv4Network(cidr)
    return net.network_address.packed + bytes([net.prefixlen])


def _unpack_subnet(raw: bytes) -> str:
    if raw[4] > 32:
        raise RecordError("subnet: prefix length > 32")
    try:
        return str(ipaddress.IPv4Network((raw[:4], raw[4]), strict=True))
    except ValueError as exc:
        raise RecordError("subnet: host bits set") from exc


def validate(rec: NodeRecord) -> None:
    """Raise RecordError naming the first invalid field of ``rec``."""
    if not isinstance(rec.name, str) or not _NAME_RE.match(rec.name):
        raise RecordError("name: must be 1-63 of [A-Za-z0-9._-], starting alphanumeric")
    if not isinstance(rec.node_id, bytes) or len(rec.node_id) != NODE_ID_LEN:
        raise RecordError(f"node_id: must be {NODE_ID_LEN} bytes")
    try:
        ip = ipaddress.IPv4Address(rec.public_ip)
    except ValueError as exc:
        raise RecordError(f"public_ip: {exc}") from exc
    if ip.is_unspecified or ip.is_multicast:
        raise RecordError("public_ip: unspecified or multicast")
    if not _is_int(rec.port) or not 1 <= rec.port <= 65535:
        raise RecordError("port: must be 1-65535")
    validate_subnet(rec.subnet)
    if not isinstance(rec.backend, str) or not _BACKEND_RE.match(rec.backend):
        raise RecordError("backend: must be 1-16 of [a-z0-9-], starting with a letter")
    if rec.vtep_mac is not None and (
        not isinstance(rec.vtep_mac, str) or not _MAC_RE.match(rec.vtep_mac)
    ):
        raise RecordError("vtep_mac: not a lower-case MAC")
    if not _is_int(rec.mtu) or not 576 <= rec.mtu <= 65535:
        raise RecordError("mtu: must be 576-65535")
    if not _is_int(rec.incarnation) or not 0 <= rec.incarnation < 2**63:
        raise RecordError("incarnation: must be a non-negative 63-bit int")
    if not _is_int(rec.version) or not 1 <= rec.version <= 255:
        raise RecordError("version: must be 1-255")
    if not _is_int(rec.since) or not 0 <= rec.since < 2**40:
        raise RecordError("since: must be a non-negative unix time")


def validate_subnet(cidr: object) -> ipaddress.IPv4Network:
    """A container subnet: strict IPv4 CIDR, not 0.0.0.0/0, prefix at most /30."""
    if not isinstance(cidr, str):
        raise RecordError("subnet: not a string")
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise RecordError(f"subnet: {exc}") from exc
    if net.prefixlen == 0:
        raise RecordError("subnet: 0.0.0.0/0 would capture all traffic")
    if net.prefixlen > 30:
        raise RecordError("subnet: prefix longer than /30 leaves no room for containers")
    return net


def vtep_mac_for(node_id: bytes) -> str:
    """A stable VTEP MAC derived from the node id: locally administered, unicast."""
    b = bytearray(node_id[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)
