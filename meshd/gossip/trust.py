"""Who may say what: node records checked against the cluster CA (certificate mode).

A record is believed only when

* it carries a certificate issued by one of the configured authorities, valid at the driver's
  wall time, whose serial the current revocation list does not name;
* the certificate binds the record's name (CN), public IPs (SAN: each announced underlay address,
  IPv4 and IPv6, must be the certificate's of its family) and subnets (grant, per family: a fixed
  subnet, or any /len of a pool; a dual-stack record's IPv6 subnet by the grant's IPv6 part);
* its signature over ``record.signing_bytes()`` verifies under the certificate's key -- so only
  the node holding the key can write its own record, ``left`` included.

Otherwise it is dropped and counted as ``drop.<reason>``: ``unsigned``, ``bad_signature``,
``cert_name``, ``cert_ip``, ``cert_grant``, ``cert_expired``, ``cert_not_yet_valid``,
``cert_issuer``, ``cert_malformed``, ``revoked``.

Verification is paid once per signed record version: results are cached by the record itself
(every field, certificate and signature included), certificates by their DER. Only the checks
that move with time -- validity window and revocation -- run again on a hit, and they are a
comparison and a set lookup. `Trust.fork` shares these caches between the simulator's nodes.

Shared-key mode has no Trust at all (``GossipNode(trust=None)``): records are believed as before.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.gossip.certificate import (
    EXPIRED,
    MALFORMED,
    NOT_YET_VALID,
    Authority,
    CertError,
    CertInfo,
    Revocations,
    parse_certificate,
    parse_crl,
    verify_certificate,
)
from meshd.gossip.record import ClaimRank, NodeRecord, certified_vtep_seed, vtep_mac_for

CACHE_MAX = 1 << 16
"""Verified records (and certificates) remembered; cleared when full, like the decoder's cache."""

UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
CERT_NAME = "cert_name"
CERT_IP = "cert_ip"
CERT_GRANT = "cert_grant"
CERT_MAC = "cert_mac"
"""A VTEP MAC other than the one derived from the certified name (record.certified_vtep_seed)."""
REVOKED = "revoked"


_CRYPTO_ERRORS = (UnsupportedAlgorithm, ValueError, TypeError)
"""What `cryptography` may raise past certificate.py on hostile DER (an unknown key algorithm
raises UnsupportedAlgorithm): a malformed certificate, never an exception out of the core."""


class TrustError(ValueError):
    """Our own certificate, key or record cannot work; ``str()`` is one line for the operator,
    ``reason`` a counter suffix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


RANK_POOL4 = 1
RANK_POOL6 = 2
"""The kind bits of a `ClaimRank`: set when that family's grant is a pool (a fixed subnet
outranks a pool's claim). An IPv4-only certificate's rank is (0 | 1, not_before) as before
dual-stack; ``model.claim_order`` reads the bit of the family it orders."""


def claim_rank(info: CertInfo) -> ClaimRank:
    """A fixed-subnet grant outranks a pool grant, per family; then the older certificate."""
    grant = info.grant
    kind = (0 if grant.is_fixed(4) or grant.part(4) is None else RANK_POOL4) | (
        0 if grant.is_fixed(6) or grant.part(6) is None else RANK_POOL6
    )
    return (kind, info.not_before)


def record_problem(info: CertInfo, rec: NodeRecord) -> tuple[str, str] | None:
    """What in ``rec`` the certificate does not bind, as (reason, one line), or None: the name,
    every underlay address (each the certificate's of its family) and every subnet (each
    allowed by the grant of its family)."""
    if info.name != rec.name:
        return CERT_NAME, f"name {rec.name!r} contradicts the certificate (CN {info.name!r})"
    for version in (4, 6):
        ip = rec.underlay_of(version)
        if ip is not None and not _same_address(ip, info.address_of(version)):
            certified = info.address_of(version) or f"no IPv{version} address"
            return CERT_IP, f"public IP {ip} contradicts the certificate ({certified})"
    for subnet in rec.subnets:
        if not info.grant.allows(subnet):
            return (
                CERT_GRANT,
                f"subnet {subnet} contradicts the certificate (grants {info.grant.describe()})",
            )
    return None


def _same_address(announced: str, certified: str | None) -> bool:
    """Equal as addresses (an IPv6 address has many spellings; the certificate's is canonical)."""
    if certified is None:
        return False
    if announced == certified:
        return True
    try:
        return ipaddress.ip_address(announced) == ipaddress.ip_address(certified)
    except ValueError:
        return False


def _raw(key: object) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined, no-any-return]


