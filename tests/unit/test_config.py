from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import build, last_per_family, load_file, parse_seed
from meshd.errors import ConfigError


def test_defaults_and_gossip_table(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text(
        'subnet = "10.244.1.0/24"\nbackend = "host-gw"\n[gossip]\nprobe_interval = 0.5\n'
        "probe_timeout = 0.2\nreap_after = 10\n"
    )
    cfg = build(load_file(p))
    assert cfg.backend == "host-gw" and cfg.port == 7950
    assert cfg.gossip.probe_interval == 0.5 and cfg.gossip.reap_after == 10
    assert cfg.gossip.gossip_interval == 0.2  # memberlist LAN default kept


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ('subnet = "10.0.0.1/24"\n', "subnet.*host bits"),
        ("port = 70000\n", "port.*line 1"),
        ('backend = "gre"\n', "backend.*line 1"),
        ("\n\nbogus = 1\n", "unknown key bogus.*line 3"),
        ('[gossip]\nprobe_interval = "fast"\n', "gossip.probe_interval.*line 2"),
        ("subnet = \n", "m.toml"),
        ('public_ip = "300.1.1.1"\n', "public_ip"),
        ('\nlog_format = "xml"\n', "log_format: 'xml' is not one of text, logfmt, json.*line 2"),
    ],
)
def test_bad_file_names_key_and_line(tmp_path: Path, text: str, msg: str) -> None:
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_file(p)


@pytest.mark.parametrize("subnet", ["0.0.0.0/0", "10.0.0.0/31", "fe80::/64", "nope"])
def test_bad_subnets(subnet: str) -> None:
    with pytest.raises(ConfigError, match="subnet"):
        build({"subnet": subnet})


def test_seeds() -> None:
    assert parse_seed("10.0.0.1") == ("10.0.0.1", 7950)
    assert parse_seed("h1:8000") == ("h1", 8000)
    for bad in ("h1:0", "h1:x", ":80", ""):
        with pytest.raises(ConfigError):
            parse_seed(bad)
    with pytest.raises(ConfigError, match="probe_timeout"):
        build({"gossip.probe_timeout": 2.0})


def test_config_builds_the_cores_own_gossip_config() -> None:
    from meshd.gossip.config import GossipConfig

    g = build({"subnet": "10.244.1.0/24", "gossip.probe_interval": 2.0}).gossip
    assert type(g) is GossipConfig and g.probe_interval == 2.0
    assert g.probe_timeout == GossipConfig().probe_timeout


def test_ipmasq_needs_a_network() -> None:
    assert build({"ipmasq": True, "network": "10.244.0.0/16"}).ipmasq
    # With certificates the network is the CA's (checked at start, daemon.py).
    assert build({"ipmasq": True, "ca": "/ca.pem", "cert": "/n.pem"}).ipmasq
    with pytest.raises(ConfigError, match=r"^ipmasq: needs network \(the cluster network"):
        build({"ipmasq": True, "subnet": "10.244.1.0/24"})
    assert not build({"subnet": "10.244.1.0/24"}).ipmasq


