"""The control protocol's typed requests and replies: what each command takes and answers.

The wire is JSON (see `meshd.control`); these types are the contract between the daemon's
handlers (meshd/service.py), the client and the formatters, so neither side passes
``dict[str, Any]`` around. Requests are parsed from the raw JSON object once, here, and a bad
argument becomes a one-line ControlError. Stdlib only: the CLI imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from meshd.errors import ControlError

READ_ONLY = frozenset({"peers", "status", "keys.list", "doctor"})
"""Commands that change nothing, which members of ``control_group`` may run. Every other
command -- leave, update, keys.install/use/remove, crl.install and any added later -- needs root:
a new command is root-only until it is listed here."""

KEY_ID_HEX = 32
"""A key id on the control socket: 16 bytes (security.KEY_ID_LEN) as 32 hex digits
(`meshd keys list`)."""


class DoctorFinding(TypedDict):
    check: str
    """forwarding, rp_filter, kernel, mtu, checksum, firewall, clock, files, subnet.env, tunnel"""
    level: str
    """ok, warn or fail"""
    message: str
    fix: str
    peer: str | None


class DoctorReply(TypedDict):
    ok: bool
    """False when any finding failed (`meshd doctor` exits 1)."""
    findings: list[DoctorFinding]


class PeerRow(TypedDict):
    """One member in ``peers`` (what `meshd peers --json` prints)."""

    name: str
    public_ip: str
    """The underlay address gossip uses: IPv4 or IPv6."""
    public_ip6: NotRequired[str | None]
    """A second, IPv6 underlay address beside an IPv4 ``public_ip`` (a dual-stack underlay);
    absent from daemons before dual-stack."""
    subnet: str
    """The member's first container subnet: IPv4 when it has one, else IPv6."""
    subnet6: NotRequired[str | None]
    """Its IPv6 subnet beside an IPv4 ``subnet`` (a dual-stack overlay); absent from daemons
    before dual-stack."""
    backend: str
    vtep_mac: str | None
    state: str
    """alive, suspect, dead or left."""
    incarnation: int
    last_seen: float
    """Seconds since we last heard from it directly (0 for this node)."""
    self: bool
    node_id: str
    flag: str | None
    """Why the data plane does not program it as usual (conflicted, refused, ...), if so."""
    handshake: int | None
    tunnel: dict[str, Any] | None
    """Probes through the tunnel to this peer (``state`` ok | unreachable | unknown, ``rtt_ms``,
    ``last_ok``, ``failures``); None for host-gw, this node, or a peer not programmed."""
    """wireguard backend: unix seconds of this peer's latest WireGuard handshake (None: none
    yet, or another backend)."""
    trust: str
    """``certificate``: its record is signed and its certificate checked against the CA;
    ``shared-key``: the mesh is unauthenticated, the record is believed as any key holder sent
    it."""


class UnderlayInfo(TypedDict):
    ifname: str
    ip: str
    """The address gossip uses (IPv4 or IPv6)."""
    prefixlen: int
    mtu: int
    ip6: NotRequired[str | None]
    """A second, IPv6 address on a dual-stack underlay; absent from daemons before dual-stack."""
    prefixlen6: NotRequired[int]


