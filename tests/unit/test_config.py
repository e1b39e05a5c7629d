from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import build, load_file, parse_seed
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
