"""The data plane against the real kernel, in network namespaces (no netlink mocks).

Each test builds "hosts" with meshd.lab.topology.Lab (namespaces on an underlay bridge, each with
a container namespace behind bridge ``br``; see conftest.py), runs one Reconciler per host from
this process through ``netns=``, feeds static PeerViews, and checks the kernel with iproute2 and
real traffic.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshd.dataplane import wireguard as wg
from meshd.dataplane.model import RTPROT_MESHD, PeerView
from meshd.dataplane.netlink import Netlink
from meshd.dataplane.netns import netns_path, run_in_netns
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.dataplane.underlay import discover_underlay
from meshd.dataplane.wgdevice import WgTool, WireGuardDevices
from meshd.errors import DataplaneError, MissingKernelFeature
from meshd.gossip.record import NodeRecord, vtep_mac_for
from meshd.lab import Host, Lab, uml
from meshd.lab.runner import kernel_supports

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
T = TypeVar("T")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


# --- helpers -------------------------------------------------------------------------------------


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that joined netns ``ns`` (its sockets live there)."""
    return run_in_netns(netns_path(ns), fn)


def tcp_transfer(
    src_ns: str, dst_ns: str, dst_ip: str, size: int = 64 * 1024, timeout: float = 3.0
) -> bool:
    """Send ``size`` bytes from src_ns to dst_ip (in dst_ns); True if the SHA-256 comes back."""
    srv = in_ns(dst_ns, lambda: socket.create_server(("0.0.0.0", 0)))
    srv.settimeout(timeout)
    port = srv.getsockname()[1]
    data = os.urandom(size)
    got: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(timeout)
                h = hashlib.sha256()
                while chunk := conn.recv(65536):
                    h.update(chunk)
                conn.sendall(h.digest())
                got.append(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    cli = in_ns(src_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    ok = False
    try:
        cli.settimeout(timeout)
        cli.connect((dst_ip, port))
        cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        ok = cli.recv(64) == hashlib.sha256(data).digest()
    except OSError:
        ok = False
    finally:
        cli.close()
        t.join()
        srv.close()
    return ok


async def reachable(src: str, dst_ns: str, ip: str, size: int = 64 * 1024) -> bool:
    return await asyncio.to_thread(tcp_transfer, src, dst_ns, ip, size)


async def eventually(
    cond: Callable[[], Awaitable[bool] | bool], timeout: float = 3.0, what: str = "condition"
) -> float:
    """Poll ``cond`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        r = cond()
        if not isinstance(r, bool):
            r = await r
        if r:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not true within {timeout}s")
        await asyncio.sleep(0.05)


def ipj(ns: str, *args: str) -> list[dict[str, Any]]:
    """``ip -j`` output; empty when the object (e.g. a device) does not exist."""
    p = sh("ip", "-n", ns, "-j", *args, check=False)
    out = p.stdout.strip()
    return json.loads(out) if p.returncode == 0 and out else []


def our_routes(ns: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ipj(ns, "route", "show", "proto", str(RTPROT_MESHD))}


def neighs(ns: str, dev: str) -> dict[str, str]:
    return {
        n["dst"]: n.get("lladdr", "")
        for n in ipj(ns, "neigh", "show", "dev", dev)
        if "PERMANENT" in n.get("state", [])
    }


def fdb(ns: str, dev: str) -> set[tuple[str, str]]:
    out = sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", dev, check=False).stdout.strip()
    return {(e["mac"], e["dst"]) for e in (json.loads(out) if out else []) if "dst" in e}


WG_KEYS = {i: bytes([0x40 + i]) * 32 for i in range(1, 10)}  # private keys of h1..h9


def record(h: Host, backend: str, **kw: Any) -> NodeRecord:
    node_id = bytes([h.index]) * 16
    if backend == "wireguard":
        kw.setdefault("wg_key", wg.public_key(WG_KEYS[h.index]))
    return NodeRecord(
        name=f"h{h.index}",
        node_id=node_id,
        public_ip=h.underlay_ip,
        port=7950,
        subnet=h.subnet,
        backend=backend,
        vtep_mac=vtep_mac_for(node_id) if backend == "vxlan" else None,
        mtu=1500,
        **kw,
    )


def config(tmp: Path, h: Host, backend: str, **kw: Any) -> ReconcilerConfig:
    return ReconcilerConfig(
        network="10.244.0.0/16",
        backend=backend,
        bridge="br",
        subnet_env=tmp / f"h{h.index}.env",
        resync_interval=30.0,
        **kw,
    )


def view(rec: NodeRecord, state: str = "alive", since: float | None = None) -> PeerView:
    return PeerView(rec, state, time.monotonic() if since is None else since)


class Mesh:
    """One running Reconciler per host, all fed the same table."""

    def __init__(self, tmp: Path, topo: Lab, backend: str, **cfg: Any) -> None:
        self.tmp, self.topo, self.backend, self.cfg = tmp, topo, backend, cfg
        self.records = {h.index: record(h, backend) for h in topo.hosts}
        self.recs: dict[int, Reconciler] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    async def start(
        self, i: int, views: list[PeerView] | None = None, synced: bool = True, run: bool = True
    ) -> Reconciler:
        h = self.topo.hosts[i - 1]
        ul = await discover_underlay("eth0", None, netns=h.ns)
        wgd = (
            WireGuardDevices(WG_KEYS[i], netns=h.ns, private_run=True)
            if self.backend == "wireguard"
            else None
        )
        rec = Reconciler(
            config(self.tmp, h, self.backend, **self.cfg),
            self.records[i],
            ul,
            netns=h.ns,
            wg=wgd,
        )
        if views is None:
            views = [view(r) for j, r in self.records.items() if j != i]
        rec.set_peers(views, synced=synced, now=time.monotonic())
        await rec.start()
        self.recs[i] = rec
        if run:
            self.tasks[i] = asyncio.create_task(rec.run())
        return rec

    async def close(self) -> None:
        for rec in self.recs.values():
            await rec.close()
        self.recs.clear()
        self.tasks.clear()


@contextlib.asynccontextmanager
async def mesh(tmp: Path, topo: Lab, backend: str, **cfg: Any) -> AsyncIterator[Mesh]:
    m = Mesh(tmp, topo, backend, **cfg)
    try:
        yield m
    finally:
        await m.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# --- vxlan ---------------------------------------------------------------------------------------


def test_vxlan_converges_containers_talk_and_hand_deletions_are_repaired(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts

    # Lab's bridge already holds the gateway address; take it away on h1 so meshd must add it.
    sh("ip", "-n", h1.ns, "addr", "flush", "dev", "br")

    async def main() -> None:
        async with mesh(tmp_path, topo, "vxlan") as m:
            r1 = await m.start(1)
            await m.start(2)
            # Kernel state on h1, exactly the flannel recipe.
            mac2 = m.records[2].vtep_mac
            assert mac2
            link = ipj(h1.ns, "-d", "link", "show", "meshd.1")[0]
            info = link["linkinfo"]["info_data"]
            assert (info["id"], info["port"], info["learning"], info["local"], info["link"]) == (
                1,
                8472,
                False,
                h1.underlay_ip,
                "eth0",
            )
            assert link["mtu"] == 1450 and link["address"] == m.records[1].vtep_mac
            assert "UP" in link["flags"]
            addrs = [
                a["local"] + "/" + str(a["prefixlen"])
                for a in ipj(h1.ns, "addr", "show", "dev", "meshd.1")[0]["addr_info"]
                if a["family"] == "inet"
            ]
            assert addrs == ["10.244.1.0/32"]
            route = our_routes(h1.ns)["10.244.2.0/24"]
            assert (route["gateway"], route["dev"], route["flags"]) == (
                "10.244.2.0",
                "meshd.1",
                ["onlink"],
            )
            assert neighs(h1.ns, "meshd.1") == {"10.244.2.0": mac2}
            assert fdb(h1.ns, "meshd.1") == {(mac2, h2.underlay_ip)}
            br = ipj(h1.ns, "addr", "show", "dev", "br")[0]["addr_info"]
            assert any(a["local"] == "10.244.1.1" and a["prefixlen"] == 24 for a in br)
            assert (
                sh(
                    "ip", "netns", "exec", h1.ns, "cat", "/proc/sys/net/ipv4/ip_forward"
                ).stdout.strip()
                == "1"
            )
            assert (tmp_path / "h1.env").read_text() == (
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            )
            st = r1.status()
            assert st["last_error"] is None and st["programmed"] == ["h2"], st
            json.dumps(st)

            # Traffic both ways; 1 MiB with a 1500-MTU container over a 1450 VTEP (PMTUD).
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)
            assert await reachable(h2.container_ns, h1.container_ns, h1.container_ip, size=1 << 20)

            # Converged and quiet: the echo of our own changes does not keep the loop busy.
            await asyncio.sleep(0.5)
            runs, applied = r1.status()["runs"], r1.status()["applied_total"]
            await asyncio.sleep(1.0)
            assert (r1.status()["runs"], r1.status()["applied_total"]) == (runs, applied)

            # Hand deletions come back within ~1 s (monitor, not the 30 s resync).
            sh("ip", "-n", h1.ns, "route", "del", "10.244.2.0/24")
            t = await eventually(lambda: "10.244.2.0/24" in our_routes(h1.ns), 2, "route back")
            sh("ip", "-n", h1.ns, "neigh", "del", "10.244.2.0", "dev", "meshd.1")
            t = max(t, await eventually(lambda: bool(neighs(h1.ns, "meshd.1")), 2, "neigh back"))
            sh("bridge", "-n", h1.ns, "fdb", "del", mac2, "dev", "meshd.1", "dst", h2.underlay_ip)
            t = max(t, await eventually(lambda: bool(fdb(h1.ns, "meshd.1")), 2, "fdb back"))
            sh(
                "ip",
                "-n",
                h1.ns,
                "link",
                "set",
                "dev",
                "meshd.1",
                "mtu",
                "1400",
                "address",
                "02:00:00:00:00:99",
            )

            def device_right() -> bool:
                ln = ipj(h1.ns, "link", "show", "meshd.1")
                return bool(ln) and (ln[0]["mtu"], ln[0]["address"]) == (
                    1450,
                    m.records[1].vtep_mac,
                )

            t = max(t, await eventually(device_right, 2, "mtu and mac back"))
            sh("ip", "-n", h1.ns, "link", "del", "meshd.1")

            def whole() -> bool:
                return (
                    bool(neighs(h1.ns, "meshd.1"))
                    and bool(fdb(h1.ns, "meshd.1"))
                    and "10.244.2.0/24" in our_routes(h1.ns)
                )

            t = max(t, await eventually(whole, 2, "device and entries back"))
            print(f"slowest repair {t:.2f}s")
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)

    run(main())


def test_vxlan_restart_adopts_without_changes_and_waits_for_sync(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(3)
    h1, h2, _ = topo.hosts

    async def main() -> None:
        async with mesh(tmp_path, topo, "vxlan") as m:
            await m.start(1)
            await m.start(2)
            await m.start(3)
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24", "10.244.3.0/24"}
            await m.close()
            # A restarted daemon that only knows h2 so far (h3 left while it was down).
            before = (our_routes(h1.ns), neighs(h1.ns, "meshd.1"), fdb(h1.ns, "meshd.1"))
            rec = await m.start(1, [view(m.records[2])], synced=False, run=False)
            plan = await rec.reconcile_now()
            st = rec.status()
            assert st["applied_total"] == 0, st
            assert plan.empty and plan.removals_held == 3, plan
            assert (our_routes(h1.ns), neighs(h1.ns, "meshd.1"), fdb(h1.ns, "meshd.1")) == before
            # The first full state exchange: now h3's entries go.
            rec.set_peers([view(m.records[2])], synced=True, now=time.monotonic())
            await rec.reconcile_now()
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24"}
            assert set(neighs(h1.ns, "meshd.1")) == {"10.244.2.0"}
            assert fdb(h1.ns, "meshd.1") == {(m.records[2].vtep_mac, h2.underlay_ip)}
            assert rec.status()["applied"] == {"route_del": 1, "neigh_del": 1, "fdb_del": 1}
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)

    run(main())


def test_left_removes_at_once_dead_is_reaped_after_reap_after(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(3)
    h1 = topo.hosts[0]
    reap_after = 3.0

    async def main() -> None:
        m = Mesh(tmp_path, topo, "vxlan")
        cfg = config(tmp_path, h1, "vxlan", reap_after=reap_after)
        ul = await discover_underlay(None, None, netns=h1.ns)  # via the default route
        assert (ul.ifname, ul.ip, ul.prefixlen, ul.mtu) == ("eth0", h1.underlay_ip, 24, 1500)
        rec = Reconciler(cfg, m.records[1], ul, netns=h1.ns)
        r2, r3 = m.records[2], m.records[3]
        rec.set_peers([view(r2), view(r3)], synced=True, now=time.monotonic())
        await rec.start()
        task = asyncio.create_task(rec.run())
        try:
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24", "10.244.3.0/24"}
            now = time.monotonic()
            rec.set_peers([view(r2, "left", now), view(r3, "dead", now)], synced=True, now=now)
            # At once: the debounce and one pass (2 s leaves room for slow CI and UML guests).
            await eventually(lambda: set(our_routes(h1.ns)) == {"10.244.3.0/24"}, 2, "left gone")
            assert set(neighs(h1.ns, "meshd.1")) == {"10.244.3.0"}
            assert rec.status()["next_reap"] == pytest.approx(now + reap_after)
            # Dead is kept until reap_after, then removed by the loop's own timer.
            await asyncio.sleep(max(0.0, now + reap_after - 0.5 - time.monotonic()))
            assert set(our_routes(h1.ns)) == {"10.244.3.0/24"}
            waited = await eventually(lambda: not our_routes(h1.ns), 3, "dead reaped")
            assert waited < 2.0
            assert not neighs(h1.ns, "meshd.1") and not fdb(h1.ns, "meshd.1")
            assert rec.peer_flags() == {"h3": "reaped"}
            # A dead peer that comes back alive churns nothing while it is kept.
            now = time.monotonic()
            rec.set_peers([view(r3, "dead", now)], synced=True, now=now)
            await rec.reconcile_now()
            n = rec.status()["applied_total"]
            rec.set_peers([view(r3, "alive", now)], synced=True, now=time.monotonic())
            await rec.reconcile_now()
            assert rec.status()["applied_total"] == n
        finally:
            await rec.close()
            assert task.done()

    run(main())


def test_underlay_deleted_and_recreated_brings_the_vtep_back(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts

    async def main() -> None:
        async with mesh(tmp_path, topo, "vxlan") as m:
            r1 = await m.start(1)
            await m.start(2)
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)
            sh("ip", "-n", topo.ul_ns, "link", "del", "h1")  # takes eth0 and, with it, meshd.1
            await eventually(lambda: not ipj(h1.ns, "link", "show", "meshd.1"), 2, "vtep gone")
            # A pass racing the kernel's teardown may first fail on the vanishing VTEP (ENODEV);
            # its retry finds the underlay gone and says so.
            await eventually(
                lambda: "eth0" in (r1.status()["last_error"] or ""), 3, "error names the underlay"
            )
            sh(
                "ip",
                "-n",
                topo.ul_ns,
                "link",
                "add",
                "h1",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                h1.ns,
            )
            sh("ip", "-n", topo.ul_ns, "link", "set", "dev", "h1", "master", "ulbr", "up")
            sh("ip", "-n", h1.ns, "addr", "add", f"{h1.underlay_ip}/24", "dev", "eth0")
            sh("ip", "-n", h1.ns, "link", "set", "dev", "eth0", "up")
            await eventually(lambda: "10.244.2.0/24" in our_routes(h1.ns), 3, "vtep back")
            await eventually(
                lambda: reachable(h1.container_ns, h2.container_ns, h2.container_ip), 5, "traffic"
            )

    run(main())


# --- host-gw and ipip ----------------------------------------------------------------------------


def test_hostgw_converges_and_skips_peers_not_on_link(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts

    async def main() -> None:
        async with mesh(tmp_path, topo, "host-gw") as m:
            far = replace(
                m.records[2],
                name="far",
                node_id=b"\x09" * 16,
                public_ip="192.0.2.9",
                subnet="10.244.9.0/24",
            )
            r1 = await m.start(1, [view(m.records[2]), view(far)])
            await m.start(2)
            route = our_routes(h1.ns)
            assert set(route) == {"10.244.2.0/24"}
            assert (route["10.244.2.0/24"]["gateway"], route["10.244.2.0/24"]["dev"]) == (
                h2.underlay_ip,
                "eth0",
            )
            assert r1.peer_flags() == {"far": "not-on-link"}
            assert "not on-link" in r1.status()["skipped"]["far"]
            assert not [ln for ln in ipj(h1.ns, "link") if ln["ifname"].startswith("meshd")]
            assert "FLANNEL_MTU=1500" in (tmp_path / "h1.env").read_text()
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)
            assert await reachable(h2.container_ns, h1.container_ns, h1.container_ip, size=1 << 20)
            sh("ip", "-n", h1.ns, "route", "del", "10.244.2.0/24")
            await eventually(lambda: "10.244.2.0/24" in our_routes(h1.ns), 2, "route back")

    run(main())


def test_foreign_routes_are_never_touched(lab: Callable[[int], Lab], tmp_path: Path) -> None:
    topo = lab(3)
    h1 = topo.hosts[0]

    async def main() -> None:
        # Someone else's routes: one for h3's subnet, one unrelated, in the same main table.
        sh("ip", "-n", h1.ns, "route", "add", "10.244.3.0/24", "via", "10.99.0.200")
        sh("ip", "-n", h1.ns, "route", "add", "198.51.100.0/24", "via", "10.99.0.201")
        before = {r["dst"]: r for r in ipj(h1.ns, "route") if r.get("protocol") != "kernel"}
        async with mesh(tmp_path, topo, "host-gw") as m:
            r1 = await m.start(1, [view(m.records[2]), view(m.records[3])], run=False)
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24"}
            st = r1.status()
            assert st["last_error"] is None  # refused by the policy: nothing even attempted
            assert st["peer_flags"] == {"h3": "refused"}
            assert "overlaps route 10.244.3.0/24, not meshd's" in st["skipped"]["h3"]
            r1.set_peers([], synced=True, now=time.monotonic())
            await r1.reconcile_now()
            assert our_routes(h1.ns) == {}
            after = {r["dst"]: r for r in ipj(h1.ns, "route") if r.get("protocol") != "kernel"}
            assert after == before

    run(main())


def test_foreign_routes_refuse_overlapping_peers_as_they_come_and_go(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    """The policy's node-local rule on the real main table, followed through the monitor: a
    route meshd does not own that overlaps a peer's subnet withdraws that peer's entries and
    leaves the route alone; once it is gone the peer is programmed again. The default route
    (conftest.py adds one), a route covering the whole cluster network, and routes in other
    tables refuse nobody."""
    topo = lab(3)
    h1 = topo.hosts[0]

    async def main() -> None:
        sh("ip", "-n", h1.ns, "route", "add", "blackhole", "10.244.0.0/16", "proto", "static")
        sh("ip", "-n", h1.ns, "route", "add", "10.244.3.0/24", "via", "10.99.0.200", "table", "100")
        async with mesh(tmp_path, topo, "vxlan") as m:
            r1 = await m.start(1)
            await m.start(2)
            await m.start(3)
            h2, h3 = topo.hosts[1], topo.hosts[2]
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24", "10.244.3.0/24"}
            assert r1.peer_flags() == {}
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)
            # What the reconciler reads is the main table as iproute2 lists it, every protocol.
            nl = Netlink(h1.ns)
            await nl.open()
            try:
                owners = await nl.dump_route_owners()
            finally:
                await nl.close()
            listed = {
                "0.0.0.0/0"
                if r["dst"] == "default"
                else r["dst"] + ("" if "/" in r["dst"] else "/32")
                for r in ipj(h1.ns, "route", "show", "table", "main")
            }
            assert {d for d, _ in owners} == listed
            assert {d for d, p in owners if p == RTPROT_MESHD} == set(our_routes(h1.ns))
            assert ("10.244.0.0/16", 4) in owners  # the blackhole, proto static (4)

            # A more specific route inside h2's subnet, another protocol's (static): h2 is
            # refused and its route, neighbour and FDB entry go; the foreign route stays.
            sh("ip", "-n", h1.ns, "route", "add", "10.244.2.128/25", "via", "10.99.0.200",
               "proto", "static")  # fmt: skip
            await eventually(lambda: "10.244.2.0/24" not in our_routes(h1.ns), 3, "h2 withdrawn")
            assert r1.peer_flags() == {"h2": "refused"}
            assert "overlaps route 10.244.2.128/25" in r1.status()["skipped"]["h2"]
            fdb = sh("bridge", "-n", h1.ns, "fdb", "show", "dev", "meshd.1").stdout
            assert h2.underlay_ip not in fdb and h3.underlay_ip in fdb
            static = ipj(h1.ns, "route", "show", "10.244.2.128/25")
            assert static and static[0]["gateway"] == "10.99.0.200"
            assert await reachable(h1.container_ns, h3.container_ns, h3.container_ip)

            # Gone: h2 is programmed again at the monitor's event (no resync within 30 s).
            sh("ip", "-n", h1.ns, "route", "del", "10.244.2.128/25")
            await eventually(lambda: "10.244.2.0/24" in our_routes(h1.ns), 3, "h2 back")
            assert r1.peer_flags() == {}
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)

    run(main())


def test_ipip_without_the_module_is_one_clear_line(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(1)
    h1 = topo.hosts[0]
    if os.path.isdir("/sys/module/ipip"):
        pytest.skip("this kernel has ipip; the end-to-end ipip test covers it")

    async def main() -> None:
        ul = await discover_underlay("eth0", None, netns=h1.ns)
        rec = Reconciler(config(tmp_path, h1, "ipip"), record(h1, "ipip"), ul, netns=h1.ns)
        try:
            with pytest.raises(MissingKernelFeature) as ei:
                await rec.start()
            msg = str(ei.value)
            assert msg.startswith("kernel has no ipip support (module ipip)"), msg
            assert "\n" not in msg
            st = rec.status()
            assert st["last_error"] == msg and st["device"] == "meshd.ipip"
        finally:
            await rec.close()

    run(main())


def test_ipip_converges_where_the_kernel_has_it(
    lab: Callable[[int], Lab], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On a kernel without ipip (this host) the test reruns itself in a user-mode-linux guest
    kernel that has it, on the same files and venv."""
    if not kernel_supports("ipip"):
        reason = uml.available()
        assert reason is None, f"no user-mode-linux guest: {reason}"
        res = uml.run_pytest(request.node.nodeid, Path(__file__).resolve().parents[2])
        assert res.rc == 0 and " passed" in res.output, res.output[-4000:]
        return
    topo = lab(2)
    h1, h2 = topo.hosts

    async def main() -> None:
        async with mesh(tmp_path, topo, "ipip") as m:
            r1 = await m.start(1)
            await m.start(2)
            link = ipj(h1.ns, "-d", "link", "show", "meshd.ipip")[0]
            info = link["linkinfo"]["info_data"]
            assert (link["mtu"], info["local"], info.get("remote", "any")) == (
                1480,
                h1.underlay_ip,
                "any",
            )
            route = our_routes(h1.ns)["10.244.2.0/24"]
            assert (route["gateway"], route["dev"], route["flags"]) == (
                h2.underlay_ip,
                "meshd.ipip",
                ["onlink"],
            )
            assert r1.status()["last_error"] is None
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)
            assert await reachable(h2.container_ns, h1.container_ns, h1.container_ip, size=1 << 20)
            await m.close()
            r = await m.start(1, run=False)
            await r.reconcile_now()
            assert r.status()["applied_total"] == 0, r.status()
            sh("ip", "-n", h1.ns, "link", "del", "meshd.ipip")
            await r.reconcile_now()
            assert "10.244.2.0/24" in our_routes(h1.ns)

    run(main())


def test_errors_are_one_line(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(DataplaneError) as ei:
            await discover_underlay("mdt-nonexistent0", None, netns="mdt-no-such-netns")
        assert "mdt-no-such-netns" in str(ei.value) and "\n" not in str(ei.value)
        assert not os.path.exists("/run/netns/mdt-no-such-netns")

    run(main())


# --- wireguard -----------------------------------------------------------------------------------


def wg_peers(ns: str) -> dict[str, wg.PeerState]:
    """The meshd.wg device's peers in ``ns`` (by base64 key), read over its UAPI socket."""
    dev = wg.find_device("meshd.wg", ns)
    assert dev is not None, f"no wireguard-go meshd.wg in {ns}"
    with socket.socket(socket.AF_UNIX) as s:  # blocking: called from inside the event loop
        s.connect(str(dev.sock_path))
        s.sendall(b"get=1\n\n")
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = s.recv(65536)
            assert chunk, "UAPI closed mid-answer"
            buf += chunk
    state = wg.parse_get(buf.decode())
    return {wg.key_to_base64(k): p for k, p in state.peers.items()}


@contextlib.contextmanager
def wireguard_go_reaped(topo: Lab) -> Any:
    """wireguard-go outlives the reconciler by design: stop it with the test."""
    try:
        yield
    finally:
        for h in topo.hosts:
            dev = wg.find_device("meshd.wg", h.ns)
            if dev is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(dev.pid, 15)


@pytest.mark.skipif(not shutil.which("wireguard-go"), reason="needs wireguard-go")
def test_wireguard_converges_adopts_on_restart_and_repairs_drift(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(2)
    h1, h2 = topo.hosts
    pub = {i: wg.key_to_base64(wg.public_key(k)) for i, k in WG_KEYS.items()}

    async def main() -> None:
        async with mesh(tmp_path, topo, "wireguard") as m:
            r1 = await m.start(1)
            await m.start(2)
            # This kernel has no wireguard module: wireguard-go runs the device, status says so.
            w = r1.status()["wireguard"]
            assert w["implementation"] in ("wireguard-go", "kernel"), w
            if w["implementation"] == "wireguard-go":
                assert "no wireguard module" in w["why"] and w["pid"], w
            assert w["public_key"] == pub[1] and w["listen_port"] == 51820, w
            link = ipj(h1.ns, "link", "show", "meshd.wg")[0]
            assert link["mtu"] == 1440 and "UP" in link["flags"], link
            addrs = [
                f"{a['local']}/{a['prefixlen']}"
                for a in ipj(h1.ns, "addr", "show", "dev", "meshd.wg")[0]["addr_info"]
                if a["family"] == "inet"
            ]
            assert addrs == ["10.244.1.0/32"]
            route = our_routes(h1.ns)["10.244.2.0/24"]
            assert route["dev"] == "meshd.wg" and "gateway" not in route, route
            assert route.get("scope") == "link", route
            peers = wg_peers(h1.ns)
            assert set(peers) == {pub[2]}
            assert peers[pub[2]].endpoint == f"{h2.underlay_ip}:51820"
            assert peers[pub[2]].allowed_ips == {"10.244.2.0/24"}
            assert (tmp_path / "h1.env").read_text().count("FLANNEL_MTU=1440") == 1

            # Containers talk through the tunnel, 1 MiB with a 1500-MTU container (PMTUD).
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)
            assert await reachable(h2.container_ns, h1.container_ns, h1.container_ip, 1 << 20)
            await eventually(lambda: r1.handshakes().get("h2") is not None, 8, "handshake seen")

            # Converged and quiet.
            await asyncio.sleep(0.5)
            runs, applied = r1.status()["runs"], r1.status()["applied_total"]
            await asyncio.sleep(1.0)
            assert (r1.status()["runs"], r1.status()["applied_total"]) == (runs, applied)

            # Drift: a peer removed by hand (no netlink event: the device watch sees it) and a
            # route deleted by hand both come back.
            dev = wg.find_device("meshd.wg", h1.ns)
            assert dev is not None
            await wg.set_device(
                dev.sock_path,
                wg.SetRequest(peers=(wg.PeerChange(wg.key_from_base64(pub[2]), remove=True),)),
            )
            assert pub[2] not in wg_peers(h1.ns)
            await eventually(lambda: pub[2] in wg_peers(h1.ns), 12, "peer back")
            sh("ip", "-n", h1.ns, "route", "del", "10.244.2.0/24")
            await eventually(lambda: "10.244.2.0/24" in our_routes(h1.ns), 2, "route back")
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)

            # Restart: the running wireguard-go is adopted, nothing is rewritten.
            pid = dev.pid
            await m.close()
            rec = await m.start(1, run=False)
            assert rec.status()["applied_total"] == 0, rec.status()
            assert (await rec.reconcile_now()).empty
            assert rec.status()["wireguard"]["pid"] == pid
            assert "adopted" in rec.status()["wireguard"]["why"]
            await m.close()

            # wireguard-go killed: the device goes with it and the next pass starts another.
            os.kill(pid, 15)
            await eventually(lambda: not ipj(h1.ns, "link", "show", "meshd.wg"), 5, "dev gone")
            rec = await m.start(1, run=False)
            new = wg.find_device("meshd.wg", h1.ns)
            assert new is not None and new.pid != pid
            assert set(wg_peers(h1.ns)) == {pub[2]}
            assert await reachable(h1.container_ns, h2.container_ns, h2.container_ip)

    with wireguard_go_reaped(topo):
        run(main())


@pytest.mark.skipif(not shutil.which("wireguard-go"), reason="needs wireguard-go")
def test_wireguard_left_peer_goes_and_conflicting_keys_are_refused(
    lab: Callable[[int], Lab], tmp_path: Path
) -> None:
    topo = lab(3)
    h1 = topo.hosts[0]

    async def main() -> None:
        async with mesh(tmp_path, topo, "wireguard") as m:
            r2, r3 = m.records[2], m.records[3]
            rec = await m.start(1, run=False)
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24", "10.244.3.0/24"}
            assert len(wg_peers(h1.ns)) == 2
            # h3 announces h2's key: refused, and h2 keeps its peer.
            now = time.monotonic()
            r3_dup = replace(r3, wg_key=r2.wg_key, incarnation=r3.incarnation + 1)
            rec.set_peers([view(r2), view(r3_dup)], synced=True, now=now)
            await rec.reconcile_now()
            assert rec.peer_flags() == {"h3": "refused"}
            assert "also h2's" in rec.status()["skipped"]["h3"]
            assert set(our_routes(h1.ns)) == {"10.244.2.0/24"}
            assert set(wg_peers(h1.ns)) == {wg.key_to_base64(r2.wg_key)}
            # h2 leaves: its peer and route go at once; none announced: nothing programmed.
            rec.set_peers([view(r2, "left", now)], synced=True, now=now)
            await rec.reconcile_now()
            assert not our_routes(h1.ns) and not wg_peers(h1.ns)
            assert rec.status()["applied"]["wgpeer_del"] == 2

    with wireguard_go_reaped(topo):
        run(main())


@pytest.mark.skipif(
    not (shutil.which("wireguard-go") and shutil.which("wg")), reason="needs wireguard-go, wg"
)
def test_wg_tool_reads_and_sets_what_the_uapi_does(lab: Callable[[int], Lab]) -> None:
    """The kernel path's client (wg(8)) against a wireguard-go device: the same state as the
    UAPI reads, and a set through it lands (this kernel has no wireguard module)."""
    topo = lab(1)
    h1 = topo.hosts[0]
    name = f"mdwg{os.getpid() % 10000}"
    dev = wg.start_device(name, h1.ns)  # the test's own /run/wireguard: wg finds it there
    try:
        tool = WgTool(h1.ns)
        priv, peer = wg.generate_private_key(), wg.public_key(wg.generate_private_key())
        req = wg.SetRequest(
            private_key=priv,
            listen_port=51999,
            peers=(
                wg.PeerChange(
                    peer,
                    endpoint="10.99.0.7:51820",
                    replace_allowed_ips=True,
                    allowed_ips=("10.244.7.0/24", "10.244.8.0/24"),
                ),
            ),
        )
        asyncio.run(tool.set(name, req))
        via_tool = asyncio.run(tool.get(name))
        via_uapi = asyncio.run(wg.get_device(dev.sock_path))
        assert via_tool.private_key == priv == via_uapi.private_key
        assert via_tool.listen_port == 51999 == via_uapi.listen_port
        assert via_tool.peers[peer].endpoint == via_uapi.peers[peer].endpoint == "10.99.0.7:51820"
        assert via_tool.peers[peer].allowed_ips == via_uapi.peers[peer].allowed_ips
        assert via_tool.peers[peer].allowed_ips == {"10.244.7.0/24", "10.244.8.0/24"}
        asyncio.run(tool.set(name, wg.SetRequest(peers=(wg.PeerChange(peer, remove=True),))))
        assert not asyncio.run(wg.get_device(dev.sock_path)).peers
        with pytest.raises(DataplaneError, match="^wg show"):
            asyncio.run(tool.get("nosuchdev0"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(dev.pid, 15)
