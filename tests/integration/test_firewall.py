"""meshd.dataplane.firewall against the real kernel: nftables in lab namespaces, real VXLAN traffic.

Hosts h1..h3 get static VXLAN plumbing (the vxlan backend's objects, made with iproute2, so this
test depends on no daemon); h4 is on the same underlay with no tunnel at all: a non-member. The
filter runs in h1 only. Proven here: vxlan packets from IPs outside the set are dropped (container
pings to an excluded member fail, to an included one work) and counted; a VXLAN frame crafted by
the non-member reaches h1's container without the filter (flannel#961) and not with it; applying
is idempotent, repairs hand edits and leaves every other table alone; host-gw is inert.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshd.dataplane.firewall import Firewall
from meshd.dataplane.netns import netns_path, run_in_netns
from meshd.errors import DataplaneError
from meshd.lab import Host, Lab, ns_exec

T = TypeVar("T")
VXLAN_PORT = 8472
DEV = "vx1"
NETTOOL = Path(__file__).resolve().parents[2] / "meshd" / "lab" / "nettool.py"


def mac(h: Host) -> str:
    return f"02:00:00:00:01:{h.index:02x}"


def plumb_vxlan(lab: Lab, hosts: list[Host]) -> None:
    """The vxlan backend's kernel objects between ``hosts`` (docs/dataplane.md), by hand."""
    for h in hosts:
        net = ipaddress.IPv4Network(h.subnet)
        ip_lines = [
            f"link add {DEV} type vxlan id 1 dstport {VXLAN_PORT} local {h.underlay_ip} dev eth0 "
            "nolearning",
            f"link set {DEV} address {mac(h)} mtu 1450",
            f"addr add {net.network_address}/32 dev {DEV}",
            f"link set {DEV} up",
        ]
        fdb_lines = []
        for p in hosts:
            if p is h:
                continue
            s0 = ipaddress.IPv4Network(p.subnet).network_address
            ip_lines += [
                f"neigh replace {s0} lladdr {mac(p)} dev {DEV} nud permanent",
                f"route replace {p.subnet} via {s0} dev {DEV} onlink",
            ]
            fdb_lines.append(f"fdb append {mac(p)} dev {DEV} dst {p.underlay_ip} self permanent")
        ns_exec(h.ns, ["ip", "-batch", "-"], input="\n".join(ip_lines) + "\n")
        ns_exec(h.ns, ["bridge", "-batch", "-"], input="\n".join(fdb_lines) + "\n")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that joined netns ``ns`` (its sockets live there)."""
    return run_in_netns(netns_path(ns), fn)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return int(~s & 0xFFFF)


def vxlan_frame(
    dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, dport: int, payload: bytes, vni: int = 1
) -> bytes:
    """A VXLAN payload carrying Ethernet / IPv4 / UDP(dport, payload), UDP checksum 0."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        17,
        0,
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
    )
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    eth += b"\x08\x00"
    return struct.pack("!II", 0x08000000, vni << 8) + eth + hdr + udp


