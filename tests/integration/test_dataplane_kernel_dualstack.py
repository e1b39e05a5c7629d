"""The data plane per family against the real kernel, in network namespaces (no mocks).

Hosts come from the lab (IPv4, see conftest.py); each test adds the IPv6 side by hand: an IPv6
address on every host's underlay (``fd00:99::<i>/64``), and to every container an address in
its host's IPv6 subnet (``fd00:244:<i>::2/64``) with a default route via the first address,
which meshd puts on the bridge. One Reconciler per host runs from this process (``netns=``) on
hand-built records; the kernel is checked with iproute2 and real traffic of both families.

* every object kind on its own, through ``Netlink``: IPv6 routes, an IPv4 route via inet6, IPv6
  neighbours, an FDB entry with an IPv6 dst, IPv6 addresses, the monitor's IPv6 events, the
  IPv6 default route, ip6tnl (or the one-line refusal of a kernel without it);
* vxlan and host-gw, dual-stack containers over an IPv4+IPv6 underlay and over an IPv6-only
  one: pings both ways in both families, IPv6 entries repaired after a hand deletion and
  adopted by a restarted reconciler without one rewrite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from meshd.dataplane import wireguard as wg
from meshd.dataplane.model import RTPROT_MESHD, PeerView
from meshd.dataplane.netlink import Event, FdbEntry, NeighEntry, Netlink, RouteEntry
from meshd.dataplane.netns import netns_path, run_in_netns
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.dataplane.rtnl_wire import AF_INET6
from meshd.dataplane.underlay import discover_underlay
from meshd.dataplane.wgdevice import WireGuardDevices, peers_of
from meshd.errors import DataplaneError, MissingKernelFeature
from meshd.gossip.record import NodeRecord, vtep_mac_for
from meshd.lab import Host, Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
T = TypeVar("T")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def ipj(ns: str, *args: str) -> list[dict[str, Any]]:
    p = sh("ip", "-n", ns, "-j", *args, check=False)
    out = p.stdout.strip()
    return json.loads(out) if p.returncode == 0 and out else []


def ul6(h: Host) -> str:
    return f"fd00:99::{h.index}"


def subnet6(h: Host) -> str:
    return f"fd00:244:{h.index}::/64"


def container6(h: Host) -> str:
    return f"fd00:244:{h.index}::2"


def add_ipv6(topo: Lab, *, ipv6_only: bool = False) -> None:
    """The IPv6 side of the lab (see the module docstring); ``ipv6_only`` also takes the
    underlay's IPv4 address (and so its IPv4 routes) away."""
    for h in topo.hosts:
        sh("ip", "-n", h.ns, "addr", "add", f"{ul6(h)}/64", "dev", "eth0", "nodad")
        if ipv6_only:
            sh("ip", "-n", h.ns, "addr", "del", h.underlay_cidr, "dev", "eth0")
        c = h.container_ns
        sh("ip", "-n", c, "addr", "add", f"{container6(h)}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", c, "-6", "route", "add", "default", "via", f"fd00:244:{h.index}::1")


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    return run_in_netns(netns_path(ns), fn)


