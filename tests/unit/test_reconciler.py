"""The reconciler's logic on an explicit clock, against an in-memory kernel (fake_netlink.py).

The event loop here runs on virtual time: whenever nothing is ready it jumps to the next timer,
so the debounce, the retry backoff, the resync interval and reap deadlines cost no wall time and
happen at exactly the instants the test names. The real-kernel behaviour is tested in
tests/integration/test_dataplane_kernel.py; this file tests *when* the reconciler acts and what
it asks the kernel for.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fake_netlink import FakeNetlink  # tests/unit is on sys.path (pytest prepend import mode)
from logparse import events
from records import UL, rec  # tests/unit is on sys.path (pytest prepend import mode)

from meshd.dataplane.apply import NetlinkAPI
from meshd.dataplane.model import RTPROT_MESHD, PeerView
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.errors import ConfigError, MissingKernelFeature
from meshd.gossip.record import NodeRecord

START = 1000.0


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual and jumps to the earliest timer whenever no callback is ready."""

    def __init__(self) -> None:
        super().__init__()
        self._now = START

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if not self._ready and scheduled:  # type: ignore[attr-defined]
            self._now = max(self._now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_virtual(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(_cancel_the_rest())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Harness:
    """One Reconciler on a FakeNetlink, its loop task, and the virtual clock."""

    def __init__(
        self, tmp: Path, backend: str = "vxlan", fake: FakeNetlink | None = None, **cfg: Any
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.fake = fake or FakeNetlink()
        nl: NetlinkAPI = self.fake  # FakeNetlink satisfies the protocol (mypy checks this line)
        self.local = rec(1, backend)
        self.cfg = ReconcilerConfig(
            backend=backend, network="10.244.0.0/16", subnet_env=tmp / "subnet.env", **cfg
        )
        self.r = Reconciler(self.cfg, self.local, UL, clock=self.loop.time, nl=nl)
        self.task: asyncio.Task[None] | None = None

    @property
    def now(self) -> float:
        return self.loop.time()

    def peers(self, *views: PeerView, synced: bool = True) -> None:
        self.r.set_peers(list(views), synced=synced, now=self.now)

    async def start(self, *views: PeerView, synced: bool = True) -> None:
        self.peers(*views, synced=synced)
        await self.r.start()
        self.task = asyncio.create_task(self.r.run())
        await self.until(lambda: self.runs >= 2)  # start's pass, then one once the monitor listens
        await asyncio.sleep(1.0)  # nothing else is pending: the tests start from a quiet loop

    async def until(self, cond: Callable[[], bool], within: float = 60.0) -> None:
        """Advance virtual time in 10 ms steps until ``cond``; fail after ``within`` seconds."""
        end = self.now + within
        while not cond():
            assert self.now < end, "condition not met in time"
            await asyncio.sleep(0.01)

    async def at(self, t: float) -> None:
        """Let virtual time run to ``START + t``."""
        await asyncio.sleep(max(0.0, START + t - self.now))

    async def close(self) -> None:
        await self.r.close()

    def routes(self) -> set[str]:
        return set(self.fake.our_routes(RTPROT_MESHD))

    @property
    def runs(self) -> int:
        return int(self.r.status()["runs"])


def alive(r: NodeRecord, since: float = START) -> PeerView:
    return PeerView(r, "alive", since)


def scenario(tmp: Path, body: Callable[[Harness], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        h = Harness(tmp, **kw)
        try:
            await body(h)
        finally:
            await h.close()

    run_virtual(main)


# --- the clock itself ----------------------------------------------------------------------------


def test_virtual_loop_jumps_to_timers_without_wall_time() -> None:
    seen: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        seen.append(loop.time())

    run_virtual(main)
    assert seen == [START + 3600]


# --- debounce ------------------------------------------------------------------------------------


def test_a_burst_of_changes_is_one_pass_after_the_debounce(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        before, t0 = h.runs, h.now
        h.peers(alive(rec(2)), alive(rec(3)))
        await asyncio.sleep(0.05)
        h.peers(alive(rec(2)), alive(rec(3)), alive(rec(4)))
        await asyncio.sleep(0.05)
        h.peers(alive(rec(2)), alive(rec(3)), alive(rec(4)), alive(rec(5)))
        await asyncio.sleep(0.149 - (h.now - t0))
        assert h.runs == before, "a pass ran inside the debounce window"
        await h.until(lambda: h.runs > before)
        assert h.now - t0 == pytest.approx(0.15, abs=0.011)
        assert h.routes() == {f"10.244.{i}.0/24" for i in (2, 3, 4, 5)}
        await asyncio.sleep(5)
        assert h.runs == before + 1, "the burst cost more than one pass"

    scenario(tmp_path, body)


def test_a_converged_mesh_writes_nothing_until_the_resync(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)), alive(rec(3)))
        writes, runs = len(h.fake.writes), h.runs  # the last pass ran at START
        await h.at(29.9)
        assert h.runs == runs
        await h.at(30.1)  # the resync (30 s after the last pass) ran, and wrote nothing
        assert h.runs == runs + 1 and h.r.status()["last_run"]["reason"] == "resync"
        assert len(h.fake.writes) == writes

    scenario(tmp_path, body)


# --- level-triggered repair ----------------------------------------------------------------------


def test_a_route_deleted_by_hand_is_restored_after_the_event(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)), alive(rec(3)))
        t0 = h.now
        h.fake.hand_delete_route("10.244.2.0/24")
        await h.until(lambda: "10.244.2.0/24" in h.routes())
        assert h.now - t0 < 0.2
        assert h.r.status()["applied_last"] == {"route_add": 1}

    scenario(tmp_path, body)


def test_a_silent_deletion_is_restored_by_the_resync(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        del h.fake.routes["10.244.2.0/24"]  # no notification: say the monitor overflowed
        await h.at(29.9)  # the last pass ran at START
        assert "10.244.2.0/24" not in h.routes()
        await h.until(lambda: "10.244.2.0/24" in h.routes())
        assert h.now - START == pytest.approx(30.0, abs=0.011)

    scenario(tmp_path, body)


def test_device_drift_is_repaired(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        h.fake.hand_set_mtu("meshd.1", 1400)
        index = h.fake.index_of("meshd.1")
        assert index is not None
        await h.until(lambda: h.fake.links[index].mtu == 1450)

    scenario(tmp_path, body)


# --- restart: adopt, never delete before sync ----------------------------------------------------


def test_restart_adopts_and_deletes_nothing_before_sync(tmp_path: Path) -> None:
    async def main() -> None:
        first = Harness(tmp_path)
        await first.start(alive(rec(2)), alive(rec(3)))
        await first.close()
        fake = first.fake
        before = (
            dict(fake.routes),
            {k: dict(v) for k, v in fake.neighs.items()},
            {k: set(v) for k, v in fake.fdb.items()},
        )
        fake.writes.clear()

        h = Harness(tmp_path, fake=fake)
        try:
            await h.start(alive(rec(2)), synced=False)  # restarted; knows only n2 so far
            assert fake.writes == []  # adopted: the device and n2's entries are already right
            assert (fake.routes, fake.neighs, fake.fdb) == before  # n3's entries are kept
            assert h.r.status()["plan"]["removals_held"] == 3
            h.peers(alive(rec(2)), synced=True)  # first full exchange: n3 is really gone
            await h.until(lambda: "10.244.3.0/24" not in h.routes())
            assert sorted(w.split()[0] + " " + w.split()[1] for w in fake.writes) == [
                "fdb del",
                "neigh del",
                "route del",
            ]
        finally:
            await h.close()

    run_virtual(main)


# --- conflicts -----------------------------------------------------------------------------------


def test_someone_elses_route_refuses_the_peer_and_is_never_replaced(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.fake.hand_add_route("10.244.2.0/24", "10.99.0.254", 2, proto=3)  # "boot": not ours
        await h.start(alive(rec(2)), alive(rec(3)))
        st = h.r.status()
        assert st["last_error"] is None  # refused by the model, not a failed write
        assert st["peer_flags"] == {"n2": "refused"}
        assert "overlaps route 10.244.2.0/24, not meshd's" in st["skipped"]["n2"]
        assert h.fake.routes["10.244.2.0/24"].proto == 3
        assert h.fake.routes["10.244.2.0/24"].entry.gateway == "10.99.0.254"
        assert h.routes() == {"10.244.3.0/24"}
        # A more specific foreign route appearing later inside a programmed subnet: n3 is
        # withdrawn at the monitor's event, without waiting for a resync.
        runs = h.runs
        h.fake.hand_add_route("10.244.3.128/25", "10.99.0.254", 2, proto=4)
        await h.until(lambda: h.runs > runs)
        assert h.r.peer_flags() == {"n2": "refused", "n3": "refused"}
        assert h.routes() == set()
        # Both gone: both programmed, again at the events.
        h.fake.hand_delete_route("10.244.2.0/24")
        h.fake.hand_delete_route("10.244.3.128/25")
        await h.until(lambda: h.routes() == {"10.244.2.0/24", "10.244.3.0/24"})
        assert h.r.peer_flags() == {}
        assert h.now < START + 60  # well before the 30 s resync after the last event

    scenario(tmp_path, body)


def test_routes_covering_the_whole_network_and_the_default_route_refuse_nobody(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        h.fake.hand_add_route("0.0.0.0/0", "10.99.0.254", 2, proto=3)
        h.fake.hand_add_route("10.244.0.0/16", "10.99.0.254", 2, proto=3)  # e.g. a blackhole
        h.fake.hand_add_route("10.0.0.0/8", "10.99.0.254", 2, proto=4)  # e.g. a VPN
        await h.start(alive(rec(2)), alive(rec(3)))
        assert h.r.peer_flags() == {}
        assert h.routes() == {"10.244.2.0/24", "10.244.3.0/24"}

    scenario(tmp_path, body)


def test_overlapping_claims_program_only_the_holder(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        old = rec(2, subnet="10.244.8.0/24", since=100)
        new = rec(3, subnet="10.244.8.0/23", since=200)  # overlaps old's; claimed later
        await h.start(alive(old), alive(new))
        assert h.r.peer_flags() == {"n3": "conflicted"}
        assert h.routes() == {"10.244.8.0/24"}
        assert "held by n2" in h.r.status()["conflicts"]["n3"]

    scenario(tmp_path, body)


def test_a_peer_with_an_unknown_backend_is_incompatible(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)), alive(rec(3, "wireguard")))
        assert h.r.peer_flags() == {"n3": "incompatible"}
        assert h.routes() == {"10.244.2.0/24"}

    scenario(tmp_path, body)


# --- failure is not leave ------------------------------------------------------------------------


def test_left_is_removed_at_once_failed_is_kept(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)), alive(rec(3)))
        h.peers(PeerView(rec(2), "left", h.now), PeerView(rec(3), "dead", h.now))
        t0 = h.now
        await h.until(lambda: "10.244.2.0/24" not in h.routes())
        assert h.now - t0 < 0.2
        assert h.routes() == {"10.244.3.0/24"}  # dead: kept until reap_after
        assert not h.r.peer_flags()

    scenario(tmp_path, body)


def test_a_dead_peer_is_reaped_at_its_deadline_without_a_trigger(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)), alive(rec(3)))
        died = h.now
        h.peers(alive(rec(2)), PeerView(rec(3), "dead", died))
        await asyncio.sleep(59.0)  # reap_after is 60 s here
        assert h.routes() == {"10.244.2.0/24", "10.244.3.0/24"}
        assert h.r.status()["next_reap"] == pytest.approx(died + 60.0)
        await h.until(lambda: "10.244.3.0/24" not in h.routes())
        assert 60.0 <= h.now - died < 60.1
        assert h.r.status()["last_run"]["reason"] == "reap"
        assert h.r.peer_flags() == {"n3": "reaped"}

    scenario(tmp_path, body, reap_after=60.0, resync_interval=1000.0)


def test_a_dead_peer_that_comes_back_churns_nothing(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        writes = len(h.fake.writes)
        h.peers(PeerView(rec(2), "dead", h.now))
        await asyncio.sleep(1)
        h.peers(alive(rec(2), since=h.now))
        await asyncio.sleep(1)
        assert len(h.fake.writes) == writes and h.routes() == {"10.244.2.0/24"}

    scenario(tmp_path, body)


# --- order and kernel features -------------------------------------------------------------------


def test_vxlan_writes_device_then_neighbour_fdb_route(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        kinds = [w.split()[0] for w in h.fake.writes if not w.startswith("sysctl")]
        assert kinds == ["create", "add", "set", "neigh", "fdb", "route"]
        h.peers(synced=True)
        await h.until(lambda: not h.routes())
        kinds = [w.split()[0] for w in h.fake.writes[-3:]]
        assert kinds == ["route", "fdb", "neigh"]  # removals in the reverse order

    scenario(tmp_path, body)


def test_host_gw_writes_only_routes_via_the_peer(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2, "host-gw")), alive(rec(3, "host-gw", public_ip="192.0.2.3")))
        assert [w for w in h.fake.writes if not w.startswith("sysctl")] == [
            "route add 10.244.2.0/24 via 10.99.0.2"
        ]
        assert h.fake.routes["10.244.2.0/24"].entry.oif == 2
        assert h.r.peer_flags() == {"n3": "not-on-link"}

    scenario(tmp_path, body, backend="host-gw")


def test_missing_kernel_module_is_fatal_and_not_retried_before_the_resync(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path, backend="ipip", fake=FakeNetlink(missing_kinds=("ipip",)))
        try:
            h.peers(alive(rec(2, "ipip")))
            with pytest.raises(MissingKernelFeature, match="module ipip"):
                await h.r.start()
            h.task = asyncio.create_task(h.r.run())
            await asyncio.sleep(1.0)
            assert h.runs == 2  # start's pass, and the one once the monitor listens
            await asyncio.sleep(28.0)
            assert h.runs == 2  # no retry loop: retrying cannot help
            await asyncio.sleep(2.0)
            assert h.runs == 3  # the resync tries again (a module may have been loaded)
            assert "module ipip" in (h.r.status()["last_error"] or "")
        finally:
            await h.close()

    run_virtual(main)


def test_a_failed_pass_is_retried_with_backoff(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        # The kernel refuses n3's route: every pass fails on it until it takes it.
        h.fake.refuse_routes.add("10.244.3.0/24")
        h.peers(alive(rec(2)), alive(rec(3)))
        await h.until(lambda: h.r.status()["last_error"] is not None)
        times = []
        for _ in range(4):
            runs = h.runs
            await h.until(lambda: h.runs > runs)  # noqa: B023 - evaluated inside the loop
            times.append(h.now)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps == pytest.approx([1.0, 2.0, 4.0], abs=0.011)
        h.fake.refuse_routes.clear()
        await h.until(lambda: "10.244.3.0/24" in h.routes())
        assert h.r.status()["last_error"] is None
        assert h.fake.routes["10.244.3.0/24"].proto == RTPROT_MESHD

    scenario(tmp_path, body)


def test_fake_answers_eexist_like_the_kernel() -> None:
    async def main() -> None:
        from meshd.dataplane.netlink import RouteEntry, error_code

        fake = FakeNetlink()
        e = RouteEntry("10.244.2.0/24", "10.99.0.2", 2, False)
        assert await fake.routes_apply("add", [e], RTPROT_MESHD) == []
        (fail,) = await fake.routes_apply("add", [e], RTPROT_MESHD)
        assert error_code(fail.error) == errno.EEXIST

    run_virtual(main)


# --- an allocated subnet: settles, then may move -------------------------------------------------


def test_a_moved_subnet_moves_the_device_address_bridge_and_subnet_env(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path, bridge="br0")
        h.r = Reconciler(h.cfg, h.local, UL, clock=h.loop.time, nl=h.fake, settled=False)
        try:
            await h.start(alive(rec(2)))
            env = tmp_path / "subnet.env"
            assert not env.exists()  # not settled: CNI must not hand out this subnet yet
            dev = h.fake.index_of("meshd.1")
            br = h.fake.index_of("br0")
            assert dev is not None and br is not None
            old = h.local.subnet
            h.r.set_local(h.local, settled=True)
            await h.until(env.exists)
            assert f"FLANNEL_SUBNET={old.replace('.0/', '.1/')}" in env.read_text()
            h.fake.addrs[br].append(("192.0.2.1", 24))  # someone else's address stays

            moved = replace(h.local, subnet="10.244.77.0/24")
            h.r.set_local(moved, settled=True)
            await h.until(lambda: ("10.244.77.0", 32) in h.fake.addrs[dev])
            await h.until(lambda: "FLANNEL_SUBNET=10.244.77.1/24" in env.read_text())
            assert h.fake.addrs[dev] == [("10.244.77.0", 32)]
            assert sorted(h.fake.addrs[br]) == [("10.244.77.1", 24), ("192.0.2.1", 24)]
            assert set(h.routes()) == {rec(2).subnet}
        finally:
            await h.close()

    run_virtual(main)


# --- log lines --------------------------------------------------------------------------------


def test_data_plane_changes_are_logged_with_event_peer_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer joining, then dying and reaped: the lines name the peer and why, as fields."""

    async def body(h: Harness) -> None:
        await h.start(alive(rec(2)))
        h.peers(alive(rec(2)), alive(rec(3)))
        await h.until(lambda: "10.244.3.0/24" in h.routes())
        h.peers(alive(rec(2)), PeerView(rec(3), "dead", h.now))
        await h.until(lambda: "10.244.3.0/24" not in h.routes(), within=120.0)

    caplog.set_level(logging.INFO, logger="meshd")
    scenario(tmp_path, body, reap_after=60.0, resync_interval=1000.0)
    got = events(r for r in caplog.records if r.name == "meshd.dataplane")
    created = [e for e in got if e["event"] == "device_changed" and e["action"] == "create"]
    assert [e["device"] for e in created] == ["meshd.1"]
    plans = [(e["reason"], e["peers"]) for e in got if e["event"] == "plan_applied"]
    assert ("peers", "n3") in plans  # the join
    assert ("reap", "n3") in plans  # the reap removes n3's entries
    (reaped,) = [e for e in got if e["event"] == "peer_not_programmed"]
    assert (reaped["peer"], reaped["flag"]) == ("n3", "reaped")
    assert reaped["reason"].endswith("reaped")
    assert reaped["msg"] == f"peer n3 not programmed: {reaped['reason']}"


# --- both families -------------------------------------------------------------------------------


def dual(i: int) -> NodeRecord:
    """Node *i* with an IPv6 subnet beside its IPv4 one (vxlan over the IPv4 underlay)."""
    return replace(rec(i), subnet6=f"fd00:244:{i}::/64")


def test_ipv6_entries_are_programmed_repaired_and_adopted_without_a_rewrite(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        h.r.set_local(dual(1))
        await h.start(alive(dual(2)), alive(dual(3)))
        assert h.routes() == {
            "10.244.2.0/24", "10.244.3.0/24", "fd00:244:2::/64", "fd00:244:3::/64",
        }  # fmt: skip
        dev = h.fake.index_of("meshd.1")
        assert dev is not None
        assert set(h.fake.neighs[dev]) == {
            "10.244.2.0", "10.244.3.0", "fd00:244:2::", "fd00:244:3::",
        }  # fmt: skip
        assert ("fd00:244:1::", 128) in h.fake.addrs[dev]
        assert h.fake.sysctls["net.ipv6.conf.all.forwarding"] == "1"
        # An IPv6 route deleted by hand: one route_add, at once.
        t0 = h.now
        h.fake.hand_delete_route("fd00:244:3::/64")
        await h.until(lambda: "fd00:244:3::/64" in h.routes())
        assert h.now - t0 < 0.2 and h.r.status()["applied_last"] == {"route_add": 1}
        # A peer drops its IPv6 subnet: only its IPv6 route and neighbour go.
        h.peers(alive(dual(2)), alive(rec(3)))
        await h.until(lambda: "fd00:244:3::/64" not in h.routes())
        assert "fd00:244:3::" not in h.fake.neighs[dev] and "10.244.3.0/24" in h.routes()

    async def restart(h: Harness) -> None:
        await body(h)
        await h.close()
        # A new reconciler on the same kernel adopts every entry: not one write.
        writes = len(h.fake.writes)
        again = Harness(tmp_path, fake=h.fake)
        again.r.set_local(dual(1))
        await again.start(alive(dual(2)), alive(rec(3)))
        assert len(h.fake.writes) == writes and again.r.status()["applied_total"] == 0
        await again.close()

    scenario(tmp_path, restart)


def test_every_own_subnet_meets_the_policy_of_its_family(tmp_path: Path) -> None:
    cfg = ReconcilerConfig(
        network="10.244.0.0/16", network6="fd00:10:244::/48", subnet_env=tmp_path / "env"
    )
    Reconciler(cfg, rec(1, subnet6="fd00:10:244:1::/64"), UL, nl=FakeNetlink())
    with pytest.raises(ConfigError, match=r"^subnet: fd00:99::/64 is outside network fd00:10:244"):
        Reconciler(cfg, rec(1, subnet6="fd00:99::/64"), UL, nl=FakeNetlink())
    with pytest.raises(ConfigError, match=r"^subnet: fe80::/64 overlaps"):
        Reconciler(replace(cfg, network6=None), rec(1, subnet6="fe80::/64"), UL, nl=FakeNetlink())