class Signer:
    """The node's private key and its certificate: signs every record the node announces."""

    def __init__(self, key: Ed25519PrivateKey, cert: bytes) -> None:
        try:
            info = parse_certificate(cert)
        except CertError as exc:
            raise TrustError(exc.reason, str(exc)) from None
        except _CRYPTO_ERRORS:
            raise TrustError(MALFORMED, "certificate: unreadable") from None
        if _raw(key.public_key()) != _raw(info.public_key):
            raise TrustError(
                "cert_key", f"certificate {info.name!r}: the key does not match the certificate"
            )
        self.key = key
        self.cert = cert
        self.info = info
        self.rank = claim_rank(info)

    def sign(self, rec: NodeRecord) -> NodeRecord:
        """``rec`` with our certificate and signature (and our claim rank)."""
        return replace(rec, cert=self.cert, claim_rank=self.rank, sig=b"").sign(self.key)


@dataclass(slots=True)
class _Caches:
    records: dict[NodeRecord, tuple[NodeRecord, CertInfo] | str]
    certs: dict[bytes, CertInfo | str]


class Trust:
    """The authorities, the current revocations, and the verification caches."""

    def __init__(
        self,
        authorities: Sequence[Authority],
        revocations: Revocations | None = None,
        _caches: _Caches | None = None,
    ) -> None:
        if not authorities:
            raise ValueError("trust: no certificate authority")
        self.authorities = tuple(authorities)
        self.revocations = revocations
        self._revoked: frozenset[int] = revocations.serials if revocations else frozenset()
        self._c = _caches or _Caches({}, {})
        # A certificate is only as valid as its CA: the window every verified one must lie in.
        self._ca_from = min(a.not_before for a in self.authorities)
        self._ca_until = max(a.not_after for a in self.authorities)
        self.earliest_expiry = float("inf")
        """The earliest not_after among certificates verified here (see `GossipNode`'s expiry
        check: nothing to scan before then)."""

    def fork(self) -> Trust:
        """Another node's Trust with the same authorities and caches, its own revocations
        (the simulator: thousands of nodes verify each record version once between them)."""
        return Trust(self.authorities, self.revocations, self._c)

    # --- records ------------------------------------------------------------------------------

    def verify(self, rec: NodeRecord, wall: float) -> tuple[NodeRecord | None, str]:
        """``(verified record with claim_rank, "")`` or ``(None, reason)``."""
        if not rec.sig or not rec.cert:
            return None, UNSIGNED
        records = self._c.records
        hit = records.get(rec)
        if hit is None:
            hit = self._verify(rec, wall)
            if isinstance(hit, str) and hit in (EXPIRED, NOT_YET_VALID):
                return None, hit  # moves with time: not cached
            if len(records) >= CACHE_MAX:
                records.clear()
            records[rec] = hit
        if isinstance(hit, str):
            return None, hit
        out, info = hit
        reason = self._status(info, wall)
        if reason:
            return None, reason
        if info.not_after < self.earliest_expiry:
            self.earliest_expiry = info.not_after
        return out, ""

    def status(self, rec: NodeRecord, wall: float) -> str:
        """Why a record believed earlier is no longer (``revoked``, ``cert_expired``), or ""."""
        if not rec.cert:
            return ""
        info = self._c.certs.get(rec.cert)
        if not isinstance(info, CertInfo):
            try:
                info = parse_certificate(rec.cert)
            except CertError as exc:
                return exc.reason
            except _CRYPTO_ERRORS:
                return MALFORMED
        return self._status(info, wall)

    def expiry(self, rec: NodeRecord) -> float:
        """When ``rec``'s certificate expires (inf without one, or when unreadable)."""
        if not rec.cert:
            return float("inf")
        info = self._c.certs.get(rec.cert)
        if not isinstance(info, CertInfo):
            try:
                info = parse_certificate(rec.cert)
            except (CertError, *_CRYPTO_ERRORS):
                return float("inf")
        return min(info.not_after, self._ca_until)

    def _status(self, info: CertInfo, wall: float) -> str:
        if info.serial in self._revoked:
            return REVOKED
        if wall > info.not_after or wall > self._ca_until:
            return EXPIRED
        if wall < info.not_before or wall < self._ca_from:
            return NOT_YET_VALID
        return ""

    def _verify(self, rec: NodeRecord, wall: float) -> tuple[NodeRecord, CertInfo] | str:
        info = self._cert(rec.cert, wall)
        if isinstance(info, str):
            return info
        problem = record_problem(info, rec)
        if problem is not None:
            return problem[0]
        if rec.vtep_mac is not None and rec.vtep_mac != vtep_mac_for(certified_vtep_seed(rec.name)):
            return CERT_MAC  # another member's MAC would take its FDB entry
        try:
            info.public_key.verify(rec.sig, rec.signing_bytes())
        except InvalidSignature:
            return BAD_SIGNATURE
        return replace(rec, claim_rank=claim_rank(info)), info

    def _cert(self, der: bytes, wall: float) -> CertInfo | str:
        certs = self._c.certs
        got = certs.get(der)
        if got is not None:
            return got
        try:
            info: CertInfo | str = verify_certificate(der, self.authorities, wall)
        except CertError as exc:
            if exc.reason in (EXPIRED, NOT_YET_VALID):
                return exc.reason  # moves with time: not cached
            info = exc.reason
        except _CRYPTO_ERRORS:  # hostile DER that `cryptography` refuses in its own way
            info = MALFORMED
        if len(certs) >= CACHE_MAX:
            certs.clear()
        certs[der] = info
        return info

    # --- our own ------------------------------------------------------------------------------

    def check_own(self, rec: NodeRecord, signer: Signer, wall: float) -> NodeRecord:
        """Our record signed, if every member would believe it; TrustError (one line naming what
        contradicts the certificate) otherwise. Run at start, before joining."""
        info = signer.info
        try:
            verify_certificate(signer.cert, self.authorities, wall)
        except CertError as exc:
            raise TrustError(exc.reason, str(exc)) from None
        if info.serial in self._revoked:
            raise TrustError(REVOKED, f"certificate {info.name!r}: revoked")
        problem = record_problem(info, rec)
        if problem is not None:
            raise TrustError(*problem)
        signed = signer.sign(rec)
        got, reason = self.verify(signed, wall)
        if got is None:  # pragma: no cover - every check above passed
            raise TrustError(reason, f"own record refused: {reason}")
        return got

    # --- revocation ---------------------------------------------------------------------------

    def install_crl(self, der: bytes, counters: Counter[str]) -> bool:
        """Take a revocation list if it verifies and is newer (higher CRL number) than ours.
        Counted: ``drop.crl_malformed``/``drop.crl_issuer`` (refused), ``crl.stale`` (not newer),
        ``crl.installed``."""
        try:
            revs = parse_crl(der, self.authorities)
        except CertError as exc:
            counters[f"drop.{exc.reason}"] += 1
            return False
        if self.revocations is not None and revs.number <= self.revocations.number:
            counters["crl.stale"] += 1
            return False
        self.revocations = revs
        self._revoked = revs.serials
        counters["crl.installed"] += 1
        return True
