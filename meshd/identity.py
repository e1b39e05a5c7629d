"""This node's credentials in certificate mode, loaded from files and checked at start.

The CA bundle (``ca``), this node's certificate (``cert``) and its private key (``cert_key``)
must agree with each other and with the configuration before the daemon announces anything: a
certificate from another CA, an expired one, a key that is not the certificate's, or a name,
public IP or subnet the certificate does not grant stops the daemon with one line that says
which file and which field. Members check the same things about us on every record, so a node
that started anyway would only be ignored by everyone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd import pki
from meshd.dataplane.allocation import Pool
from meshd.errors import ConfigError
from meshd.gossip.certificate import Authority, CertError, CertInfo, verify_certificate


@dataclass(frozen=True)
class Credentials:
    """What certificate mode runs on: the trusted CAs, our certificate and its key."""

    authorities: tuple[Authority, ...]
    cert: CertInfo
    key: Ed25519PrivateKey
    cert_path: Path


def load(ca: Path, cert: Path, cert_key: Path, wall: float) -> Credentials:
    """Read and cross-check the three files; ConfigError (one line) on any mismatch."""
    authorities = tuple(pki.load_authorities(ca))
    info = pki.load_certificate(cert)
    key = pki.load_private_key(cert_key)
    try:
        info = verify_certificate(info.der, authorities, wall)
    except CertError as exc:
        raise ConfigError(f"cert: {cert}: {exc} (CA: {ca})") from None
    if not pki.private_key_matches(key, info):
        raise ConfigError(f"cert_key: {cert_key} is not the private key of {cert}")
    return Credentials(authorities, info, key, cert)


def cluster_network(cred: Credentials, configured: str | None, version: int = 4) -> str | None:
    """The cluster network of IP version 4 or 6: that of the CA whose network of that family
    holds our grant of it (verify_certificate checked there is one); None when the certificate
    grants nothing of that family. A configured one must be such a network."""
    part = cred.cert.grant.part(version)
    if part is None:
        if configured is not None:
            raise ConfigError(
                f"network: {configured}: {cred.cert_path} grants no IPv{version} subnet "
                f"({cred.cert.grant.describe()})"
            )
        return None
    networks = sorted(
        {n for a in cred.authorities if (n := a.network_of(version)) and part.inside(n)}
    )
    if not networks:  # verify_certificate refuses such a certificate
        raise ConfigError(f"cert: {cred.cert_path}: no CA's IPv{version} network holds its grant")
    if configured is None:
        return networks[0]
    if configured not in networks:
        raise ConfigError(f"network: {configured} is not the CA's network ({', '.join(networks)})")
    return configured


def check_name(cred: Credentials, name: str) -> None:
    if name != cred.cert.name:
        raise ConfigError(
            f"name: {name!r} is not the name in {cred.cert_path} ({cred.cert.name!r}); "
            f"set name = {cred.cert.name!r} or use that node's certificate"
        )


def subnet_for(cred: Credentials, configured: str | None, version: int = 4) -> str | None:
    """This node's subnet of IP version 4 or 6: the configured one if the certificate grants
    it, else the one subnet the certificate grants of that family; None for a pool grant with
    none configured (allocate from it) or no grant of that family."""
    grant = cred.cert.grant
    if configured is None:
        part = grant.part(version)
        return part.subnet if part is not None else None
    if not grant.allows(configured):
        raise ConfigError(
            f"subnet: {configured} is not granted by {cred.cert_path} ({grant.describe()})"
        )
    return configured


def pool_for(cred: Credentials, subnet_len: int | None, version: int = 4) -> Pool | None:
    """The pool a pool grant of IP version 4 or 6 lets this node allocate from (``subnet_len``,
    if set, must be the grant's length); None when the certificate grants no pool of it."""
    part = cred.cert.grant.part(version)
    if part is None or part.pool is None or part.pool_len is None:
        return None
    if subnet_len is not None and subnet_len != part.pool_len:
        raise ConfigError(
            f"subnet_len{'6' if version == 6 else ''}: {subnet_len} is not the length "
            f"{cred.cert_path} grants ({cred.cert.grant.describe()})"
        )
    try:
        return Pool(part.pool, part.pool_len)
    except ValueError as exc:
        raise ConfigError(f"cert: {cred.cert_path}: {exc}") from None


def check_public_ip(cred: Credentials, public_ip: str, public_ip6: str | None = None) -> None:
    """Every underlay address this node announces must be the certificate's of its family
    (members refuse a record with any other)."""
    for ip in (public_ip, public_ip6):
        if ip is None:
            continue
        version = ipaddress.ip_address(ip).version
        want = cred.cert.address_of(version)
        if want is None or ipaddress.ip_address(want) != ipaddress.ip_address(ip):
            have = want if want is not None else f"no IPv{version} address"
            key = "public_ip"
            raise ConfigError(
                f"{key}: {ip} is not the address in {cred.cert_path} ({have}); set "
                f"{key} or iface to match"
            )


def certified_ip6(cred: Credentials) -> str | None:
    """The IPv6 underlay address the certificate names beside an IPv4 one, if any: the only
    second address this node may announce."""
    if ":" in cred.cert.public_ip:
        return None
    return cred.cert.address_of(6)
