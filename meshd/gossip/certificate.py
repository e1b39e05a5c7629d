"""Cluster certificates: X.509 with Ed25519 keys, and the meshd grant.

Pure: DER bytes in, data out. No file access and no clock: whoever verifies passes ``wall`` (Unix
seconds). The issuing side (``build_*``) is here too, as pure functions of keys, names and times,
so the simulator and the tests can mint certificates without touching files.

What a certificate binds:

- CA certificate: self-signed, CN = the CA's name, BasicConstraints CA:TRUE, the grant
  ``network=CIDR`` (the cluster network every node subnet must lie in), and for a dual-stack
  cluster ``network6=CIDR`` (its IPv6 network beside an IPv4 ``network``).
- Node certificate: CN = node name, one SAN IPAddress = its public (underlay) IP, or two (one
  IPv4, one IPv6: a dual-stack underlay), the grant ``subnet=CIDR`` (a fixed subnet) or
  ``pool=CIDR;len=N`` (any /N inside the pool), and for a dual-stack overlay ``subnet6=CIDR`` or
  ``pool6=CIDR;len6=N`` beside an IPv4 one; signed by a CA.

Per family, as in the record: ``network``/``subnet``/``pool`` hold the first family (IPv4 when
there is one, else IPv6: an IPv6-only cluster), the ``6`` keys the IPv6 one beside it. A member
that predates dual-stack ignores the ``6`` keys, so a dual-stack overlay's certificate is read
by it as the IPv4 one it was; a certificate with two addresses it refuses (it wants exactly
one), so issue those once every member runs dual-stack.

The grant is a subject alternative name of type URI, ``meshd:`` followed by ``key=value`` pairs
joined by ``;`` (``URI:meshd:subnet=10.244.1.0/24`` in ``openssl x509 -text``). A standard
extension rather than a private one: a private extension needs an OID, and the one a project can
mint without registering (``2.25.<UUID>``) has an arc too large for the ASN.1 parser of the
``cryptography`` that Debian 12 ships (38.0: arcs up to 2^32). Unknown keys are ignored: keys are
only ever added (``subnet6=``/``pool6=``/``len6=``, ``network6=`` came with dual-stack).

Every refusal is a ``CertError`` whose ``reason`` is a counter suffix (``drop.cert_expired``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from meshd.gossip.grant import Grant as Grant
from meshd.gossip.grant import first_and_second as first_and_second
from meshd.gossip.grant import format_grant as format_grant
from meshd.gossip.grant import network as _network
from meshd.gossip.grant import parse_grant_text as parse_grant_text
from meshd.gossip.grant import version as _version

GRANT_URI_PREFIX = "meshd:"
"""The grant's SAN URI starts with this; the rest is the grant text."""

MAX_CERT_DER = 4096  # ours are ~300 bytes; anything this big is not one of ours
MAX_CRL_DER = 16384  # a CRL travels in one datagram

# CertError reasons: each is the suffix of a drop counter (drop.cert_expired).
MALFORMED = "cert_malformed"
ISSUER = "cert_issuer"
EXPIRED = "cert_expired"
NOT_YET_VALID = "cert_not_yet_valid"
GRANT = "cert_grant"
CRL_MALFORMED = "crl_malformed"
CRL_ISSUER = "crl_issuer"

_IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertError(ValueError):
    """A certificate or CRL is refused. ``str()`` is one line; ``reason`` a counter suffix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def grant_name(text: str) -> x509.UniformResourceIdentifier:
    """The SAN entry carrying a grant: ``meshd:`` + the grant text."""
    return x509.UniformResourceIdentifier(GRANT_URI_PREFIX + text)


def unicast_problem(ip: str) -> str | None:
    """Why ``ip`` cannot be a node's public IP (None when it can): it must be a unicast address
    a peer can send to."""
    try:
        addr: _IPAddr = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_reserved:
        return f"{ip} is not a unicast address"
    if addr.version == 4 and addr in ipaddress.ip_network("0.0.0.0/8"):
        return f"{ip} is in 0.0.0.0/8 (this network)"
    if addr.version == 6 and addr.is_link_local:
        return f"{ip} is link-local (needs a scope)"
    return None


# -- parsed certificates and CRLs -----------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """A CA certificate, trusted because the operator configured it."""

    der: bytes
    name: str
    network: str
    public_key: Ed25519PublicKey = field(compare=False)
    fingerprint: bytes
    """SHA-256 of ``der``."""
    not_before: float
    not_after: float
    subject: bytes = b""
    """DER of the subject name: a certificate's issuer must be exactly this."""
    network6: str | None = None
    """The cluster's IPv6 network beside an IPv4 ``network`` (a dual-stack cluster)."""

    @property
    def networks(self) -> tuple[str, ...]:
        """The cluster networks, one per family, IPv4 first."""
        return (self.network,) if self.network6 is None else (self.network, self.network6)

    def network_of(self, version: int) -> str | None:
        """The cluster network of IP version 4 or 6, if the CA has one."""
        return next((n for n in self.networks if _version(n) == version), None)


