"""The cluster CA on disk: issuing certificates and CRLs (`meshd ca`, `meshd cert`), and loading
the CA, certificate, key and CRL files the daemon is configured with.

Everything cryptographic is in ``meshd.gossip.certificate`` (pure); this module adds files, the
clock and randomness. The CA directory:

    ca.crt              the CA certificate (PEM; give it to every node as --ca)
    ca.key              its Ed25519 key (PKCS#8 PEM, 0600; never leaves this directory)
    issued/<serial>.crt every certificate this CA signed (PEM), so `revoke NAME` finds them
    crl                 the latest revocation list (PEM)

PEM everywhere, the CRL included: ``openssl`` reads it without flags, and the CRL's text goes as
it is through the JSON control socket (`meshd crl install`); gossip carries the DER inside.
Every error is a one-line CertificateError.

Dual-stack: a CA may have two cluster networks (one IPv4, one IPv6: ``--network`` twice), a
node certificate two underlay addresses and a grant per family (``--public-ip``, ``--subnet``,
``--network`` given once per family; ``--subnet-len`` for IPv4 pools, ``--subnet-len6`` for
IPv6 ones, /64 by default).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from meshd.errors import CertificateError
from meshd.gossip import certificate as cert
from meshd.gossip.certificate import Authority, CertError, CertInfo, Grant, Revocations
from meshd.securefile import read_private, read_public, write_file

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL_FILE = "crl"
ISSUED_DIR = "issued"
DEFAULT_CA_NAME = "meshd CA"
CA_DAYS = 3650  # the CA outlives many node certificates; rotating it means re-issuing them all
CERT_DAYS = 365  # a year: renewal is one `meshd ca sign` per node
CRL_DAYS = 365  # the CRL's nextUpdate; members keep the highest-numbered CRL they have seen
DEFAULT_SUBNET_LEN = 24  # --network without --subnet-len: flannel's default /24 per node
DEFAULT_SUBNET_LEN6 = 64  # an IPv6 --network without --subnet-len6: flannel's and Kubernetes' /64
BACKDATE = 300.0  # notBefore this far in the past, so a member whose clock lags can use it now
MAX_PEM = 64 * 1024  # a certificate is ~300 bytes, a CRL a few KiB
DAY = 86400.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""A node name, as gossip/record.py accepts it (its CN must equal the record's name)."""
SPECIAL = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)
"""Ranges a cluster network must not touch: this-network, loopback, link-local (the cloud metadata
service), multicast, reserved and broadcast."""
SPECIAL6 = tuple(
    ipaddress.IPv6Network(n) for n in ("::/127", "::ffff:0:0/96", "fe80::/10", "ff00::/8")
)
"""IPv6 ranges a cluster network must not touch: unspecified and loopback, IPv4-mapped,
link-local, multicast."""


@dataclass(frozen=True)
class Issued:
    """What `ca sign` wrote: the certificate, and the fresh key when it made one."""

    crt: Path
    key: Path | None
    info: CertInfo


@dataclass(frozen=True)
class Revoked:
    """What `ca revoke` wrote: the CRL, its contents and the certificates of NAME it lists."""

    crl: Path
    revocations: Revocations
    certificates: list[CertInfo]


# -- issuing --------------------------------------------------------------------------------------


