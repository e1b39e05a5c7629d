"""Devices and addresses of ``netlink.Netlink`` (pyroute2's AsyncIPRoute), its default route and
its monitor (raw sockets, rtnl_wire's decoder for routes and neighbours, pyroute2's for links and
addresses) against the real kernel, in a host namespace built by Lab.

What our path reads back is compared with what iproute2 reads from the same kernel (every
device's fields and vxlan parameters, addresses, the default route); what it decodes itself, the
stream of monitor events, with a pyroute2 monitor subscribed to the same groups at the same time.
The error paths are checked for their one-line message and their ``errno``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pyroute2 import AsyncIPRoute

from meshd.dataplane import netlink as netlink_mod
from meshd.dataplane.model import Underlay, device_spec
from meshd.dataplane.netlink import Event, LinkInfo, Netlink, error_code
from meshd.dataplane.rtnl import Monitor
from meshd.dataplane.rtnl_wire import RouteEntry
from meshd.errors import DataplaneError, MissingKernelFeature
from meshd.gossip.record import NodeRecord
from meshd.lab import Host, Lab
from meshd.lab.runner import kernel_supports

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
VXLAN = (
    ("vxlan_id", 42),
    ("vxlan_local", "10.99.0.1"),
    ("vxlan_port", 4789),
    ("vxlan_learning", 0),
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def ipj(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", *args).stdout.strip()
    return json.loads(out) if out else []


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def host(lab: Callable[[int], Lab]) -> Iterator[Host]:
    yield lab(1).hosts[0]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


# --- the references: iproute2's and pyroute2's reading of the same kernel -----------------------


def ip_links(ns: str) -> dict[int, LinkInfo]:
    """Every device as ``ip -d link`` reads it (params left out: compared per kind below)."""
    out: dict[int, LinkInfo] = {}
    for ln in ipj(ns, "-d", "link", "show"):
        kind = ln.get("linkinfo", {}).get("info_kind", "")
        out[ln["ifindex"]] = LinkInfo(
            ln["ifindex"], ln["ifname"], kind, ln["mtu"], ln.get("address"), "UP" in ln["flags"], {}
        )
    return out


def pyroute2_event(msg: Any) -> Event | None:
    """A pyroute2 message reduced as netlink.py did before it had its own decoder."""
    ev = str(msg.get("event") or "")
    new = ev.startswith("RTM_NEW")
    if ev in ("RTM_NEWLINK", "RTM_DELLINK"):
        return Event(
            "link",
            new,
            index=int(msg["index"]),
            name=str(msg.get("ifname") or ""),
            up=bool(msg["flags"] & 1),
            mtu=int(msg.get("mtu") or 0),
            lladdr=str(msg.get("address") or ""),
        )
    if ev in ("RTM_NEWADDR", "RTM_DELADDR"):
        return Event("addr", new, index=int(msg["index"]), dst=str(msg.get("address") or ""))
    if ev in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        if msg["family"] not in (2, 10):
            return None
        default = "::" if msg["family"] == 10 else "0.0.0.0"
        return Event(
            "route",
            new,
            index=int(msg.get("oif") or 0),
            dst=f"{msg.get('dst') or default}/{msg['dst_len']}",
            proto=int(msg["proto"]),
            table=int(msg.get_attr("RTA_TABLE") or msg["table"]),
        )
    if ev in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
        kind = "fdb" if msg["family"] == 7 else "neigh"
        if kind == "neigh" and msg["family"] not in (2, 10):
            return None
        return Event(
            kind,
            new,
            index=int(msg["ifindex"]),
            dst=str(msg.get("dst") or ""),
            lladdr=str(msg.get("lladdr") or ""),
            permanent=bool(msg["state"] & 0x80),
        )
    return None


# --- devices -------------------------------------------------------------------------------------


def test_every_device_reads_as_iproute2_reads_it(host: Host) -> None:
    ns = host.ns

    async def main() -> None:
        async with Netlink(ns) as nl:
            eth0 = await nl.link("eth0")
            assert eth0 is not None
            index = await nl.create_link(
                "vx42", "vxlan", 1400, "02:aa:bb:cc:dd:ee", [*VXLAN, ("vxlan_link", eth0.index)]
            )
            theirs = ip_links(ns)
            assert {"lo", "eth0", "br", "vx42"} <= {i.name for i in theirs.values()}
            for idx, ref in theirs.items():
                by_index = await nl.link(index=idx)
                by_name = await nl.link(ref.name)
                assert by_index is not None and by_name is not None
                if by_index.kind != "bridge":  # a bridge's parameters include running timers
                    assert by_index == by_name, ref.name
                mac = by_index.mac
                if mac is not None and len(mac) == 11:  # 4 bytes: a tunnel's IPv4 address
                    mac = socket.inet_ntoa(bytes.fromhex(mac.replace(":", "")))
                seen = LinkInfo(
                    by_index.index, by_index.name, by_index.kind, by_index.mtu, mac, by_index.up, {}
                )
                assert seen == ref, ref.name

            vx = await nl.link("vx42")
            assert vx is not None and vx.index == index
            assert (vx.kind, vx.mtu, vx.mac, vx.up) == ("vxlan", 1400, "02:aa:bb:cc:dd:ee", False)
            assert vx.params.items() >= {*VXLAN, ("vxlan_link", eth0.index)}
            (ip,) = ipj(ns, "-d", "link", "show", "vx42")
            data = ip["linkinfo"]["info_data"]
            assert (data["id"], data["local"], data["port"], data["learning"], data["link"]) == (
                42,
                "10.99.0.1",
                4789,
                False,
                "eth0",
            )
            assert (ip["mtu"], ip["address"], ip["ifindex"]) == (1400, "02:aa:bb:cc:dd:ee", index)

            # The spec the reconciler compares is met by what we read back.
            spec = device_spec(
                "vxlan",
                NodeRecord(
                    name="h1",
                    node_id=b"\1" * 16,
                    public_ip="10.99.0.1",
                    port=7950,
                    subnet="10.244.1.0/24",
                    backend="vxlan",
                    vtep_mac="02:aa:bb:cc:dd:ee",
                    mtu=1500,
                ),
                Underlay("eth0", eth0.index, "10.99.0.1", 24, 1500),
                42,
                4789,
            )
            assert spec is not None
            await nl.delete_link(index)
            index = await nl.create_link(spec.name, spec.kind, spec.mtu, spec.mac, spec.params)
            got = await nl.link(spec.name)
            assert got is not None and got.index == index
            assert all(got.params.get(k) == v for k, v in spec.params), (got.params, spec.params)

            assert await nl.link("nosuchdev") is None
            assert await nl.link(index=999999) is None

    run(main())


def test_set_up_down_mtu_mac_and_delete(host: Host) -> None:
    ns = host.ns

    def ip_link(name: str) -> dict[str, Any]:
        (ln,) = ipj(ns, "link", "show", name)
        return ln

    async def main() -> None:
        async with Netlink(ns) as nl:
            index = await nl.create_link(
                "dm0", "vxlan", None, None, [("vxlan_id", 9), ("vxlan_port", 4790)]
            )
            assert "UP" not in ip_link("dm0")["flags"]
            await nl.set_link(index, up=True)
            info = await nl.link("dm0")
            assert "UP" in ip_link("dm0")["flags"] and info is not None and info.up
            await nl.set_link(index, mtu=1280)
            assert ip_link("dm0")["mtu"] == 1280
            await nl.set_link(index, mac="02:00:00:00:00:99")
            assert ip_link("dm0")["address"] == "02:00:00:00:00:99"
            await nl.set_link(index, up=False)
            assert "UP" not in ip_link("dm0")["flags"]
            await nl.set_link(index, mac="02:00:00:00:00:98", up=True, mtu=1300)
            ln = ip_link("dm0")
            assert (ln["address"], ln["mtu"], "UP" in ln["flags"]) == (
                "02:00:00:00:00:98",
                1300,
                True,
            )
            info = await nl.link(index=index)
            assert info is not None and (info.mac, info.mtu, info.up) == (
                "02:00:00:00:00:98",
                1300,
                True,
            )

            with pytest.raises(DataplaneError) as ei:
                await nl.set_link(index, mtu=10)  # below the minimum
            assert error_code(ei.value) == errno.EINVAL and one_line(ei.value).startswith(
                f"set link {index} mtu 10: Invalid argument (EINVAL)"
            )
            with pytest.raises(DataplaneError) as ei:
                await nl.set_link(999999, up=True)
            assert error_code(ei.value) == errno.ENODEV

            await nl.delete_link(index)
            assert ipj(ns, "link", "show") and not [
                ln for ln in ipj(ns, "link", "show") if ln["ifname"] == "dm0"
            ]
            await nl.delete_link(index)  # already gone: done
            assert await nl.link(index=index) is None

    run(main())


def test_create_errors_translate(host: Host) -> None:
    ns = host.ns

    async def main() -> None:
        async with Netlink(ns) as nl:
            eth0 = await nl.link("eth0")
            assert eth0 is not None
            params = [*VXLAN, ("vxlan_link", eth0.index)]
            await nl.create_link("vx42", "vxlan", None, None, params)
            # The same name again: the kernel's EEXIST, a plain DataplaneError.
            with pytest.raises(DataplaneError) as ei:
                await nl.create_link("vx42", "vxlan", None, None, params)
            assert not isinstance(ei.value, MissingKernelFeature)
            assert error_code(ei.value) == errno.EEXIST
            assert one_line(ei.value) == "create vxlan device vx42: File exists (EEXIST)"
            # A parameter the kernel refuses (an underlay that does not exist).
            with pytest.raises(DataplaneError) as ei:
                await nl.create_link(
                    "vx43", "vxlan", None, None, [*VXLAN[:1], ("vxlan_link", 999999)]
                )
            assert error_code(ei.value) == errno.ENODEV
            assert one_line(ei.value).startswith("create vxlan device vx43: No such device")
            # Input that cannot be packed never reaches the kernel.
            with pytest.raises(DataplaneError) as ei:
                await nl.create_link("vx44", "vxlan", None, "nonsense", params)
            assert one_line(ei.value).startswith("create vxlan device vx44: ")
            assert error_code(ei.value) is None
            assert await nl.link("vx43") is None and await nl.link("vx44") is None

            # ipip: MissingKernelFeature where the kernel has no module (as here), a device
            # where it has one -- whichever iproute2 finds on this kernel.
            ipip = [("ipip_local", "10.99.0.1"), ("ipip_link", eth0.index), ("ipip_ttl", 64)]
            if kernel_supports("ipip"):
                index = await nl.create_link("meshd.ipip", "ipip", 1480, None, ipip)
                got = await nl.link(index=index)
                assert got is not None and got.params.items() >= set(ipip)
                (ip,) = ipj(ns, "-d", "link", "show", "meshd.ipip")
                data = ip["linkinfo"]["info_data"]
                assert (data["local"], data["link"], data["ttl"]) == ("10.99.0.1", "eth0", 64)
                assert got.mac == "0a:63:00:01"  # the local address: 4 bytes, not 6
            else:
                with pytest.raises(MissingKernelFeature) as mk:
                    await nl.create_link("meshd.ipip", "ipip", 1480, None, ipip)
                msg = one_line(mk.value)
                assert msg.startswith(
                    "kernel has no ipip support (module ipip): create ipip device meshd.ipip: "
                ), msg
                assert error_code(mk.value) == errno.EOPNOTSUPP

    run(main())


def test_missing_namespace_is_refused_not_created() -> None:
    async def main() -> None:
        with pytest.raises(DataplaneError) as ei:
            await Netlink("mdt-no-such-netns").open()
        assert str(ei.value) == "network namespace mdt-no-such-netns does not exist"
        with pytest.raises(DataplaneError):
            async for _ in Netlink("mdt-no-such-netns").events():
                pass

    run(main())
    assert not os.path.exists("/run/netns/mdt-no-such-netns")


def test_open_and_close_leave_no_socket_behind(host: Host) -> None:
    async def cycle() -> None:
        async with Netlink(host.ns) as nl:
            assert await nl.link("lo") is not None

    async def main() -> None:
        await cycle()  # first use: pyroute2's imports, the loop's own descriptors
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            await cycle()
        assert len(os.listdir("/proc/self/fd")) == before

    run(main())


# --- addresses -----------------------------------------------------------------------------------


def test_addresses_add_dump_delete(host: Host) -> None:
    ns = host.ns

    def ip_addrs() -> set[tuple[int, str, int, bool]]:
        return {
            (ln["ifindex"], a["local"], a["prefixlen"], bool(a.get("secondary")))
            for ln in ipj(ns, "-4", "addr", "show")
            for a in ln["addr_info"]
        }

    async def pyroute2_addrs() -> set[tuple[int, str, int, bool]]:
        async with AsyncIPRoute(netns=ns, flags=0) as ipr:
            return {
                (a["index"], a.get("address"), a["prefixlen"], bool(a["flags"] & 1))
                async for a in await ipr.addr("dump", family=2)
            }

    async def main() -> None:
        async with Netlink(ns) as nl:
            eth0 = await nl.link("eth0")
            assert eth0 is not None
            i = eth0.index
            await nl.add_address(i, "10.98.0.1/24")
            await nl.add_address(i, "10.98.0.1/24")  # EEXIST: done
            await nl.add_address(i, "10.99.0.77/24")  # same subnet as the primary: secondary
            mine = await nl.addresses()
            assert len(mine) == len(set(mine))
            assert set(mine) == ip_addrs() == await pyroute2_addrs()
            assert {
                (i, "10.98.0.1", 24, False),
                (i, "10.99.0.77", 24, True),
                (i, host.underlay_ip, 24, False),
            } <= set(mine)
            assert set(await nl.addresses(i)) == {a for a in mine if a[0] == i}
            assert {a[0] for a in mine} > {i}  # lo and br hold addresses too

            await nl.del_address(i, "10.98.0.1/24")
            await nl.del_address(i, "10.98.0.1/24")  # already gone: done
            await nl.del_address(999999, "10.98.0.1/24")  # and its device too
            assert (i, "10.98.0.1", 24, False) not in await nl.addresses(i)
            assert set(await nl.addresses()) == ip_addrs()

            with pytest.raises(DataplaneError) as ei:
                await nl.add_address(999999, "10.98.0.1/24")
            assert error_code(ei.value) == errno.ENODEV
            assert one_line(ei.value).startswith("add address 10.98.0.1/24 to link 999999: ")
            with pytest.raises(DataplaneError) as ei:
                await nl.add_address(i, "10.98.0.1")
            assert error_code(ei.value) is None and "not an IP prefix" in one_line(ei.value)

    run(main())


def test_default_route_oif_is_the_lowest_metric(host: Host) -> None:
    ns = host.ns

    async def main() -> None:
        async with Netlink(ns) as nl:
            eth0, br = await nl.link("eth0"), await nl.link("br")
            assert eth0 is not None and br is not None
            (ref,) = ipj(ns, "route", "show", "default")
            assert await nl.default_route_oif() == eth0.index
            assert ref["dev"] == "eth0" and "metric" not in ref  # metric 0
            # A worse default route in the main table, a default route in another table.
            sh(
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                "10.244.1.9",
                "dev",
                "br",
                "metric",
                "50",
            )
            sh(
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                "10.244.1.8",
                "dev",
                "br",
                "table",
                "100",
            )
            assert await nl.default_route_oif() == eth0.index
            # Now eth0's is the worse one.
            sh("ip", "-n", ns, "route", "del", "default", "via", UPSTREAM, "dev", "eth0")
            sh(
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                UPSTREAM,
                "dev",
                "eth0",
                "metric",
                "100",
            )
            assert await nl.default_route_oif() == br.index
            assert ipj(ns, "route", "show", "default")[0]["dev"] == "br"  # iproute2 agrees
            sh("ip", "-n", ns, "route", "del", "default", "dev", "br", "metric", "50")
            assert await nl.default_route_oif() == eth0.index
            sh("ip", "-n", ns, "route", "del", "default", "dev", "eth0", "metric", "100")
            assert ipj(ns, "route", "show", "default") == []
            assert await nl.default_route_oif() is None

    run(main())


UPSTREAM = "10.99.0.254"


# --- the monitor ---------------------------------------------------------------------------------


class Pump:
    """Reads a stream of events in a task of its own, so the test can wait on it with timeouts
    (cancelling a wait must not cancel the generator, which would close its socket)."""

    def __init__(self, it: AsyncIterator[Event]) -> None:
        self.it = it
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for ev in self.it:
            self.queue.put_nowait(ev)

    async def until(self, stop: Callable[[Event], bool], timeout: float = 10.0) -> list[Event]:
        out: list[Event] = []
        async with asyncio.timeout(timeout):
            while not out or not stop(out[-1]):
                out.append(await self.queue.get())
        return out

    async def quiet(self, idle: float = 0.5) -> list[Event]:
        """Everything until nothing came for ``idle`` seconds."""
        out: list[Event] = []
        while True:
            try:
                out.append(await asyncio.wait_for(self.queue.get(), idle))
            except TimeoutError:
                return out

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def pyroute2_monitor(ns: str) -> tuple[Any, AsyncIterator[Event]]:
    mon = AsyncIPRoute(netns=ns, flags=0)
    await mon.bind(groups=netlink_mod.MONITOR_GROUPS)  # both families' routes and addresses

    async def events() -> AsyncIterator[Event]:
        while True:
            async for msg in mon.get():
                ev = pyroute2_event(msg)
                if ev is not None:
                    yield ev

    return mon, events()


def is_sentinel(ev: Event) -> bool:
    return ev.kind == "route" and ev.dst == "10.255.255.0/24" and not ev.new


def is_start(ev: Event) -> bool:
    return ev.kind == "route" and ev.dst == "10.255.254.0/24" and not ev.new


def test_monitor_sees_what_pyroute2_sees(host: Host) -> None:
    ns = host.ns
    mac, peer = "02:00:00:00:00:09", "10.99.0.9"
    script = f"""\
