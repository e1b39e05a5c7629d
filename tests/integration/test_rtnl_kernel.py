"""rtnl.py against the real kernel, in a host namespace built by meshd.lab.topology.Lab.

Each kind (route, neighbour, FDB): add / replace / delete / filtered dump, the error paths
(EEXIST, ENODEV, deleting what is gone), what the kernel reports cross-checked with pyroute2's
decoder and with iproute2, a 5,000-entry batch, and lost ACKs (ENOBUFS) followed by a resync.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import AsyncIPRoute

from meshd.dataplane import netlink as netlink_mod
from meshd.dataplane import rtnl_wire as w
from meshd.dataplane.model import PeerView
from meshd.dataplane.netlink import Netlink, error_code
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.dataplane.rtnl import Rtnl
from meshd.dataplane.rtnl_wire import FdbEntry, NeighEntry, RouteEntry
from meshd.dataplane.underlay import discover_underlay
from meshd.errors import DataplaneError
from meshd.gossip.record import NodeRecord
from meshd.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
PROTO = 109


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def ipj(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", *args).stdout.strip()
    return json.loads(out) if out else []


class Host:
    """One Lab host with two vxlan devices: vx1 (ours) and vx2 (someone else's)."""

    def __init__(self, lab: Lab) -> None:
        h = lab.hosts[0]
        self.ns = h.ns
        for name, vni in (("vx1", 1), ("vx2", 2)):
            sh(
                "ip",
                "-n",
                self.ns,
                "link",
                "add",
                name,
                "type",
                "vxlan",
                "id",
                str(vni),
                "local",
                h.underlay_ip,
                "dev",
                "eth0",
                "dstport",
                str(8471 + vni),
                "nolearning",
            )
            sh("ip", "-n", self.ns, "link", "set", "dev", name, "up")
        self.idx = {ln["ifname"]: ln["ifindex"] for ln in ipj(self.ns, "link", "show")}

    def routes(self) -> dict[str, dict[str, Any]]:
        return {r["dst"]: r for r in ipj(self.ns, "route", "show", "proto", str(PROTO))}

    def neighs(self, dev: str) -> dict[str, str]:
        return {
            n["dst"]: n.get("lladdr", "")
            for n in ipj(self.ns, "neigh", "show", "dev", dev)
            if "PERMANENT" in n.get("state", [])
        }

    def fdb(self, dev: str) -> set[tuple[str, str]]:
        out = sh("bridge", "-n", self.ns, "-j", "fdb", "show", "dev", dev).stdout.strip()
        return {(e["mac"], e["dst"]) for e in (json.loads(out) if out else []) if "dst" in e}


@pytest.fixture
def host(lab: Callable[[int], Lab]) -> Iterator[Host]:
    yield Host(lab(1))


@pytest.fixture
def rt(host: Host) -> Iterator[Rtnl]:
    r = Rtnl(host.ns)
    r.open()
    try:
        yield r
    finally:
        r.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def pyroute2_dump(ns: str, kind: str, **kw: Any) -> list[Any]:
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        return [m async for m in await getattr(ipr, kind)("dump", **kw)]


def errors(fails: list[w.Failure]) -> list[str]:
    out = [str(f.error) for f in fails]
    assert all("\n" not in e for e in out)
    return out


# --- routes --------------------------------------------------------------------------------------


def test_routes_add_replace_delete_and_filtered_dump(host: Host, rt: Rtnl) -> None:
    ns, eth0, vx1 = host.ns, host.idx["eth0"], host.idx["vx1"]
    ours = [
        RouteEntry("10.244.2.0/24", "10.99.0.2", eth0, False),
        RouteEntry("10.244.3.0/24", "10.244.3.0", vx1, True),
    ]
    # Someone else's: a static route, and a proto-109 route in another table.
    sh("ip", "-n", ns, "route", "add", "10.244.9.0/24", "via", "10.99.0.9")
    sh(
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "10.244.8.0/24",
        "via",
        "10.99.0.8",
        "table",
        "100",
        "proto",
        str(PROTO),
    )

    async def main() -> None:
        assert await rt.routes_apply("add", ours, PROTO) == []
        got = host.routes()
        assert (got["10.244.2.0/24"]["gateway"], got["10.244.2.0/24"]["dev"]) == (
            "10.99.0.2",
            "eth0",
        )
        assert got["10.244.2.0/24"]["flags"] == []
        assert (
            got["10.244.3.0/24"]["gateway"],
            got["10.244.3.0/24"]["dev"],
            got["10.244.3.0/24"]["flags"],
        ) == ("10.244.3.0", "vx1", ["onlink"])
        assert sorted(await rt.dump_routes(PROTO)) == sorted(ours)
        assert rt.filtered  # the kernel did the filtering (NLM_F_DUMP_FILTERED)
        assert await rt.dump_routes(PROTO, 100) == [
            RouteEntry("10.244.8.0/24", "10.99.0.8", eth0, False)
        ]

        # Decoded here vs by pyroute2, field by field, from the same kernel.
        mine = sorted(await rt.dump(w.route_dump_request(PROTO), w.decode_route, w.RTM_NEWROUTE))
        theirs = sorted(
            w.RouteMsg(
                m["family"],
                f"{m.get('dst')}/{m['dst_len']}",
                m.get("gateway") or "",
                m.get("oif") or 0,
                m["flags"],
                m["proto"],
                m.get("table"),
                m["scope"],
                m["type"],
            )
            for m in await pyroute2_dump(ns, "route", family=2)
            if m["proto"] == PROTO and m.get("table") == 254
        )
        assert mine == theirs and len(mine) == 2

        # A socket without strict checking filters in user space: same answer.
        loose = Rtnl(ns, strict_check=False)
        loose.open()
        try:
            assert sorted(await loose.dump_routes(PROTO)) == sorted(ours)
            assert not loose.filtered
        finally:
            loose.close()

        # add again: EEXIST per request, one line each, with the errno's name.
        fails = await rt.routes_apply("add", ours, PROTO)
        assert [f.what for f in fails] == [f"route add {e.dst} via {e.gateway}" for e in ours]
        assert all(e.endswith("File exists (EEXIST)") for e in errors(fails))
        assert all(error_code(f.error) == 17 for f in fails)

        # replace: in place, idempotent.
        moved = RouteEntry("10.244.2.0/24", "10.99.0.3", eth0, False)
        assert await rt.routes_apply("replace", [moved, moved], PROTO) == []
        assert host.routes()["10.244.2.0/24"]["gateway"] == "10.99.0.3"
        assert len(await rt.dump_routes(PROTO)) == 2

        # ENODEV: no such output device (onlink: the kernel looks the device up first) ...
        (fail,) = await rt.routes_apply(
            "add", [RouteEntry("10.244.5.0/24", "10.99.0.5", 9999, True)], PROTO
        )
        assert "(ENODEV)" in str(fail.error) and error_code(fail.error) == 19
        # ... and the kernel's own reason (extended ACK) in the same line.
        (fail,) = await rt.routes_apply(
            "add", [RouteEntry("10.244.5.0/24", "10.98.0.5", eth0, False)], PROTO
        )
        assert str(fail.error) == (
            "route add 10.244.5.0/24 via 10.98.0.5: Network is "
            "unreachable (ENETUNREACH): Nexthop has invalid gateway"
        )

        # del: ours go; again is not an error; someone else's route is never deleted.
        foreign = RouteEntry("10.244.9.0/24", "", 0, False)
        assert await rt.routes_apply("del", [*ours, foreign], PROTO) == []
        assert await rt.routes_apply("del", ours, PROTO) == []
        assert host.routes() == {} and await rt.dump_routes(PROTO) == []
        assert [r["dst"] for r in ipj(ns, "route", "show", "10.244.9.0/24")] == ["10.244.9.0/24"]
        assert ipj(ns, "route", "show", "table", "100")

    run(main())


# --- neighbours ----------------------------------------------------------------------------------


def test_neighbours_replace_delete_and_filtered_dump(host: Host, rt: Rtnl) -> None:
    ns, vx1 = host.ns, host.idx["vx1"]
    ours = [
        NeighEntry("10.244.2.0", "02:00:00:00:00:02"),
        NeighEntry("10.244.3.0", "02:00:00:00:00:03"),
    ]
    # Not ours: the kernel's cache on vx1, a permanent entry on another device.
    sh(
        "ip",
        "-n",
        ns,
        "neigh",
        "add",
        "10.244.7.0",
        "lladdr",
        "02:00:00:00:00:07",
        "dev",
        "vx1",
        "nud",
        "reachable",
    )
    sh(
        "ip",
        "-n",
        ns,
        "neigh",
        "add",
        "10.244.8.0",
        "lladdr",
        "02:00:00:00:00:08",
        "dev",
        "vx2",
        "nud",
        "permanent",
    )

    async def main() -> None:
        assert await rt.neighs_apply("replace", vx1, ours) == []
        assert await rt.neighs_apply("replace", vx1, ours) == []  # idempotent
        assert host.neighs("vx1") == {e.dst: e.lladdr for e in ours}
        assert sorted(await rt.dump_neighs(vx1)) == sorted(ours)

        mine = sorted(await rt.dump(w.neigh_dump_request(vx1), w.decode_neigh, w.RTM_NEWNEIGH))
        theirs = sorted(
            w.NeighMsg(
                m["family"],
                m["ifindex"],
                m["state"],
                m["flags"],
                m.get("dst") or "",
                m.get("lladdr") or "",
            )
            for m in await pyroute2_dump(ns, "neigh", family=2)
            if m["ifindex"] == vx1
        )
        assert mine == theirs and len(mine) == 3  # the kernel's filter: vx1 only, any state
        assert {m.ifindex for m in mine} == {vx1}

        changed = NeighEntry("10.244.2.0", "02:00:00:00:00:22")
        assert await rt.neighs_apply("replace", vx1, [changed]) == []
        assert host.neighs("vx1")["10.244.2.0"] == "02:00:00:00:00:22"

        (fail,) = await rt.neighs_apply("add", vx1, [changed])
        assert str(fail.error).endswith("(EEXIST)") and fail.what.startswith("neigh add 10.244.2.0")
        (fail,) = await rt.neighs_apply("replace", 9999, [changed])
        assert "(ENODEV)" in str(fail.error)

        assert await rt.neighs_apply("del", vx1, ours) == []
        assert await rt.neighs_apply("del", vx1, ours) == []
        assert host.neighs("vx1") == {} and await rt.dump_neighs(vx1) == []
        assert host.neighs("vx2") == {"10.244.8.0": "02:00:00:00:00:08"}

    run(main())


# --- FDB -----------------------------------------------------------------------------------------


def test_fdb_replace_delete_and_filtered_dump(host: Host, rt: Rtnl) -> None:
    ns, vx1 = host.ns, host.idx["vx1"]
    ours = [FdbEntry("02:00:00:00:00:02", "10.99.0.2"), FdbEntry("02:00:00:00:00:03", "10.99.0.3")]
    sh("bridge", "-n", ns, "fdb", "add", "02:00:00:00:00:08", "dev", "vx2", "dst", "10.99.0.8")

    async def main() -> None:
        assert await rt.fdb_apply("replace", vx1, ours) == []
        assert await rt.fdb_apply("replace", vx1, ours) == []
        assert host.fdb("vx1") == set(ours)
        assert sorted(await rt.dump_fdb(vx1)) == sorted(ours)

        mine = sorted(await rt.dump(w.fdb_dump_request(vx1), w.decode_neigh, w.RTM_NEWNEIGH))
        theirs = sorted(
            w.NeighMsg(
                m["family"],
                m["ifindex"],
                m["state"],
                m["flags"],
                m.get("dst") or "",
                m.get("lladdr") or "",
            )
            for m in await pyroute2_dump(ns, "fdb")
            if m["ifindex"] == vx1
        )
        assert mine == theirs and {(m.lladdr, m.dst) for m in mine} >= set(ours)
        assert all(m.state & w.NUD_PERMANENT and m.flags & w.NTF_SELF for m in mine)
        assert {m.ifindex for m in mine} == {vx1}  # vx2's entry was filtered by the kernel

        # replace moves the MAC to another dst (one dst per unicast MAC on vxlan); deleting
        # the old pair is then a delete of something gone.
        moved = FdbEntry("02:00:00:00:00:02", "10.99.0.22")
        assert await rt.fdb_apply("replace", vx1, [moved]) == []
        assert sorted(await rt.dump_fdb(vx1)) == sorted([moved, ours[1]])
        assert await rt.fdb_apply("del", vx1, [ours[0]]) == []
        assert [e for e in await rt.dump_fdb(vx1) if e.lladdr == moved.lladdr] == [moved]

        (fail,) = await rt.fdb_apply("add", vx1, [moved])
        assert str(fail.error).endswith("(EEXIST)")
        (fail,) = await rt.fdb_apply("replace", 9999, [moved])
        assert "(ENODEV)" in str(fail.error) and error_code(fail.error) == 19

        assert await rt.fdb_apply("del", vx1, [moved, ours[1]]) == []
        assert await rt.fdb_apply("del", vx1, [moved, ours[1]]) == []
        assert host.fdb("vx1") == set() and await rt.dump_fdb(vx1) == []
        assert host.fdb("vx2") == {("02:00:00:00:00:08", "10.99.0.8")}

    run(main())


# --- scale, lost ACKs, namespaces ----------------------------------------------------------------


def test_5000_entry_batches_of_each_kind(host: Host, rt: Rtnl) -> None:
    n = 5000
    vx1 = host.idx["vx1"]
    routes = [
        RouteEntry(f"10.{100 + (i >> 8)}.{i & 255}.0/24", f"172.16.{i >> 8}.{i & 255}", vx1, True)
        for i in range(n)
    ]
    neighs = [
        NeighEntry(f"172.16.{i >> 8}.{i & 255}", f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}")
        for i in range(n)
    ]
    fdb = [FdbEntry(e.lladdr, f"10.99.{1 + (i >> 8)}.{i & 255}") for i, e in enumerate(neighs)]

    async def main() -> dict[str, float]:
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        assert await rt.neighs_apply("replace", vx1, neighs) == []
        assert await rt.fdb_apply("replace", vx1, fdb) == []
        assert await rt.routes_apply("add", routes, PROTO) == []
        t["add"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert sorted(await rt.dump_routes(PROTO)) == sorted(routes)
        assert sorted(await rt.dump_neighs(vx1)) == sorted(neighs)
        assert sorted(await rt.dump_fdb(vx1)) == sorted(fdb)
        t["dump"] = time.perf_counter() - t0
        assert len(host.routes()) == n and len(host.neighs("vx1")) == n
        assert len(host.fdb("vx1")) == n
        t0 = time.perf_counter()
        assert await rt.routes_apply("del", routes, PROTO) == []
        assert await rt.fdb_apply("del", vx1, fdb) == []
        assert await rt.neighs_apply("del", vx1, neighs) == []
        t["del"] = time.perf_counter() - t0
        assert not host.routes() and not host.neighs("vx1") and not host.fdb("vx1")
        return t

    t = run(main())
    print(" ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()), f"for 3 x {n}")


def test_lost_acks_are_reported_and_a_resync_converges(host: Host) -> None:
    vx1 = host.idx["vx1"]
    want = [
        RouteEntry(f"10.{100 + (i >> 8)}.{i & 255}.0/24", "172.16.0.1", vx1, True)
        for i in range(2000)
    ]

    async def main() -> None:
        # A receive buffer far too small for the window: the kernel drops most ACKs.
        tiny = Rtnl(host.ns, rcvbuf=4096, window=512)
        tiny.open()
        try:
            fails = await tiny.routes_apply("add", want, PROTO)
        finally:
            tiny.close()
        assert fails and tiny.lost_acks == len(fails) and tiny.window < 512
        assert all("(ENOBUFS)" in e and "re-reads" in e for e in errors(fails))
        # The resync: read back, send what is missing.
        r = Rtnl(host.ns)
        r.open()
        try:
            have = set(await r.dump_routes(PROTO))
            assert len(have) >= 2000 - len(fails)  # requests whose ACK was lost did happen
            assert await r.routes_apply("add", [e for e in want if e not in have], PROTO) == []
            assert sorted(await r.dump_routes(PROTO)) == sorted(want)
        finally:
            r.close()

    run(main())


def test_socket_opens_inside_the_namespace_and_refuses_a_missing_one(host: Host) -> None:
    async def main() -> None:
        async with Netlink(host.ns) as nl:
            e = RouteEntry("10.244.2.0/24", "10.99.0.2", host.idx["eth0"], False)
            assert await nl.routes_apply("add", [e], PROTO) == []
            assert await nl.dump_routes(PROTO) == [e]
            (fail,) = await nl.routes_apply("add", [e], PROTO)
            assert error_code(fail.error) == 17
        assert "10.244.2.0/24" in host.routes()

    run(main())
    r = Rtnl("mdt-no-such-netns")
    with pytest.raises(DataplaneError) as ei:
        r.open()
    assert str(ei.value) == "network namespace mdt-no-such-netns does not exist"
    assert not os.path.exists("/run/netns/mdt-no-such-netns")


def test_reconciler_resyncs_after_lost_acks(
    lab: Callable[[int], Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler's netlink socket loses most ACKs (a tiny receive buffer): the pass reports
    ENOBUFS, and the next pass -- the retry -- reads the kernel back and finds it converged."""
    h = lab(1).hosts[0]
    monkeypatch.setattr(netlink_mod, "Rtnl", functools.partial(Rtnl, rcvbuf=4096, window=64))

    def rec(j: int) -> NodeRecord:
        return NodeRecord(
            name=f"h{j}",
            node_id=bytes([j]) * 16,
            public_ip=f"10.99.0.{j}",
            port=7950,
            subnet=f"10.244.{j}.0/24",
            backend="host-gw",
            vtep_mac=None,
            mtu=1500,
        )

    async def main() -> None:
        ul = await discover_underlay("eth0", None, netns=h.ns)
        cfg = ReconcilerConfig(
            network="10.244.0.0/16", backend="host-gw", subnet_env=tmp_path / "subnet.env"
        )
        r = Reconciler(cfg, rec(1), ul, netns=h.ns)
        now = time.monotonic()
        r.set_peers([PeerView(rec(j), "alive", now) for j in range(2, 202)], True, now)
        try:
            await r.start()
            first = r.status()
            assert "(ENOBUFS)" in first["last_error"] and "re-reads" in first["last_error"]
            assert len(ipj(h.ns, "route", "show", "proto", str(PROTO))) == 200
            await r.reconcile_now("retry")
            st = r.status()
            assert st["last_error"] is None and st["applied_last"] == {}, st
        finally:
            await r.close()

    run(main())