def grant_from_flags(
    subnet: str | Sequence[str] | None,
    network: str | Sequence[str] | None,
    subnet_len: int | None,
    subnet_len6: int | None = None,
) -> Grant:
    """Per IP family, ``--subnet CIDR`` (a fixed subnet) or ``--network CIDR`` (a pool of
    ``--subnet-len``/``--subnet-len6``); each flag may be given once per family (dual-stack)."""
    subnets = _listed(subnet)
    networks = _listed(network)
    if not subnets and not networks:
        raise CertificateError(
            "give exactly one of --subnet CIDR and --network CIDR (one per IP family: dual-stack)"
        )
    versions = [_version(c) for c in (*subnets, *networks)]
    for v in (4, 6):
        if versions.count(v) > 1:
            raise CertificateError(
                f"give exactly one of --subnet CIDR and --network CIDR per IP family"
                f" (two IPv{v} ones)"
            )
    pool_versions = {_version(n) for n in networks}
    if subnet_len is not None and 4 not in pool_versions:
        raise CertificateError("--subnet-len goes with --network (an IPv4 pool), not --subnet")
    if subnet_len6 is not None and 6 not in pool_versions:
        raise CertificateError("--subnet-len6 goes with --network (an IPv6 pool), not --subnet")
    try:
        parts = [Grant.fixed(c) for c in subnets]
        for net in networks:
            if _version(net) == 6:
                length = DEFAULT_SUBNET_LEN6 if subnet_len6 is None else subnet_len6
            else:
                length = DEFAULT_SUBNET_LEN if subnet_len is None else subnet_len
            parts.append(Grant.from_pool(net, length))
        return Grant.combine(parts)
    except ValueError as exc:
        raise CertificateError(str(exc)) from None


def _listed(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _version(text: str) -> int:
    return 6 if ":" in text else 4


def _addresses(public_ip: str | Sequence[str]) -> list[str]:
    """One underlay address, or one per family, IPv4 first (the certificate's order)."""
    ips = _listed(public_ip)
    try:
        first, second = cert.first_and_second(ips, "--public-ip")
    except ValueError as exc:
        raise CertificateError(str(exc)) from None
    return [first] if second is None else [first, second]


def init_ca(
    directory: Path,
    network: str | Sequence[str],
    name: str = DEFAULT_CA_NAME,
    days: int = CA_DAYS,
    wall: float | None = None,
) -> Authority:
    """Create DIR/ca.key (0600) and DIR/ca.crt granting ``network`` (one cluster network, or
    one per IP family); refuse when either exists."""
    nets = [_cluster_network(n) for n in _listed(network)]
    try:
        first, second = cert.first_and_second([str(n) for n in nets], "--network")
    except ValueError as exc:
        raise CertificateError(str(exc)) from None
    networks = [first] if second is None else [first, second]
    _check_days(days)
    if not name.strip() or len(name) > 64:
        raise CertificateError(f"--name {name!r}: 1 to 64 characters")
    for f in (CA_CERT, CA_KEY):
        if (directory / f).exists():
            raise CertificateError(f"{directory / f} exists: refusing to overwrite a CA")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / ISSUED_DIR).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create {directory}: {exc.strerror}") from None
    now = time.time() if wall is None else wall
    key = Ed25519PrivateKey.generate()
    der = cert.build_authority(key, name, networks, now - BACKDATE, now + days * DAY, _serial())
    # The key first and exclusively: a CA certificate without its key would be worse than none.
    write_file(directory / CA_KEY, _key_pem(key), "CA key", CertificateError, replace=False)
    write_file(directory / CA_CERT, _pem(der), "CA certificate", CertificateError, 0o644, False)
    return cert.parse_authority(der)


def sign(
    directory: Path,
    name: str,
    public_ip: str | Sequence[str],
    grant: Grant,
    out_prefix: Path,
    days: int = CERT_DAYS,
    wall: float | None = None,
) -> Issued:
    """A fresh node key (PREFIX.key, 0600) and its certificate (PREFIX.crt); ``public_ip``: the
    node's underlay address, or one per family."""
    ca_key, auth = _open_ca(directory)
    public_ip = _check_subject(name, public_ip)
    _check_grant(grant, auth)
    _check_days(days)
    key_path, crt_path = _out(out_prefix, ".key"), _out(out_prefix, ".crt")
    for path in (key_path, crt_path):
        if path.exists():
            raise CertificateError(f"{path} exists: choose another --out or remove it")
    key = Ed25519PrivateKey.generate()
    info = _issue(directory, ca_key, auth, key.public_key(), name, public_ip, grant, days, wall)
    write_file(key_path, _key_pem(key), "key", CertificateError, replace=False)
    write_file(crt_path, _pem(info.der), "certificate", CertificateError, 0o644)
    return Issued(crt_path, key_path, info)