link add vxm type vxlan id 7 local {host.underlay_ip} dev eth0 dstport 4789 nolearning
link set vxm mtu 1400 up
address add 10.250.0.1/32 dev vxm
neighbour add 10.250.0.9 lladdr {mac} dev vxm nud permanent
route add 10.251.0.0/24 via 10.250.0.9 dev vxm onlink proto 109
route del 10.251.0.0/24 proto 109
neighbour del 10.250.0.9 dev vxm
address del 10.250.0.1/32 dev vxm
link del vxm
route add 10.255.255.0/24 via {UPSTREAM} dev eth0
route del 10.255.255.0/24
"""

    async def main() -> None:
        async with Netlink(ns) as nl:
            ours = Pump(nl.events())
            assert await ours.until(lambda e: True) == [Event("ready", True)]
            ref, stream = await pyroute2_monitor(ns)
            theirs = Pump(stream)
            try:
                # Both subscribed: from the start marker on, both must see the same (the lab's
                # bridge may announce FDB changes of its own meanwhile).
                sh("ip", "-n", ns, "route", "add", "10.255.254.0/24", "via", UPSTREAM)
                sh("ip", "-n", ns, "route", "del", "10.255.254.0/24")
                await ours.until(is_start)
                await theirs.until(is_start)
                sh(
                    "ip",
                    "-n",
                    ns,
                    "link",
                    "add",
                    "vxf",
                    "type",
                    "vxlan",
                    "id",
                    "8",
                    "dstport",
                    "4790",
                    "nolearning",
                )
                sh(
                    "bridge",
                    "-n",
                    ns,
                    "fdb",
                    "add",
                    mac,
                    "dev",
                    "vxf",
                    "dst",
                    peer,
                    "self",
                    "permanent",
                )
                sh("bridge", "-n", ns, "fdb", "del", mac, "dev", "vxf", "dst", peer, "self")
                sh("ip", "-n", ns, "link", "del", "vxf")
                subprocess.run(
                    ["ip", "-n", ns, "-batch", "-"],
                    input=script,
                    text=True,
                    check=True,
                    capture_output=True,
                )
                got = await ours.until(is_sentinel)
                want = await theirs.until(is_sentinel)
            finally:
                await ours.close()
                await theirs.close()
                ref.close()
        assert got == want
        idx = {e.name: e.index for e in got if e.kind == "link"}
        vxm, vxf = idx["vxm"], idx["vxf"]
        for expected in (
            Event(
                "link",
                True,
                index=vxm,
                name="vxm",
                up=True,
                mtu=1400,
                lladdr=next(e.lladdr for e in got if e.name == "vxm"),
            ),
            Event("addr", True, index=vxm, dst="10.250.0.1"),
            Event("addr", False, index=vxm, dst="10.250.0.1"),
            Event("neigh", True, index=vxm, dst="10.250.0.9", lladdr=mac, permanent=True),
            Event("route", True, index=vxm, dst="10.251.0.0/24", proto=109, table=254),
            Event("route", False, index=vxm, dst="10.251.0.0/24", proto=109, table=254),
            Event("fdb", True, index=vxf, dst=peer, lladdr=mac, permanent=True),
            Event("fdb", False, index=vxf, dst=peer, lladdr=mac, permanent=True),
        ):
            assert expected in got, expected
        assert [e.new for e in got if e.kind == "link" and e.name == "vxm"][-1] is False
        assert any(e.kind == "neigh" and not e.new and e.dst == "10.250.0.9" for e in got)

    run(main())


def test_monitor_overflow_is_an_event_and_it_goes_on(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receive buffer far too small for a burst: the kernel drops notifications, the monitor
    says so with Event("overflow") and keeps reporting what comes after."""
    monkeypatch.setattr(netlink_mod, "Monitor", functools.partial(Monitor, rcvbuf=4096))
    ns = host.ns

    async def main() -> None:
        async with Netlink(ns) as nl:
            eth0 = await nl.link("eth0")
            assert eth0 is not None
            burst = [
                RouteEntry(f"10.{100 + (k >> 8)}.{k & 255}.0/24", "10.99.0.2", eth0.index, False)
                for k in range(1000)
            ]
            events = Pump(nl.events())
            try:
                assert await events.until(lambda e: True) == [Event("ready", True)]
                assert await nl.routes_apply("add", burst, 109) == []
                got = await events.until(lambda e: e.kind == "overflow")
                got += await events.quiet()  # what the full buffer still held
                assert 0 < len([e for e in got if e.kind == "route"]) < len(burst)
                sh("ip", "-n", ns, "route", "add", "10.255.255.0/24", "via", UPSTREAM)
                sh("ip", "-n", ns, "route", "del", "10.255.255.0/24")
                after = await events.until(is_sentinel)
            finally:
                await events.close()
        assert (
            Event("route", True, index=eth0.index, dst="10.255.255.0/24", proto=3, table=254)
            in after
        )

    run(main())
