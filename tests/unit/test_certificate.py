"""meshd.gossip.certificate: parsing, verification, grants and CRLs (pure: explicit wall times)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from meshd.gossip import certificate as c
from meshd.gossip.certificate import CertError, Grant

NOW = 1_750_000_000.0
DAY = 86400.0
NET = "10.244.0.0/16"


def ca(name: str = "meshd CA", network: str = NET) -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, c.build_authority(key, name, network, NOW - DAY, NOW + 100 * DAY, serial=1)


def node(
    ca_key: Ed25519PrivateKey,
    ca_der: bytes,
    grant: Grant | None = None,
    name: str = "n1",
    ip: str = "192.0.2.1",
    start: float = NOW - DAY,
    end: float = NOW + 10 * DAY,
    serial: int = 4242,
) -> bytes:
    pub = Ed25519PrivateKey.generate().public_key()
    grant = grant or Grant.fixed("10.244.1.0/24")
    return c.build_certificate(ca_key, ca_der, pub, name, ip, grant, start, end, serial)


def custom(
    edit: Callable[[x509.CertificateBuilder], x509.CertificateBuilder],
    ca_key: Ed25519PrivateKey,
    subject: x509.Name | None = None,
    public_key: object = None,
) -> bytes:
    """A certificate built by hand (issuer CN "meshd CA"), for shapes build_certificate refuses
    to make."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshd CA")]))
        .public_key(public_key or Ed25519PrivateKey.generate().public_key())  # type: ignore[arg-type]
        .serial_number(7)
        .not_valid_before(datetime.fromtimestamp(NOW - DAY, UTC))
        .not_valid_after(datetime.fromtimestamp(NOW + DAY, UTC))
    )
    cert = edit(builder).sign(ca_key, None)
    return cert.public_bytes(serialization.Encoding.DER)


def san(*ips: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips])


