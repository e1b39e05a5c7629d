"""Configuration: frozen dataclasses with documented defaults, TOML loading and validation.

The gossip tuning (`GossipConfig`, the ``[gossip]`` table) lives in the core, in
`meshd/gossip/config.py`: this module builds it (and re-exports it for drivers such as the
simulator); the core never imports this module.

CLI flags and TOML keys share one name each (``--public-ip`` <-> ``public_ip``). Flags override the
file. Every error names the key (and its line in the file when it can be found) in one line.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from meshd.dataplane import allocation, backends
from meshd.errors import ConfigError
from meshd.gossip.config import GossipConfig as GossipConfig
from meshd.gossip.record import MAX_NAME_LEN, RecordError, validate_subnet, validate_subnet6
from meshd.logfmt import FORMATS as LOG_FORMATS

DEFAULT_PORT = 7950
DEFAULT_CONFIG = Path("/etc/meshd/meshd.toml")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything `meshd join` needs. Field names are the TOML keys and the flag names."""

    seeds: tuple[str, ...] = ()
    """host[:port], [ipv6]:port or a bare IPv6 address of members to join through; empty starts
    a new mesh (or rejoins known ones)."""
    name: str = field(default_factory=socket.gethostname)
    """Node name, unique in the mesh (default: hostname)."""
    public_ip: str | None = None
    """This node's IPv4 underlay address (default: discovered on `iface`). Gossip goes over
    IPv4 whenever the node has one (key and flag ``public_ip``, which takes one address per
    family: ``public_ip = ["192.0.2.1", "2001:db8::1"]``, ``--public-ip`` given twice)."""
    public_ip6: str | None = None
    """This node's IPv6 underlay address: the one gossip uses on an IPv6-only underlay, the
    second one of a dual-stack underlay (given as ``public_ip``; never a key of its own)."""
    iface: str | None = None
    """Underlay device (default: the one holding the default route)."""
    subnet: str | None = None
    """This node's IPv4 container subnet, e.g. 10.244.1.0/24. Key and flag ``subnet`` take one
    per family (``subnet = ["10.244.1.0/24", "fd00:10:244:1::/64"]``, ``--subnet`` twice). A
    family with no subnet but a ``network``: the node takes a free one of ``subnet_len`` from
    the network (with certificates: from its pool grant) and keeps it across restarts
    (docs/allocation.md)."""
    subnet6: str | None = None
    """This node's IPv6 container subnet (given as ``subnet``; never a key of its own)."""
    network: str | None = None
    """IPv4 cluster network; member subnets outside it are refused. Key and flag ``network``
    take one per family, like ``subnet``. With certificates it comes from the CA's grant
    (given here, it must equal it)."""
    network6: str | None = None
    """IPv6 cluster network (given as ``network``; never a key of its own)."""
    subnet_len: int | None = None
    """Prefix length of an allocated IPv4 subnet (default 24; with a pool grant, the grant's)."""
    subnet_len6: int | None = None
    """Prefix length of an allocated IPv6 subnet (default 64; with a pool grant, the grant's)."""
    subnet_lease: float = 86400.0
    """Seconds a dead member's subnet stays its own before another node may take it (a left
    member's is free at once). At least gossip.reap_after, at most gossip.tombstone_ttl."""
    backend: str = "vxlan"
    """host-gw, ipip, vxlan or wireguard; one per mesh."""
    port: int = DEFAULT_PORT
    """Gossip UDP port."""
    key_file: Path = Path("/etc/meshd/key")
    """Keyring file (mode 0600): primary key first, further keys accepted on receipt."""
    ca: Path | None = None
    """The cluster CA's certificate (PEM; a bundle trusts each). Set: certificate mode, where
    every record must be signed by a node the CA certified. Unset: shared-key mode."""
    cert: Path | None = None
    """This node's certificate (PEM), signed by the CA; required with ``ca``."""
    cert_key: Path | None = None
    """This node's private key (PEM, mode 0600; default: ``cert`` with the suffix ``.key``)."""
    state_dir: Path = Path("/var/lib/meshd")
    """Node id, incarnation and last known members live here."""
    socket: Path = Path("/run/meshd/meshd.sock")
    """Control socket (unix; mode 0600, or 0666 with ``control_group``: see meshd/control)."""
    vni: int = 1
    """VXLAN network identifier (the article uses 1)."""
    vxlan_port: int = 8472
    """VXLAN UDP port (Linux/flannel default 8472)."""
    wireguard_port: int = 51820
    """WireGuard UDP port (the same on every member: peers' endpoints use it)."""
    bridge: str | None = None
    """Optional bridge to hold the subnet's first address (off by default)."""
    subnet_env: Path = Path("/run/meshd/subnet.env")
    """flannel-compatible environment file for CNI plugins."""
    ipmasq: bool = False
    """meshd masquerades traffic leaving the cluster network (table ip meshd-nat; pod-to-pod
    keeps its source) and writes FLANNEL_IPMASQ=true; needs ``network``."""
    resync_interval: float = 30.0
    """Seconds between full data-plane resyncs."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_format: str = "text"
    """text (for people: timestamp, level, message), logfmt or json (for searching: one event
    per line with stable keys, meshd/logfmt.py); text is today's format, so nothing changes
    for whoever reads the log now."""
    metrics: str | None = None
    """Prometheus endpoint host:port (``true`` = 127.0.0.1:9950); off when unset."""
    filter: bool = False
    """nftables rules accepting ipip/vxlan only from members' public IPs (table inet meshd)."""
    control_group: str | None = None
    """Group (name) whose members may run the control socket's read-only commands (peers,
    status, keys list); root may run every command. Checked per request (SO_PEERCRED)."""
    source_rate_limit: float = 1000.0
    """Gossip datagrams per second accepted from one source IP, with bursts of 5 seconds' worth;
    more are dropped before decryption (``drop.rate``); 0 = no limit. A 10,000-member push-pull
    (~800 datagrams, ~4,000 with certificates) fits one burst; a steady member sends a few per
    second."""
    gossip: GossipConfig = field(default_factory=GossipConfig)

    @property
    def subnets(self) -> tuple[str, ...]:
        """The configured container subnets, IPv4 first (none, one or two)."""
        return tuple(s for s in (self.subnet, self.subnet6) if s is not None)

    def subnet_of(self, version: int) -> str | None:
        """The configured subnet of IP version 4 or 6, if any."""
        return self.subnet6 if version == 6 else self.subnet

    def network_of(self, version: int) -> str | None:
        """The configured cluster network of IP version 4 or 6, if any."""
        return self.network6 if version == 6 else self.network

    @property
    def backend_port(self) -> int | None:
        """The UDP port the backend's packets go to (the firewall filters it), if any."""
        return {"vxlan": self.vxlan_port, "wireguard": self.wireguard_port}.get(self.backend)


