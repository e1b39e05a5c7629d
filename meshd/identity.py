"""This node's credentials in certificate mode, loaded from files and checked at start.

The CA bundle (``ca``), this node's certificate (``cert``) and its private key (``cert_key``)
must agree with each other and with the configuration before the daemon announces anything: a
certificate from another CA, an expired one, a key that is not the certificate's, or a name,
public IP or subnet the certificate does not grant stops the daemon with one line that says
which file and which field. Members check the same things about us on every record, so a node
that started anyway would only be ignored by everyone.
"""

from __future__ import annotations

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


def cluster_network(cred: Credentials, configured: str | None) -> str:
    """The cluster network: that of the CA whose network holds our grant (verify_certificate
    checked there is one). A configured one must be such a network."""
    networks = sorted({a.network for a in cred.authorities if cred.cert.grant.inside(a.network)})
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


def subnet_for(cred: Credentials, configured: str | None) -> str | None:
    """This node's subnet: the configured one if the certificate grants it, else the one subnet
    the certificate grants; None for a pool grant with none configured (allocate from it)."""
    grant = cred.cert.grant
    if configured is None:
        return grant.subnet
    if not grant.allows(configured):
        raise ConfigError(
            f"subnet: {configured} is not granted by {cred.cert_path} ({grant.describe()})"
        )
    return configured


def pool_for(cred: Credentials, subnet_len: int | None) -> Pool:
    """The pool a pool grant lets this node allocate from (``subnet_len``, if set, must be the
    grant's length)."""
    grant = cred.cert.grant
    assert grant.pool is not None and grant.pool_len is not None  # subnet_for returned None
    if subnet_len is not None and subnet_len != grant.pool_len:
        raise ConfigError(
            f"subnet_len: {subnet_len} is not the length {cred.cert_path} grants "
            f"({grant.describe()})"
        )
    try:
        return Pool(grant.pool, grant.pool_len)
    except ValueError as exc:
        raise ConfigError(f"cert: {cred.cert_path}: {exc}") from None


def check_public_ip(cred: Credentials, public_ip: str) -> None:
    if public_ip != cred.cert.public_ip:
        raise ConfigError(
            f"public_ip: {public_ip} is not the address in {cred.cert_path} "
            f"({cred.cert.public_ip}); set public_ip or iface to match"
        )
