"""meshd.pki and meshd.securefile: the CA directory, issuing, revoking, loading files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshd import pki
from meshd.errors import CertificateError
from meshd.gossip import certificate as c
from meshd.gossip.certificate import Grant
from meshd.gossip.record import _NAME_RE
from meshd.securefile import write_file

NET = "10.244.0.0/16"
NOW = 1_750_000_000.0
DAY = 86400.0
FIXED = Grant.fixed("10.244.1.0/24")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    pki.init_ca(d, NET, wall=NOW - 10 * DAY)
    return d


def test_init_ca(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    auth = pki.init_ca(d, NET, name="lab CA", days=10, wall=NOW)
    assert (auth.name, auth.network) == ("lab CA", NET)
    assert auth.not_after == NOW + 10 * DAY and auth.not_before < NOW
    assert mode(d / "ca.key") == 0o600 and mode(d) == 0o700
    assert mode(d / "ca.crt") == 0o644
    assert pki.load_authorities(d / "ca.crt") == [auth]
    key = pki.load_private_key(d / "ca.key", "CA key")
    assert c.raw_public_key(key.public_key()) == c.raw_public_key(auth.public_key)
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary left


def test_init_ca_refuses_to_overwrite(ca: Path) -> None:
    before = (ca / "ca.key").read_bytes()
    with pytest.raises(CertificateError, match="refusing to overwrite"):
        pki.init_ca(ca, NET)
    (ca / "ca.crt").unlink()
    with pytest.raises(CertificateError, match="ca.key exists"):
        pki.init_ca(ca, NET)
    assert (ca / "ca.key").read_bytes() == before


@pytest.mark.parametrize(
    ("network", "needle"),
    [
        ("10.244.0.1/16", "host bits"),
        ("169.254.0.0/16", "169.254.0.0/16"),
        ("127.0.0.0/8", "127.0.0.0/8"),
        ("224.0.0.0/8", "224.0.0.0/4"),
        ("0.0.0.0/0", "overlaps"),
        ("8.0.0.0/6", "wider than a /8"),
        ("::/0", "overlaps"),
        ("fe80::/10", "fe80::/10"),
        ("ff00::/8", "ff00::/8"),
        ("::ffff:0:0/96", "::ffff:0:0/96"),
        ("fc00::/7", "wider than a /8"),
        ("fd00::1/48", "host bits"),
        ("junk", "junk"),
    ],
)
def test_init_ca_refuses_networks(tmp_path: Path, network: str, needle: str) -> None:
    with pytest.raises(CertificateError, match=needle):
        pki.init_ca(tmp_path / "ca", network)
    assert not (tmp_path / "ca" / "ca.key").exists()


def test_sign_fresh_key(ca: Path, tmp_path: Path) -> None:
    issued = pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n1", days=30, wall=NOW)
    assert issued.crt == tmp_path / "n1.crt" and issued.key == tmp_path / "n1.key"
    assert mode(issued.key) == 0o600
    assert issued.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    info = pki.load_certificate(issued.crt)
    auths = pki.load_authorities(ca / "ca.crt")
    assert c.verify_certificate(info.der, auths, NOW + DAY) == info
    assert (info.name, info.public_ip, info.grant) == ("n1", "192.0.2.1", FIXED)
    assert info.not_after == NOW + 30 * DAY
    assert pki.private_key_matches(pki.load_private_key(issued.key), info)
    assert not pki.private_key_matches(pki.load_private_key(ca / "ca.key"), info)
    assert pki.issued_certificates(ca) == {info.serial: info}
    assert info.serial.bit_length() <= 64
    assert pki.default_key_path(issued.crt) == issued.key


def test_sign_never_outlives_the_ca(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    auth = pki.init_ca(d, NET, days=10, wall=NOW)
    info = pki.sign(d, "n1", "192.0.2.1", FIXED, tmp_path / "n1", days=365, wall=NOW).info
    assert info.not_after == auth.not_after
    with pytest.raises(CertificateError, match="has expired"):
        pki.sign(d, "n2", "192.0.2.2", FIXED, tmp_path / "n2", wall=NOW + 11 * DAY)
    with pytest.raises(CertificateError, match="refusing to issue: .*not valid before"):
        pki.sign(d, "n3", "192.0.2.3", FIXED, tmp_path / "n3", wall=NOW - DAY)


def test_sign_refuses_existing_output(ca: Path, tmp_path: Path) -> None:
    pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n1")
    key = (tmp_path / "n1.key").read_bytes()
    with pytest.raises(CertificateError, match="exists"):
        pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n1")
    assert (tmp_path / "n1.key").read_bytes() == key


@pytest.mark.parametrize(
    ("name", "ip", "grant", "needle"),
    [
        ("n1", "192.0.2.1", Grant.fixed("10.245.1.0/24"), "outside the CA's network"),
        ("n1", "192.0.2.1", Grant.from_pool("10.0.0.0/8", 24), "outside the CA's network"),
        ("n1", "192.0.2.1", Grant.fixed(NET), "whole cluster network"),
        ("n1", "192.0.2.1", Grant.from_pool(NET, 16), "narrower"),
        ("n1", "127.0.0.1", FIXED, "not a unicast"),
        ("n1", "224.0.0.1", FIXED, "not a unicast"),
        ("n1", "1.2.3", FIXED, "not an IP address"),
        ("-bad", "192.0.2.1", FIXED, "--name"),
        ("a" * 64, "192.0.2.1", FIXED, "--name"),
    ],
)
def test_sign_refuses(
    ca: Path, tmp_path: Path, name: str, ip: str, grant: Grant, needle: str
) -> None:
    with pytest.raises(CertificateError, match=needle):
        pki.sign(ca, name, ip, grant, tmp_path / "n")
    assert not (tmp_path / "n.key").exists() and not (tmp_path / "n.crt").exists()
    assert pki.issued_certificates(ca) == {}


def test_sign_checks_the_ca_files(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="meshd ca init"):
        pki.sign(tmp_path / "nowhere", "n1", "192.0.2.1", FIXED, tmp_path / "n")
    (ca / "ca.key").chmod(0o640)
    with pytest.raises(CertificateError, match="chmod 600"):
        pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n")
    other = tmp_path / "other"
    pki.init_ca(other, NET)
    os.replace(other / "ca.key", ca / "ca.key")
    with pytest.raises(CertificateError, match="is not the key of"):
        pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n")


def test_grant_from_flags() -> None:
    assert pki.grant_from_flags("10.244.1.0/24", None, None) == FIXED
    assert pki.grant_from_flags(None, NET, None) == Grant.from_pool(NET, 24)
    assert pki.grant_from_flags(None, NET, 26) == Grant.from_pool(NET, 26)
    for args, needle in [
        ((None, None, None), "exactly one"),
        (("10.244.1.0/24", NET, None), "exactly one"),
        (("10.244.1.0/24", None, 24), "goes with --network"),
        (("10.244.1.1/24", None, None), "host bits"),
        ((None, NET, 40), "between"),
    ]:
        with pytest.raises(CertificateError, match=needle):
            pki.grant_from_flags(*args)


# -- the request flow -----------------------------------------------------------------------------


def test_request_flow(ca: Path, tmp_path: Path) -> None:
    key_path, csr_path = pki.make_request("n2", "192.0.2.2", tmp_path / "n2")
    assert mode(key_path) == 0o600 and csr_path.read_bytes().startswith(
        b"-----BEGIN CERTIFICATE REQUEST"
    )
    assert pki.read_request(csr_path)[:2] == ("n2", ("192.0.2.2",))
    grant = Grant.from_pool(NET, 26)
    issued = pki.sign_request(ca, csr_path, grant, tmp_path / "n2", wall=NOW)
    assert issued.key is None and issued.crt == tmp_path / "n2.crt"
    info = pki.load_certificate(issued.crt)
    assert (info.name, info.public_ip, info.grant) == ("n2", "192.0.2.2", grant)
    assert pki.private_key_matches(pki.load_private_key(key_path), info)
    # The operator's flags win over the request's.
    over = pki.sign_request(ca, csr_path, FIXED, tmp_path / "o", name="n9", public_ip="192.0.2.9")
    assert (over.info.name, over.info.public_ip, over.info.grant) == ("n9", "192.0.2.9", FIXED)
    with pytest.raises(CertificateError, match="outside"):
        pki.sign_request(ca, csr_path, Grant.fixed("10.9.0.0/24"), tmp_path / "x")


def test_request_refuses_existing_key(tmp_path: Path) -> None:
    pki.make_request("n2", "192.0.2.2", tmp_path / "n2")
    with pytest.raises(CertificateError, match="exists"):
        pki.make_request("n2", "192.0.2.2", tmp_path / "n2")
    with pytest.raises(CertificateError, match="unicast"):
        pki.make_request("n3", "0.0.0.0", tmp_path / "n3")


def _csr(tmp_path: Path, key: object, ips: list[str], name: str | None = "n2") -> Path:
    import ipaddress

    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if name else [])
    )
    if ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
            critical=False,
        )
    from cryptography.hazmat.primitives import hashes

    algo = None if not isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algo)  # type: ignore[arg-type]
    path = tmp_path / "req.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_sign_request_refuses(ca: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ec_csr = _csr(tmp_path, ec.generate_private_key(ec.SECP256R1()), ["192.0.2.2"])
    with pytest.raises(CertificateError, match="not Ed25519"):
        pki.sign_request(ca, ec_csr, FIXED, tmp_path / "x")
    no_ip = _csr(tmp_path, Ed25519PrivateKey.generate(), [])
    with pytest.raises(CertificateError, match="--public-ip"):
        pki.sign_request(ca, no_ip, FIXED, tmp_path / "x")
    assert (
        pki.sign_request(ca, no_ip, FIXED, tmp_path / "x", public_ip="192.0.2.5").info.name == "n2"
    )
    two_ips = _csr(tmp_path, Ed25519PrivateKey.generate(), ["192.0.2.2", "192.0.2.3"])
    with pytest.raises(CertificateError, match="--public-ip"):
        pki.sign_request(ca, two_ips, FIXED, tmp_path / "y")
    no_cn = _csr(tmp_path, Ed25519PrivateKey.generate(), ["192.0.2.2"], name=None)
    with pytest.raises(CertificateError, match="--name"):
        pki.sign_request(ca, no_cn, FIXED, tmp_path / "y")
    with pytest.raises(CertificateError, match="no signing request"):
        pki.sign_request(ca, tmp_path / "missing.csr", FIXED, tmp_path / "y")
    garbage = tmp_path / "garbage.csr"
    garbage.write_text(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CertificateError, match="unreadable"):
        pki.sign_request(ca, garbage, FIXED, tmp_path / "y")


def test_tampered_request_refused(ca: Path, tmp_path: Path) -> None:
    _, csr_path = pki.make_request("n2", "192.0.2.2", tmp_path / "n2")
    der = x509.load_pem_x509_csr(csr_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    i = der.index(bytes([192, 0, 2, 2]))
    forged = tmp_path / "forged.csr"
    forged.write_bytes(der[:i] + bytes([192, 0, 2, 7]) + der[i + 4 :])  # DER is accepted too
    with pytest.raises(CertificateError, match="signature does not verify"):
        pki.sign_request(ca, forged, FIXED, tmp_path / "f")


# -- revocation -----------------------------------------------------------------------------------


def test_revoke(ca: Path, tmp_path: Path) -> None:
    a1 = pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "a1", days=30, wall=NOW).info
    a2 = pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "a2", days=5, wall=NOW).info
    gone = pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "a3", days=1, wall=NOW - 3 * DAY)
    b = pki.sign(ca, "n2", "192.0.2.2", FIXED, tmp_path / "b", days=30, wall=NOW).info
    pki.sign(ca, "n3", "192.0.2.3", FIXED, tmp_path / "c", days=30, wall=NOW)

    first = pki.revoke(ca, "n1", days=7, wall=NOW)
    assert first.crl == ca / "crl"
    assert {i.serial for i in first.certificates} == {a1.serial, a2.serial}  # not the expired one
    assert gone.info.serial not in first.revocations.serials
    assert first.revocations.number == 1 and first.revocations.next_update == NOW + 7 * DAY
    auths = pki.load_authorities(ca / "ca.crt")
    assert pki.load_crl(ca / "crl", auths) == first.revocations
    assert (ca / "crl").read_bytes().startswith(b"-----BEGIN X509 CRL-----")

    # Later: n1's 5-day certificate has expired and leaves the list; n2 joins it.
    second = pki.revoke(ca, "n2", wall=NOW + 6 * DAY)
    assert second.revocations.number == 2
    assert second.revocations.serials == {a1.serial, b.serial}
    # Revoking again is harmless: same list, next number.
    third = pki.revoke(ca, "n2", wall=NOW + 6 * DAY)
    assert (third.revocations.number, third.revocations.serials) == (3, second.revocations.serials)


def test_revoke_refuses(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no certificate to 'ghost'"):
        pki.revoke(ca, "ghost")
    pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "a", days=1, wall=NOW)
    with pytest.raises(CertificateError, match="expired: nothing to revoke"):
        pki.revoke(ca, "n1", wall=NOW + 2 * DAY)
    assert not (ca / "crl").exists()


def test_revoke_refuses_a_foreign_crl(ca: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, NET)
    pki.sign(other, "n1", "192.0.2.1", FIXED, tmp_path / "o")
    pki.revoke(other, "n1")
    pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "a")
    os.replace(other / "crl", ca / "crl")
    with pytest.raises(CertificateError, match="not signed by a trusted CA"):
        pki.revoke(ca, "n1")


# -- loading --------------------------------------------------------------------------------------


def test_load_private_key_refusals(ca: Path, tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    (tmp_path / "k.key").write_bytes((ca / "ca.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(CertificateError, match="chmod 600"):
        pki.load_private_key(key)
    key.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(key)
    with pytest.raises(CertificateError, match="symlink"):
        pki.load_private_key(link)
    with pytest.raises(CertificateError, match="no certificate key"):
        pki.load_private_key(tmp_path / "none.key")
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file(tmp_path / "ec.key", ec_key, "key", CertificateError)
    with pytest.raises(CertificateError, match="not an Ed25519 key"):
        pki.load_private_key(tmp_path / "ec.key")
    write_file(tmp_path / "junk.key", b"junk", "key", CertificateError)
    with pytest.raises(CertificateError, match="not a PEM private key"):
        pki.load_private_key(tmp_path / "junk.key")


def test_load_private_key_foreign_owner(ca: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(CertificateError, match="owned by uid"):
        pki.load_private_key(ca / "ca.key")


def test_load_authorities_and_certificates(ca: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, "10.9.0.0/16", name="other CA")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((ca / "ca.crt").read_bytes() + (other / "ca.crt").read_bytes())
    assert [a.name for a in pki.load_authorities(bundle)] == ["meshd CA", "other CA"]
    issued = pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n1")
    with pytest.raises(CertificateError, match="not a CA"):
        pki.load_authorities(issued.crt)
    with pytest.raises(CertificateError, match="is a CA certificate"):
        pki.load_certificate(ca / "ca.crt")
    der = tmp_path / "n1.der"
    der.write_bytes(issued.info.der)
    assert pki.load_certificate(der) == issued.info
    empty = tmp_path / "empty.crt"
    empty.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertificateError, match="no CERTIFICATE"):
        pki.load_authorities(empty)
    with pytest.raises(CertificateError, match="no CA file"):
        pki.load_authorities(tmp_path / "missing.crt")


def test_read_crl_pem_and_describe(ca: Path, tmp_path: Path) -> None:
    info = pki.sign(ca, "n1", "192.0.2.1", FIXED, tmp_path / "n1", wall=NOW).info
    pki.revoke(ca, "n1", days=2, wall=NOW)
    text = (ca / "crl").read_text()
    assert pki.read_crl_pem(ca / "crl") == text
    der_file = tmp_path / "crl.der"
    der_file.write_bytes(c.pem_to_der_list(text, "X509 CRL")[0])
    assert pki.read_crl_pem(der_file) == text
    with pytest.raises(CertificateError, match="CRL"):
        pki.read_crl_pem(tmp_path / "n1.crt")
    shown = pki.describe_crl(ca / "crl", ca / "ca.crt", wall=NOW + DAY)
    assert shown["number"] == 1 and shown["verified"] and not shown["expired"]
    assert [e["serial"] for e in shown["revoked"]] == [f"{info.serial:x}"]
    assert pki.describe_crl(ca / "crl", wall=NOW + 3 * DAY)["expired"]
    other = tmp_path / "other"
    pki.init_ca(other, NET)
    with pytest.raises(CertificateError, match="not signed by a trusted CA"):
        pki.describe_crl(ca / "crl", other / "ca.crt")


def test_describe_certificate(ca: Path, tmp_path: Path) -> None:
    info = pki.sign(ca, "n1", "192.0.2.1", Grant.from_pool(NET, 24), tmp_path / "n1", 10, NOW).info
    node = pki.describe_certificate(tmp_path / "n1.crt", wall=NOW)
    assert node["kind"] == "node" and node["grant"] == "pool=10.244.0.0/16;len=24"
    assert node["subnet"] == "any /24 in 10.244.0.0/16" and node["serial"] == f"{info.serial:x}"
    assert node["fingerprint"] == "SHA256:" + info.fingerprint.hex()
    assert node["expired"] is False
    assert pki.describe_certificate(tmp_path / "n1.crt", wall=NOW + 11 * DAY)["expired"] is True
    auth = pki.describe_certificate(ca / "ca.crt")
    assert (auth["kind"], auth["network"]) == ("ca", NET)


def test_name_rule_is_the_records() -> None:
    assert pki.NAME_RE.pattern == _NAME_RE.pattern


# -- securefile -----------------------------------------------------------------------------------


def test_write_file_no_replace_keeps_the_original(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_file(p, b"one", "thing", CertificateError, 0o640)
    assert mode(p) == 0o640
    with pytest.raises(CertificateError, match="exists"):
        write_file(p, b"two", "thing", CertificateError, replace=False)
    assert p.read_bytes() == b"one"
    write_file(p, b"three", "thing", CertificateError)
    assert p.read_bytes() == b"three" and mode(p) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f"]
    with pytest.raises(CertificateError, match="cannot write"):
        write_file(tmp_path / "no" / "f", b"x", "thing", CertificateError)


# -- dual-stack -----------------------------------------------------------------------------------

NET6 = "fd00:10:244::/48"


def test_grant_from_flags_per_family() -> None:
    both = pki.grant_from_flags(["10.244.1.0/24", "fd00:10:244:1::/64"], None, None)
    assert both == Grant("10.244.1.0/24", None, None, "fd00:10:244:1::/64", None, None)
    pools = pki.grant_from_flags(None, [NET6, NET], 26)
    assert pools == Grant(None, NET, 26, None, NET6, pki.DEFAULT_SUBNET_LEN6)
    assert pki.grant_from_flags(None, NET6, None, 96) == Grant.from_pool(NET6, 96)
    mixed = pki.grant_from_flags("fd00:10:244:1::/64", NET, None)
    assert mixed.text() == f"pool={NET};len=24;subnet6=fd00:10:244:1::/64"
    for args, needle in [
        ((["10.244.1.0/24", "10.244.2.0/24"], None, None), "two IPv4"),
        (("fd00:10:244:1::/64", NET6, None), "two IPv6"),
        ((None, NET6, 24), "--subnet-len goes with --network"),
        ((None, NET6, None, 130), "between"),
    ]:
        with pytest.raises(CertificateError, match=needle):
            pki.grant_from_flags(*args)  # type: ignore[arg-type]


def test_a_dual_stack_ca_issues_both_families(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    auth = pki.init_ca(d, [NET, NET6], wall=NOW)
    assert auth.networks == (NET, NET6)
    grant = pki.grant_from_flags("10.244.1.0/24", NET6, None)
    issued = pki.sign(d, "n1", ["192.0.2.1", "fd00:99::1"], grant, tmp_path / "n1", wall=NOW)
    assert issued.info.public_ips == ("192.0.2.1", "fd00:99::1")
    assert issued.info.grant.allows("fd00:10:244:ab::/64")
    shown = pki.describe_certificate(issued.crt, wall=NOW)
    assert shown["public_ip6"] == "fd00:99::1"
    assert shown["subnet"] == f"10.244.1.0/24 and any /64 in {NET6}"
    for ips, g, needle in [
        (["192.0.2.1", "192.0.2.2"], grant, "two IPv4 values"),
        (["192.0.2.1", "ff02::1"], grant, "not a unicast"),
        ("192.0.2.1", pki.grant_from_flags(None, NET6, None, 48), "--subnet-len6 48: a node's"),
        ("192.0.2.1", pki.grant_from_flags(["10.244.1.0/24", NET6], None, None), "whole cluster"),
        (
            "192.0.2.1",
            pki.grant_from_flags(["10.244.1.0/24", "fd00:1::/64"], None, None),
            "outside",
        ),
    ]:
        with pytest.raises(CertificateError, match=needle):
            pki.sign(d, "n2", ips, g, tmp_path / "n2", wall=NOW)


def test_an_ipv6_only_ca(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    auth = pki.init_ca(d, NET6, wall=NOW)
    assert (auth.network, auth.network6) == (NET6, None)
    grant = pki.grant_from_flags(None, NET6, None)
    info = pki.sign(d, "n1", "fd00:99::1", grant, tmp_path / "n1", wall=NOW).info
    assert (info.public_ip, info.grant.text()) == ("fd00:99::1", f"pool={NET6};len=64")
    with pytest.raises(CertificateError, match="outside the CA's network"):
        pki.sign(d, "n2", "fd00:99::2", FIXED, tmp_path / "n2", wall=NOW)


def test_a_request_with_one_address_per_family(tmp_path: Path) -> None:
    _, csr = pki.make_request("n2", ["fd00:99::2", "192.0.2.2"], tmp_path / "n2")
    assert pki.read_request(csr)[:2] == ("n2", ("192.0.2.2", "fd00:99::2"))
    with pytest.raises(CertificateError, match="two IPv6 values"):
        pki.make_request("n3", ["fd00:99::2", "fd00:99::3"], tmp_path / "n3")