def grant_ext(text: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([c.grant_name(text)])


def merged(exts: list[x509.ExtensionType]) -> list[x509.ExtensionType]:
    """One SubjectAlternativeName holding every SAN entry given (an IP and a grant are two
    entries of one extension), the other extensions as they are."""
    names = [n for e in exts if isinstance(e, x509.SubjectAlternativeName) for n in e]
    rest = [e for e in exts if not isinstance(e, x509.SubjectAlternativeName)]
    return ([x509.SubjectAlternativeName(names)] if names else []) + rest


def with_san(b: x509.CertificateBuilder, *exts: x509.ExtensionType) -> x509.CertificateBuilder:
    for e in merged(list(exts)):
        b = b.add_extension(e, critical=False)
    return b


def reason(fn: Callable[[], object]) -> str:
    with pytest.raises(CertError) as info:
        fn()
    assert "\n" not in str(info.value)
    return info.value.reason


# -- the valid chain ------------------------------------------------------------------------------


def test_valid_chain_fixed_subnet() -> None:
    ca_key, ca_der = ca()
    auth = c.parse_authority(ca_der)
    assert (auth.name, auth.network) == ("meshd CA", NET)
    der = node(ca_key, ca_der)
    info = c.verify_certificate(der, [auth], NOW)
    assert (info.name, info.public_ip, info.serial, info.issuer) == (
        "n1",
        "192.0.2.1",
        4242,
        "meshd CA",
    )
    assert info.grant == Grant("10.244.1.0/24", None, None)
    assert info.not_after == NOW + 10 * DAY
    assert len(info.fingerprint) == 32 and info.der == der
    assert len(der) < 320  # it travels in every record


def test_valid_chain_pool_among_several_authorities() -> None:
    other_key, other_der = ca("other CA", "10.0.0.0/8")
    ca_key, ca_der = ca()
    auths = [c.parse_authority(other_der), c.parse_authority(ca_der)]
    der = node(ca_key, ca_der, Grant.from_pool(NET, 24))
    info = c.verify_certificate(der, auths, NOW)
    assert info.grant.pool == NET and info.grant.pool_len == 24


def test_same_name_other_key_is_not_the_issuer() -> None:
    ca_key, ca_der = ca()
    _, impostor_der = ca()  # same CN "meshd CA", another key
    der = node(ca_key, ca_der)
    assert reason(lambda: c.verify_certificate(der, [c.parse_authority(impostor_der)], NOW)) == (
        c.ISSUER
    )


def test_wrong_ca() -> None:
    ca_key, ca_der = ca()
    _, other_der = ca("other CA")
    der = node(ca_key, ca_der)
    assert (
        reason(lambda: c.verify_certificate(der, [c.parse_authority(other_der)], NOW))
        == "cert_issuer"
    )
    assert reason(lambda: c.verify_certificate(der, [], NOW)) == "cert_issuer"


def test_expired_and_not_yet_valid() -> None:
    ca_key, ca_der = ca()
    auth = [c.parse_authority(ca_der)]
    der = node(ca_key, ca_der, start=NOW - 0.8 * DAY, end=NOW - 0.5 * DAY)
    assert reason(lambda: c.verify_certificate(der, auth, NOW)) == "cert_expired"
    assert c.verify_certificate(der, auth, NOW - 0.6 * DAY).name == "n1"
    later = node(ca_key, ca_der, start=NOW + DAY, end=NOW + 2 * DAY)
    assert reason(lambda: c.verify_certificate(later, auth, NOW)) == "cert_not_yet_valid"


def test_expired_authority_expires_its_certificates() -> None:
    ca_key, ca_der = ca()
    auth = [c.parse_authority(ca_der)]
    der = node(ca_key, ca_der, end=NOW + 1000 * DAY)
    assert reason(lambda: c.verify_certificate(der, auth, NOW + 200 * DAY)) == "cert_expired"


@pytest.mark.parametrize(
    "grant",
    [Grant.fixed("10.245.1.0/24"), Grant.from_pool("10.0.0.0/8", 24), Grant.fixed("fd00::/64")],
)
def test_grant_outside_network(grant: Grant) -> None:
    ca_key, ca_der = ca()
    der = node(ca_key, ca_der, grant)
    assert (
        reason(lambda: c.verify_certificate(der, [c.parse_authority(ca_der)], NOW)) == "cert_grant"
    )


# -- tampering and malformed certificates --------------------------------------------------------


def test_tampered_der() -> None:
    ca_key, ca_der = ca()
    auth = [c.parse_authority(ca_der)]
    der = node(ca_key, ca_der)
    # The IP inside the SAN: still a well-formed certificate, but no longer the signed one.
    i = der.index(ipaddress.ip_address("192.0.2.1").packed)
    forged = der[:i] + bytes([192, 0, 2, 9]) + der[i + 4 :]
    assert c.parse_certificate(forged).public_ip == "192.0.2.9"
    assert reason(lambda: c.verify_certificate(forged, auth, NOW)) == "cert_issuer"
    # The last byte of the signature.
    assert reason(lambda: c.verify_certificate(der[:-1] + bytes([der[-1] ^ 1]), auth, NOW)) == (
        "cert_issuer"
    )
    # Structure broken.
    assert reason(lambda: c.verify_certificate(der[:-10], auth, NOW)) == "cert_malformed"
    assert reason(lambda: c.parse_certificate(b"\x30\x03abc")) == "cert_malformed"
    assert reason(lambda: c.parse_certificate(b"")) == "cert_malformed"
    assert reason(lambda: c.parse_certificate(b"\x30" * 5000)) == "cert_malformed"


def test_non_ed25519_node_key() -> None:
    ca_key, _ = ca()
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = custom(
        lambda b: with_san(b, san("192.0.2.1"), grant_ext("subnet=10.244.1.0/24")),
        ca_key,
        public_key=ec_pub,
    )
    assert reason(lambda: c.parse_certificate(der)) == "cert_malformed"


def test_non_ed25519_authority() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.fromtimestamp(NOW - DAY, UTC))
        .not_valid_after(datetime.fromtimestamp(NOW + DAY, UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(grant_ext(f"network={NET}"), False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert reason(lambda: c.parse_authority(der)) == "cert_malformed"


GOOD_GRANT = "subnet=10.244.1.0/24"


@pytest.mark.parametrize(
    ("label", "subject", "exts"),
    [
        (
            "no CN",
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]),
            [san("192.0.2.1"), grant_ext(GOOD_GRANT)],
        ),
        ("no SAN", None, [grant_ext(GOOD_GRANT)]),
        ("two IPs", None, [san("192.0.2.1", "192.0.2.2"), grant_ext(GOOD_GRANT)]),
        ("loopback IP", None, [san("127.0.0.1"), grant_ext(GOOD_GRANT)]),
        ("broadcast IP", None, [san("255.255.255.255"), grant_ext(GOOD_GRANT)]),
        ("no grant", None, [san("192.0.2.1")]),
        ("grant not key=value", None, [san("192.0.2.1"), grant_ext("subnet")]),
        ("grant host bits", None, [san("192.0.2.1"), grant_ext("subnet=10.244.1.1/24")]),
        ("grant both", None, [san("192.0.2.1"), grant_ext(f"{GOOD_GRANT};pool={NET};len=24")]),
        ("pool without len", None, [san("192.0.2.1"), grant_ext(f"pool={NET}")]),
        ("pool len too short", None, [san("192.0.2.1"), grant_ext(f"pool={NET};len=8")]),
        (
            "two grants",
            None,
            [san("192.0.2.1"), grant_ext(GOOD_GRANT), grant_ext("subnet=10.244.2.0/24")],
        ),
        (
            "a CA",
            None,
            [
                san("192.0.2.1"),
                grant_ext(GOOD_GRANT),
                x509.BasicConstraints(ca=True, path_length=None),
            ],
        ),
    ],
)
def test_malformed_node_certificates(
    label: str, subject: x509.Name | None, exts: list[x509.ExtensionType]
) -> None:
    ca_key, ca_der = ca()

    der = custom(lambda b: with_san(b, *exts), ca_key, subject=subject)
    assert reason(lambda: c.parse_certificate(der)) == "cert_malformed", label


def test_unknown_grant_keys_are_ignored() -> None:
    ca_key, ca_der = ca()
    der = custom(
        lambda b: with_san(b, san("192.0.2.1"), grant_ext(f"{GOOD_GRANT};future=fd00:1::/64")),
        ca_key,
    )
    assert (
        c.verify_certificate(der, [c.parse_authority(ca_der)], NOW).grant.subnet == "10.244.1.0/24"
    )


def _authority_der(exts: list[tuple[x509.ExtensionType, bool]]) -> bytes:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshd CA")])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.fromtimestamp(NOW - DAY, UTC))
        .not_valid_after(datetime.fromtimestamp(NOW + DAY, UTC))
    )
    for e, critical in exts:
        b = b.add_extension(e, critical)
    return b.sign(key, None).public_bytes(serialization.Encoding.DER)