def test_ipmasq_in_the_file_network_by_flag(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text("ipmasq = true\n")
    values = load_file(p)  # the file alone is fine: --network may come with the flags
    assert build({**values, "network": "10.244.0.0/16"}).ipmasq
    with pytest.raises(ConfigError, match="^ipmasq: needs network"):
        build(values)


# --- dual-stack: one value per family ------------------------------------------------------------


def test_subnet_network_and_public_ip_take_one_value_per_family() -> None:
    cfg = build(
        {
            "subnet": ("fd00:10:244:1::/64", "10.244.1.0/24"),
            "network": ["10.244.0.0/16", "fd00:10:244::/48"],
            "public_ip": ["2001:db8::0001", "192.0.2.1"],
        }
    )
    assert (cfg.subnet, cfg.subnet6) == ("10.244.1.0/24", "fd00:10:244:1::/64")
    assert (cfg.network, cfg.network6) == ("10.244.0.0/16", "fd00:10:244::/48")
    assert (cfg.public_ip, cfg.public_ip6) == ("192.0.2.1", "2001:db8::1")
    assert cfg.subnets == ("10.244.1.0/24", "fd00:10:244:1::/64")
    assert cfg.subnet_of(6) == "fd00:10:244:1::/64" and cfg.network_of(4) == "10.244.0.0/16"


def test_ipv6_only_values_leave_the_ipv4_fields_empty() -> None:
    cfg = build({"subnet": "fd00:1::/64", "public_ip": "fd00:ffff::2", "subnet_len6": 80})
    assert (cfg.subnet, cfg.subnet6) == (None, "fd00:1::/64")
    assert (cfg.public_ip, cfg.public_ip6) == (None, "fd00:ffff::2")
    assert cfg.subnets == ("fd00:1::/64",) and cfg.subnet_len6 == 80


def test_the_toml_file_takes_a_list(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text('subnet = ["10.244.1.0/24", "fd00:1::/64"]\npublic_ip = "fd00:ffff::2"\n')
    cfg = build(load_file(p))
    assert (cfg.subnet, cfg.subnet6, cfg.public_ip6) == (
        "10.244.1.0/24",
        "fd00:1::/64",
        "fd00:ffff::2",
    )
    # The IPv6 halves are fields, not keys: one name per setting.
    p.write_text('\nsubnet6 = "fd00:1::/64"\n')
    with pytest.raises(ConfigError, match="unknown key subnet6.*line 2"):
        load_file(p)


def test_flags_replace_both_families_of_the_file(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text('subnet = ["10.244.1.0/24", "fd00:1::/64"]\n')
    cfg = build({**load_file(p), "subnet": ("10.244.2.0/24",)})
    assert (cfg.subnet, cfg.subnet6) == ("10.244.2.0/24", None)


@pytest.mark.parametrize(
    ("key", "value", "msg"),
    [
        (
            "subnet",
            ["10.244.1.0/24", "10.244.2.0/24"],
            r"^subnet: two IPv4 values \(10.244.1.0/24, ",
        ),
        ("network", ["fd00::/48", "fd01::/48"], "^network: two IPv6 values"),
        ("public_ip", ["192.0.2.1", "192.0.2.2"], "^public_ip: two IPv4 values"),
        (
            "subnet",
            ["10.244.1.0/24", "fd00::/64", "fd01::/64"],
            "^subnet: must be a CIDR or a list of two",
        ),
        ("subnet", [], "^subnet: must be a CIDR or a list of two"),
        ("subnet", [24], "^subnet: 24 is not a CIDR"),
        ("subnet", "fe80::/64", r"^subnet: fe80::/64 overlaps fe80::/10 \(link-local\)"),
        ("subnet", "ff02::/64", r"multicast"),
        ("subnet", "::ffff:0:0/100", "IPv4-mapped"),
        ("subnet", "fd00::/125", "/1 to /124"),
        ("subnet", "fd00::1/64", "host bits"),
        ("public_ip", "fe80::1", "^public_ip: fe80::1 is link-local"),
        ("public_ip", "::ffff:10.0.0.1", "IPv4-mapped: give the IPv4 address itself"),
        ("public_ip", "::1", "cannot be used as a unicast address"),
        ("public_ip", "ff02::1", "cannot be used as a unicast address"),
        ("public_ip", "0.0.0.0", "cannot be used as a unicast address"),
        ("public_ip", "node-1", "^public_ip: 'node-1' is not an IPv4 or IPv6 address"),
        ("subnet_len6", 4, "^subnet_len6: must be between 8 and 124"),
        ("subnet_len6", 125, "^subnet_len6: must be between 8 and 124"),
    ],
)
def test_per_family_values_are_checked(key: str, value: object, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        build({key: value})


def test_a_subnet_must_lie_in_the_network_of_its_family() -> None:
    build(
        {
            "subnet": ["10.244.1.0/24", "fd00:1:0:1::/64"],
            "network": ["10.244.0.0/16", "fd00:1::/48"],
        }
    )
    with pytest.raises(ConfigError, match="^subnet: fd00:2::/64 is outside network fd00:1::/48"):
        build(
            {
                "subnet": ["10.244.1.0/24", "fd00:2::/64"],
                "network": ["10.244.0.0/16", "fd00:1::/48"],
            }
        )
    # A network of one family says nothing about the other family's subnet.
    assert build({"subnet": "fd00:2::/64", "network": "10.244.0.0/16"}).subnet6 == "fd00:2::/64"


def test_ipmasq_takes_an_ipv6_network_too() -> None:
    assert build({"ipmasq": True, "network": "fd00:1::/48"}).network6 == "fd00:1::/48"


@pytest.mark.parametrize(
    ("seed", "want"),
    [
        ("[fd00::1]:8000", ("fd00::1", 8000)),
        ("[fd00::1]", ("fd00::1", 7950)),
        ("fd00::1", ("fd00::1", 7950)),
        ("2001:db8::7", ("2001:db8::7", 7950)),
        ("10.0.0.1:9", ("10.0.0.1", 9)),
        ("node-2", ("node-2", 7950)),
    ],
)
def test_seeds_of_either_family(seed: str, want: tuple[str, int]) -> None:
    assert parse_seed(seed) == want


@pytest.mark.parametrize(
    ("seed", "msg"),
    [
        ("[fd00::1]:", "missing port"),
        ("[fd00::1]:0", "port must be 1-65535"),
        ("[fd00::1]8000", r"expected \[ipv6\]:port"),
        ("[fd00::1", r"expected \[ipv6\]:port"),
        ("[node-1]:80", "'node-1' is not an IPv6 address"),
        ("fd00::1:x:8000", r"not an IPv6 address \(with a port: \[ipv6\]:port\)"),
    ],
)
def test_bad_ipv6_seeds_say_what_is_wrong(seed: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_seed(seed)
    with pytest.raises(ConfigError, match="seed"):
        build({"seeds": [seed]})


def test_a_flag_given_again_for_a_family_overrides_it() -> None:
    # As for any flag given twice (the lab adds --network to a daemon's argv this way).
    assert last_per_family(["10.245.0.0/16", "fd00::/48", "10.244.0.0/23"]) == (
        "fd00::/48",
        "10.244.0.0/23",
    )
    cfg = build({"network": last_per_family(["10.245.0.0/16", "fd00::/48", "10.244.0.0/23"])})
    assert (cfg.network, cfg.network6) == ("10.244.0.0/23", "fd00::/48")
    assert last_per_family([]) == ()