@dataclass(frozen=True)
class CertInfo:
    """A node certificate's contents (``parse_certificate``: structure checked; after
    ``verify_certificate``: also issued by a trusted CA, valid now, grant inside its network)."""

    der: bytes
    name: str
    public_ip: str
    grant: Grant
    serial: int
    not_before: float
    not_after: float
    public_key: Ed25519PublicKey = field(compare=False)
    fingerprint: bytes
    """SHA-256 of ``der``."""
    issuer: str = ""
    """The issuer's common name (for display)."""
    public_ip6: str | None = None
    """The IPv6 underlay address beside an IPv4 ``public_ip`` (a dual-stack underlay)."""

    @property
    def public_ips(self) -> tuple[str, ...]:
        """The certified underlay addresses, IPv4 first."""
        return (self.public_ip,) if self.public_ip6 is None else (self.public_ip, self.public_ip6)

    def address_of(self, version: int) -> str | None:
        """The certified underlay address of IP version 4 or 6, if any."""
        return next((a for a in self.public_ips if _version(a) == version), None)


@dataclass(frozen=True)
class Revocations:
    """A verified CRL: the serials its CA revoked. ``number`` is the CRLNumber (monotonic: a
    member keeps the highest it has seen)."""

    number: int
    serials: frozenset[int]
    der: bytes
    this_update: float
    next_update: float | None
    issuer: str = ""
    """The issuing CA's common name."""


def _load(der: bytes) -> x509.Certificate:
    if not isinstance(der, bytes) or not der or len(der) > MAX_CERT_DER:
        raise CertError(MALFORMED, "certificate: empty or too large")
    try:
        cert = x509.load_der_x509_certificate(der)
        # Some fields parse lazily; touch the ones we need so a malformed one fails here.
        _ = cert.subject, cert.issuer, cert.extensions, cert.serial_number
        _ = cert.signature, cert.tbs_certificate_bytes
    except ValueError as exc:
        raise CertError(MALFORMED, f"certificate: not DER X.509 ({_first_line(exc)})") from None
    if cert.version != x509.Version.v3:
        raise CertError(MALFORMED, "certificate: not X.509 v3")
    # The outer algorithm is outside the signed part: pinning it to Ed25519 leaves one DER per
    # certificate (no re-labelled copy verifies, so caches keyed by DER cannot be split).
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
        raise CertError(MALFORMED, "certificate: not signed with Ed25519")
    return cert


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The key's 32 bytes (``public_bytes_raw`` is newer than Debian 12's ``cryptography``)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def utc_field(obj: object, field: str) -> datetime | None:
    """A time field of a certificate, CRL or revoked entry as an aware UTC datetime.
    ``cryptography`` 42 and later have ``<field>_utc``; the 38.0 Debian 12 ships has only the
    naive ``<field>`` (in UTC), which the newer ones deprecate."""
    if hasattr(type(obj), field + "_utc") or hasattr(obj, field + "_utc"):
        value = getattr(obj, field + "_utc")
        return value if isinstance(value, datetime) else None
    naive = getattr(obj, field)
    return naive.replace(tzinfo=UTC) if isinstance(naive, datetime) else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


def _ed25519_key(cert: x509.Certificate, what: str) -> Ed25519PublicKey:
    try:
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertError(MALFORMED, f"{what}: unreadable public key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CertError(MALFORMED, f"{what}: the key is not Ed25519")
    return key


def _common_name(name: x509.Name, what: str) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str) or not attrs[0].value:
        raise CertError(MALFORMED, f"{what}: needs exactly one common name (CN)")
    return attrs[0].value