def make_request(name: str, public_ip: str | Sequence[str], out_prefix: Path) -> tuple[Path, Path]:
    """On the node: a fresh key (PREFIX.key, 0600) and a signing request (PREFIX.csr, PKCS#10)
    naming ``name`` and ``public_ip`` (one, or one per family). The key never leaves the node;
    the CSR goes to the CA."""
    ips = _check_subject(name, public_ip)
    key = Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
            critical=False,
        )
        .sign(key, None)
    )
    key_path, csr_path = _out(out_prefix, ".key"), _out(out_prefix, ".csr")
    write_file(key_path, _key_pem(key), "key", CertificateError, replace=False)
    pem = csr.public_bytes(serialization.Encoding.PEM)
    write_file(csr_path, pem, "signing request", CertificateError, 0o644)
    return key_path, csr_path


def read_request(path: Path) -> tuple[str | None, tuple[str, ...] | None, Ed25519PublicKey]:
    """A signing request's (name, public IPs, key), its self-signature checked. The IPs are
    None unless the request names one, or one per family (IPv4 first)."""
    data = read_public(path, "signing request", MAX_PEM, CertificateError)
    try:
        csr = (
            x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
        )
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"signing request {path}: unreadable ({_line(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateError(f"signing request {path}: the key is not Ed25519")
    if not valid:
        raise CertificateError(f"signing request {path}: its signature does not verify")
    found: list[str] | None = None
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cns[0].value) if len(cns) == 1 else None
    ip: tuple[str, ...] | None = None
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
        first, second = cert.first_and_second(found, "IP addresses")
        ip = (first,) if second is None else (first, second)
    except x509.ExtensionNotFound:
        pass
    except ValueError as exc:
        if found is None:
            raise CertificateError(f"signing request {path}: unreadable ({_line(exc)})") from None
    return name, ip, key


def sign_request(
    directory: Path,
    csr_path: Path,
    grant: Grant,
    out_prefix: Path,
    days: int = CERT_DAYS,
    name: str | None = None,
    public_ip: str | Sequence[str] | None = None,
    wall: float | None = None,
) -> Issued:
    """Sign a node's request: PREFIX.crt for the request's key. Name and IP come from the
    request unless given; the grant is always the CA operator's."""
    ca_key, auth = _open_ca(directory)
    csr_name, csr_ips, key = read_request(csr_path)
    name = name if name is not None else csr_name
    ips = _listed(public_ip) if public_ip is not None else csr_ips
    if name is None:
        raise CertificateError(f"signing request {csr_path} names no node: give --name")
    if not ips:
        raise CertificateError(
            f"signing request {csr_path} has no single IP (or one per family): give --public-ip"
        )
    ips = _check_subject(name, ips)
    _check_grant(grant, auth)
    _check_days(days)
    info = _issue(directory, ca_key, auth, key, name, ips, grant, days, wall)
    crt_path = _out(out_prefix, ".crt")
    write_file(crt_path, _pem(info.der), "certificate", CertificateError, 0o644)
    return Issued(crt_path, None, info)


def _issue(
    directory: Path,
    ca_key: Ed25519PrivateKey,
    auth: Authority,
    key: Ed25519PublicKey,
    name: str,
    public_ip: Sequence[str],
    grant: Grant,
    days: int,
    wall: float | None,
) -> CertInfo:
    now = time.time() if wall is None else wall
    # A certificate cannot outlive the CA that vouches for it.
    not_after = min(now + days * DAY, auth.not_after)
    if not_after <= now:
        raise CertificateError(f"the CA {auth.name!r} has expired: create a new one")
    index = directory / ISSUED_DIR
    try:
        index.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create {index}: {exc.strerror}") from None
    serial = _serial()
    while (index / f"{serial:x}.crt").exists():
        serial = _serial()
    der = cert.build_certificate(
        ca_key, auth.der, key, name, public_ip, grant, now - BACKDATE, not_after, serial
    )
    try:  # what we hand out must pass our own check
        info = cert.verify_certificate(der, [auth], now)
    except CertError as exc:
        raise CertificateError(f"refusing to issue: {exc}") from None
    write_file(index / f"{serial:x}.crt", _pem(der), "issued certificate", CertificateError, 0o644)
    return info