def test_authority_needs_ca_true_and_network() -> None:
    ca_true = (x509.BasicConstraints(ca=True, path_length=None), True)
    network = (grant_ext(f"network={NET}"), False)
    assert c.parse_authority(_authority_der([ca_true, network])).network == NET
    assert reason(lambda: c.parse_authority(_authority_der([network]))) == "cert_malformed"
    not_ca = (x509.BasicConstraints(ca=False, path_length=None), True)
    assert reason(lambda: c.parse_authority(_authority_der([not_ca, network]))) == "cert_malformed"
    assert reason(lambda: c.parse_authority(_authority_der([ca_true]))) == "cert_malformed"
    subnet_only = (grant_ext("subnet=10.244.1.0/24"), False)
    assert reason(lambda: c.parse_authority(_authority_der([ca_true, subnet_only]))) == (
        "cert_malformed"
    )
    bad_net = (grant_ext("network=10.244.0.1/16"), False)
    assert reason(lambda: c.parse_authority(_authority_der([ca_true, bad_net]))) == "cert_malformed"


def test_a_node_certificate_is_not_an_authority() -> None:
    ca_key, ca_der = ca()
    assert reason(lambda: c.parse_authority(node(ca_key, ca_der))) == "cert_malformed"
    assert reason(lambda: c.parse_certificate(ca_der)) == "cert_malformed"