def transfer(src_ns: str, dst_ns: str, dst_ip: str, size: int = 256 * 1024) -> bool:
    """``size`` bytes over TCP from src_ns to dst_ip (in dst_ns), either family; True if the
    SHA-256 of what arrived comes back."""
    fam = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    any_ip = "::" if fam == socket.AF_INET6 else "0.0.0.0"
    srv = in_ns(dst_ns, lambda: socket.create_server((any_ip, 0), family=fam))
    srv.settimeout(3.0)
    port = srv.getsockname()[1]
    data = os.urandom(size)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(3.0)
                h = hashlib.sha256()
                while chunk := conn.recv(65536):
                    h.update(chunk)
                conn.sendall(h.digest())

    t = threading.Thread(target=serve)
    t.start()
    cli = in_ns(src_ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
    try:
        cli.settimeout(3.0)
        cli.connect((dst_ip, port))
        cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        return cli.recv(64) == hashlib.sha256(data).digest()
    except OSError:
        return False
    finally:
        cli.close()
        t.join()
        srv.close()


async def reachable(src: Host, dst: Host, ip: str) -> bool:
    return await asyncio.to_thread(transfer, src.container_ns, dst.container_ns, ip)


async def eventually(cond: Callable[[], bool], timeout: float = 3.0, what: str = "it") -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not true within {timeout}s")
        await asyncio.sleep(0.05)


def routes6(ns: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ipj(ns, "-6", "route", "show", "proto", str(RTPROT_MESHD))}


def routes4(ns: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ipj(ns, "-4", "route", "show", "proto", str(RTPROT_MESHD))}


def neighs6(ns: str, dev: str) -> dict[str, str]:
    return {
        n["dst"]: n.get("lladdr", "")
        for n in ipj(ns, "-6", "neigh", "show", "dev", dev)
        if "PERMANENT" in n.get("state", [])
    }


def fdb(ns: str, dev: str) -> set[tuple[str, str]]:
    out = sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", dev, check=False).stdout.strip()
    return {(e["mac"], e["dst"]) for e in (json.loads(out) if out else []) if "dst" in e}


WG_KEYS = {i: bytes([0x50 + i]) * 32 for i in range(1, 4)}  # private keys of h1..h3


def record(h: Host, backend: str, *, ipv6_only: bool) -> NodeRecord:
    node_id = bytes([h.index]) * 16
    return NodeRecord(
        name=h.name,
        node_id=node_id,
        public_ip=ul6(h) if ipv6_only else h.underlay_ip,
        port=7950,
        subnet=h.subnet,
        backend=backend,
        vtep_mac=vtep_mac_for(node_id) if backend == "vxlan" else None,
        mtu=1500,
        public_ip6=None if ipv6_only else ul6(h),
        subnet6=subnet6(h),
        wg_key=wg.public_key(WG_KEYS[h.index]) if backend == "wireguard" else b"",
    )


class Mesh:
    def __init__(self, tmp: Path, topo: Lab, backend: str, ipv6_only: bool) -> None:
        self.tmp, self.topo, self.backend, self.v6only = tmp, topo, backend, ipv6_only
        self.records = {h.index: record(h, backend, ipv6_only=ipv6_only) for h in topo.hosts}
        self.recs: dict[int, Reconciler] = {}
        self.wgds: dict[int, WireGuardDevices] = {}

    async def start(self, i: int) -> Reconciler:
        h = self.topo.hosts[i - 1]
        rec = self.records[i]
        ul = await discover_underlay("eth0", rec.public_ip, netns=h.ns, public_ip6=rec.public_ip6)
        cfg = ReconcilerConfig(
            network="10.244.0.0/16",
            network6="fd00:244::/32",
            backend=self.backend,
            bridge="br",
            subnet_env=self.tmp / f"h{i}.env",
        )
        wgd = (
            WireGuardDevices(WG_KEYS[i], netns=h.ns, private_run=True)
            if self.backend == "wireguard"
            else None
        )
        if wgd is not None:
            self.wgds[i] = wgd
        r = Reconciler(cfg, rec, ul, netns=h.ns, wg=wgd)
        views = [PeerView(x, "alive", time.monotonic()) for j, x in self.records.items() if j != i]
        r.set_peers(views, synced=True, now=time.monotonic())
        self.recs[i] = r  # before start(): a test reads the status of one that refused
        await r.start()
        asyncio.create_task(r.run())
        return r

    async def close(self) -> None:
        for r in self.recs.values():
            await r.close()
        self.recs.clear()


@contextlib.asynccontextmanager
async def mesh(tmp: Path, topo: Lab, backend: str, ipv6_only: bool) -> AsyncIterator[Mesh]:
    m = Mesh(tmp, topo, backend, ipv6_only)
    try:
        yield m
    finally:
        await m.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# --- each object kind, through Netlink -----------------------------------------------------------


def test_ipv6_objects_round_trip_through_the_kernel(lab: Callable[..., Lab]) -> None:
    topo = lab(1)
    (h,) = topo.hosts
    add_ipv6(topo)
    sh("ip", "-n", h.ns, "link", "add", "vx6", "type", "vxlan", "id", "9", "local", ul6(h),
       "dstport", "4789", "nolearning", "dev", "eth0")  # fmt: skip
    sh("ip", "-n", h.ns, "link", "set", "vx6", "up")

    async def main() -> None:
        async with Netlink(h.ns) as nl:
            eth0 = await nl.link("eth0")
            vx = await nl.link("vx6")
            assert eth0 is not None and vx is not None
            mac = "02:00:00:00:00:02"
            # Addresses: IPv6 added without DAD, read back (link-local ones never), deleted.
            await nl.add_address(vx.index, "fd00:244:1::/128")
            got = await nl.addresses(vx.index, 0)
            assert got == [(vx.index, "fd00:244:1::", 128, False)]
            (shown,) = [
                a
                for a in ipj(h.ns, "-6", "addr", "show", "dev", "vx6")[0]["addr_info"]
                if a["local"] == "fd00:244:1::"
            ]
            assert not shown.get("tentative") and shown.get("nodad"), shown
            # Neighbours and an FDB entry with an IPv6 dst.
            assert not await nl.neighs_apply("replace", vx.index, [NeighEntry("fd00:244:2::", mac)])
            assert not await nl.fdb_apply("replace", vx.index, [FdbEntry(mac, "fd00:99::2")])
            assert await nl.dump_neighs(vx.index, AF_INET6) == [NeighEntry("fd00:244:2::", mac)]
            assert await nl.dump_neighs(vx.index) == []  # IPv4 only
            assert await nl.dump_fdb(vx.index) == [FdbEntry(mac, "fd00:99::2")]
            assert fdb(h.ns, "vx6") >= {(mac, "fd00:99::2")}
            # Routes: IPv6 onlink via the neighbour, and IPv4 via inet6 (RFC 5549).
            six = RouteEntry("fd00:244:2::/64", "fd00:244:2::", vx.index, True)
            four = RouteEntry("10.244.2.0/24", "fd00:99::2", eth0.index, False)
            assert not await nl.routes_apply("add", [six], RTPROT_MESHD)
            assert not await nl.routes_apply("add", [four], RTPROT_MESHD)
            assert await nl.dump_routes(RTPROT_MESHD, 254, AF_INET6) == [six]
            assert await nl.dump_routes(RTPROT_MESHD) == [four]
            shown = routes4(h.ns)["10.244.2.0/24"]
            assert shown["via"] == {"family": "inet6", "host": "fd00:99::2"}, shown
            owners = await nl.dump_route_owners(254, AF_INET6)
            assert ("fd00:244:2::/64", RTPROT_MESHD) in owners
            # add twice: EEXIST; replace: fine; del: only ours, gone counts as done.
            (fail,) = await nl.routes_apply("add", [six], RTPROT_MESHD)
            assert fail.error.errno == 17
            assert not await nl.routes_apply("replace", [six], RTPROT_MESHD)
            # The monitor sees an IPv6 route deleted by hand.
            events = cast("AsyncGenerator[Event, None]", nl.events())
            assert (await anext(events)).kind == "ready"
            sh("ip", "-n", h.ns, "-6", "route", "del", "fd00:244:2::/64")
            ev = await asyncio.wait_for(anext(events), 2)
            while ev.kind != "route":
                ev = await asyncio.wait_for(anext(events), 2)
            assert (ev.new, ev.dst, ev.proto) == (False, "fd00:244:2::/64", RTPROT_MESHD)
            await events.aclose()
            assert not await nl.routes_apply("del", [six, four], RTPROT_MESHD)
            assert await nl.dump_routes(RTPROT_MESHD, 254, AF_INET6) == []
            assert not await nl.neighs_apply("del", vx.index, [NeighEntry("fd00:244:2::", mac)])
            assert not await nl.fdb_apply("del", vx.index, [FdbEntry(mac, "fd00:99::2")])
            await nl.del_address(vx.index, "fd00:244:1::/128")
            assert await nl.addresses(vx.index, 0) == []
            # The IPv6 default route finds the underlay.
            sh("ip", "-n", h.ns, "-6", "route", "add", "default", "via", "fd00:99::fe")
            assert await nl.default_route_oif(AF_INET6) == eth0.index

    run(main())


def test_underlay_discovery_of_ipv6(lab: Callable[..., Lab]) -> None:
    topo = lab(1)
    (h,) = topo.hosts
    add_ipv6(topo)

    async def main() -> None:
        ul = await discover_underlay(None, ul6(h), netns=h.ns)
        assert (ul.ifname, ul.ip, ul.prefixlen, ul.ip6, ul.version) == (
            "eth0", "fd00:99::1", 64, None, 6,
        )  # fmt: skip
        ds = await discover_underlay("eth0", None, netns=h.ns, dual_stack=True)
        assert (ds.ip, ds.ip6, ds.prefixlen6) == (h.underlay_ip, "fd00:99::1", 64)
        with pytest.raises(DataplaneError, match="fd00:99::7 is not assigned to eth0"):
            await discover_underlay("eth0", h.underlay_ip, netns=h.ns, public_ip6="fd00:99::7")
        sh("ip", "-n", h.ns, "addr", "del", h.underlay_cidr, "dev", "eth0")
        sh("ip", "-n", h.ns, "-6", "route", "add", "default", "via", "fd00:99::fe")
        only6 = await discover_underlay(None, None, netns=h.ns)  # via the IPv6 default route
        assert (only6.ifname, only6.ip) == ("eth0", "fd00:99::1")

    run(main())


def test_ip6tnl_is_created_or_refused_in_one_line(lab: Callable[..., Lab]) -> None:
    topo = lab(1)
    (h,) = topo.hosts
    add_ipv6(topo)

    async def main() -> None:
        async with Netlink(h.ns) as nl:
            eth0 = await nl.link("eth0")
            assert eth0 is not None
            # The ipip backend's device over an IPv6 underlay: external (collect_md), mode any.
            params = [("ip6tnl_collect_metadata", True), ("ip6tnl_local", ul6(h)),
                      ("ip6tnl_link", eth0.index), ("ip6tnl_proto", 0)]  # fmt: skip
            try:
                index = await nl.create_link("meshd.ip6tnl", "ip6tnl", 1460, None, params)
            except MissingKernelFeature as exc:
                assert "kernel has no ip6tnl support" in str(exc) and "\n" not in str(exc)
                return
            info = await nl.link(index=index)
            assert info is not None and info.kind == "ip6tnl" and info.mtu == 1460
            assert info.params["ip6tnl_local"] == ul6(h)
            # Read back as asked for (the kernel's own capability bits masked off): adopted.
            assert all(info.params.get(k) == v for k, v in params), info.params
            assert info.params["ip6tnl_flags"] == 0

    run(main())


# --- two hosts, the reconciler -------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        "vxlan",
        "host-gw",
        pytest.param(
            "wireguard",
            marks=pytest.mark.skipif(
                shutil.which("wireguard-go") is None or shutil.which("wg") is None,
                reason="needs wireguard-go and wg",
            ),
        ),
    ],
)
@pytest.mark.parametrize("ipv6_only", [False, True], ids=["ipv4+ipv6-underlay", "ipv6-underlay"])
def test_dual_stack_containers_talk_and_ipv6_entries_are_kept(
    lab: Callable[..., Lab], tmp_path: Path, backend: str, ipv6_only: bool
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts
    add_ipv6(topo, ipv6_only=ipv6_only)
    dev = {"vxlan": "meshd.1", "host-gw": "eth0", "wireguard": "meshd.wg"}[backend]

    async def main() -> None:
        async with mesh(tmp_path, topo, backend, ipv6_only) as m:
            r1 = await m.start(1)
            await m.start(2)
            st = r1.status()
            assert st["last_error"] is None and st["programmed"] == ["h2"], st
            assert st["peer_flags"] == {}
            # Kernel state on h1.
            six = routes6(h1.ns)["fd00:244:2::/64"]
            four = routes4(h1.ns)["10.244.2.0/24"]
            assert six["dev"] == four["dev"] == dev
            if backend == "vxlan":
                mac2 = m.records[2].vtep_mac
                assert six["gateway"] == "fd00:244:2::" and "onlink" in six["flags"]
                assert neighs6(h1.ns, dev) == {"fd00:244:2::": mac2}
                under = ul6(h2) if ipv6_only else h2.underlay_ip
                assert fdb(h1.ns, dev) == {(mac2, under)}
                link = ipj(h1.ns, "-d", "link", "show", dev)[0]
                info = link["linkinfo"]["info_data"]
                if ipv6_only:
                    assert (info["local6"], "local" in info) == (ul6(h1), False)
                else:
                    assert info["local"] == h1.underlay_ip
                assert link["mtu"] == (1430 if ipv6_only else 1450)
                addrs = {
                    f"{a['local']}/{a['prefixlen']}"
                    for a in ipj(h1.ns, "addr", "show", "dev", dev)[0]["addr_info"]
                    if a.get("scope") != "link"
                }
                assert addrs == {"10.244.1.0/32", "fd00:244:1::/128"}
            elif backend == "wireguard":
                assert "gateway" not in six
                async with Netlink(h1.ns) as nl:
                    info = await nl.link(dev)
                assert info is not None
                snap = await m.wgds[1].read(dev, info.kind)
                assert snap is not None
                (peer,) = peers_of(snap.state).values()
                endpoint = f"[{ul6(h2)}]:51820" if ipv6_only else f"{h2.underlay_ip}:51820"
                assert (peer.endpoint, peer.allowed_ips) == (
                    endpoint,
                    ("10.244.2.0/24", "fd00:244:2::/64"),
                )
            else:
                assert six["gateway"] == ul6(h2)
                if ipv6_only:  # RFC 5549: IPv4 via inet6
                    assert four.get("via") == {"family": "inet6", "host": ul6(h2)}, four
                else:
                    assert four["gateway"] == h2.underlay_ip
            fwd = sh("ip", "netns", "exec", h1.ns, "sysctl", "-n",
                     "net.ipv6.conf.all.forwarding").stdout.strip()  # fmt: skip
            assert fwd == "1"
            # Traffic both ways, both families.
            for a, b in ((h1, h2), (h2, h1)):
                assert await reachable(a, b, b.container_ip), f"{a.name} -> {b.name} IPv4"
                assert await reachable(a, b, container6(b)), f"{a.name} -> {b.name} IPv6"
            # IPv6 entries deleted by hand come back (the monitor, not the resync).
            sh("ip", "-n", h1.ns, "-6", "route", "del", "fd00:244:2::/64")
            await eventually(lambda: "fd00:244:2::/64" in routes6(h1.ns), 2, "route back")
            if backend == "vxlan":
                sh("ip", "-n", h1.ns, "-6", "neigh", "del", "fd00:244:2::", "dev", dev)
                await eventually(lambda: bool(neighs6(h1.ns, dev)), 2, "neighbour back")
            assert await reachable(h1, h2, container6(h2))
            # Restart: the new reconciler adopts every entry, rewrites none, removes none.
            await m.recs.pop(1).close()
            r1 = await m.start(1)
            st = r1.status()
            assert st["applied_total"] == 0 and st["last_error"] is None, st
            assert "fd00:244:2::/64" in routes6(h1.ns)
            assert await reachable(h1, h2, container6(h2))

    run(main())


def test_hostgw_ipv6_subnet_over_an_ipv4_only_peer_is_flagged_in_one_line(
    lab: Callable[..., Lab], tmp_path: Path
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts
    add_ipv6(topo)

    async def main() -> None:
        async with mesh(tmp_path, topo, "host-gw", False) as m:
            m.records[2] = replace(m.records[2], public_ip6=None)
            r1 = await m.start(1)
            st = r1.status()
            assert st["programmed"] == ["h2"] and st["peer_flags"] == {"h2": "partial"}
            assert "the kernel refuses an IPv6 route via an IPv4 gateway" in st["skipped"]["h2"]
            assert "10.244.2.0/24" in routes4(h1.ns) and not routes6(h1.ns)
            assert st["last_error"] is None

    run(main())


def test_ipip_over_an_ipv6_underlay_is_ip6tnl_or_one_status_line(
    lab: Callable[..., Lab], tmp_path: Path
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts
    add_ipv6(topo, ipv6_only=True)

    async def main() -> None:
        async with mesh(tmp_path, topo, "ipip", True) as m:
            try:
                r1 = await m.start(1)
            except MissingKernelFeature:  # this kernel has no ip6_tunnel: one line, no retry
                st = m.recs[1].status()
                line = st["last_error"]
                assert line.startswith("kernel has no ip6tnl support (module ip6_tunnel): ")
                assert "\n" not in line
                assert [e["error"] for e in st["errors"]] == [line]
                return
            await m.start(2)
            assert r1.status()["last_error"] is None
            assert await reachable(h1, h2, h2.container_ip)
            assert await reachable(h1, h2, container6(h2))

    run(main())