def revoke(directory: Path, name: str, days: int = CRL_DAYS, wall: float | None = None) -> Revoked:
    """Write DIR/crl listing every unexpired certificate issued to NAME and every earlier
    revocation that has not expired, numbered one above the previous CRL."""
    ca_key, auth = _open_ca(directory)
    _check_days(days)
    now = time.time() if wall is None else wall
    issued = issued_certificates(directory)
    mine = [i for i in issued.values() if i.name == name]
    if not mine:
        raise CertificateError(
            f"this CA issued no certificate to {name!r} ({directory / ISSUED_DIR})"
        )
    live = [i for i in mine if i.not_after > now]
    if not live:
        raise CertificateError(
            f"every certificate issued to {name!r} has expired: nothing to revoke"
        )
    revoked: dict[int, float] = {}
    number = 1
    crl_path = directory / CRL_FILE
    if crl_path.exists():
        previous = load_crl(crl_path, [auth])
        number = previous.number + 1
        dates = {e.serial_number: _ts(e, "revocation_date") for e in _crl(previous.der)}
        for serial in previous.serials:
            known = issued.get(serial)
            # Unknown serials stay listed: nothing here proves they expired.
            if known is None or known.not_after > now:
                revoked[serial] = dates.get(serial, now)
    for info in live:
        revoked.setdefault(info.serial, now)
    der = cert.build_crl(ca_key, auth.der, number, revoked, now, now + days * DAY)
    write_file(crl_path, _pem(der, "X509 CRL"), "CRL", CertificateError, 0o644)
    return Revoked(crl_path, cert.parse_crl(der, [auth]), live)


def issued_certificates(directory: Path) -> dict[int, CertInfo]:
    """Every certificate in the CA's issuance index, by serial."""
    out: dict[int, CertInfo] = {}
    index = directory / ISSUED_DIR
    try:
        paths = sorted(index.glob("*.crt"))
    except OSError as exc:
        raise CertificateError(f"cannot list {index}: {exc.strerror}") from None
    for path in paths:
        info = load_certificate(path)
        out[info.serial] = info
    return out


def _serial() -> int:
    # 64 random bits (the CA/Browser Forum's minimum), not x509's 159: every record carries its
    # certificate, and the 11 bytes saved are paid for in every gossip datagram.
    return secrets.randbits(64) or 1


