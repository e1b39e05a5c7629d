"""ipip over an IPv6-only underlay through the reconciler, on the in-memory kernel: the external
ip6tnl device and its ``encap ip6`` routes converge, stay put pass after pass and across a
restart, and a route encapsulated towards the wrong address is replaced."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fake_netlink import FakeNetlink  # tests/unit is on sys.path (pytest prepend import mode)
from records import rec
from test_reconciler import Harness, alive, run_virtual

from meshd.dataplane.model import MAIN_TABLE, RTPROT_MESHD
from meshd.dataplane.netlink import Event, RouteEntry
from meshd.dataplane.objects import Underlay
from meshd.dataplane.reconciler import Reconciler
from meshd.gossip.record import NodeRecord

UL6 = Underlay("eth0", 2, "fd00:99::1", 64, 1500)


def v6(i: int) -> NodeRecord:
    return rec(i, "ipip", public_ip=f"fd00:99::{i}", subnet6=f"fd00:244:{i}::/64")


def harness(tmp: Path, fake: FakeNetlink) -> Harness:
    h = Harness(tmp, backend="ipip", fake=fake, network6="fd00:244::/32")
    h.local = v6(1)
    h.r = Reconciler(h.cfg, h.local, UL6, clock=h.loop.time, nl=fake)
    return h


def test_ipip_over_ipv6_converges_stays_put_and_survives_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeNetlink(("eth0", "fd00:99::1", 64, 1500))
        h = harness(tmp_path, fake)
        try:
            await h.start(alive(v6(2)))
            index = fake.index_of("meshd.ip6tnl")
            assert index is not None
            assert fake.links[index].params["ip6tnl_collect_metadata"] is True
            assert fake.our_routes(RTPROT_MESHD) == {
                "10.244.2.0/24": RouteEntry("10.244.2.0/24", "", index, False, "fd00:99::2"),
                "fd00:244:2::/64": RouteEntry("fd00:244:2::/64", "", index, False, "fd00:99::2"),
            }
            fake.writes.clear()
            # The 30 s resync re-reads everything: an unchanged route is not replaced.
            await h.at(31.0)
            assert h.runs >= 3 and fake.writes == []
            # A route pointed elsewhere by hand: replaced, and only it.
            r = fake.routes["fd00:244:2::/64"]
            fake.routes[r.entry.dst] = replace(r, entry=r.entry._replace(encap6="fd00:99::9"))
            fake.post(Event("route", True, index=index, dst=r.entry.dst, proto=r.proto,
                            table=MAIN_TABLE))  # fmt: skip
            await h.until(lambda: fake.routes["fd00:244:2::/64"].entry.encap6 == "fd00:99::2")
            assert [w.split()[:3] for w in fake.writes] == [["route", "replace", r.entry.dst]]
        finally:
            await h.close()
        fake.writes.clear()
        h = harness(tmp_path, fake)  # the daemon restarted: adopts the device and the routes
        try:
            await h.start(alive(v6(2)))
            assert fake.index_of("meshd.ip6tnl") == index
            assert fake.writes == []
        finally:
            await h.close()

    run_virtual(main)