_GOSSIP_KEYS = {f.name for f in fields(GossipConfig)}
PER_FAMILY = {"subnet": "subnet6", "network": "network6", "public_ip": "public_ip6"}
"""Keys that take one value per IP family: the IPv4 one lands in the field of the key's name,
the IPv6 one in the field beside it (which is not a key: one name per setting)."""
_TOP_KEYS = {f.name for f in fields(Config)} - {"gossip"} - set(PER_FAMILY.values())
_PATH_KEYS = {"key_file", "state_dir", "socket", "subnet_env", "ca", "cert", "cert_key"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _line_of(text: str, key: str) -> str:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return f" (line {n})"
    return ""


def load_file(path: Path) -> dict[str, Any]:
    """Read a TOML config into flat overrides; errors name the key and its line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "gossip":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [gossip] must be a table{_line_of(text, key)}")
            for gk, gv in value.items():
                if gk not in _GOSSIP_KEYS:
                    raise ConfigError(f"{path}: unknown key gossip.{gk}{_line_of(text, gk)}")
                out[f"gossip.{gk}"] = gv
        elif key in _TOP_KEYS:
            out[key] = value
        else:
            raise ConfigError(f"{path}: unknown key {key}{_line_of(text, key)}")
    try:
        build(out, complete=False)  # flags may add what the file leaves out (network)
    except ConfigError as exc:
        bad = str(exc).split(":", 1)[0].removeprefix("gossip.")
        raise ConfigError(f"{path}: {exc}{_line_of(text, bad)}") from None
    return out


def build(values: dict[str, Any], *, complete: bool = True) -> Config:
    """Validate flat ``key -> value`` overrides (``gossip.x`` for the table) into a Config.
    ``complete=False``: a part (a config file before the flags), so a key that needs another
    one (``ipmasq`` needs ``network``) is not held against it yet."""
    top: dict[str, Any] = {}
    gossip: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key.startswith("gossip."):
            gossip[key[7:]] = _check_gossip(key[7:], value)
        elif key in PER_FAMILY:
            top[key], top[PER_FAMILY[key]] = _per_family(key, value)
        else:
            top[key] = _check_top(key, value)
    cfg = Config(**top)
    if gossip:
        cfg = replace(cfg, gossip=replace(cfg.gossip, **gossip))
    if cfg.ca is None and (cfg.cert is not None or cfg.cert_key is not None):
        raise ConfigError("cert: given without ca (the CA certificate that signed it)")
    if cfg.ca is not None and cfg.cert is None:
        raise ConfigError("ca: given without cert (this node's certificate)")
    if cfg.cert is not None and cfg.cert_key is None:
        cfg = replace(cfg, cert_key=cfg.cert.with_suffix(".key"))
    if complete and cfg.ipmasq and not (cfg.network or cfg.network6) and cfg.ca is None:
        # With certificates the network comes from the CA; otherwise nothing says what is inside.
        raise ConfigError(
            "ipmasq: needs network (the cluster network, e.g. 10.244.0.0/16): "
            "what leaves it is masqueraded, what stays inside it never is"
        )
    g = cfg.gossip
    if cfg.subnet_lease < g.reap_after:
        raise ConfigError(
            f"subnet_lease: {cfg.subnet_lease:g} s is shorter than gossip.reap_after "
            f"({g.reap_after:g} s): a subnet still routed to a dead member could be taken"
        )
    if cfg.subnet_lease > g.tombstone_ttl:
        raise ConfigError(
            f"subnet_lease: {cfg.subnet_lease:g} s is longer than gossip.tombstone_ttl "
            f"({g.tombstone_ttl:g} s), how long members remember a dead node"
        )
    if cfg.subnet is None and cfg.network is not None and cfg.ca is None:
        problem = allocation.pool_problem(cfg.network, cfg.subnet_len or allocation.DEFAULT_LEN)
        if problem is not None:
            raise ConfigError(f"subnet_len: {problem}")
    if cfg.subnet6 is None and cfg.network6 is not None and cfg.ca is None:
        length = cfg.subnet_len6 or allocation.DEFAULT_LEN6
        problem = allocation.pool_problem(cfg.network6, length)
        if problem is not None:
            raise ConfigError(f"subnet_len6: {problem}")
    for version in (4, 6):
        sub, net = cfg.subnet_of(version), cfg.network_of(version)
        if sub is not None and net is not None and not _inside(sub, net):
            raise ConfigError(f"subnet: {sub} is outside network {net}")
    if g.probe_timeout >= g.probe_interval:
        raise ConfigError("gossip.probe_timeout: must be shorter than probe_interval")
    if cfg.backend_port is not None and cfg.backend_port == cfg.port:
        raise ConfigError(
            f"port: {cfg.port} is also the {cfg.backend} port; gossip needs a port of its own"
        )
    return cfg


def _num(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be between {lo} and {hi}, got {value}")
    return value


_GOSSIP_RANGES: dict[str, tuple[float, float]] = {
    "probe_interval": (0.01, 60),
    "probe_timeout": (0.005, 30),
    "suspicion_mult": (1, 100),
    "suspicion_max_timeout_mult": (1, 100),
    "gossip_interval": (0.01, 10),
    "push_pull_interval": (0.1, 3600),
    "push_pull_min_interval": (0, 3600),
    "gossip_to_the_dead": (0, 86400),
    "dead_probe_interval": (0.1, 3600),
    "tombstone_ttl": (1, 10**7),
    "reap_after": (0, 10**7),
    "retransmit_miss": (1e-9, 1),
}
_GOSSIP_INTS = {
    "indirect_checks": (0, 16),
    "gossip_nodes": (1, 32),
    "retransmit_mult": (0, 32),
    "awareness_max": (1, 64),
    "max_datagram": (512, 1400),
    "max_members": (16, 10**6),
}


def _check_gossip(key: str, value: Any) -> Any:
    name = f"gossip.{key}"
    if key == "eager_gossip":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {value!r}")
        return value
    if key in _GOSSIP_INTS:
        return _int(name, value, *_GOSSIP_INTS[key])
    if key in _GOSSIP_RANGES:
        return _num(name, value, *_GOSSIP_RANGES[key])
    raise ConfigError(f"{name}: unknown key")


def _check_top(key: str, value: Any) -> Any:  # noqa: C901 - one branch per key is the clearest
    if key not in _TOP_KEYS:
        raise ConfigError(f"{key}: unknown key")
    if key in _PATH_KEYS:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{key}: must be a path")
        return Path(value)
    if key == "seeds":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError("seeds: must be a list of host[:port] or [ipv6]:port")
        for s in value:
            parse_seed(s)
        return tuple(value)
    if key == "name":
        if (
            not isinstance(value, str)
            or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", value)
            or (len(value) > MAX_NAME_LEN)
        ):
            raise ConfigError(f"name: {value!r} must be 1-63 of [A-Za-z0-9._-]")
        return value
    if key == "backend":
        if value not in backends.names():
            raise ConfigError(f"backend: {value!r} is not one of {', '.join(backends.names())}")
        return value
    if key in ("port", "vxlan_port", "wireguard_port"):
        return _int(key, value, 1, 65535)
    if key == "vni":
        return _int(key, value, 0, 2**24 - 1)
    if key in ("iface", "bridge"):
        if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_.:-]{1,15}$", value):
            raise ConfigError(f"{key}: {value!r} is not a valid interface name")
        return value
    if key == "ipmasq":
        if not isinstance(value, bool):
            raise ConfigError("ipmasq: must be true or false")
        return value
    if key == "resync_interval":
        return _num(key, value, 1, 86400)
    if key == "subnet_len":
        return _int(key, value, allocation.MIN_LEN, allocation.MAX_LEN)
    if key == "subnet_len6":
        return _int(key, value, allocation.MIN_LEN6, allocation.MAX_LEN6)
    if key == "subnet_lease":
        return _num(key, value, 0, 10**7)
    if key == "source_rate_limit":
        return _num(key, value, 0, 10**6)
    if key == "metrics":
        if value is True:
            return "127.0.0.1:9950"
        if value is False:
            return None
        if not isinstance(value, str) or not re.match(r"^[^\s:]+:\d{1,5}$", value):
            raise ConfigError(f"metrics: {value!r} must be host:port or true/false")
        return value
    if key == "filter":
        if not isinstance(value, bool):
            raise ConfigError("filter: must be true or false")
        return value
    if key == "control_group":
        if not isinstance(value, str) or not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value):
            raise ConfigError(f"control_group: {value!r} is not a group name")
        return value
    if key == "log_level":
        if value not in _LOG_LEVELS:
            raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)}")
        return value
    if key == "log_format":
        if value not in LOG_FORMATS:
            raise ConfigError(f"log_format: {value!r} is not one of {', '.join(LOG_FORMATS)}")
        return value
    raise ConfigError(f"{key}: unknown key")  # pragma: no cover - guarded above


def last_per_family(values: Sequence[str]) -> tuple[str, ...]:
    """A per-family flag given several times, as the command line means it: the last value of
    each family counts (as for any flag given twice), IPv4's and IPv6's alike."""
    last: dict[bool, str] = {}
    for v in values:
        last.pop(":" in v, None)
        last[":" in v] = v
    return tuple(last.values())


def _per_family(key: str, value: Any) -> tuple[str | None, str | None]:
    """A per-family key's value -- one address or subnet, or a list of one per family --
    as (IPv4, IPv6)."""
    items = [value] if isinstance(value, str) else value
    what = "an address" if key == "public_ip" else "a CIDR"
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= 2:
        raise ConfigError(f"{key}: must be {what} or a list of two (one IPv4, one IPv6)")
    out: dict[int, str] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{key}: {item!r} is not {what}")
        version, text = _check_address(key, item) if key == "public_ip" else _check_cidr(key, item)
        if version in out:
            raise ConfigError(
                f"{key}: two IPv{version} values ({out[version]}, {text}); give at most one "
                "per family"
            )
        out[version] = text
    return out.get(4), out.get(6)


def _check_address(key: str, value: str) -> tuple[int, str]:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IPv4 or IPv6 address") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ConfigError(f"{key}: {ip} cannot be used as a unicast address")
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_link_local:
            raise ConfigError(f"{key}: {ip} is link-local: peers need a global or ULA address")
        if ip.ipv4_mapped is not None:
            raise ConfigError(f"{key}: {ip} is IPv4-mapped: give the IPv4 address itself")
    return ip.version, str(ip)


def _check_cidr(key: str, value: str) -> tuple[int, str]:
    if ":" not in value:
        try:
            return 4, str(validate_subnet(value))
        except RecordError as exc:
            raise ConfigError(f"{key}: {value!r}: {str(exc).split(': ', 1)[-1]}") from None
    try:
        net = validate_subnet6(value)
    except RecordError as exc:
        raise ConfigError(f"{key}: {value!r}: {str(exc).split(': ', 1)[-1]}") from None
    for bad, why in _V6_REFUSED:
        if net.overlaps(bad):
            raise ConfigError(f"{key}: {net} overlaps {bad} ({why})")
    return 6, str(net)


_V6_REFUSED = (
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
    (ipaddress.IPv6Network("::/127"), "unspecified and loopback"),
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
)
"""IPv6 prefixes no container subnet or network may touch (the data plane's prefix policy
refuses them in members' records too)."""


def _inside(subnet: str, network: str) -> bool:
    sub, net = ipaddress.ip_network(subnet), ipaddress.ip_network(network)
    if isinstance(sub, ipaddress.IPv4Network) and isinstance(net, ipaddress.IPv4Network):
        return sub.subnet_of(net)
    if isinstance(sub, ipaddress.IPv6Network) and isinstance(net, ipaddress.IPv6Network):
        return sub.subnet_of(net)
    return False


def parse_seed(seed: Any, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host[:port]``, ``[ipv6]:port``, ``[ipv6]`` or a bare IPv6 address -> (host, port);
    raises ConfigError with the seed in the message."""
    if not isinstance(seed, str) or not seed:
        raise ConfigError(f"seed: {seed!r} is not host[:port] or [ipv6]:port")
    if seed.startswith("["):
        host, sep, rest = seed[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"seed: {seed!r}: expected [ipv6]:port")
        if not _is_ip6(host):
            raise ConfigError(f"seed: {seed!r}: {host!r} is not an IPv6 address")
        port_s = rest[1:]
        if rest and not port_s:
            raise ConfigError(f"seed: {seed!r}: missing port after ':'")
    elif seed.count(":") > 1:  # a bare IPv6 address: a port needs the brackets
        if not _is_ip6(seed):
            raise ConfigError(f"seed: {seed!r} is not an IPv6 address (with a port: [ipv6]:port)")
        host, port_s = seed, ""
    else:
        host, _, port_s = seed.rpartition(":") if ":" in seed else (seed, "", "")
        if not host:
            raise ConfigError(f"seed: {seed!r}: missing host")
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ConfigError(f"seed: {seed!r}: port must be 1-65535")
    return host, int(port_s)


def _is_ip6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