def test_authority_must_be_self_signed() -> None:
    ca_key, ca_der = ca()
    forged = ca_der[:-1] + bytes([ca_der[-1] ^ 1])
    assert reason(lambda: c.parse_authority(forged)) == "cert_issuer"


# -- grants ---------------------------------------------------------------------------------------


def test_grant_allows() -> None:
    fixed = Grant.fixed("10.244.1.0/24")
    assert fixed.allows("10.244.1.0/24")
    assert not fixed.allows("10.244.1.0/25")
    assert not fixed.allows("10.244.2.0/24")
    assert not fixed.allows("10.244.1.1/24")  # not a network address
    assert not fixed.allows("junk")
    pool = Grant.from_pool(NET, 24)
    assert pool.allows("10.244.7.0/24")
    assert not pool.allows("10.244.7.0/25")
    assert not pool.allows(NET)
    assert not pool.allows("10.245.0.0/24")
    assert not pool.allows("fd00::/24")


def test_grant_text_round_trip() -> None:
    for grant in (Grant.fixed("10.244.1.0/24"), Grant.from_pool(NET, 26)):
        fields = c.parse_grant_text(grant.text())
        assert Grant.from_fields(fields) == grant
    assert Grant.from_pool(NET, 24).text() == "pool=10.244.0.0/16;len=24"
    assert c.format_grant({"network": NET}) == "network=10.244.0.0/16"
    with pytest.raises(ValueError):
        c.parse_grant_text("a=1;a=2")
    with pytest.raises(ValueError):
        c.format_grant({"a": "x;y"})
    with pytest.raises(ValueError, match="between"):
        Grant.from_pool(NET, 33)


def test_unicast_problem() -> None:
    assert c.unicast_problem("192.0.2.1") is None
    assert c.unicast_problem("2001:db8::1") is None
    for ip in (
        "127.0.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "fe80::1",
        "::",
        "x",
    ):
        assert c.unicast_problem(ip), ip


# -- CRLs and PEM ---------------------------------------------------------------------------------


def test_crl_parse() -> None:
    ca_key, ca_der = ca()
    _, other_der = ca("other CA")
    auths = [c.parse_authority(other_der), c.parse_authority(ca_der)]
    der = c.build_crl(ca_key, ca_der, 7, {4242: NOW - 10, 99: NOW - 5}, NOW, NOW + 30 * DAY)
    rev = c.parse_crl(der, auths)
    assert (rev.number, rev.serials, rev.issuer) == (7, frozenset({4242, 99}), "meshd CA")
    assert (rev.this_update, rev.next_update) == (NOW, NOW + 30 * DAY)
    empty = c.parse_crl(c.build_crl(ca_key, ca_der, 8, {}, NOW, NOW + DAY), auths)
    assert empty.serials == frozenset() and empty.number == 8


def test_crl_bad_signature() -> None:
    ca_key, ca_der = ca()
    impostor_key, impostor_der = ca()  # same name, another key
    der = c.build_crl(impostor_key, impostor_der, 9, {4242: NOW}, NOW, NOW + DAY)
    assert reason(lambda: c.parse_crl(der, [c.parse_authority(ca_der)])) == "crl_issuer"
    good = c.build_crl(ca_key, ca_der, 9, {4242: NOW}, NOW, NOW + DAY)
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    assert reason(lambda: c.parse_crl(flipped, [c.parse_authority(ca_der)])) == "crl_issuer"
    assert reason(lambda: c.parse_crl(good[:-3], [c.parse_authority(ca_der)])) == "crl_malformed"
    assert reason(lambda: c.parse_crl(b"", [c.parse_authority(ca_der)])) == "crl_malformed"


