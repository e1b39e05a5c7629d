"""`meshd doctor`: what is wrong on this host, and with which peers, one line each with the fix.

Two halves. ``gather`` (I/O, inside the daemon, which has the config, the member table and the
sockets) reads the facts: sysctls, the data plane's and the prober's status, the firewall
rulesets, file modes, certificate dates, subnet.env, clock skews, and probes every peer through
the tunnel at once. ``findings`` (pure) turns facts into findings; it is what the unit tests
drive. A finding is ``ok``, ``warn`` (attend to it) or ``fail`` (something is broken now);
``meshd doctor`` exits 1 when any finding fails.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd import neightable

OK, WARN, FAIL = "ok", "warn", "fail"
SKEW_WARN = 20.0  # seconds; the envelope refuses datagrams more than 60 s off (REPLAY_WINDOW)
CERT_WARN_DAYS = 14
ROUTE_CHECKS = 256  # peers whose route is looked up (`ip route get` each)
CHECKSUM_FIXED = (5, 7)  # flannel#1279: vxlan checksum offload broke NAT'd traffic before this


@dataclass(frozen=True)
class Finding:
    check: str
    level: str
    message: str
    fix: str = ""
    peer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "message": self.message,
            "fix": self.fix,
            "peer": self.peer,
        }


@dataclass
class Peer:
    name: str
    state: str  # alive | suspect | dead | left
    public_ip: str
    mtu: int  # its underlay MTU, as announced
    flag: str | None = None  # why the data plane does not program it, if so
    tunnel: str | None = None  # probe result: ok | unreachable | unknown; None: not probed
    skew: float | None = None  # its clock minus ours, seconds
    address: str = ""  # an address in its subnet (its device address), for the route check
    address6: str = ""  # the same in its IPv6 subnet when it has a second, IPv6 one


@dataclass
class Facts:
    backend: str
    gossip_port: int
    backend_port: int | None  # UDP port of the encapsulation (vxlan, wireguard)
    ip_protocol: int | None = None  # IP protocol of the encapsulation (ipip: 4)
    ip_forward: str | None = None
    rp_filter: Mapping[str, str] = field(default_factory=dict)  # device -> value ("all" too)
    dataplane: Mapping[str, Any] = field(default_factory=dict)  # the reconciler's status
    underlay_mtu: int = 0
    overhead: int = 0
    device_mtu: int | None = None
    kernel: str = ""  # uname -r
    tx_checksum: bool | None = None  # vxlan device: tx-checksum-ip-generic on? None: unknown
    nft_ruleset: Mapping[str, Any] | None = None  # `nft -j list ruleset`, None if unavailable
    iptables: str | None = None  # `iptables-save`, None if unavailable
    files: Mapping[str, int | None] = field(default_factory=dict)  # path -> mode (None: missing)
    cert_not_after: float | None = None  # this node's certificate
    now: float = 0.0
    subnet_env: str | None = None  # its text, None if missing
    subnet_env_path: str = ""
    expected_env: Mapping[str, str] = field(default_factory=dict)
    peers: Sequence[Peer] = ()
    route_via: Mapping[str, str] = field(default_factory=dict)  # peer -> device its route uses
    route_via6: Mapping[str, str] = field(default_factory=dict)  # the same for its IPv6 subnet
    gc_thresh: tuple[int, int, int] | None = None  # net.ipv4.neigh.default.gc_thresh1/2/3
    lost_sends: Mapping[str, int] = field(default_factory=dict)  # reason -> gossip sends lost
    ipv6: bool = False  # this node routes IPv6 container traffic (it has an IPv6 subnet)
    ipv6_only: bool = False  # ... and no IPv4 subnet
    ip6_forward: str | None = None  # net.ipv6.conf.all.forwarding
    underlay_families: tuple[int, ...] = (4,)  # the underlay's families, gossip's first
    gc_thresh6: tuple[int, int, int] | None = None  # net.ipv6.neigh.default.gc_thresh1/2/3


# --- the pure half ----------------------------------------------------------------------------


def findings(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    for check in (
        _forwarding,
        _rp_filter,
        _kernel,
        _mtu,
        _checksum,
        _firewall,
        _clock,
        _files,
        _subnet_env,
        _tunnels,
        _neighbours,
    ):
        out += check(f)
    return out


def failed(found: Sequence[Finding]) -> bool:
    return any(x.level == FAIL for x in found)


def _forwarding(f: Facts) -> list[Finding]:
    """IPv4 forwarding always (every node has an IPv4 route to its containers, or none to
    forward: an IPv6-only node's IPv4 setting is not held against it); IPv6 forwarding when the
    node has an IPv6 subnet."""
    wanted = [("net.ipv4.ip_forward", f.ip_forward, "")] if not f.ipv6_only else []
    if f.ipv6:
        wanted.append(("net.ipv6.conf.all.forwarding", f.ip6_forward, "IPv6 "))
    out = []
    for name, value, fam in wanted:
        if value == "1":
            continue
        out.append(
            Finding(
                "forwarding",
                FAIL,
                f"{name} = {value}: this host does not forward {fam}container traffic",
                f"sysctl -w {name}=1 (meshd sets it each pass: something turns it off)",
            )
        )
    return out or [Finding("forwarding", OK, ", ".join(f"{n} = 1" for n, _, _ in wanted))]


def _rp_filter(f: Facts) -> list[Finding]:
    """Strict reverse-path filtering (1) is fine for meshd's symmetric routes; loose (2) or off
    (0) too. The failure mode is a packet from a peer's subnet arriving on a device the route
    back does not use: that is what the per-peer route check below names."""
    dev = (f.dataplane.get("device") or (f.dataplane.get("underlay") or {}).get("ifname")) or ""
    eff = max(int(f.rp_filter.get("all", "0") or 0), int(f.rp_filter.get(dev, "0") or 0))
    if eff == 1:
        msg = f"rp_filter strict on {dev}: fine while each peer's route uses {dev} (checked)"
    else:
        msg = f"rp_filter {eff} on {dev}"
    out = [Finding("rp_filter", OK, msg)]
    # IPv6 has no rp_filter sysctl, but a shadowing route sends the traffic astray just the same.
    for routes, what, tail, cmd in (
        (f.route_via, "subnet", ": replies from it fail the reverse-path check", "ip"),
        (f.route_via6, "IPv6 subnet", "", "ip -6"),
    ):
        for name, via in sorted(routes.items()):
            if via != dev:
                out.append(
                    Finding(
                        "rp_filter",
                        FAIL,
                        f"the route to {name}'s {what} leaves through {via}, not {dev}{tail}",
                        f"remove the route that shadows meshd's ({cmd} route get <{name}'s "
                        f"address>)",
                        name,
                    )
                )
    return out


def _kernel(f: Facts) -> list[Finding]:
    dp = f.dataplane
    missing = [str(e.get("error")) for e in dp.get("errors") or [] if "kernel has no" in str(e)]
    if missing:
        return [Finding("kernel", FAIL, missing[-1], "modprobe the module, or another backend")]
    wg = dp.get("wireguard")
    if wg:
        return [Finding("kernel", OK, f"wireguard: {wg.get('implementation')} ({wg.get('why')})")]
    if f.backend == "host-gw":
        return [Finding("kernel", OK, "host-gw needs no kernel module")]
    return [Finding("kernel", OK, f"{f.backend}: device {dp.get('device')} exists")]


def _mtu(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    want = f.underlay_mtu - f.overhead
    if f.device_mtu is not None and f.device_mtu != want:
        out.append(
            Finding(
                "mtu",
                FAIL,
                f"device MTU {f.device_mtu} != underlay {f.underlay_mtu} - {f.overhead}",
                "meshd sets it each pass: something else changes it",
            )
        )
    for p in f.peers:
        if p.state in ("alive", "suspect") and p.mtu and p.mtu < f.underlay_mtu and f.overhead:
            out.append(
                Finding(
                    "mtu",
                    WARN,
                    f"{p.name}'s underlay MTU is {p.mtu}, ours {f.underlay_mtu}: encapsulated "
                    f"packets over {p.mtu} bytes to it are fragmented or lost",
                    f"give every host the same underlay MTU, or lower ours to {p.mtu}",
                    p.name,
                )
            )
    if not out:
        dev = f"device {f.device_mtu} = " if f.device_mtu else ""
        out.append(
            Finding(
                "mtu",
                OK,
                f"{dev}underlay {f.underlay_mtu} - {f.overhead}; no peer announces a smaller "
                "underlay MTU",
            )
        )
    return out


def _version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _checksum(f: Facts) -> list[Finding]:
    if f.backend != "vxlan":
        return []
    if _version(f.kernel) >= CHECKSUM_FIXED:
        return [Finding("checksum", OK, f"kernel {f.kernel}: no vxlan checksum workaround needed")]
    if f.tx_checksum is None:
        return [
            Finding(
                "checksum",
                WARN,
                f"kernel {f.kernel} may mangle checksums of NAT'd vxlan traffic (flannel#1279) "
                "and the device's offload could not be read",
                "apt install ethtool; ethtool -K <device> tx-checksum-ip-generic off",
            )
        ]
    if f.tx_checksum:
        return [
            Finding(
                "checksum",
                WARN,
                f"kernel {f.kernel} with tx-checksum-ip-generic on: NAT'd vxlan traffic may be "
                "dropped (flannel#1279)",
                "ethtool -K <device> tx-checksum-ip-generic off",
            )
        ]
    return [Finding("checksum", OK, "tx-checksum-ip-generic off on the vxlan device")]


def _rule_ports(expr: Sequence[Mapping[str, Any]]) -> tuple[set[int], set[str], str | None]:
    """(UDP destination ports, source addresses, verdict) a rule's expressions name."""
    ports: set[int] = set()
    sources: set[str] = set()
    verdict: str | None = None
    for e in expr:
        m = e.get("match")
        if m:
            left = m.get("left", {}).get("payload", {})
            right = m.get("right")
            values = right.get("set", []) if isinstance(right, dict) else [right]
            if left.get("field") == "dport" and left.get("protocol") in ("udp", "th"):
                ports |= {v for v in values if isinstance(v, int)}
            if left.get("field") == "saddr" and left.get("protocol") == "ip":
                sources |= {v for v in values if isinstance(v, str)}
        for v in ("drop", "reject", "accept"):
            if v in e:
                verdict = v
    return ports, sources, verdict


def _firewall(f: Facts) -> list[Finding]:
    ports = {f.gossip_port: "gossip"}
    if f.backend_port:
        ports[f.backend_port] = f.backend
    by_ip = {p.public_ip: p.name for p in f.peers}
    out: list[Finding] = []
    if f.nft_ruleset is not None:
        items = f.nft_ruleset.get("nftables", [])
        hooks = {
            (c["chain"]["family"], c["chain"]["table"], c["chain"]["name"]): c["chain"]
            for c in items
            if "chain" in c
        }
        for it in items:
            rule = it.get("rule")
            if not rule or rule.get("table") == "meshd":  # ours drops non-members on purpose
                continue
            chain = hooks.get((rule["family"], rule["table"], rule["chain"]), {})
            if chain.get("hook") not in ("input", "prerouting"):
                continue
            dports, sources, verdict = _rule_ports(rule.get("expr", []))
            if verdict not in ("drop", "reject"):
                continue
            for port in sorted(dports & set(ports)):
                who = sorted(by_ip.get(s, s) for s in sources) or ["every host"]
                for w in who:
                    out.append(
                        Finding(
                            "firewall",
                            FAIL,
                            f"nftables {rule['family']} {rule['table']} {rule['chain']} "
                            f"{verdict}s UDP {port} ({ports[port]}) from {w}",
                            f"accept UDP {port} from members (nft -a list chain "
                            f"{rule['family']} {rule['table']} {rule['chain']})",
                            w if w in by_ip.values() else None,
                        )
                    )
        for key, chain in hooks.items():
            if chain.get("hook") == "input" and chain.get("policy") == "drop" and key[1] != "meshd":
                out.append(
                    Finding(
                        "firewall",
                        WARN,
                        f"nftables chain {' '.join(key)} drops by default: UDP "
                        f"{', '.join(str(p) for p in ports)} must be accepted from members",
                        "check that a rule accepts them",
                    )
                )
    if f.iptables:
        for line in f.iptables.splitlines():
            if not line.startswith("-A INPUT") or not any(j in line for j in ("DROP", "REJECT")):
                continue
            for port, what in ports.items():
                if f"--dport {port}" in line and "-p udp" in line:
                    out.append(
                        Finding(
                            "firewall",
                            FAIL,
                            f"iptables: {line.strip()} (drops {what} UDP {port})",
                            f"accept UDP {port} from members",
                        )
                    )
    if not out:
        seen = "nftables" if f.nft_ruleset is not None else "no nft"
        seen += ", iptables" if f.iptables is not None else ""
        out.append(
            Finding("firewall", OK, f"no rule drops UDP {', '.join(map(str, ports))} ({seen})")
        )
    return out


def _clock(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    for p in f.peers:
        if p.skew is None or p.state in ("dead", "left"):
            continue
        if abs(p.skew) > 60:
            out.append(
                Finding(
                    "clock",
                    FAIL,
                    f"{p.name}'s clock is {p.skew:+.0f} s off ours: its datagrams are refused "
                    "(the envelope accepts 60 s)",
                    "run NTP (chrony, systemd-timesyncd) on every host",
                    p.name,
                )
            )
        elif abs(p.skew) > SKEW_WARN:
            out.append(
                Finding(
                    "clock",
                    WARN,
                    f"{p.name}'s clock is {p.skew:+.0f} s off ours; at 60 s its datagrams will "
                    "be refused",
                    "run NTP (chrony, systemd-timesyncd) on every host",
                    p.name,
                )
            )
    if not out:
        worst = max((abs(p.skew) for p in f.peers if p.skew is not None), default=0.0)
        out.append(Finding("clock", OK, f"peers' clocks within {worst:.0f} s of ours"))
    return out


def _files(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    for path, mode in sorted(f.files.items()):
        if mode is None:
            out.append(Finding("files", FAIL, f"{path} is missing", "restore it"))
        elif mode & 0o077:
            out.append(
                Finding(
                    "files",
                    FAIL,
                    f"{path} is mode {mode:04o}: readable by others",
                    f"chmod 600 {path}",
                )
            )
    if f.cert_not_after is not None:
        days = (f.cert_not_after - f.now) / 86400
        if days < 0:
            out.append(
                Finding(
                    "files",
                    FAIL,
                    "this node's certificate has expired",
                    "meshd cert request; sign it; systemctl reload meshd",
                )
            )
        elif days < CERT_WARN_DAYS:
            out.append(
                Finding(
                    "files",
                    WARN,
                    f"this node's certificate expires in {days:.0f} days",
                    "meshd cert request; sign it; systemctl reload meshd",
                )
            )
    if not out:
        out.append(Finding("files", OK, f"{len(f.files)} secret file(s) 0600, certificate valid"))
    return out


def _subnet_env(f: Facts) -> list[Finding]:
    if not f.expected_env:
        return []  # not settled yet: the daemon writes it once the subnet is final
    if f.subnet_env is None:
        return [
            Finding(
                "subnet.env",
                FAIL,
                f"{f.subnet_env_path} is missing: CNI cannot configure pods",
                "check the daemon's log and `meshd status` (dataplane errors)",
            )
        ]
    have = dict(
        line.split("=", 1) for line in f.subnet_env.splitlines() if "=" in line and line[0] != "#"
    )
    wrong = [k for k, v in f.expected_env.items() if have.get(k) != v]
    if wrong:
        return [
            Finding(
                "subnet.env",
                FAIL,
                f"{f.subnet_env_path}: "
                + ", ".join(f"{k}={have.get(k)} (want {f.expected_env[k]})" for k in wrong),
                "something else writes it; meshd rewrites it on its next pass",
            )
        ]
    return [Finding("subnet.env", OK, f"{f.subnet_env_path} matches this node")]


def _tunnels(f: Facts) -> list[Finding]:
    if f.backend == "host-gw":
        return [Finding("tunnel", OK, "host-gw: no tunnel; routes use the underlay directly")]
    out: list[Finding] = []
    alive = [p for p in f.peers if p.state in ("alive", "suspect")]
    for p in alive:
        if p.flag:
            out.append(
                Finding(
                    "tunnel",
                    WARN,
                    f"{p.name} is {p.state} but not programmed ({p.flag})",
                    "meshd status shows why",
                    p.name,
                )
            )
        elif p.tunnel == "unreachable":
            port = f"UDP {f.backend_port}" if f.backend_port else f"IP protocol {f.ip_protocol}"
            out.append(
                Finding(
                    "tunnel",
                    FAIL,
                    f"{p.name} ({p.public_ip}) is {p.state} in gossip but its tunnel does not "
                    "answer",
                    f"check {port} both ways between the hosts (firewalls), and the path MTU",
                    p.name,
                )
            )
    ok = [p for p in alive if p.tunnel == "ok"]
    if not out:
        out.append(Finding("tunnel", OK, f"{len(ok)} of {len(alive)} peer(s) answer through it"))
    return out


def _neighbours(f: Facts) -> list[Finding]:
    """Each family of the underlay: every peer on its L2 segment takes a neighbour entry of
    that family (ARP, NDP); past gc_thresh3 the kernel has no room for a new one and sends to
    it fail with ENOBUFS. Lost gossip sends blame the table of the family gossip uses."""
    out: list[Finding] = []
    for i, version in enumerate(f.underlay_families):
        thresh, names = (
            (f.gc_thresh6, neightable.SYSCTLS6)
            if version == 6
            else (
                f.gc_thresh,
                neightable.SYSCTLS,
            )
        )
        enobufs = f.lost_sends.get("enobufs", 0) if i == 0 else 0
        out += _neighbour_table(f, thresh, names, enobufs, "IPv6 " if version == 6 else "")
    return out


def _neighbour_table(
    f: Facts,
    thresh: tuple[int, int, int] | None,
    names: tuple[str, ...],
    enobufs: int,
    fam: str,
) -> list[Finding]:
    peers = sum(p.state in ("alive", "suspect") for p in f.peers)
    need = neightable.wanted(peers)
    fix = (
        neightable.sysctl_command(neightable.recommended(peers), names)
        + " (persist in /etc/sysctl.d/)"
    )
    if thresh is None:  # not visible in a network namespace other than the root one
        t3_said = f"{fam}gc_thresh3 not visible here (set in the root namespace)"
        if not enobufs:
            return []
    else:
        t3_said = f"{fam}gc_thresh3 = {thresh[2]}"
    said = f"{peers} peer(s) need up to {need} {fam}neighbour entries; {t3_said}"
    if enobufs:
        return [
            Finding(
                "neighbours",
                FAIL,
                f"{enobufs} gossip send(s) failed with ENOBUFS (neighbour table full); {said}",
                fix,
            )
        ]
    assert thresh is not None
    t3 = thresh[2]
    if neightable.short(peers, t3):
        return [
            Finding(
                "neighbours",
                FAIL if peers > t3 else WARN,
                f"{said}: past it sends fail with ENOBUFS (peers behind a router need none)",
                fix,
            )
        ]
    return [Finding("neighbours", OK, said)]


# --- the I/O half -----------------------------------------------------------------------------


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def _run_json(argv: Sequence[str]) -> Any:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout) if argv[0] != "iptables-save" else out.stdout
    except json.JSONDecodeError:
        return None


def tx_checksum(device: str) -> bool | None:
    if shutil.which("ethtool") is None:
        return None
    try:
        out = subprocess.run(
            ["ethtool", "-k", device], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines():
        if line.strip().startswith("tx-checksum-ip-generic:"):
            return line.split(":", 1)[1].strip().startswith("on")
    return None


def file_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


@dataclass
class Sources:
    """Where ``gather`` reads from (the daemon fills it)."""

    backend: str
    gossip_port: int
    backend_port: int | None
    ip_protocol: int | None
    overhead: int
    dataplane: Callable[[], Mapping[str, Any]]
    peers: Callable[[], list[Peer]]
    probe_all: Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]] | None
    secret_files: Sequence[Path]
    cert_not_after: Callable[[], float | None]
    subnet_env: Path
    expected_env: Callable[[], Mapping[str, str]]
    lost_sends: Callable[[], Mapping[str, int]] = dict
    """Gossip sends lost, by reason (the transport's ``send_error.<reason>`` counters)."""
    subnet_families: tuple[int, ...] = (4,)
    """The families of this node's subnets (4, 6 or both)."""
    underlay_families: tuple[int, ...] = (4,)
    """The families of this node's underlay addresses, gossip's first."""


async def gather(src: Sources) -> Facts:
    dp = dict(src.dataplane())
    results = await src.probe_all() if src.probe_all is not None else {}
    peers = src.peers()
    for p in peers:
        r = results.get(p.name)
        if r is not None:
            p.tunnel = str(r.get("state"))
    ul = dp.get("underlay") or {}
    device = dp.get("device")
    env: str | None
    try:
        env = src.subnet_env.read_text()
    except OSError:
        env = None
    rp = {
        d: v
        for d in ("all", device or ul.get("ifname") or "")
        if d and (v := read_sysctl(f"net.ipv4.conf.{d}.rp_filter")) is not None
    }
    route_via: dict[str, str] = {}
    route_via6: dict[str, str] = {}
    for p in peers[:ROUTE_CHECKS]:
        if p.state not in ("alive", "suspect") or p.flag:
            continue
        for addr, into in ((p.address, route_via), (p.address6, route_via6)):
            if addr:
                got = _run_json(["ip", "-j", "route", "get", addr])
                if isinstance(got, list) and got and got[0].get("dev"):
                    into[p.name] = str(got[0]["dev"])
    nft = _run_json(["nft", "-j", "list", "ruleset"])
    ipt = _run_json(["iptables-save"])
    return Facts(
        backend=src.backend,
        gossip_port=src.gossip_port,
        backend_port=src.backend_port,
        ip_protocol=src.ip_protocol,
        ip_forward=read_sysctl("net.ipv4.ip_forward"),
        rp_filter=rp,
        dataplane=dp,
        underlay_mtu=int(ul.get("mtu") or 0),
        overhead=src.overhead,
        device_mtu=dp.get("mtu") if device else None,
        kernel=platform.release(),
        tx_checksum=tx_checksum(device) if src.backend == "vxlan" and device else None,
        nft_ruleset=nft if isinstance(nft, dict) else None,
        iptables=ipt if isinstance(ipt, str) else None,
        files={str(p): file_mode(p) for p in src.secret_files},
        cert_not_after=src.cert_not_after(),
        now=time.time(),
        subnet_env=env,
        subnet_env_path=str(src.subnet_env),
        expected_env=src.expected_env(),
        peers=peers,
        route_via=route_via,
        route_via6=route_via6,
        gc_thresh=neightable.read(),
        lost_sends=src.lost_sends(),
        ipv6=6 in src.subnet_families,
        ipv6_only=4 not in src.subnet_families,
        ip6_forward=read_sysctl("net.ipv6.conf.all.forwarding"),
        underlay_families=src.underlay_families,
        gc_thresh6=neightable.read(neightable.SYSCTLS6),
    )


async def run(src: Sources) -> dict[str, Any]:
    """The control command's reply: every finding, and whether any failed."""
    found = findings(await gather(src))
    return {"ok": not failed(found), "findings": [x.to_dict() for x in found]}
