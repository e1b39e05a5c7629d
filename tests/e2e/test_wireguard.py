"""The WireGuard backend end to end: three real daemons in lab namespaces, each in a mount namespace
of its own (the lab gives a wireguard daemon a private /run/wireguard), over wireguard-go where
the kernel has no module (this one has none).

One mesh is built per module and shared by the tests in file order; each starts by waiting for
the mesh to be whole, and the destructive one (leave, then reap) comes last. What they show:
every container pings every other and 4 MiB cross over TCP while a capture of the whole underlay
sees only UDP to the WireGuard port and gossip; a hand-removed WireGuard peer and a hand-deleted
route come back; kill -9 and restart of a daemon under a ping loop loses nothing and adopts the
running wireguard-go; leave removes a host's peer and route everywhere at once, a crashed host
keeps them until reap.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import DEFAULT_GOSSIP_PORT, Host, Lab, ns_exec
from meshd.lab.daemons import WG_DEVICE
from meshd.lab.runner import kernel_supports
from meshd.lab.topology import down

from .conftest import FAST_GOSSIP, all_alive, cli, keygen, peers, states, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("wireguard-go") is None and not kernel_supports("wireguard"),
        reason="needs the wireguard module or wireguard-go",
    ),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("wg", "tcpdump", "nsenter", "unshare")),
        reason="needs wireguard-tools, tcpdump and util-linux",
    ),
]
PROTO = "109"
WG_PORT = 51820
MTU = 1500 - 60  # the lab's underlay MTU - WireGuard's IPv4 overhead


@dataclass
class Mesh:
    lab: Lab
    key: Path
    config: Path

    def start(self, h: Host, seeds: list[str] | None = None) -> None:
        extra = ["--config", str(self.config)]
        self.lab.start_daemon(
            h, key_file=self.key, backend="wireguard", extra_args=extra, seeds=seeds
        )

    def converged(self) -> None:
        """Every member alive everywhere, every container pings every other."""
        lab = self.lab
        wait_until(all_alive(lab, [h.name for h in lab.hosts]), 60, "members alive", lab)
        wait_until(ping_all(lab), 30, "every container to ping every other", lab)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    tmp = tmp_path_factory.mktemp("wg")
    config = tmp / "fast.toml"
    config.write_text(FAST_GOSSIP)
    down("wge")  # left behind by a run killed mid-test
    lab = Lab("wge", hosts=3, workdir=tmp / "lab")
    try:
        lab.build()
        lab.set_rp_filter(1)
        m = Mesh(lab, keygen(tmp / "key"), config)
        for h in lab.hosts:
            m.start(h)
        yield m
    finally:
        lab.teardown()


# --------------------------------------------------------------------------- helpers


def ping_all(lab: Lab) -> Callable[[], bool]:
    return lambda: all(lab.ping_matrix(count=1, timeout=1).values())


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = ns_exec(None, ["ip", "-n", ns, "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def routes(h: Host) -> set[str]:
    return {str(r["dst"]) for r in ip_json(h.ns, "route", "show", "proto", PROTO)}


def public_key(lab: Lab, h: Host) -> str:
    return lab.wg(h, "show", WG_DEVICE, "public-key").stdout.strip()


def wg_peers(lab: Lab, h: Host) -> dict[str, tuple[str, frozenset[str]]]:
    """The device's peers as ``wg`` sees them: public key -> (endpoint, allowed IPs)."""
    lines = lab.wg(h, "show", WG_DEVICE, "dump").stdout.splitlines()[1:]
    return {
        f[0]: (f[2], frozenset(f[3].split(",")) - {"(none)"})
        for f in (line.split("\t") for line in lines)
    }


def device_address(h: Host) -> str:
    return str(ipaddress.IPv4Network(h.subnet).network_address)


def expected_peers(mesh: Mesh, h: Host) -> dict[str, tuple[str, frozenset[str]]]:
    return {
        public_key(mesh.lab, p): (
            f"{p.underlay_ip}:{WG_PORT}",
            frozenset({p.subnet, f"{device_address(p)}/32"}),
        )
        for p in mesh.lab.hosts
        if p is not h
    }


def peers_match(mesh: Mesh, h: Host, want: dict[str, tuple[str, frozenset[str]]]) -> bool:
    """``h``'s device has exactly the peers ``want`` (allowed IPs: the subnet, with or without the
    /32 device address inside it)."""
    got = wg_peers(mesh.lab, h)
    if got.keys() != want.keys():
        return False
    for key, (endpoint, allowed) in want.items():
        subnet = min(allowed, key=lambda n: ipaddress.IPv4Network(n).prefixlen)
        if got[key][0] != endpoint or not {subnet} <= got[key][1] <= allowed:
            return False
    return True