def test_crl_without_number() -> None:
    ca_key, ca_der = ca()
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshd CA")]))
        .last_update(datetime.fromtimestamp(NOW, UTC))
        .next_update(datetime.fromtimestamp(NOW + DAY, UTC))
        .sign(ca_key, None)
    )
    der = crl.public_bytes(serialization.Encoding.DER)
    assert reason(lambda: c.parse_crl(der, [c.parse_authority(ca_der)])) == "crl_malformed"


def test_pem_bundle() -> None:
    _, a = ca()
    _, b = ca("second")
    bundle = "junk\n" + c.der_to_pem(a) + c.der_to_pem(b"xyz", "PRIVATE KEY") + c.der_to_pem(b)
    assert c.pem_to_der_list(bundle) == [a, b]
    assert c.pem_to_der_list(bundle, "PRIVATE KEY") == [b"xyz"]
    with pytest.raises(ValueError, match="no CERTIFICATE"):
        c.pem_to_der_list("nothing here")
    with pytest.raises(ValueError, match="base64"):
        c.pem_to_der_list("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")


def test_relabelled_outer_algorithm_is_refused() -> None:
    """The outer signatureAlgorithm is not signed: a copy with it changed must not verify as a
    second DER of the same certificate (caches are keyed by DER)."""
    key, ca_der = ca()
    der = node(key, ca_der)
    ed25519 = bytes.fromhex("06032b6570")  # OID 1.3.101.112
    outer = der.rindex(ed25519)  # the last one is outside the signed part
    forged = der[:outer] + bytes.fromhex("06032c6570") + der[outer + len(ed25519) :]
    assert forged != der
    auth = c.parse_authority(ca_der)
    assert reason(lambda: c.verify_certificate(forged, [auth], NOW)) == c.MALFORMED
    assert c.verify_certificate(der, [auth], NOW).der == der


# -- dual-stack -----------------------------------------------------------------------------------

NET6 = "fd00:10:244::/48"
DUAL = Grant.combine([Grant.fixed("10.244.1.0/24"), Grant.from_pool(NET6, 64)])


def dual_ca() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    der = c.build_authority(key, "meshd CA", [NET6, NET], NOW - DAY, NOW + 100 * DAY, serial=1)
    return key, der


def test_dual_stack_chain() -> None:
    ca_key, ca_der = dual_ca()
    auth = c.parse_authority(ca_der)
    assert (auth.network, auth.network6, auth.networks) == (NET, NET6, (NET, NET6))
    assert (auth.network_of(4), auth.network_of(6)) == (NET, NET6)
    pub = Ed25519PrivateKey.generate().public_key()
    # The addresses in any order: the certificate's first is the IPv4 one, as in the record.
    der = c.build_certificate(
        ca_key, ca_der, pub, "n1", ["fd00:99::1", "192.0.2.1"], DUAL, NOW - DAY, NOW + DAY, 9
    )
    info = c.verify_certificate(der, [auth], NOW)
    assert (info.public_ip, info.public_ip6) == ("192.0.2.1", "fd00:99::1")
    assert (info.address_of(4), info.address_of(6)) == ("192.0.2.1", "fd00:99::1")
    assert info.grant == DUAL
    assert DUAL.text() == f"subnet=10.244.1.0/24;pool6={NET6};len6=64"
    assert DUAL.describe() == f"10.244.1.0/24 and any /64 in {NET6}"
    assert DUAL.allows("10.244.1.0/24") and DUAL.allows("fd00:10:244:7::/64")
    for refused in ("10.244.2.0/24", "fd00:10:244::/63", "fd00:10:245::/64", "fd00:10:244::1/64"):
        assert not DUAL.allows(refused), refused
    assert (DUAL.is_fixed(4), DUAL.is_fixed(6)) == (True, False)