def _grant_fields(cert: x509.Certificate, what: str) -> dict[str, str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError(MALFORMED, f"{what}: no meshd grant (URI:meshd:...)") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    grants = [u for u in uris if u.startswith(GRANT_URI_PREFIX)]
    if len(grants) != 1:
        raise CertError(MALFORMED, f"{what}: needs exactly one meshd grant (URI:meshd:...)")
    try:
        return parse_grant_text(grants[0][len(GRANT_URI_PREFIX) :])
    except ValueError as exc:
        raise CertError(MALFORMED, f"{what}: {exc}") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return bc.value.ca


def _times(cert: x509.Certificate) -> tuple[float, float]:
    start, end = utc_field(cert, "not_valid_before"), utc_field(cert, "not_valid_after")
    assert start is not None and end is not None  # a certificate always has both
    return start.timestamp(), end.timestamp()


def parse_authority(der: bytes) -> Authority:
    """A CA certificate: Ed25519, self-signed, CA:TRUE, may sign certificates, with a
    ``network=`` grant. CertError (reason ``cert_malformed``, or ``cert_issuer`` when the
    self-signature does not verify) otherwise."""
    cert = _load(der)
    what = "CA certificate"
    key = _ed25519_key(cert, what)
    name = _common_name(cert.subject, what)
    if not _is_ca(cert):
        raise CertError(MALFORMED, f"{what} {name!r}: not a CA (BasicConstraints CA:TRUE missing)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            raise CertError(MALFORMED, f"{what} {name!r}: its key usage excludes keyCertSign")
    except x509.ExtensionNotFound:
        pass
    fields = _grant_fields(cert, what)
    if "network" not in fields:
        raise CertError(MALFORMED, f"{what} {name!r}: its grant has no network=")
    try:
        network = _network(fields["network"], "network")
        network6 = _network(fields["network6"], "network6") if "network6" in fields else None
    except ValueError as exc:
        raise CertError(MALFORMED, f"{what} {name!r}: {exc}") from None
    if network6 is not None and (network.version != 4 or network6.version != 6):
        raise CertError(
            MALFORMED, f"{what} {name!r}: network6= must be IPv6, beside an IPv4 network="
        )
    if cert.issuer != cert.subject or not _signed_by(cert, key):
        raise CertError(ISSUER, f"{what} {name!r}: not self-signed")
    not_before, not_after = _times(cert)
    return Authority(
        der=der,
        name=name,
        network=str(network),
        public_key=key,
        fingerprint=hashlib.sha256(der).digest(),
        not_before=not_before,
        not_after=not_after,
        subject=cert.subject.public_bytes(),
        network6=str(network6) if network6 is not None else None,
    )


def _signed_by(cert: x509.Certificate, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        return False
    return True


def parse_certificate(der: bytes) -> CertInfo:
    """A node certificate's structure: Ed25519 key, one CN, exactly one SAN IP (unicast), not a
    CA, a well-formed subnet or pool grant. Checks no signature and no time: see
    ``verify_certificate``. CertError(``cert_malformed``) otherwise."""
    return _parse_node(der)[0]


def _parse_node(der: bytes) -> tuple[CertInfo, x509.Certificate]:
    cert = _load(der)
    what = "certificate"
    key = _ed25519_key(cert, what)
    name = _common_name(cert.subject, what)
    what = f"certificate {name!r}"
    if _is_ca(cert):
        raise CertError(MALFORMED, f"{what}: is a CA certificate, not a node's")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError(MALFORMED, f"{what}: no subject alternative name (the public IP)") from None
    ips = san.get_values_for_type(x509.IPAddress)
    if not 1 <= len(ips) <= 2:
        raise CertError(
            MALFORMED, f"{what}: needs one IP address (or one per family), has {len(ips)}"
        )
    for ip in ips:
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise CertError(MALFORMED, f"{what}: its IP entry is a network, not an address")
        problem = unicast_problem(str(ip))
        if problem:
            raise CertError(MALFORMED, f"{what}: public IP {problem}")
    try:
        public_ip, public_ip6 = first_and_second([str(ip) for ip in ips], "IP addresses")
    except ValueError as exc:
        raise CertError(MALFORMED, f"{what}: {exc}") from None
    try:
        grant = Grant.from_fields(_grant_fields(cert, what))
    except ValueError as exc:
        raise CertError(MALFORMED, f"{what}: {exc}") from None
    not_before, not_after = _times(cert)
    issuer_cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    info = CertInfo(
        der=der,
        name=name,
        public_ip=public_ip,
        public_ip6=public_ip6,
        grant=grant,
        serial=cert.serial_number,
        not_before=not_before,
        not_after=not_after,
        public_key=key,
        fingerprint=hashlib.sha256(der).digest(),
        issuer=str(issuer_cn[0].value) if issuer_cn else "",
    )
    return info, cert


def verify_certificate(der: bytes, authorities: Sequence[Authority], wall: float) -> CertInfo:
    """A node certificate we can believe at ``wall``: well-formed, signed by one of
    ``authorities`` (which must itself be valid at ``wall``), inside its validity window, its grant
    inside that authority's network. CertError with reason ``cert_malformed``, ``cert_issuer``,
    ``cert_not_yet_valid``, ``cert_expired`` or ``cert_grant``."""
    info, cert = _parse_node(der)
    issuer = cert.issuer.public_bytes()
    for auth in authorities:
        if (not auth.subject or auth.subject == issuer) and _signed_by(cert, auth.public_key):
            break
    else:
        raise CertError(
            ISSUER,
            f"certificate {info.name!r}: not signed by a trusted CA (issuer {info.issuer!r})",
        )
    for what, start, end in (
        (f"certificate {info.name!r}", info.not_before, info.not_after),
        (f"CA certificate {auth.name!r}", auth.not_before, auth.not_after),
    ):
        if wall < start:
            raise CertError(NOT_YET_VALID, f"{what}: not valid before {_utc(start)}")
        if wall > end:
            raise CertError(EXPIRED, f"{what}: expired {_utc(end)}")
    if not info.grant.inside(auth.networks):
        raise CertError(
            GRANT,
            f"certificate {info.name!r}: grant {info.grant.describe()} is outside the CA's"
            f" network {' and '.join(auth.networks)}",
        )
    return info


def parse_crl(der: bytes, authorities: Sequence[Authority]) -> Revocations:
    """A CRL signed by one of ``authorities``, with a CRLNumber. CertError with reason
    ``crl_malformed`` or ``crl_issuer`` otherwise. Times are not judged here."""
    if not isinstance(der, bytes) or not der or len(der) > MAX_CRL_DER:
        raise CertError(CRL_MALFORMED, "CRL: empty or too large")
    try:
        crl = x509.load_der_x509_crl(der)
        number_ext = crl.extensions.get_extension_for_class(x509.CRLNumber)
        serials = frozenset(entry.serial_number for entry in crl)
        issuer = crl.issuer.public_bytes()
        last = utc_field(crl, "last_update")
        assert last is not None  # a CRL always has one
        this_update = last.timestamp()
        next_update = utc_field(crl, "next_update")
    except x509.ExtensionNotFound:
        raise CertError(CRL_MALFORMED, "CRL: no CRL number") from None
    except ValueError as exc:
        raise CertError(CRL_MALFORMED, f"CRL: not DER X.509 ({_first_line(exc)})") from None
    for auth in authorities:
        if (not auth.subject or auth.subject == issuer) and _crl_signed_by(crl, auth.public_key):
            break
    else:
        raise CertError(CRL_ISSUER, "CRL: not signed by a trusted CA")
    return Revocations(
        number=number_ext.value.crl_number,
        serials=serials,
        der=der,
        this_update=this_update,
        next_update=next_update.timestamp() if next_update is not None else None,
        issuer=auth.name,
    )


def _crl_signed_by(crl: x509.CertificateRevocationList, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes)
    except InvalidSignature:
        return False
    return True


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- PEM ------------------------------------------------------------------------------------------

_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)


def pem_to_der_list(text: str, label: str = "CERTIFICATE") -> list[bytes]:
    """Every ``label`` block of a PEM bundle as DER (other blocks skipped). ValueError when a block
    is not base64 or there is none."""
    out = []
    for found, body in _PEM_RE.findall(text):
        if found != label:
            continue
        try:
            out.append(base64.b64decode("".join(body.split()), validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"PEM: a {label} block is not base64") from None
    if not out:
        raise ValueError(f"PEM: no {label} block")
    return out


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


# -- issuing (pure: keys, names and times in, DER out) --------------------------------------------


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def build_authority(
    key: Ed25519PrivateKey,
    name: str,
    network: str | Sequence[str],
    not_before: float,
    not_after: float,
    serial: int,
) -> bytes:
    """A self-signed CA certificate granting ``network`` (one CIDR, or one per family)."""
    first, second = first_and_second([network] if isinstance(network, str) else network, "network")
    net = _network(first, "network")
    pairs = {"network": str(net)}
    if second is not None:
        pairs["network6"] = str(_network(second, "network6"))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(_dt(not_before))
        .not_valid_after(_dt(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([grant_name(format_grant(pairs))]),
            critical=False,
        )
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def build_certificate(
    ca_key: Ed25519PrivateKey,
    ca_der: bytes,
    public_key: Ed25519PublicKey,
    name: str,
    public_ip: str | Sequence[str],
    grant: Grant,
    not_before: float,
    not_after: float,
    serial: int,
) -> bytes:
    """A node certificate for ``public_key`` signed by the CA (its certificate and key);
    ``public_ip``: the underlay address, or one per family."""
    ca = x509.load_der_x509_certificate(ca_der)
    ips = [public_ip] if isinstance(public_ip, str) else list(public_ip)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(_dt(not_before))
        .not_valid_after(_dt(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
                    grant_name(grant.text()),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def build_crl(
    ca_key: Ed25519PrivateKey,
    ca_der: bytes,
    number: int,
    revoked: Mapping[int, float],
    this_update: float,
    next_update: float,
) -> bytes:
    """A CRL signed by the CA: ``revoked`` maps serial -> revocation time."""
    ca = x509.load_der_x509_certificate(ca_der)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(_dt(this_update))
        .next_update(_dt(next_update))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(_dt(when))
            .build()
        )
    return builder.sign(ca_key, None).public_bytes(serialization.Encoding.DER)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