def injected(lab: Lab, attacker: Host, victim: Host, spoof: Host, count: int = 50) -> int:
    """Send ``count`` crafted VXLAN frames from ``attacker`` to ``victim``'s VTEP, each carrying a
    UDP datagram for the victim's container (inner source: ``spoof``'s container, so strict
    rp_filter lets it through); return how many the container received."""
    port = 23000 + os.getpid() % 1000
    tag = f"inj{os.getpid()}-{count}-".encode()
    ready = lab.workdir / f"sink-{port}.ready"
    ready.unlink(missing_ok=True)
    sink = lab.spawn(
        victim.container_ns,
        [
            sys.executable,
            "-S",
            str(NETTOOL),
            "udp-sink",
            "--port",
            str(port),
            "--idle",
            "0",
            "--first",
            "60",
            "--ready",
            str(ready),
            "--tag",
            tag.decode(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if ready.exists():
                break
            assert sink.poll() is None, "udp sink died"
            threading.Event().wait(0.05)
        frame = vxlan_frame(
            mac(victim), mac(spoof), spoof.container_ip, victim.container_ip, port, tag + b"x" * 32
        )

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(count):
                    s.sendto(frame, (victim.underlay_ip, VXLAN_PORT))

        in_ns(attacker.ns, send)
        threading.Event().wait(0.5)
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=10)
        return int(out.decode().strip() or 0)
    finally:
        lab.stop(sink, signal.SIGKILL)


def nft_tables(ns: str) -> set[str]:
    out = ns_exec(ns, ["nft", "list", "tables"]).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.mark.root
def test_filter_drops_non_members(lab: Callable[[int], Lab]) -> None:
    lb = lab(4)
    h1, h2, h3, h4 = lb.hosts
    plumb_vxlan(lb, [h1, h2, h3])
    members = [h1, h2, h3]

    def pings(a: Host, b: Host) -> bool:
        return lb.ping(a.container_ns, b.container_ip, count=2, timeout=1)

    assert all(pings(a, b) for a in members for b in members if a is not b)
    # Without a filter the non-member's crafted frame reaches h1's container: the hole.
    assert injected(lb, h4, h1, spoof=h2) > 0

    # Someone else's table in the same namespace must survive everything below.
    ns_exec(h1.ns, ["nft", "add table inet other; add chain inet other c"])
    fw = Firewall("vxlan", VXLAN_PORT, netns=h1.ns)

    # h2 outside the set: its vxlan packets are dropped at h1, both ways of a ping need them.
    assert run(fw.apply({h3.underlay_ip}))
    assert not pings(h1, h2) and not pings(h2, h1)
    assert pings(h1, h3) and pings(h3, h1) and pings(h2, h3)
    seen = run(fw.read())
    assert seen["present"] and seen["members"] == [h3.underlay_ip]
    assert seen["dropped"]["packets"] > 0 and seen["accepted"]["packets"] > 0
    assert fw.status()["members"] == [h3.underlay_ip] and fw.status()["last_error"] is None

    # The crafted frames of the non-member are dropped and counted, one for one.
    before = seen["dropped"]["packets"]
    assert injected(lb, h4, h1, spoof=h2, count=50) == 0
    assert run(fw.read())["dropped"]["packets"] >= before + 50

    # h2 admitted: traffic flows again, and the counters keep counting (named counters survive
    # the rule rewrite of every apply).
    acc = run(fw.read())["accepted"]["packets"]
    assert run(fw.apply({h2.underlay_ip, h3.underlay_ip}))
    assert pings(h1, h2) and pings(h2, h1)
    now = run(fw.read())
    assert now["members"] == sorted([h2.underlay_ip, h3.underlay_ip])
    assert now["accepted"]["packets"] > acc and now["dropped"]["packets"] >= before + 50

    # Idempotent: the same set is not re-applied; forced, the table is the same text.
    listing = ns_exec(h1.ns, ["nft", "list", "table", "inet", "meshd"]).stdout
    assert not run(fw.apply([h3.underlay_ip, h2.underlay_ip]))
    assert run(fw.apply({h2.underlay_ip, h3.underlay_ip}, force=True))
    again = ns_exec(h1.ns, ["nft", "list", "table", "inet", "meshd"]).stdout

    def strip(s: str) -> list[str]:
        return [ln for ln in s.splitlines() if "packets" not in ln]

    assert strip(again) == strip(listing)
    assert again.count("counter name") == 3  # accept IPv4, accept IPv6, drop: none stacked up

    # Hand edits are repaired by the next (forced) apply: a deleted element and a flushed chain.
    ns_exec(h1.ns, ["nft", f"delete element inet meshd members {{ {h2.underlay_ip} }}"])
    ns_exec(h1.ns, ["nft", "flush chain inet meshd input"])
    assert run(fw.apply({h2.underlay_ip, h3.underlay_ip}, force=True))
    assert strip(ns_exec(h1.ns, ["nft", "list", "table", "inet", "meshd"]).stdout) == strip(listing)

    # An incompatible object of ours (the set re-created with another type) is rebuilt.
    ns_exec(
        h1.ns,
        [
            "nft",
            "delete table inet meshd; add table inet meshd; "
            "add set inet meshd members { type ipv4_addr . inet_service; }",
        ],
    )
    assert run(fw.apply({h2.underlay_ip, h3.underlay_ip}, force=True))
    assert fw.status()["recreated"] == 1
    assert run(fw.read())["members"] == sorted([h2.underlay_ip, h3.underlay_ip])
    assert pings(h1, h2)

    # Members announcing non-unicast public IPs are kept out of the set (127.0.0.1 would let any
    # local process in), listed with why, and do not stop the filter for the others.
    bad = ["127.0.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1"]
    assert run(fw.apply({h2.underlay_ip, h3.underlay_ip, *bad}, force=True))
    assert run(fw.read())["members"] == sorted([h2.underlay_ip, h3.underlay_ip])
    assert sorted(fw.status()["refused"]) == sorted(bad)
    assert "loopback" in fw.status()["refused"]["127.0.0.1"]
    assert fw.status()["last_error"] is None

    # The non-member admitted: its frame is decapsulated again (so the drop above was the filter).
    run(fw.apply({h2.underlay_ip, h3.underlay_ip, h4.underlay_ip}))
    assert injected(lb, h4, h1, spoof=h2) > 0

    # Other traffic is untouched by a filter that admits nobody: gossip-like UDP and ICMP on the
    # underlay still pass, only the tunnel stops.
    run(fw.apply(set()))
    assert run(fw.read())["members"] == []
    assert lb.ping(h2.ns, h1.underlay_ip, count=1, timeout=1)
    assert lb.udp_count(h2.ns, h1.ns, h1.underlay_ip, 7950, 20) == 20
    assert not pings(h3, h1)

    run(fw.remove())
    tables = nft_tables(h1.ns)
    assert "table inet meshd" not in tables and "table inet other" in tables
    assert pings(h1, h2) and pings(h3, h1)
    run(fw.remove())  # removing twice is fine
    assert not run(fw.read())["present"]


@pytest.mark.root
def test_ipip_and_wireguard_match_and_host_gw_inert(lab: Callable[[int], Lab]) -> None:
    lb = lab(1)
    (h1,) = lb.hosts
    fw = Firewall("ipip", netns=h1.ns)
    assert run(fw.apply({"10.99.0.2"}))
    listing = ns_exec(h1.ns, ["nft", "list", "chain", "inet", "meshd", "input"]).stdout
    assert "ip protocol ipencap ip saddr @members" in listing
    assert "udp dport" not in listing
    # wireguard: its UDP port, members only (what the daemon passes: wireguard_port).
    wgf = Firewall("wireguard", 51820, netns=h1.ns)
    assert run(wgf.apply({"10.99.0.2"}))
    listing = ns_exec(h1.ns, ["nft", "list", "chain", "inet", "meshd", "input"]).stdout
    assert "udp dport 51820 ip saddr @members" in listing
    assert "ipencap" not in listing
    # host-gw carries nothing encapsulated: nothing is created, status says why.
    gw = Firewall("host-gw", netns=h1.ns)
    assert not run(gw.apply({"10.99.0.2"}))
    assert not gw.status()["active"] and gw.status()["reason"]
    # but remove() deletes a table left by an earlier tunnel backend
    run(gw.remove())
    assert "table inet meshd" not in nft_tables(h1.ns)


def test_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(DataplaneError, match=r"^filter: 'nope' is not an IP address$"):
        Firewall("vxlan").script(["10.0.0.1", "nope"])
    script = Firewall("vxlan", 4789).script(["10.0.0.2", "10.0.0.1", "10.0.0.2"])
    assert "udp dport 4789 ip saddr @members" in script
    assert script.rstrip().endswith("add element inet meshd members { 10.0.0.1, 10.0.0.2 }")
    assert "add element" not in Firewall("vxlan").script([])
    monkeypatch.setenv("PATH", str(tmp_path))  # no nft anywhere
    fw = Firewall("vxlan")
    with pytest.raises(DataplaneError) as exc:
        run(fw.apply({"10.0.0.1"}))
    assert str(exc.value) == "filter: nft not found (apt-get install nftables)"
    assert fw.status()["last_error"] == str(exc.value)
    with pytest.raises(DataplaneError, match="nft not found"):
        run(fw.remove())


@pytest.mark.root
def test_ipv6_members_get_their_own_set_and_rules(lab: Callable[[int], Lab]) -> None:
    lb = lab(1)
    (h1,) = lb.hosts
    fw = Firewall("vxlan", netns=h1.ns)
    assert run(fw.apply({"10.99.0.2", "fd00:99::3", "fd00:99::2", "::1"}))
    listing = ns_exec(h1.ns, ["nft", "list", "chain", "inet", "meshd", "input"]).stdout
    assert "udp dport 8472 ip6 saddr @members6" in listing
    seen = run(fw.read())
    assert seen["members"] == ["10.99.0.2", "fd00:99::2", "fd00:99::3"]
    assert fw.status()["refused"] == {"::1": "::1 is the loopback address"}
    # ipip over IPv6 (ip6tnl): IPv4 or IPv6 inside, allowed from members, dropped otherwise.
    tun = Firewall("ipip", netns=h1.ns)
    assert run(tun.apply({"fd00:99::2"}))
    listing = ns_exec(h1.ns, ["nft", "list", "chain", "inet", "meshd", "input"]).stdout
    assert "meta l4proto { ipencap, ipv6 } ip6 saddr @members6 counter" in listing
    assert listing.count('counter name "dropped" drop') == 2
    assert run(tun.read())["members"] == ["fd00:99::2"]
