"""meshd/identity.py: this node's CA, certificate and key, checked against each other and the
configuration before the daemon announces anything; each mismatch is one line naming the file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshd import identity, pki
from meshd.errors import ConfigError
from meshd.gossip.certificate import Grant

NET = "10.244.0.0/16"


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    pki.init_ca(d, NET)
    return d


def issue(ca: Path, name: str = "n1", grant: Grant | None = None, **kw: float) -> Path:
    out = ca.parent / name
    pki.sign(ca, name, "192.0.2.1", grant or Grant.fixed("10.244.1.0/24"), out, **kw)  # type: ignore[arg-type]
    return out.with_name(name + ".crt")


def load(ca: Path, crt: Path, key: Path | None = None) -> identity.Credentials:
    return identity.load(ca / "ca.crt", crt, key or crt.with_suffix(".key"), time.time())


def test_matching_files_load_and_give_the_grant(ca: Path) -> None:
    cred = load(ca, issue(ca))
    identity.check_name(cred, "n1")
    identity.check_public_ip(cred, "192.0.2.1")
    assert identity.subnet_for(cred, None) == "10.244.1.0/24"  # the one subnet granted
    assert identity.subnet_for(cred, "10.244.1.0/24") == "10.244.1.0/24"
    assert identity.cluster_network(cred, None) == NET
    assert identity.cluster_network(cred, NET) == NET


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_every_contradiction_is_one_line(ca: Path) -> None:
    cred = load(ca, issue(ca))
    with pytest.raises(ConfigError) as e:
        identity.check_name(cred, "n2")
    assert one_line(e).startswith("name: 'n2' is not the name in")
    with pytest.raises(ConfigError) as e:
        identity.check_public_ip(cred, "192.0.2.9")
    assert one_line(e).startswith("public_ip: 192.0.2.9 is not the address in")
    with pytest.raises(ConfigError) as e:
        identity.subnet_for(cred, "10.244.2.0/24")
    assert one_line(e).startswith("subnet: 10.244.2.0/24 is not granted by")
    with pytest.raises(ConfigError) as e:
        identity.cluster_network(cred, "10.0.0.0/8")
    assert one_line(e) == "network: 10.0.0.0/8 is not the CA's network (10.244.0.0/16)"


def test_a_pool_grant_allocates_from_its_pool(ca: Path) -> None:
    cred = load(ca, issue(ca, grant=Grant.from_pool(NET, 24)))
    assert identity.subnet_for(cred, None) is None  # allocate
    pool = identity.pool_for(cred, None)
    assert pool is not None
    assert (pool.network, pool.length, pool.size) == (NET, 24, 256)
    assert identity.pool_for(cred, 24) == pool
    with pytest.raises(ConfigError) as e:
        identity.pool_for(cred, 26)
    assert one_line(e).startswith("subnet_len: 26 is not the length")
    assert identity.subnet_for(cred, "10.244.7.0/24") == "10.244.7.0/24"
    with pytest.raises(ConfigError):
        identity.subnet_for(cred, "10.244.7.0/25")


def test_wrong_key_other_ca_and_expiry_are_refused(ca: Path, tmp_path: Path) -> None:
    crt, other = issue(ca, "n1"), issue(ca, "n2")
    with pytest.raises(ConfigError) as e:
        load(ca, crt, other.with_suffix(".key"))
    assert "is not the private key of" in one_line(e)

    foreign = tmp_path / "foreign"
    pki.init_ca(foreign, NET)
    with pytest.raises(ConfigError) as e:
        identity.load(foreign / "ca.crt", crt, crt.with_suffix(".key"), time.time())
    assert one_line(e).startswith(f"cert: {crt}:")

    past = tmp_path / "past"  # a CA made ten days ago issued a one-day certificate three days ago
    pki.init_ca(past, NET, wall=time.time() - 10 * 86400)
    old = issue(past, "n3", wall=time.time() - 3 * 86400, days=1)
    with pytest.raises(ConfigError) as e:
        load(past, old)
    assert "expired" in one_line(e)


# --- dual-stack: a grant, a network and an underlay address per family -------------------------


def dual_cred(
    grant: Grant, ips: tuple[str, ...] = ("192.0.2.1", "2001:db8::1")
) -> identity.Credentials:
    """Credentials from a dual-stack CA (10.244.0.0/16 + fd00:10:244::/48), built in memory."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meshd.gossip import certificate as c

    now = time.time()
    ca_key, key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ca_der = c.build_authority(ca_key, "ca", [NET, "fd00:10:244::/48"], now - 60, now + 3600, 1)
    auth = c.parse_authority(ca_der)
    der = c.build_certificate(
        ca_key, ca_der, key.public_key(), "n1", ips, grant, now - 60, now + 3600, 2
    )
    info = c.verify_certificate(der, [auth], now)
    return identity.Credentials((auth,), info, key, Path("/etc/meshd/n1.crt"))