def test_an_ipv6_grant_needs_the_cas_ipv6_network() -> None:
    ca_key, ca_der = ca()  # IPv4 only
    der = node(ca_key, ca_der, DUAL)
    assert reason(lambda: c.verify_certificate(der, [c.parse_authority(ca_der)], NOW)) == c.GRANT


def test_an_ipv6_only_cluster() -> None:
    key = Ed25519PrivateKey.generate()
    ca_der = c.build_authority(key, "v6 CA", NET6, NOW - DAY, NOW + DAY, serial=1)
    auth = c.parse_authority(ca_der)
    assert (auth.network, auth.network6, auth.network_of(4)) == (NET6, None, None)
    grant = Grant.fixed("fd00:10:244:1::/64")
    info = c.verify_certificate(node(key, ca_der, grant, ip="fd00:99::1"), [auth], NOW)
    assert (info.public_ip, info.public_ip6, info.address_of(4)) == ("fd00:99::1", None, None)
    assert grant.text() == "subnet=fd00:10:244:1::/64"
    assert (grant.version, grant.part(4), grant.parts) == (6, None, (grant,))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("subnet6=fd00::/64", "exactly one of subnet= and pool="),  # no first family
        ("subnet=10.244.1.0/24;subnet6=fd00::/64;pool6=fd00::/48;len6=64", "exactly one"),
        ("subnet=10.244.1.0/24;len6=64", "len6= belongs with pool6="),
        ("subnet=10.244.1.0/24;subnet6=fd00::/64;len6=64", "len6= belongs with pool6="),
        ("subnet=10.244.1.0/24;pool6=fd00::/48", "len6=''"),
        ("subnet=10.244.1.0/24;subnet6=10.244.2.0/24", "must be IPv6"),
        ("subnet=fd00:1::/64;subnet6=fd00::/64", "must be IPv6, beside an IPv4"),
        ("subnet=10.244.1.0/24;pool6=fd00::/48;len6=129", "between"),
    ],
)
def test_malformed_dual_stack_grants(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Grant.from_fields(c.parse_grant_text(text))


def test_combine_takes_one_grant_per_family() -> None:
    v4, v6 = Grant.fixed("10.244.1.0/24"), Grant.fixed("fd00::/64")
    assert Grant.combine([v6, v4]) == Grant("10.244.1.0/24", None, None, "fd00::/64", None, None)
    assert Grant.combine([v6]) == v6
    for parts, needle in [([], "needs"), ([v4, v4], "two IPv4"), ([DUAL], "single-family")]:
        with pytest.raises(ValueError, match=needle):
            Grant.combine(parts)


def test_certificate_addresses_one_per_family() -> None:
    ca_key, _ = ca()
    for ips, ok in [
        (("192.0.2.1", "fd00::1"), True),
        (("fd00::1", "fd00::2"), False),
        (("192.0.2.1", "fd00::1", "fd00::2"), False),
        (("192.0.2.1", "fe80::1"), False),  # link-local: needs a zone
    ]:
        der = custom(lambda b, ips=ips: with_san(b, san(*ips), grant_ext(GOOD_GRANT)), ca_key)  # type: ignore[misc]
        if ok:
            assert c.parse_certificate(der).public_ips == ips
        else:
            assert reason(lambda der=der: c.parse_certificate(der)) == c.MALFORMED  # type: ignore[misc]


def test_a_cas_network6_must_be_ipv6_beside_ipv4() -> None:
    for grant in (
        "network=10.244.0.0/16;network6=10.245.0.0/16",
        f"network={NET6};network6={NET6}",
    ):
        ca_true = (x509.BasicConstraints(ca=True, path_length=0), True)
        der = _authority_der([ca_true, (grant_ext(grant), False)])
        assert reason(lambda der=der: c.parse_authority(der)) == c.MALFORMED  # type: ignore[misc]