class StatusReply(TypedDict):
    """``status``: this node, member counts, counters, the data plane and the filter."""

    version: str
    node: dict[str, Any]
    """The local NodeRecord as JSON (record.NodeRecord.to_dict)."""
    underlay: UnderlayInfo
    uptime: float
    synced: bool
    members: dict[str, int]
    """Members by state (alive, suspect, dead, left), this node included."""
    counters: dict[str, int]
    dropped: dict[str, int]
    """Dropped datagrams by reason (the ``drop.*`` counters without their prefix)."""
    lost_sends: NotRequired[dict[str, int]]
    """Gossip sends the kernel refused, by reason (``enobufs``, ``ehostunreach``, ...: the
    ``send_error.*`` counters without their prefix); absent from daemons before issue 16."""
    keys: list[str]
    trust: dict[str, Any]
    """``mode`` (certificates or shared-key), ``authenticated``, and in certificate mode the CA,
    this node's certificate (name, serial, fingerprint, expiry), the revocation list in force
    and ``local`` (why our own certificate no longer holds, or empty)."""
    dataplane: dict[str, Any]
    """The reconciler's status (dataplane/reconciler.py), ``{}`` before it started."""
    tunnel: dict[str, Any] | None
    """The tunnel prober's status (meshd/tunnelprobe.py); None for host-gw."""
    filter: dict[str, Any]
    allocation: dict[str, Any]
    """Allocating nodes (no fixed subnet): the pool (network, subnet_len, size), the lease, how
    the subnet was had (``origin``: kept, reclaimed, picked), ``settled``, the moves; else
    ``{}``."""
    masquerade: NotRequired[dict[str, Any]]
    """``ipmasq``: the masquerade's status (dataplane/masquerade.py), or ``{"enabled": False}``;
    absent from daemons older than the feature."""
    allocation6: NotRequired[dict[str, Any]]
    """A dual-stack node allocating both families: the IPv6 allocation (``allocation`` is then
    the IPv4 one)."""
    masquerade6: NotRequired[dict[str, Any]]
    """The IPv6 masquerade (table ip6 meshd-nat) beside an IPv4 one (``masquerade``)."""
    protocol: NotRequired[dict[str, Any]]
    """The wire protocol: ``version`` spoken (major.minor), the range it ``accepts``, and
    ``last_refused`` (the last datagram dropped for its version: version, reason, addr, sender)
    or None (GossipNode.protocol_status); absent from daemons before 0.2.0."""


class KeyList(TypedDict):
    """Every ``keys.*`` command answers with the resulting ring."""

    primary: str
    keys: list[str]


class LeaveReply(TypedDict):
    left: bool
    spread: bool
    """The left broadcast was sent its full retransmit count before the timeout."""


class UpdateReply(TypedDict):
    incarnation: int
    at: float
    """Wall-clock time of the re-announcement."""


@dataclass(frozen=True, slots=True)
class KeyInstall:
    """``keys.install``: a key from `meshd keygen` (base64)."""

    key: str

    @classmethod
    def parse(cls, req: dict[str, Any]) -> KeyInstall:
        key = req.get("key")
        if not isinstance(key, str):
            raise ControlError("key: expected a base64 key (see `meshd keygen`)")
        return cls(key)


@dataclass(frozen=True, slots=True)
class KeyRef:
    """``keys.use`` and ``keys.remove``: a key id (``key_id``, 32 hex digits)."""

    key_id: bytes

    @classmethod
    def parse(cls, req: dict[str, Any]) -> KeyRef:
        raw = req.get("key_id")
        try:
            kid = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            kid = b""
        if len(kid) * 2 != KEY_ID_HEX:
            raise ControlError(
                f"key id {raw!r}: expected {KEY_ID_HEX} hex digits (see `meshd keys list`)"
            )
        return cls(kid)


CRL_INSTALL = "crl.install"
"""The command `meshd crl install` sends (named like ``keys.install``)."""
MAX_CRL_PEM = 32 * 1024
"""A CRL travels in one datagram (certificate.MAX_CRL_DER is 16 KiB of DER); its PEM is ~4/3."""


@dataclass(frozen=True, slots=True)
class CrlInstall:
    """``crl.install``: ``crl``, a CRL as PEM text (`meshd ca revoke` writes DIR/crl). Only its
    shape is checked here; the daemon checks the signature against its CA and the number."""

    crl: str

    @classmethod
    def parse(cls, req: dict[str, Any]) -> CrlInstall:
        pem = req.get("crl")
        if not isinstance(pem, str) or "-----BEGIN X509 CRL-----" not in pem:
            raise ControlError("crl: expected a PEM CRL (-----BEGIN X509 CRL-----)")
        if len(pem) > MAX_CRL_PEM:
            raise ControlError(f"crl: {len(pem)} characters, more than {MAX_CRL_PEM}")
        return cls(pem)


class CrlReply(TypedDict):
    """``crl.install``: the CRL in force on this member after the request."""

    number: int
    """Its CRL number."""
    issuer: str
    """The CA that signed it (its common name)."""
    revoked: list[str]
    """The serials it revokes (hex)."""
    installed: bool
    """False when this member already had this CRL or a newer one (nothing changed)."""
