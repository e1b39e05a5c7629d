#!/usr/bin/env python3
"""Netlink cost of the data plane (issue 7): meshd's Reconciler against ``ip -batch``.

In one host of a lab it builds itself (``meshd.lab.topology.Lab``: namespaces, torn down at the
end), for each backend (vxlan: route + neighbour + FDB entry per peer; host-gw: one route) and each
peer count N, it times, ``--reps`` times (the median is printed):

* ``add``    -- ``Reconciler.reconcile_now()`` after ``set_peers(N peers)``: the whole pass (read
  the kernel back, diff, apply), against the same objects written by ``bridge -batch`` (FDB) and
  ``ip -batch`` (neighbours, then routes) -- program start included, files written beforehand;
* ``noop``   -- passes over the converged kernel (filtered dumps, nothing written), against the
  iproute2 reads such a pass needs (``ip route show proto 109``; for vxlan also ``ip neigh show
  dev meshd.1 nud permanent`` and ``bridge fdb show dev meshd.1``). ``meshd_s`` is the steady
  state (the 2nd to 4th pass: a daemon resyncs every 30 s and on kernel events); ``meshd_first_s``
  the first pass after the add, which decodes every entry once (later passes look them up);
* ``remove`` -- a pass after ``set_peers([])``, against ``ip -batch`` / ``bridge -batch`` deletes.

After every step, untimed, iproute2 counts what the kernel holds: every entry must be there (or
gone), else the run stops. Prints one JSON line per measurement (``ratio`` = meshd / ip)::

    {"bench": "netlink", "backend": "vxlan", "n": 1000, "op": "add", "meshd_s": 0.071,
     "ip_batch_s": 0.066, "ratio": 1.08, "objects": 3000, "reps": 3,
     "kernel_meshd": {"routes": 1000, "neighs": 1000, "fdb": 1000}, "kernel_ip_batch": {...}}

``--monitor`` measures instead what decoding the kernel's notifications costs: a raw socket
subscribed to the groups ``Netlink.events()`` reads records every datagram while ``ip -batch`` /
``bridge -batch`` add and then delete N vxlan peers (route + neighbour + FDB entry each); then
those datagrams are decoded, ``--reps`` times, by meshd's path (``netlink._event``: rtnl_wire for
routes and neighbours) and by pyroute2's (``MarshalRtnl.parse``, what its monitor runs, reduced to
the same events)::

    {"bench": "netlink", "op": "monitor", "n": 5000, "events": 30004, "datagrams": ...,
     "meshd_s": 0.09, "pyroute2_s": 4.1, "ratio": 45.6, "reps": 3}

Usage (root): ``.venv/bin/python benchmarks/bench_netlink.py [--n 1000 5000] [--reps 3]
[--monitor]``; ``--smoke`` runs N = 100 once (CI). Needs iproute2 only; nothing from ../shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshd.dataplane import model
from meshd.dataplane.model import RTPROT_MESHD, PeerView
from meshd.dataplane.reconciler import Reconciler, ReconcilerConfig
from meshd.dataplane.underlay import discover_underlay
from meshd.gossip.record import NodeRecord, vtep_mac_for
from meshd.lab import Host, Lab

UNDERLAY = "100.64.0.0/16"  # room for 65k peers on one L2 segment (host-gw needs them on-link)
NETWORK = "10.0.0.0/8"  # /24 per host: 65k subnets
DEVICE = model.vxlan_device(1)
NOOP_PASSES = 3  # steady-state no-change passes timed after the first one of each repetition


def sh(argv: Sequence[str], input: str | None = None) -> str:
    res = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {(res.stderr or res.stdout).strip()}")
    return res.stdout


def record(j: int, host: Host | None, backend: str) -> NodeRecord:
    """Host j (1 is the local one): subnet = the j-th /24 of NETWORK, public IP = j-th of
    UNDERLAY, as Lab numbers its hosts."""
    node_id = j.to_bytes(6, "big") + bytes(10)  # the VTEP MAC comes from the first 6 bytes
    return NodeRecord(
        name=host.name if host else f"p{j}",
        node_id=node_id,
        public_ip=host.underlay_ip if host else f"100.64.{j >> 8}.{j & 255}",
        port=7950,
        subnet=host.subnet if host else f"10.{j >> 8}.{j & 255}.0/24",
        backend=backend,
        vtep_mac=vtep_mac_for(node_id) if backend == "vxlan" else None,
        mtu=1500,
    )


class Bench:
    def __init__(self, lab: Lab, backend: str, n: int, workdir: Path) -> None:
        self.lab, self.backend, self.n = lab, backend, n
        self.host = lab.hosts[0]
        self.ns = self.host.ns
        self.local = record(1, self.host, backend)
        now = time.monotonic()
        self.views = [PeerView(record(j, None, backend), "alive", now) for j in range(2, n + 2)]
        self.workdir = workdir
        self.vxlan = backend == "vxlan"
        self.seen: dict[tuple[str, str], dict[str, int]] = {}  # (op, who) -> iproute2's counts

    def objects(self) -> int:
        return self.n * (3 if self.vxlan else 1)

    def kernel_counts(self) -> tuple[int, int, int]:
        """(routes, neighbours, FDB entries) meshd would own, as iproute2 sees them."""
        routes = len(
            sh(["ip", "-n", self.ns, "route", "show", "proto", str(RTPROT_MESHD)]).splitlines()
        )
        if not self.vxlan:
            return routes, 0, 0
        neighs = len(
            sh(
                ["ip", "-n", self.ns, "neigh", "show", "dev", DEVICE, "nud", "permanent"]
            ).splitlines()
        )
        fdb = sh(["bridge", "-n", self.ns, "fdb", "show", "dev", DEVICE]).count(" dst ")
        return routes, neighs, fdb

    def expect(self, present: bool, op: str, who: str) -> None:
        """Untimed: iproute2 must see every entry (or none); what it saw goes in the output."""
        want = (self.n, self.n if self.vxlan else 0, self.n if self.vxlan else 0)
        got = self.kernel_counts()
        self.seen[(op, who)] = dict(zip(("routes", "neighs", "fdb"), got, strict=True))
        if got != (want if present else (0, 0, 0)):
            raise SystemExit(
                f"{who} {op}: kernel holds (routes, neighs, fdb) = {got}, want "
                f"{want if present else (0, 0, 0)}"
            )

    # --- iproute2 -------------------------------------------------------------------------------

    def batches(self, desired: model.Desired) -> dict[str, tuple[str, str]]:
        """op -> (bridge batch, ip batch) text for the same objects meshd programs."""
        routes = sorted(desired.routes.values())
        neighs = sorted(desired.neighs.values())
        fdb = sorted(desired.fdb)

        def route_add(r: model.Route) -> str:
            return (
                f"route add {r.dst} via {r.gateway} dev {r.dev}"
                f"{' onlink' if r.onlink else ''} proto {RTPROT_MESHD}"
            )

        add_ip = [
            f"neigh replace {x.dst} lladdr {x.lladdr} dev {DEVICE} nud permanent" for x in neighs
        ] + [route_add(r) for r in routes]
        del_ip = [f"route del {r.dst} proto {RTPROT_MESHD}" for r in routes] + [
            f"neigh del {x.dst} dev {DEVICE}" for x in neighs
        ]
        add_br = [f"fdb replace {f.lladdr} dev {DEVICE} dst {f.dst} self permanent" for f in fdb]
        del_br = [f"fdb del {f.lladdr} dev {DEVICE} dst {f.dst} self" for f in fdb]
        return {
            "add": ("\n".join(add_br) + "\n", "\n".join(add_ip) + "\n"),
            "remove": ("\n".join(del_br) + "\n", "\n".join(del_ip) + "\n"),
        }

    def ip_batch(self, op: str, files: dict[str, tuple[Path, Path]]) -> float:
        br, ip = files[op]
        t = time.perf_counter()
        if op == "add" and self.vxlan:
            sh(["bridge", "-n", self.ns, "-batch", str(br)])  # FDB before the routes use it
        sh(["ip", "-n", self.ns, "-batch", str(ip)])
        if op == "remove" and self.vxlan:
            sh(["bridge", "-n", self.ns, "-batch", str(br)])
        return time.perf_counter() - t

    def ip_reads(self) -> float:
        t = time.perf_counter()
        sh(["ip", "-n", self.ns, "route", "show", "proto", str(RTPROT_MESHD)])
        if self.vxlan:
            sh(["ip", "-n", self.ns, "neigh", "show", "dev", DEVICE, "nud", "permanent"])
            sh(["bridge", "-n", self.ns, "fdb", "show", "dev", DEVICE])
        return time.perf_counter() - t

    # --- the run --------------------------------------------------------------------------------

    async def run(self, reps: int) -> list[dict[str, Any]]:
        ul = await discover_underlay("eth0", None, netns=self.ns)
        cfg = ReconcilerConfig(
            network=NETWORK,
            backend=self.backend,
            subnet_env=self.workdir / "subnet.env",
        )
        rec = Reconciler(cfg, self.local, ul, netns=self.ns)
        rec.set_peers([], synced=True, now=time.monotonic())
        times: dict[str, dict[str, list[float]]] = {
            op: {"meshd": [], "ip": []} for op in ("add", "noop", "remove")
        }
        first: list[float] = []  # the first noop pass after each add
        try:
            await rec.start()  # the device (vxlan), forwarding, subnet.env: not timed
            desired = model.desired_state(
                backend=self.backend,
                local=self.local,
                underlay=ul,
                peers=self.views,
                now=time.monotonic(),
                synced=True,
                reap_after=cfg.reap_after,
                network=NETWORK,
                onlink=(f"{ul.ip}/{ul.prefixlen}",),
            )
            if len(desired.routes) != self.n:
                raise SystemExit(
                    f"model programs {len(desired.routes)} of {self.n} peers: "
                    f"{dict(list(desired.reasons.items())[:3])}"
                )
            files: dict[str, tuple[Path, Path]] = {}
            for op, (br, ip) in self.batches(desired).items():
                files[op] = (self.workdir / f"{op}.bridge", self.workdir / f"{op}.ip")
                files[op][0].write_text(br)
                files[op][1].write_text(ip)
            for _ in range(reps):
                times["add"]["meshd"].append(await self.pass_(rec, self.views, "add"))
                self.expect(True, "add", "meshd")
                first.append(await self.pass_(rec, None, "noop"))
                for _ in range(NOOP_PASSES):
                    times["noop"]["meshd"].append(await self.pass_(rec, None, "noop"))
                self.expect(True, "noop", "meshd")
                times["remove"]["meshd"].append(await self.pass_(rec, [], "remove"))
                self.expect(False, "remove", "meshd")

                times["add"]["ip"].append(self.ip_batch("add", files))
                self.expect(True, "add", "ip -batch")
                times["noop"]["ip"].append(self.ip_reads())
                self.expect(True, "noop", "ip -batch")
                times["remove"]["ip"].append(self.ip_batch("remove", files))
                self.expect(False, "remove", "ip -batch")
        finally:
            await rec.close()
        rows = []
        for op in ("add", "noop", "remove"):
            m = statistics.median(times[op]["meshd"])
            i = statistics.median(times[op]["ip"])
            row = {
                "bench": "netlink",
                "backend": self.backend,
                "n": self.n,
                "op": op,
                "meshd_s": round(m, 5),
                "ip_batch_s": round(i, 5),
                "ratio": round(m / i, 3),
                "objects": self.objects(),
                "reps": reps,
                "kernel_meshd": self.seen[(op, "meshd")],
                "kernel_ip_batch": self.seen[(op, "ip -batch")],
            }
            if op == "noop":
                row["meshd_first_s"] = round(statistics.median(first), 5)
            rows.append(row)
        return rows

    async def pass_(self, rec: Reconciler, views: list[PeerView] | None, op: str) -> float:
        """One timed pass; ``views`` (None: the table is unchanged, as for a resync or a kernel
        event) are handed over first, untimed, as the daemon does on membership events."""
        if views is not None:
            rec.set_peers(views, synced=True, now=time.monotonic())
        t = time.perf_counter()
        plan = await rec.reconcile_now(f"bench {op}")
        took = time.perf_counter() - t
        st = rec.status()
        if st["last_error"] is not None:
            raise SystemExit(f"meshd {op}: {st['last_error']}")
        done = sum(st["applied_last"].values())
        want = 0 if op == "noop" else self.objects()
        if done != want or (op == "noop" and not plan.empty):
            raise SystemExit(f"meshd {op}: applied {st['applied_last']}, want {want} objects")
        return took


# --- the monitor: decoding the notification flood -------------------------------------------------


async def monitor_bench(lab: Lab, n: int, reps: int, workdir: Path) -> dict[str, Any]:
    """Record the notifications of adding and deleting ``n`` vxlan peers, then time decoding
    them with meshd's path and with pyroute2's."""
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    from meshd.dataplane import netlink, rtnl_wire
    from meshd.dataplane.rtnl import Monitor

    ns = lab.hosts[0].ns
    dev = "bnlmon"
    sh(
        [
            "ip",
            "-n",
            ns,
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            "77",
            "dstport",
            "4777",
            "nolearning",
        ]
    )
    sh(["ip", "-n", ns, "link", "set", dev, "up"])
    peers = [
        (
            f"10.{j >> 8}.{j & 255}.0",
            f"02:00:00:00:{j >> 8:02x}:{j & 255:02x}",
            f"100.64.{j >> 8}.{j & 255}",
        )
        for j in range(2, n + 2)
    ]
    fdb_add = "".join(f"fdb replace {m} dev {dev} dst {u} self permanent\n" for _, m, u in peers)
    ip_add = "".join(f"neigh replace {g} lladdr {m} dev {dev} nud permanent\n" for g, m, _ in peers)
    ip_add += "".join(
        f"route add {g}/24 via {g} dev {dev} onlink proto {RTPROT_MESHD}\n" for g, _, _ in peers
    )
    ip_del = "".join(
        f"route del {g}/24 proto {RTPROT_MESHD}\nneigh del {g} dev {dev}\n" for g, _, _ in peers
    )
    fdb_del = "".join(f"fdb del {m} dev {dev} dst {u} self\n" for _, m, u in peers)
    files = {}
    for name, text in (
        ("fdb_add", fdb_add),
        ("ip_add", ip_add),
        ("ip_del", ip_del),
        ("fdb_del", fdb_del),
    ):
        files[name] = workdir / f"monitor.{name}"
        files[name].write_text(text)
    sentinel = "10.255.255.0/24"

    mon = Monitor(ns, netlink.MONITOR_GROUPS)
    mon.open()
    datagrams: list[bytes] = []
    overflows = 0
    try:

        async def program() -> None:
            for tool, name in (
                ("bridge", "fdb_add"),
                ("ip", "ip_add"),
                ("ip", "ip_del"),
                ("bridge", "fdb_del"),
            ):
                proc = await asyncio.create_subprocess_exec(
                    tool, "-n", ns, "-batch", str(files[name])
                )
                if await proc.wait() != 0:
                    raise SystemExit(f"monitor bench: {tool} -batch {name} failed")
            for op in ("add", "del"):
                proc = await asyncio.create_subprocess_exec(
                    "ip", "-n", ns, "route", op, sentinel, "dev", dev
                )
                await proc.wait()

        writer = asyncio.create_task(program())
        seen_end = False
        while not seen_end:  # until the sentinel's deletion: the last notification asked for
            try:
                data = await asyncio.wait_for(mon.read(), 30)
            except OSError:
                overflows += 1
                continue
            datagrams.append(data)
            seen_end = any(
                e is not None and e.kind == "route" and not e.new and e.dst == sentinel
                for e in (
                    netlink._event(k, data, o, z)
                    for k, _, o, z in rtnl_wire.messages(data, len(data))
                )
            )
        await writer
    finally:
        mon.close()
        sh(["ip", "-n", ns, "link", "del", dev])

    def ours() -> int:
        count = 0
        for data in datagrams:
            for kind, _, off, end in rtnl_wire.messages(data, len(data)):
                count += netlink._event(kind, data, off, end) is not None
        return count

    marshal = MarshalRtnl()

    def theirs() -> int:
        # pyroute2's monitor: parse each datagram, then reduce each message as netlink.py did
        # when it read its events through pyroute2 (before 28c2cbc).
        count = 0
        for data in datagrams:
            for msg in marshal.parse(data):
                ev = msg.get("event")
                if ev in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                    count += msg["family"] == 2 and bool(
                        (msg.get("oif"), msg.get("dst"), msg["dst_len"], msg["proto"])
                    )
                elif ev in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
                    count += bool((msg["ifindex"], msg.get("dst"), msg.get("lladdr"), msg["state"]))
                elif ev in ("RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR", "RTM_DELADDR"):
                    count += bool((msg["index"], msg.get("ifname"), msg.get("address")))
        return count

    t_ours: list[float] = []
    t_theirs: list[float] = []
    events = 0
    for _ in range(reps):
        t = time.perf_counter()
        events = ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        parsed = theirs()
        t_theirs.append(time.perf_counter() - t)
        if parsed != events:
            raise SystemExit(f"monitor bench: meshd decoded {events} events, pyroute2 {parsed}")
    if events < 6 * n:
        raise SystemExit(
            f"monitor bench: {events} events recorded, want >= {6 * n} ({overflows} overflows)"
        )
    m, p = statistics.median(t_ours), statistics.median(t_theirs)
    return {
        "bench": "netlink",
        "op": "monitor",
        "n": n,
        "events": events,
        "datagrams": len(datagrams),
        "overflows": overflows,
        "meshd_s": round(m, 5),
        "pyroute2_s": round(p, 5),
        "ratio": round(p / m, 1),
        "reps": reps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 5000], help="peer counts")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the median is printed")
    ap.add_argument(
        "--backends", nargs="+", default=["vxlan", "host-gw"], choices=["vxlan", "host-gw"]
    )
    ap.add_argument("--smoke", action="store_true", help="n = 100, one repetition (CI)")
    ap.add_argument("--prefix", default=f"bnl{os.getpid() % 100000}", help="lab prefix")
    ap.add_argument(
        "--monitor",
        action="store_true",
        help="time decoding the notifications instead (meshd's path vs pyroute2's)",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.reps = [100], 1
    if os.geteuid() != 0:
        print("bench_netlink: needs root (network namespaces)", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="bench-netlink-") as tmp,
        Lab(args.prefix, hosts=1, underlay=UNDERLAY, pod_network=NETWORK) as lab,
    ):
        if args.monitor:
            for n in args.n:
                row = asyncio.run(monitor_bench(lab, n, args.reps, Path(tmp)))
                print(json.dumps(row), flush=True)
            return 0
        for backend in args.backends:
            for n in args.n:
                for row in asyncio.run(Bench(lab, backend, n, Path(tmp)).run(args.reps)):
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
