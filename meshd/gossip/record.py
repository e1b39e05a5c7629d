"""The node record: what every member announces about itself, its signature, and its validation.

Kept small on purpose: it travels in every alive broadcast and in every push-pull. The wire form
is a positional msgpack list, append-only (docs/protocol.md, "Node record")::

    0 name  1 node_id  2 ip4 (4 B)  3 port  4 subnet4 (5 B)  5 backend  6 vtep_mac (0|6 B)  7 mtu
    8 incarnation  9 version  10 since  11 flags (bit 0: left)  12 ip6 (0|16 B)
    13 subnet6 (0|17 B)  14 cert (X.509 DER or b"")  15 sig (Ed25519, 64 B or b"")
    16 wg_key (WireGuard public key, 0|32 B)

Dual-stack (fields 12 and 13): ``public_ip`` is the address gossip uses, IPv4 or IPv6, and
``subnet`` the node's first subnet, IPv4 when it has one. Field 2 is ``0.0.0.0`` when
``public_ip`` is IPv6 (field 12 then carries it), field 4 five zero bytes when the node has no
IPv4 subnet (field 13 carries its IPv6 one); otherwise fields 12 and 13 carry the second family
(``public_ip6``, ``subnet6``). A member that predates dual-stack refuses a record with no IPv4
address or subnet (it could neither reach nor route that node) and reads the rest unchanged.

Fields 0..9 are protocol 1's, 10 came next; older members read only those. Trailing fields at
their defaults are not sent, so a shared-key record is byte for byte what older members send. The
signature covers ``SIGNING_PREFIX + msgpack(fields 0..13, then 16.. when any is set)`` --
everything but the certificate (which binds the key) and the signature itself; a record with no
field past 15 signs exactly as before field 16 existed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
SIGNING_PREFIX = b"meshd record v1\0"
"""Domain separation: a record signature can never be mistaken for a signature of anything else."""
SIG_LEN = 64
MAX_CERT_LEN = 1024
"""Largest certificate a record may carry (a meshd node certificate is ~350 bytes): a record
must fit a datagram beside a push-pull header."""
FLAG_LEFT = 1
_WIRE_FIELDS = 17
_MIN_WIRE_FIELDS = 11
WG_KEY_LEN = 32
ClaimRank = tuple[int, float]
"""How strong a certified claim on a subnet is: (pool bits, the certificate's not_before). Bit 0
is set when the IPv4 grant is a pool, bit 1 when the IPv6 one is (trust.py ``RANK_POOL4``,
``RANK_POOL6``); per family, a fixed-subnet grant (bit clear) outranks a pool. Lower is
stronger; see dataplane/model.py ``claim_order``."""


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
    by a newcomer. 0 = unknown (sorts last). Self-asserted: with certificates ``claim_rank``
    decides instead."""
    left: bool = False
    """The member left gracefully; only its own signed record can say so (cert mode)."""
    public_ip6: str | None = None
    """A second, IPv6 underlay address (a dual-stack underlay); only beside an IPv4
    ``public_ip``."""
    subnet6: str | None = None
    """The IPv6 container subnet beside an IPv4 ``subnet`` (a dual-stack overlay)."""
    cert: bytes = b""
    """The node's X.509 certificate (DER); empty in shared-key mode."""
    sig: bytes = b""
    """Ed25519 signature of `signing_bytes` by the certificate's key; empty in shared-key mode."""
    wg_key: bytes = b""
    """The node's WireGuard public key (the wireguard backend); empty otherwise. Signed."""
    claim_rank: ClaimRank | None = field(default=None, compare=False, repr=False)
    """Not on the wire: set by the trust check from the verified certificate (None when
    unverified), and used instead of ``since`` to decide between claimants."""

    @property
    def addr(self) -> tuple[str, int]:
        return (self.public_ip, self.port)

    @property
    def ip_version(self) -> int:
        """4 or 6: the family of ``public_ip`` (the underlay gossip uses)."""
        return 6 if ":" in self.public_ip else 4

    @property
    def subnets(self) -> tuple[str, ...]:
        """The node's container subnets, IPv4 first: one, or two on a dual-stack overlay."""
        return (self.subnet,) if self.subnet6 is None else (self.subnet, self.subnet6)

    def subnet_of(self, version: int) -> str | None:
        """The node's subnet of that IP version (4 or 6), if it has one."""
        if version == 6:
            return self.subnet6 if self.subnet6 is not None else _if_v6(self.subnet)
        return None if ":" in self.subnet else self.subnet

    def underlay_of(self, version: int) -> str | None:
        """The node's underlay address of that IP version (4 or 6), if it has one."""
        if version == 6:
            return self.public_ip6 if self.public_ip6 is not None else _if_v6(self.public_ip)
        return None if ":" in self.public_ip else self.public_ip

    def with_incarnation(self, incarnation: int) -> NodeRecord:
        return replace(self, incarnation=incarnation)

    def to_wire(self) -> list[Any]:
        """Compact positional form for msgpack (field order is part of the protocol); trailing
        fields at their defaults are left out (at least the 11 older members know are sent)."""
        wire = self._signed_fields()
        wire += (self.cert, self.sig, *self._later_fields())
        n = len(wire)
        while n > _MIN_WIRE_FIELDS and wire[n - 1] in (b"", 0):
            n -= 1
        del wire[n:]
        return wire

    def signing_bytes(self) -> bytes:
        """What the signature covers: fields 0..13, always all of them, then fields 16.. up to
        the last one set (none: the form records had before field 16)."""
        later = self._later_fields()
        while later and later[-1] in (b"", 0):
            later.pop()
        fields = self._signed_fields() + later
        return SIGNING_PREFIX + bytes(msgpack.packb(fields, use_bin_type=True))

    def sign(self, private_key: Ed25519PrivateKey) -> NodeRecord:
        """This record signed with ``private_key`` (``cert`` must already be the key's)."""
        return replace(self, sig=private_key.sign(self.signing_bytes()))

    def _later_fields(self) -> list[Any]:
        """Fields 16.. (after the certificate and the signature), signed like 0..13."""
        return [self.wg_key]

    def _signed_fields(self) -> list[Any]:
        ip6 = self.underlay_of(6)
        subnet6 = self.subnet_of(6)
        ip4 = self.underlay_of(4)
        subnet4 = self.subnet_of(4)
        return [
            self.name,
            self.node_id,
            ipaddress.IPv4Address(ip4).packed if ip4 is not None else NO_IP4,
            self.port,
            _pack_subnet(subnet4) if subnet4 is not None else NO_SUBNET4,
            _backend_to_wire(self.backend),
            bytes.fromhex(self.vtep_mac.replace(":", "")) if self.vtep_mac else b"",
            self.mtu,
            self.incarnation,
            self.version,
            self.since,
            FLAG_LEFT if self.left else 0,
            ipaddress.IPv6Address(ip6).packed if ip6 else b"",
            _pack_subnet6(subnet6) if subnet6 else b"",
        ]

    @classmethod
    def from_wire(cls, obj: Any) -> NodeRecord:
        """Decode and validate; raises RecordError naming the first bad field."""
        if not isinstance(obj, list) or len(obj) < 10:
            raise RecordError("record: not a 10-field list")
        name, node_id, ip, port, subnet, backend, mac, mtu, inc, ver = obj[:10]
        # Fields are only ever appended; an older peer sends 10, a newer one may send more.
        n = len(obj)
        since = obj[10] if n > 10 else 0
        flags = obj[11] if n > 11 else 0
        ip6 = obj[12] if n > 12 else b""
        subnet6 = obj[13] if n > 13 else b""
        cert = obj[14] if n > 14 else b""
        sig = obj[15] if n > 15 else b""
        wg_key = obj[16] if n > 16 else b""
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
        if not _is_int(flags) or flags not in (0, FLAG_LEFT):
            raise RecordError("flags: unknown bits")
        if not isinstance(ip6, bytes) or len(ip6) not in (0, 16):
            raise RecordError("public_ip6: not 0 or 16 bytes")
        if not isinstance(subnet6, bytes) or len(subnet6) not in (0, 17):
            raise RecordError("subnet6: not 0 or 17 bytes")
        public_ip6 = str(ipaddress.IPv6Address(ip6)) if ip6 else None
        subnet6_s = _unpack_subnet6(subnet6) if subnet6 else None
        public_ip = str(ipaddress.IPv4Address(ip))
        if ip == NO_IP4 and public_ip6 is not None:  # an IPv6 underlay
            public_ip, public_ip6 = public_ip6, None
        if subnet == NO_SUBNET4 and subnet6_s is not None:  # an IPv6-only overlay
            subnet_s, subnet6_s = subnet6_s, None
        else:
            subnet_s = _unpack_subnet(subnet)
        rec = cls(
            name=name,
            node_id=node_id,
            public_ip=public_ip,
            port=port,
            subnet=subnet_s,
            backend=backend,
            vtep_mac=":".join(f"{b:02x}" for b in mac) if mac else None,
            mtu=mtu,
            incarnation=inc,
            version=ver,
            since=since,
            left=flags == FLAG_LEFT,
            public_ip6=public_ip6,
            subnet6=subnet6_s,
            cert=cert,
            sig=sig,
            wg_key=wg_key,
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
            **({"left": True} if self.left else {}),
            **({"public_ip6": self.public_ip6} if self.public_ip6 else {}),
            **({"subnet6": self.subnet6} if self.subnet6 else {}),
            **({"cert": self.cert.hex()} if self.cert else {}),
            **({"sig": self.sig.hex()} if self.sig else {}),
            **({"wg_key": self.wg_key.hex()} if self.wg_key else {}),
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
                left=d.get("left", False),
                public_ip6=d.get("public_ip6"),
                subnet6=d.get("subnet6"),
                cert=bytes.fromhex(d.get("cert", "")),
                sig=bytes.fromhex(d.get("sig", "")),
                wg_key=bytes.fromhex(d.get("wg_key", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordError(f"record: {exc}") from exc
        validate(rec)
        return rec


NO_IP4 = bytes(4)
"""Field 2 of a node whose underlay is IPv6 (0.0.0.0: never a member's address)."""
NO_SUBNET4 = bytes(5)
"""Field 4 of a node with no IPv4 subnet (0.0.0.0/0: never a member's subnet)."""


def _if_v6(value: str) -> str | None:
    return value if ":" in value else None


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


def _pack_subnet6(cidr: str) -> bytes:
    net = ipaddress.IPv6Network(cidr)
    return net.network_address.packed + bytes([net.prefixlen])


def _unpack_subnet6(raw: bytes) -> str:
    if raw[16] > 128:
        raise RecordError("subnet6: prefix length > 128")
    try:
        return str(ipaddress.IPv6Network((raw[:16], raw[16]), strict=True))
    except ValueError as exc:
        raise RecordError("subnet6: host bits set") from exc


def unicast_ip4(ip: str) -> bool:
    """A public (underlay) address a peer may announce: not 0/8, 127/8, multicast (224/4),
    240/4 or the broadcast address."""
    try:
        ipaddress.IPv4Address(ip)
        first = int(ip.split(".", 1)[0])
    except ValueError:
        return False
    return first not in (0, 127) and first < 224


def validate(rec: NodeRecord) -> None:  # noqa: C901 - one check per field reads best as a list
    """Raise RecordError naming the first invalid field of ``rec``."""
    if not isinstance(rec.name, str) or not _NAME_RE.match(rec.name):
        raise RecordError("name: must be 1-63 of [A-Za-z0-9._-], starting alphanumeric")
    if not isinstance(rec.node_id, bytes) or len(rec.node_id) != NODE_ID_LEN:
        raise RecordError(f"node_id: must be {NODE_ID_LEN} bytes")
    if not isinstance(rec.public_ip, str):
        raise RecordError("public_ip: not a string")
    if ":" in rec.public_ip:
        _validate_ip6(rec.public_ip, "public_ip")
    elif not unicast_ip4(rec.public_ip):
        raise RecordError("public_ip: not a unicast IPv4 address")
    if not _is_int(rec.port) or not 1 <= rec.port <= 65535:
        raise RecordError("port: must be 1-65535")
    if isinstance(rec.subnet, str) and ":" in rec.subnet:
        validate_subnet6(rec.subnet, "subnet")
    else:
        validate_subnet(rec.subnet)
    if not isinstance(rec.backend, str) or not _BACKEND_RE.match(rec.backend):
        raise RecordError("backend: must be 1-16 of [a-z0-9-], starting with a letter")
    if rec.vtep_mac is not None and (
        not isinstance(rec.vtep_mac, str) or not _MAC_RE.match(rec.vtep_mac)
    ):
        raise RecordError("vtep_mac: not a lower-case MAC")
    if rec.vtep_mac is not None and (
        int(rec.vtep_mac[:2], 16) & 1 or rec.vtep_mac == "00:00:00:00:00:00"
    ):
        raise RecordError("vtep_mac: not a unicast MAC")
    if not _is_int(rec.mtu) or not 576 <= rec.mtu <= 65535:
        raise RecordError("mtu: must be 576-65535")
    if not _is_int(rec.incarnation) or not 0 <= rec.incarnation < 2**63:
        raise RecordError("incarnation: must be a non-negative 63-bit int")
    if not _is_int(rec.version) or not 1 <= rec.version <= 255:
        raise RecordError("version: must be 1-255")
    if not _is_int(rec.since) or not 0 <= rec.since < 2**40:
        raise RecordError("since: must be a non-negative unix time")
    if type(rec.left) is not bool:
        raise RecordError("left: not a bool")
    if rec.public_ip6 is not None:
        _validate_ip6(rec.public_ip6)
        if ":" in rec.public_ip:
            raise RecordError("public_ip6: only beside an IPv4 public_ip")
    if rec.subnet6 is not None:
        validate_subnet6(rec.subnet6)
        if ":" in rec.subnet:
            raise RecordError("subnet6: only beside an IPv4 subnet")
    if not isinstance(rec.cert, bytes) or len(rec.cert) > MAX_CERT_LEN:
        raise RecordError(f"cert: not bytes of at most {MAX_CERT_LEN}")
    if not isinstance(rec.sig, bytes) or len(rec.sig) not in (0, SIG_LEN):
        raise RecordError(f"sig: not 0 or {SIG_LEN} bytes")
    if not isinstance(rec.wg_key, bytes) or len(rec.wg_key) not in (0, WG_KEY_LEN):
        raise RecordError(f"wg_key: not 0 or {WG_KEY_LEN} bytes")


def unicast_ip6(ip: str) -> bool:
    """An IPv6 underlay address a peer may announce: not ::, ::1, multicast, link-local (it
    needs a zone), IPv4-mapped, or written with a zone (``%eth0``: a zone names a device of the
    host that wrote it, meaningless to a peer)."""
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return False
    return not (
        addr.scope_id is not None
        or addr.is_unspecified
        or addr.is_loopback
        or addr.is_multicast
        or addr.is_link_local
        or addr.ipv4_mapped is not None
    )


def _validate_ip6(ip: object, field: str = "public_ip6") -> None:
    if not isinstance(ip, str):
        raise RecordError(f"{field}: not a string")
    if not unicast_ip6(ip):
        raise RecordError(f"{field}: not a unicast IPv6 address")


def validate_subnet6(cidr: object, field: str = "subnet6") -> ipaddress.IPv6Network:
    """An IPv6 container subnet: strict CIDR, prefix /1 to /124 (what else a data plane refuses
    -- ::1, link-local, multicast -- is its prefix policy's, as for IPv4)."""
    if not isinstance(cidr, str):
        raise RecordError(f"{field}: not a string")
    try:
        net = ipaddress.IPv6Network(cidr, strict=True)
    except ValueError as exc:
        raise RecordError(f"{field}: {exc}") from exc
    if not 1 <= net.prefixlen <= 124:
        raise RecordError(f"{field}: prefix must be /1 to /124")
    return net


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


def certified_vtep_seed(name: str) -> bytes:
    """Certificate mode: what the VTEP MAC derives from (instead of the self-chosen node id):
    the certified name, unique under a CA and kept across renewals, so that no member can
    announce another's MAC (trust.py checks it)."""
    return hashlib.sha256(b"meshd vtep\0" + name.encode()).digest()[:NODE_ID_LEN]


def vtep_mac_for(node_id: bytes) -> str:
    """A stable VTEP MAC derived from the node id: locally administered, unicast."""
    b = bytearray(node_id[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)