_IPV4 = re.compile(
    r" IP (?P<src>\d+\.\d+\.\d+\.\d+)(?:\.(?P<sport>\d+))? > "
    r"(?P<dst>\d+\.\d+\.\d+\.\d+)(?:\.(?P<dport>\d+))?: (?P<rest>.*)$"
)
_LINK_LOCAL_V6 = re.compile(r" IP6 (::|fe80:\S*) > \S+: (HBH )?ICMP6, ")


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    sport: int | None
    dport: int | None
    proto: str  # UDP, tcp, ICMP, igmp, ... as tcpdump -q words it
    length: int


def parse_capture(lines: list[str]) -> tuple[list[Packet], list[str]]:
    """IPv4 packets of a ``tcpdump -n -q`` capture, and the lines that are neither IPv4 nor the
    link's own chatter (ARP, IPv6 neighbour discovery and MLD from link-local addresses)."""
    packets, other = [], []
    for line in lines:
        m = _IPV4.search(line)
        if m is not None:
            rest = m["rest"]
            length = re.search(r"length (\d+)", rest) or re.search(r"^tcp (\d+)", rest)
            packets.append(
                Packet(
                    m["src"],
                    m["dst"],
                    int(m["sport"]) if m["sport"] else None,
                    int(m["dport"]) if m["dport"] else None,
                    re.split(r"[ ,]", rest, maxsplit=1)[0],
                    int(length[1]) if length else 0,
                )
            )
        elif " ARP, " not in line and not _LINK_LOCAL_V6.search(line):
            other.append(line)
    return packets, other


# --------------------------------------------------------------------------- tests


def test_device_peers_routes_and_status(mesh: Mesh) -> None:
    lab = mesh.lab
    mesh.converged()
    userspace = not kernel_supports("wireguard")
    for h in lab.hosts:
        others = {p.subnet for p in lab.hosts if p is not h}
        assert routes(h) == others
        for r in ip_json(h.ns, "route", "show", "proto", PROTO):
            assert r["dev"] == WG_DEVICE and "gateway" not in r, r
        link = ip_json(h.ns, "addr", "show", "dev", WG_DEVICE)[0]
        assert link["mtu"] == MTU
        v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
        assert [f"{a['local']}/{a['prefixlen']}" for a in v4] == [f"{device_address(h)}/32"]
        want = expected_peers(mesh, h)
        wait_until(lambda: peers_match(mesh, h, want), 10, f"{h.name}'s WireGuard peers", lab)  # noqa: B023

        wgs = cli(lab.daemons[h.name], "status", "--json")["dataplane"]["wireguard"]
        assert wgs["implementation"] == ("wireguard-go" if userspace else "kernel")
        assert wgs["why"]
        assert wgs["pid"] == (lab.wireguard_pid(h) if userspace else None)
        assert wgs["public_key"] == public_key(lab, h)
        assert wgs["listen_port"] == WG_PORT
        key = lab.daemons[h.name].state_dir / "wireguard.key"
        assert key.stat().st_mode & 0o777 == 0o600

    # After traffic, every peer has shaken hands; peers shows when, in unix seconds (read with
    # the device every few seconds).
    assert all(lab.ping_matrix(count=1).values())

    def shaken(h: Host) -> bool:
        rows = peers(lab.daemons[h.name])
        hs = [r["handshake"] for n, r in rows.items() if n != h.name]
        return len(hs) == 2 and all(isinstance(t, int) and t > 0 for t in hs)

    for h in lab.hosts:
        wait_until(lambda: shaken(h), 15, f"handshakes in {h.name}'s peers", lab)  # noqa: B023