def _open_ca(directory: Path) -> tuple[Ed25519PrivateKey, Authority]:
    if not (directory / CA_CERT).exists():
        raise CertificateError(f"no CA in {directory}: create one with `meshd ca init {directory}`")
    auths = load_authorities(directory / CA_CERT)
    key = load_private_key(directory / CA_KEY, "CA key")
    if cert.raw_public_key(key.public_key()) != cert.raw_public_key(auths[0].public_key):
        raise CertificateError(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
    return key, auths[0]


def _cluster_network(network: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(network, strict=True)
    except ValueError as exc:
        raise CertificateError(f"--network {network!r}: {exc}") from None
    specials: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        SPECIAL if net.version == 4 else SPECIAL6
    )
    for special in specials:
        if net.overlaps(special):
            raise CertificateError(f"--network {net}: overlaps the special-purpose {special}")
    if net.prefixlen < 8:
        raise CertificateError(f"--network {net}: wider than a /8")
    return net


def _check_subject(name: str, public_ip: str | Sequence[str]) -> list[str]:
    """The subject's checks; returns the underlay addresses, IPv4 first."""
    if not NAME_RE.match(name):
        raise CertificateError(
            f"--name {name!r}: letters, digits, '.', '_', '-' (up to 63, starting alphanumeric)"
        )
    ips = _addresses(public_ip)
    for ip in ips:
        problem = cert.unicast_problem(ip)
        if problem:
            raise CertificateError(f"--public-ip: {problem}")
    return ips


def _check_grant(grant: Grant, auth: Authority) -> None:
    if not grant.inside(auth.networks):
        raise CertificateError(
            f"{grant.describe()} is outside the CA's network {' and '.join(auth.networks)}"
        )
    for part in grant.parts:
        whole_text = auth.network_of(part.version)
        assert whole_text is not None  # inside() found it
        whole = ipaddress.ip_network(whole_text)
        flag = "--subnet-len6" if part.version == 6 else "--subnet-len"
        if part.subnet is not None and ipaddress.ip_network(part.subnet) == whole:
            raise CertificateError(
                f"--subnet {part.subnet}: the whole cluster network, not a node's"
            )
        if part.pool_len is not None and part.pool_len <= whole.prefixlen:
            raise CertificateError(
                f"{flag} {part.pool_len}: a node's subnet must be narrower than the cluster"
                f" network /{whole.prefixlen}"
            )


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise CertificateError(f"--days {days}: between 1 and 36500")


def _out(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def _pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    return cert.der_to_pem(der, label).encode()


def _key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:120] if lines else type(exc).__name__


def _crl(der: bytes) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(der)


# -- loading (the daemon's files) -----------------------------------------------------------------


def _ders(path: Path, what: str, label: str) -> list[bytes]:
    data = read_public(path, what, MAX_PEM, CertificateError)
    if b"-----BEGIN" not in data:
        return [data]  # DER
    try:
        return cert.pem_to_der_list(data.decode("ascii", "replace"), label)
    except ValueError as exc:
        raise CertificateError(f"{what} {path}: {exc}") from None


def load_authorities(path: Path) -> list[Authority]:
    """Every CA certificate in a PEM bundle (or one DER certificate)."""
    try:
        return [cert.parse_authority(der) for der in _ders(path, "CA file", "CERTIFICATE")]
    except CertError as exc:
        raise CertificateError(f"CA file {path}: {exc}") from None


def load_certificate(path: Path) -> CertInfo:
    """A node certificate (PEM or DER; the first certificate of a PEM file), structure checked.
    Whether a CA vouches for it, and when, is ``certificate.verify_certificate``'s call."""
    try:
        return cert.parse_certificate(_ders(path, "certificate", "CERTIFICATE")[0])
    except CertError as exc:
        raise CertificateError(f"certificate {path}: {exc}") from None


def load_private_key(path: Path, what: str = "certificate key") -> Ed25519PrivateKey:
    """An Ed25519 key (PKCS#8 PEM), refused unless it is a regular file owned by this user and
    readable by nobody else."""
    data = read_private(path, what, MAX_PEM, CertificateError)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{what} {path}: not a PEM private key ({_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CertificateError(f"{what} {path}: not an Ed25519 key")
    return key


def load_crl(path: Path, authorities: list[Authority]) -> Revocations:
    """A CRL file (PEM or DER) signed by one of ``authorities``."""
    try:
        return cert.parse_crl(_ders(path, "CRL", "X509 CRL")[0], authorities)
    except CertError as exc:
        raise CertificateError(f"CRL {path}: {exc}") from None


def read_crl_pem(path: Path) -> str:
    """The CRL file as PEM text, for `meshd crl install` (structure checked here; the daemon
    checks the signature against its CA)."""
    der = _ders(path, "CRL", "X509 CRL")[0]
    crl_info(der, path)
    return cert.der_to_pem(der, "X509 CRL")


# -- showing --------------------------------------------------------------------------------------


def _ts(obj: object, field: str) -> float:
    when = cert.utc_field(obj, field)
    assert when is not None  # revocation dates and last updates are mandatory
    return when.timestamp()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _fingerprint(fp: bytes) -> str:
    return "SHA256:" + fp.hex()


def describe_certificate(path: Path, wall: float | None = None) -> dict[str, Any]:
    """What `meshd cert show` prints: a node's or a CA's certificate, as JSON-able data."""
    now = time.time() if wall is None else wall
    der = _ders(path, "certificate", "CERTIFICATE")[0]
    try:
        is_ca = _is_ca(der)
        info: CertInfo | Authority = (
            cert.parse_authority(der) if is_ca else cert.parse_certificate(der)
        )
    except CertError as exc:
        raise CertificateError(f"certificate {path}: {exc}") from None
    out: dict[str, Any] = {"kind": "ca" if is_ca else "node", "name": info.name}
    if isinstance(info, Authority):
        out["network"] = info.network
        grant_pairs = {"network": info.network}
        if info.network6 is not None:
            out["network6"] = info.network6
            grant_pairs["network6"] = info.network6
        out["grant"] = cert.format_grant(grant_pairs)
        out["issuer"] = info.name
        serial = x509.load_der_x509_certificate(der).serial_number
    else:
        out["public_ip"] = info.public_ip
        if info.public_ip6 is not None:
            out["public_ip6"] = info.public_ip6
        out["subnet"] = info.grant.describe()
        out["grant"] = info.grant.text()
        out["issuer"] = info.issuer
        serial = info.serial
    out.update(
        serial=f"{serial:x}",
        not_before=_iso(info.not_before),
        not_after=_iso(info.not_after),
        expired=now > info.not_after,
        not_yet_valid=now < info.not_before,
        fingerprint=_fingerprint(info.fingerprint),
        public_key=cert.raw_public_key(info.public_key).hex(),
    )
    return out


def _is_ca(der: bytes) -> bool:
    try:
        c = x509.load_der_x509_certificate(der)
        return bool(c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
    except ValueError as exc:
        raise CertError(cert.MALFORMED, f"not DER X.509 ({_line(exc)})") from None


def crl_info(der: bytes, path: Path) -> dict[str, Any]:
    """A CRL's contents, its signature not checked (`describe_crl` checks it given the CA)."""
    try:
        crl = _crl(der)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        entries = [
            {
                "serial": f"{e.serial_number:x}",
                "revoked_at": _iso(_ts(e, "revocation_date")),
            }
            for e in crl
        ]
        issuer = crl.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        this_update = _ts(crl, "last_update")
        next_update = cert.utc_field(crl, "next_update")
    except x509.ExtensionNotFound:
        raise CertificateError(f"CRL {path}: no CRL number") from None
    except ValueError as exc:
        raise CertificateError(f"CRL {path}: not an X.509 CRL ({_line(exc)})") from None
    return {
        "number": number,
        "issuer": str(issuer[0].value) if issuer else "",
        "this_update": _iso(this_update),
        "next_update": _iso(next_update.timestamp()) if next_update else None,
        "revoked": entries,
    }


def describe_crl(path: Path, ca: Path | None = None, wall: float | None = None) -> dict[str, Any]:
    """What `meshd crl show` prints; with ``ca`` the signature is checked (``verified``)."""
    now = time.time() if wall is None else wall
    der = _ders(path, "CRL", "X509 CRL")[0]
    out = crl_info(der, path)
    if ca is not None:
        load_crl(path, load_authorities(ca))  # raises unless one of them signed it
    out["verified"] = ca is not None
    nu = cert.utc_field(x509.load_der_x509_crl(der), "next_update")
    out["expired"] = nu is not None and now > nu.timestamp()
    return out


def private_key_matches(key: Ed25519PrivateKey, info: CertInfo) -> bool:
    """Whether ``key`` is the key ``info`` certifies (the daemon refuses to start otherwise)."""
    return cert.raw_public_key(key.public_key()) == cert.raw_public_key(info.public_key)


def default_key_path(cert_path: Path) -> Path:
    """``--cert-key`` when not given: the certificate's path with ``.key`` for its suffix."""
    return cert_path.with_suffix(".key")


__all__ = [
    "Issued",
    "Revoked",
    "default_key_path",
    "describe_certificate",
    "describe_crl",
    "grant_from_flags",
    "init_ca",
    "issued_certificates",
    "load_authorities",
    "load_certificate",
    "load_crl",
    "load_private_key",
    "make_request",
    "private_key_matches",
    "read_crl_pem",
    "read_request",
    "revoke",
    "sign",
    "sign_request",
]