def test_a_dual_stack_grant_gives_a_subnet_and_a_network_per_family() -> None:
    grant = Grant.combine([Grant.fixed("10.244.1.0/24"), Grant.fixed("fd00:10:244:1::/64")])
    cred = dual_cred(grant)
    assert identity.subnet_for(cred, None, 4) == "10.244.1.0/24"
    assert identity.subnet_for(cred, None, 6) == "fd00:10:244:1::/64"
    assert identity.subnet_for(cred, "fd00:10:244:1::/64", 6) == "fd00:10:244:1::/64"
    assert identity.cluster_network(cred, None, 6) == "fd00:10:244::/48"
    assert identity.cluster_network(cred, None, 4) == NET
    assert identity.pool_for(cred, None, 6) is None  # fixed, nothing to allocate
    identity.check_public_ip(cred, "192.0.2.1", "2001:db8::1")
    assert identity.certified_ip6(cred) == "2001:db8::1"
    with pytest.raises(ConfigError) as e:
        identity.subnet_for(cred, "fd00:10:244:2::/64", 6)
    assert one_line(e).startswith("subnet: fd00:10:244:2::/64 is not granted by")
    with pytest.raises(ConfigError) as e:
        identity.check_public_ip(cred, "192.0.2.1", "2001:db8::9")
    assert one_line(e).startswith("public_ip: 2001:db8::9 is not the address in /etc/meshd/n1.crt")
    with pytest.raises(ConfigError) as e:
        identity.cluster_network(cred, "fd00:99::/48", 6)
    assert one_line(e) == "network: fd00:99::/48 is not the CA's network (fd00:10:244::/48)"


def test_an_ipv4_only_certificate_grants_nothing_of_ipv6() -> None:
    cred = dual_cred(Grant.fixed("10.244.1.0/24"), ("192.0.2.1",))
    assert identity.subnet_for(cred, None, 6) is None
    assert identity.cluster_network(cred, None, 6) is None
    assert identity.certified_ip6(cred) is None
    with pytest.raises(ConfigError) as e:
        identity.cluster_network(cred, "fd00:10:244::/48", 6)
    assert "grants no IPv6 subnet" in one_line(e)
    with pytest.raises(ConfigError) as e:  # an IPv6 address it does not name
        identity.check_public_ip(cred, "192.0.2.1", "2001:db8::1")
    assert "(no IPv6 address)" in one_line(e)


def test_an_ipv6_pool_grant_is_a_pool_of_its_own_length() -> None:
    grant = Grant.combine([Grant.fixed("10.244.1.0/24"), Grant.from_pool("fd00:10:244::/48", 64)])
    cred = dual_cred(grant)
    assert identity.subnet_for(cred, None, 6) is None
    with pytest.raises(ConfigError) as e:
        identity.pool_for(cred, 80, 6)
    assert one_line(e).startswith("subnet_len6: 80 is not the length")