def test_underlay_carries_only_wireguard_and_gossip(mesh: Mesh) -> None:
    lab = mesh.lab
    mesh.converged()
    h1, _, h3 = lab.hosts
    # Every port of the underlay switch (so every host's traffic), everything, for the whole run.
    with lab.recording(lab.ul_ns, "any") as lines:
        matrix = lab.ping_matrix(count=2)
        sent = lab.tcp_transfer(h1.container_ns, h3.container_ns, h3.container_ip, 4 << 20)
    assert all(matrix.values()), matrix
    assert sent
    assert lines, "the capture saw nothing"
    packets, other = parse_capture(lines)
    assert other == [], other[:10]
    underlay = {h.underlay_ip for h in lab.hosts}
    allowed_ports = {WG_PORT, DEFAULT_GOSSIP_PORT}
    clear = [
        p
        for p in packets
        if not (
            p.proto == "UDP"
            and {p.src, p.dst} <= underlay
            and (p.sport in allowed_ports or p.dport in allowed_ports)
        )
        # the bridge's own IGMP membership reports: the switch, not the hosts
        and not (p.proto == "igmp" and ipaddress.IPv4Address(p.dst).is_multicast)
    ]
    assert clear == [], clear[:10]
    pods = ipaddress.IPv4Network(lab.pod_network)
    clear_pods = [
        p for p in packets if any(ipaddress.IPv4Address(a) in pods for a in (p.src, p.dst))
    ]
    assert clear_pods == [], clear_pods[:10]
    wg = [p for p in packets if WG_PORT in (p.sport, p.dport)]
    # The pings and the 4 MiB went through the tunnel: at least that many bytes to port 51820.
    assert sum(p.length for p in wg) >= 4 << 20
    assert {(p.src, p.dst) for p in wg} >= {
        (a.underlay_ip, b.underlay_ip) for a in lab.hosts for b in lab.hosts if a is not b
    }


def test_hand_removed_peer_and_route_come_back(mesh: Mesh) -> None:
    lab = mesh.lab
    mesh.converged()
    h1, h2, _ = lab.hosts
    want = expected_peers(mesh, h1)
    lab.wg(h1, "set", WG_DEVICE, "peer", public_key(lab, h2), "remove")
    wait_until(lambda: peers_match(mesh, h1, want), 30, "the removed WireGuard peer back", lab)
    ns_exec(h1.ns, ["ip", "route", "del", h2.subnet])
    wait_until(lambda: h2.subnet in routes(h1), 10, "the deleted route back", lab)
    wait_until(ping_all(lab), 15, "pings after the repairs", lab)


def test_restart_under_ping_loop_adopts_the_device(mesh: Mesh) -> None:
    lab = mesh.lab
    mesh.converged()
    h1, h2, _ = lab.hosts
    names = [h.name for h in lab.hosts]
    pid = lab.wireguard_pid(h2)
    pinger = lab.spawn(
        h1.container_ns,
        ["ping", "-n", "-q", "-i", "0.05", "-c", "160", "-W", "1", h2.container_ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lab.stop_daemon("h2", signal.SIGKILL)
    assert lab.wireguard_pid(h2) == pid  # the device outlives its daemon
    mesh.start(h2, seeds=[])
    wait_until(
        lambda: states(lab.daemons["h2"]) == dict.fromkeys(names, "alive"),
        60,
        "restarted h2 to rejoin",
        lab,
    )
    out, _ = pinger.communicate(timeout=60)
    m = re.search(rb"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    assert m.group(1) == m.group(2), out.decode()
    assert lab.wireguard_pid(h2) == pid
    wait_until(
        lambda: cli(lab.daemons["h2"], "status", "--json")["dataplane"]["synced"],
        15,
        "restarted h2 synced",
        lab,
    )
    dp = cli(lab.daemons["h2"], "status", "--json")["dataplane"]
    assert dp["last_error"] is None
    if pid is not None:
        assert dp["wireguard"]["pid"] == pid  # adopted, not restarted
    changed = {k: v for k, v in dp["applied"].items() if v and not k.startswith(("sysctl", "env"))}
    assert not changed, f"restart rewrote kernel state: {dp['applied']}"
    assert peers_match(mesh, h2, expected_peers(mesh, h2))


def test_leave_at_once_then_crash_kept_until_reap(mesh: Mesh) -> None:
    lab = mesh.lab
    mesh.converged()
    h1, h2, h3 = lab.hosts
    key1, key2, key3 = (public_key(lab, h) for h in lab.hosts)

    # leave: h3's peer and route go everywhere at once (well before reap_after, 10 s here)
    assert "left the mesh" in cli(lab.daemons["h3"], "leave").stdout
    wait_until(
        lambda: (
            routes(h1) == {h2.subnet}
            and routes(h2) == {h1.subnet}
            and wg_peers(lab, h1).keys() == {key2}
            and wg_peers(lab, h2).keys() == {key1}
        ),
        8,
        "h3's peer and route to go after leave",
        lab,
    )
    assert key3 not in wg_peers(lab, h1)

    # a crashed peer keeps its peer and route while dead, and loses them after reap_after
    lab.stop_daemon("h2", signal.SIGKILL)
    wait_until(lambda: states(lab.daemons["h1"]).get("h2") == "dead", 30, "h2 dead", lab)
    assert routes(h1) == {h2.subnet}  # failure is not leave
    assert wg_peers(lab, h1).keys() == {key2}
    wait_until(lambda: routes(h1) == set() and wg_peers(lab, h1) == {}, 40, "h2 reaped on h1", lab)
