"""Simulated hosts in network namespaces: the article's topology on one machine.

Flat (default): one L2 segment, the underlay namespace ``<p>-ul`` holding bridge ``ulbr``::

    <p>-c1  eth0 10.244.1.2 ─veth─ veth0 ┐                         ┌ port h1 ┐
                                         br 10.244.1.1   <p>-h1  eth0 10.99.0.1 ┘         │
    <p>-c2  eth0 10.244.2.2 ─veth─ veth0 ┐                         ┌ port h2 ├ ulbr  (<p>-ul)
                                         br 10.244.2.1   <p>-h2  eth0 10.99.0.2 ┘         │
    ...                                                                                   ┘

Routed (``routed=True``): two L2 segments, bridge ``ulbr`` (10.99.1.0/24) and ``ulbr2``
(10.99.2.0/24), both in ``<p>-ul``, joined by router namespace ``<p>-rt`` (eth1/eth2, the last
usable address of each segment, IP forwarding on). Odd hosts sit on segment 1, even hosts on
segment 2, so h1 (the seed) and h2 are never neighbours; every host's default route points at the
router. host-gw cannot work across the router (its next hop is not on-link), the tunnels must.

Host *i* (1-based) has underlay address ``<segment network> + i``, pod subnet the *i*-th /24 of
``pod_network`` (10.244.i.0/24), the bridge ``br`` holding the subnet's first address, and one
container namespace whose ``eth0`` has the second address and a default route via the bridge.
IPv4 forwarding is on in every host. The cross-host plumbing is left to whatever is under test.

``cni=True`` leaves each host's pod side to a CNI plugin: no bridge ``br``, and the container
namespace holds only ``lo`` until a plugin (``meshd.lab.cni``) attaches it as a pod.
``outside=True`` adds namespace ``<p>-out`` on segment 1 of the underlay at ``outside_ip`` (the
segment's third-last address; on a dual-stack underlay ``outside_ip6`` as well): a machine outside
the cluster network with no route to the pods, which pods reach only when masqueraded.

Everything is built with ``ip -batch`` (one process per namespace rather than per command: process
creation dominates, ~0.1-0.2 s each inside a UML guest) and host namespaces are configured in
parallel. ``teardown()`` removes everything this object created, also after a partial build: the
processes it spawned (and any other process left inside its namespaces), the namespaces (which takes
every link, route and nft table inside with them) and its scratch directory.

:class:`Topology` is the network and its lifecycle; the lab's checks (``probes``) and daemons
(``daemons``) build on it, and :class:`meshd.lab.Lab` is all three.

Only stdlib and the ``ip`` command are used, so the module also runs inside the UML guest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from meshd import neightable
from meshd.errors import LabError
from meshd.lab.hosts import (
    NO_DAD,
    UNDERLAY_FAMILIES,
    Host,
    addr_line,
    bridge_lines,
    container_batch,
    default_dst,
    forwarding_script,
    host_gw_routes,
    nth_last,
    span,
)
from meshd.lab.namespaces import (
    Processes,
    delete_namespaces,
    kill_pids,
    leftover_namespaces,
    netns_exists,
    netns_pids,
    ns_exec,
    start_time,
)

STATE_DIR = Path(os.environ.get("MESHD_LAB_STATE_DIR", "/run/meshd-lab"))
"""Where a kept lab (``keep=True`` / ``detach()``) records its namespaces, processes, workdir."""
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$|^[a-z]$")
_MAX_PARALLEL = 16  # concurrent ip/ping processes; beyond this, CPU (not latency) is the limit


class Topology(Processes):
    """N simulated hosts in network namespaces; a context manager that always cleans up.

    ``with Topology("t1", hosts=3) as t:`` builds on entry and tears down on exit (unless ``keep``
    and no exception: then the lab is detached and left running for ``down(prefix)``).
    """

    def __init__(
        self,
        prefix: str = "mlab",
        hosts: int = 3,
        *,
        routed: bool = False,
        underlay: str = "10.99.0.0/24",
        segments: tuple[str, str] = ("10.99.1.0/24", "10.99.2.0/24"),
        pod_network: str = "10.244.0.0/16",
        subnet_prefixlen: int = 24,
        mtu: int = 1500,
        workdir: str | Path | None = None,
        keep: bool = False,
        cni: bool = False,
        outside: bool = False,
        ipv6: bool = False,
        underlay_family: str = "ipv4",
        underlay6: str = "fd00:99::/64",
        segments6: tuple[str, str] = ("fd00:99:1::/64", "fd00:99:2::/64"),
        pod_network6: str = "fd00:10:244::/56",
        subnet_prefixlen6: int = 64,
    ) -> None:
        """Plan the lab (nothing is created before :meth:`build`).

        ``underlay`` is the flat segment, ``segments`` the two of a ``routed`` lab; host *i*
        gets address *i* in its segment and the *i*-th ``/subnet_prefixlen`` of ``pod_network``.
        ``mtu`` is the underlay cables' (the pod side keeps 1500). ``workdir`` holds logs,
        sockets and daemon state (default: a fresh directory in /tmp, removed on teardown; a
        given one is kept). ``keep``: leave the lab running when the ``with`` block ends
        normally (see :meth:`detach`). ``cni``, ``outside``: see the module docstring.

        ``ipv6``: dual-stack pods, host *i* also gets the *i*-th ``/subnet_prefixlen6`` of
        ``pod_network6``. ``underlay_family``: ``ipv4`` (``underlay``/``segments``), ``ipv6``
        (``underlay6``/``segments6`` only: no IPv4 address on the underlay, hosts and router
        included) or ``dual`` (both; ``underlay_ip`` is the IPv4 one, ``underlay_ip6`` the
        other).
        """
        if not _PREFIX_RE.match(prefix):
            raise LabError(f"lab prefix {prefix!r}: use 1-20 lowercase letters, digits, dashes")
        if hosts < 1:
            raise LabError("a lab needs at least one host")
        if underlay_family not in UNDERLAY_FAMILIES:
            raise LabError(
                f"underlay family {underlay_family!r}: one of {', '.join(UNDERLAY_FAMILIES)}"
            )
        self.prefix = prefix
        self.routed = routed
        self.mtu = mtu
        self.keep = keep
        self.cni = cni
        self.ipv6 = ipv6
        self.underlay_family = underlay_family
        self.ul_ns = f"{prefix}-ul"
        self.outside_ns: str | None = f"{prefix}-out" if outside else None
        self.router_ns: str | None = f"{prefix}-rt" if routed else None
        # Per family, the underlay segment(s): the first family listed is the one gossip uses.
        fams: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        if underlay_family in ("ipv4", "dual"):
            fams[4] = [ipaddress.IPv4Network(s) for s in (segments if routed else (underlay,))]
        if underlay_family in ("ipv6", "dual"):
            fams[6] = [ipaddress.IPv6Network(s) for s in (segments6 if routed else (underlay6,))]
        self._underlay_nets = fams
        primary = 4 if 4 in fams else 6
        nets = fams[primary]
        self.segments = nets
        self.router_ips = [nth_last(n, 2) for n in nets] if routed else []
        self.router_ips6 = [nth_last(n, 2) for n in fams[6]] if routed and len(fams) == 2 else []
        self.outside_ip: str | None = nth_last(nets[0], 3) if outside else None
        # On a dual-stack underlay the outside machine has an address of each family too.
        self.outside_ip6: str | None = (
            nth_last(fams[6][0], 3) if outside and len(fams) == 2 else None
        )
        pods = ipaddress.IPv4Network(pod_network)
        self.pod_network = str(pods)
        if subnet_prefixlen < pods.prefixlen or subnet_prefixlen > 30:
            raise LabError(f"subnet /{subnet_prefixlen} does not fit in {pods}")
        if hosts >= 2 ** (subnet_prefixlen - pods.prefixlen):
            raise LabError(f"{hosts} hosts do not fit in {pods} with /{subnet_prefixlen} subnets")
        pods6 = ipaddress.IPv6Network(pod_network6)
        self.pod_network6: str | None = str(pods6) if ipv6 else None
        if ipv6:
            if not pods6.prefixlen <= subnet_prefixlen6 <= 126:
                raise LabError(f"subnet /{subnet_prefixlen6} does not fit in {pods6}")
            if hosts >= 2 ** min(subnet_prefixlen6 - pods6.prefixlen, 24):
                raise LabError(
                    f"{hosts} hosts do not fit in {pods6} with /{subnet_prefixlen6} subnets"
                )
        sub_size = 2 ** (32 - subnet_prefixlen)
        self.hosts: list[Host] = []
        for i in range(1, hosts + 1):
            seg = 2 if routed and i % 2 == 0 else 1
            addrs: dict[int, tuple[str, int]] = {}
            for fam, fnets in fams.items():
                net = fnets[seg - 1]
                # Host i keeps address i on whichever segment it sits; the router takes the
                # last but one, the outside machine the third-last.
                if i >= span(net) - (3 if routed or outside else 1):
                    raise LabError(f"{hosts} hosts do not fit in underlay {net}")
                addrs[fam] = (str(net[i]), net.prefixlen)
            sub = ipaddress.IPv4Network(
                (int(pods.network_address) + i * sub_size, subnet_prefixlen)
            )
            v6: dict[str, str | None] = {}
            if ipv6:
                sub6 = ipaddress.IPv6Network(
                    (int(pods6.network_address) + (i << (128 - subnet_prefixlen6)),
                     subnet_prefixlen6)
                )  # fmt: skip
                v6 = {"subnet6": str(sub6), "gateway6": str(sub6[1]),
                      "container_ip6": str(sub6[2])}  # fmt: skip
            second = addrs.get(6) if len(addrs) == 2 else None
            self.hosts.append(
                Host(
                    index=i,
                    name=f"h{i}",
                    ns=f"{prefix}-h{i}",
                    container_ns=f"{prefix}-c{i}",
                    underlay_ip=addrs[primary][0],
                    underlay_prefixlen=addrs[primary][1],
                    segment=seg,
                    port=f"h{i}",
                    subnet=str(sub),
                    gateway=str(sub[1]),
                    container_ip=str(sub[2]),
                    router_ip=self.router_ips[seg - 1] if routed else None,
                    underlay_ip6=second[0] if second else None,
                    underlay_prefixlen6=second[1] if second else None,
                    router_ip6=self.router_ips6[seg - 1] if self.router_ips6 else None,
                    **v6,
                )
            )
        super().__init__()
        self._own_workdir = workdir is None
        self._workdir: Path | None = Path(workdir) if workdir is not None else None
        self._created: list[str] = []  # namespaces this object may delete
        self._detached = False
        self._port_seq = 0
        self._neigh: dict[str, list[int]] | None = None  # thresholds raised: saved and set
        self.build_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self.build()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keep and exc_type is None:
            self.detach()
        else:
            self.teardown()

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab, in creation order."""
        names = [self.ul_ns]
        if self.router_ns:
            names.append(self.router_ns)
        if self.outside_ns:
            names.append(self.outside_ns)
        for h in self.hosts:
            names += [h.ns, h.container_ns]
        return names

    @property
    def neighbour_thresholds(self) -> dict[str, list[int]] | None:
        """gc_thresh1/2/3 this lab raised (``saved``: what it found, ``set``), or None."""
        return self._neigh

    @property
    def workdir(self) -> Path:
        """Scratch directory (logs, sockets, daemon state); created on first use."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"meshd-lab-{self.prefix}-"))
        else:
            self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir

    def host(self, name_or_index: str | int) -> Host:
        for h in self.hosts:
            if name_or_index in (h.name, h.index, h.ns):
                return h
        raise LabError(f"no host {name_or_index!r} in lab {self.prefix}")

    def build(self) -> Self:
        """Create every namespace and link; on any failure, remove what was made and raise."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        if shutil.which("ip") is None:
            raise LabError("the lab needs iproute2 (apt-get install iproute2)")
        taken = [n for n in self.namespaces if netns_exists(n)]
        if taken:
            raise LabError(
                f"namespace {taken[0]} already exists: a lab with prefix {self.prefix!r} is "
                f"running or was left behind (remove it with meshd.lab.topology.down"
                f"({self.prefix!r}); for the default prefix: meshd lab down)"
            )
        t0 = time.monotonic()
        names = self.namespaces
        res = ns_exec(
            None, ["ip", "-batch", "-"], input=_lines(f"netns add {n}" for n in names), check=False
        )
        # Ours are the names this batch created: all of them, or those before the line that
        # failed ("Command failed -:N"; e.g. a concurrent run took that name meanwhile).
        failed = re.search(r"Command failed -:(\d+)", res.stderr)
        self._created = (
            names if res.returncode == 0 else names[: int(failed[1]) - 1] if failed else []
        )
        try:
            if res.returncode != 0:
                err = (res.stderr.strip().splitlines() or ["no output"])[0]
                raise LabError(f"cannot create the lab's namespaces: {err}")
            # Before any link: one kernel holds every namespace's neighbour entries.
            families = {"ipv4": (4,), "ipv6": (4, 6), "dual": (4, 6)}[self.underlay_family]
            self._neigh = raise_neighbour_table(len(self.hosts), families)
            self._build_underlay()
            self._parallel(self._build_host, self.hosts)
        except BaseException:
            self.teardown()
            raise
        self.build_seconds = time.monotonic() - t0
        return self

    def _build_underlay(self) -> None:
        ul = ["link set lo up", *bridge_lines("ulbr", self._has6)]
        if self.routed:
            ul += bridge_lines("ulbr2", self._has6)
        for h in self.hosts:
            br = "ulbr2" if h.segment == 2 else "ulbr"
            # One cable per host: port h<i> on the switch, "eth0" inside the host.
            ul += [
                f"link add name {h.port} mtu {self.mtu} type veth peer name eth0 mtu {self.mtu} "
                f"netns {h.ns}",
                f"link set dev {h.port} master {br} up",
            ]
        if self.router_ns:
            for seg, br in ((1, "ulbr"), (2, "ulbr2")):
                ul += [
                    f"link add name rt{seg} mtu {self.mtu} type veth peer name eth{seg} "
                    f"mtu {self.mtu} netns {self.router_ns}",
                    f"link set dev rt{seg} master {br} up",
                ]
        if self.outside_ns:
            ul += [
                f"link add name out mtu {self.mtu} type veth peer name eth0 mtu {self.mtu} "
                f"netns {self.outside_ns}",
                "link set dev out master ulbr up",
            ]
        ns_exec(self.ul_ns, ["ip", "-batch", "-"], input=_lines(ul))
        if self.outside_ns:
            out = [
                "link set lo up",
                addr_line(f"{self.outside_ip}/{self.segments[0].prefixlen}", "eth0"),
            ]
            if self.outside_ip6 is not None:
                out.append(addr_line(f"{self.outside_ip6}/{self._underlay_nets[6][0].prefixlen}",
                                     "eth0"))  # fmt: skip
            out.append("link set dev eth0 up")
            if self.routed:  # hosts on segment 2 reach it through the router
                for via in (self.router_ips[0], *self.router_ips6[:1]):
                    out.append(f"route add {default_dst(via)} via {via} dev eth0")
            script = (NO_DAD if self._has6 else "") + "exec ip -batch -"
            ns_exec(self.outside_ns, ["sh", "-c", script], input=_lines(out))
        if self.router_ns:
            rt = ["link set lo up"]
            for nets in self._underlay_nets.values():
                for seg, net in enumerate(nets, start=1):
                    rt.append(addr_line(f"{nth_last(net, 2)}/{net.prefixlen}", f"eth{seg}"))
            rt += ["link set dev eth1 up", "link set dev eth2 up"]
            script = forwarding_script(4 in self._underlay_nets, self._has6) + "exec ip -batch -"
            ns_exec(self.router_ns, ["sh", "-c", script], input=_lines(rt))

    @property
    def _has6(self) -> bool:
        """IPv6 anywhere in the lab (underlay or pods): forwarding on, no multicast snooping."""
        return self.ipv6 or 6 in self._underlay_nets

    def _build_host(self, h: Host) -> None:
        prefixlen = ipaddress.IPv4Network(h.subnet).prefixlen
        host = ["link set lo up", addr_line(h.underlay_cidr, "eth0")]
        if h.underlay_ip6 is not None:
            host.append(addr_line(f"{h.underlay_ip6}/{h.underlay_prefixlen6}", "eth0"))
        host.append("link set dev eth0 up")
        ctr = ["link set lo up"]
        if not self.cni:
            host += [
                # "br" alone parses as the keyword "broadcast": always "name br" / "dev br".
                *bridge_lines("br", self._has6),
                f"addr add {h.gateway}/{prefixlen} dev br",
                f"link add name veth0 type veth peer name eth0 netns {h.container_ns}",
                "link set dev veth0 master br up",
            ]
            ctr += [
                f"addr add {h.container_ip}/{prefixlen} dev eth0",
                "link set dev eth0 up",
                f"route add default via {h.gateway}",
            ]
            if h.subnet6 is not None:
                plen6 = ipaddress.IPv6Network(h.subnet6).prefixlen
                host.append(addr_line(f"{h.gateway6}/{plen6}", "br"))
                ctr += [
                    addr_line(f"{h.container_ip6}/{plen6}", "eth0"),
                    f"route add ::/0 via {h.gateway6} dev eth0",
                ]
        for router in (h.router_ip, h.router_ip6):
            if router:
                host.append(f"route add {default_dst(router)} via {router} dev eth0")
        # One process chain per host: forwarding (a per-namespace sysctl, off in a new netns, so
        # it must be written from inside), the host batch, then the container's (its eth0 exists
        # only once the host batch has run).
        script = (
            forwarding_script(True, self._has6)
            + f"ip -batch - <<'EOF' || exit 1\n{_lines(host)}EOF\n"
            f"exec {container_batch(h.container_ns, self._has6)} <<'EOF'\n{_lines(ctr)}EOF\n"
        )
        ns_exec(h.ns, ["sh", "-c", script])

    def teardown(self) -> list[str]:
        """Remove everything this lab created; never raises. Returns what could not be undone."""
        problems: list[str] = []
        if self._detached:
            return problems
        self.stop_processes()
        for ns in self._created:
            if netns_exists(ns):
                # Anything else living in our namespaces (a child a daemon forked, a tcpdump a
                # test started through exec) would keep the namespace alive after "netns del".
                with contextlib.suppress(LabError):
                    kill_pids(netns_pids(ns))
        try:
            delete_namespaces(self._created)
        except LabError as exc:
            problems.append(str(exc))
        problems += [f"namespace {n} still exists" for n in self._created if netns_exists(n)]
        self._created = []
        if self._neigh is not None:
            problems += restore_neighbour_table(self._neigh)
            self._neigh = None
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        (STATE_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
        return problems

    def detach(self) -> Path:
        """Leave the lab running for ``down(prefix)``: record it in a state file and forget it."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        pids = {str(p.pid): start_time(p.pid) for p in self.running()}
        state = {
            "prefix": self.prefix,
            "namespaces": self._created,
            "pids": pids,
            "workdir": str(self._workdir) if self._workdir and self._own_workdir else None,
            "neighbours": self._neigh,
        }
        path = STATE_DIR / f"{self.prefix}.json"
        path.write_text(json.dumps(state, indent=1))
        self._detached = True
        return path

    # ------------------------------------------------------------------ plumbing

    def readdress(self, host: Host, subnet: str, subnet6: str | None = None) -> Host:
        """Move ``host``'s pod side to ``subnet`` (and, dual-stack, ``subnet6``; None keeps the
        current one): subnets its daemon allocated. The bridge takes the first address of each,
        the container the second and its default routes via the bridge. Returns the updated
        host, which replaces ``host`` in ``hosts``."""
        net = ipaddress.IPv4Network(subnet)
        new = replace(host, subnet=str(net), gateway=str(net[1]), container_ip=str(net[2]))
        if subnet6 is not None and host.subnet6 is not None:
            net6 = ipaddress.IPv6Network(subnet6)
            new = replace(new, subnet6=str(net6), gateway6=str(net6[1]),
                          container_ip6=str(net6[2]))  # fmt: skip
        if new == host:
            return host
        if self.cni:  # the plugin addresses the pod side from subnet.env: nothing to move
            self.hosts[self.hosts.index(host)] = new
            return new
        # Address by address ("addr flush" would take every family's, link-local included).
        hcmds, ccmds = [], []
        if new.subnet != host.subnet:
            plen = ipaddress.IPv4Network(host.subnet).prefixlen
            hcmds += [
                f"addr del {host.gateway}/{plen} dev br",
                f"addr add {new.gateway}/{net.prefixlen} dev br",
            ]
            ccmds += [
                f"addr del {host.container_ip}/{plen} dev eth0",
                f"addr add {new.container_ip}/{net.prefixlen} dev eth0",
                f"route replace default via {new.gateway}",
            ]
        if new.subnet6 is not None and new.subnet6 != host.subnet6:
            plen6 = ipaddress.IPv6Network(new.subnet6).prefixlen
            hcmds += [
                f"addr del {host.gateway6}/{plen6} dev br",
                addr_line(f"{new.gateway6}/{plen6}", "br"),
            ]
            ccmds += [
                f"addr del {host.container_ip6}/{plen6} dev eth0",
                addr_line(f"{new.container_ip6}/{plen6}", "eth0"),
                f"route replace ::/0 via {new.gateway6} dev eth0",
            ]
        ns_exec(host.ns, ["ip", "-batch", "-"], input=_lines(hcmds))
        ns_exec(host.container_ns, ["ip", "-batch", "-"], input=_lines(ccmds))
        self.hosts[self.hosts.index(host)] = new
        return new

    def set_rp_filter(self, mode: int) -> None:
        """Set rp_filter (0 off, 1 strict, 2 loose) on every host, for all/default and every
        existing device: the kernel uses max(all, device), so setting "all" alone can't lower it."""
        if mode not in (0, 1, 2):
            raise LabError(f"rp_filter mode must be 0, 1 or 2, not {mode}")
        script = f"for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo {mode} > $f; done"
        self._parallel(lambda h: ns_exec(h.ns, ["sh", "-c", script]), self.hosts)

    def add_host_gw_routes(self) -> None:
        """Static host-gw plumbing (route to every peer subnet via its underlay IP, onlink):
        the article's first recipe, for tests of the lab itself. Flat labs only.

        Per pod family: IPv6 subnets via the peer's IPv6 underlay address (none on an IPv4-only
        underlay: the kernel has no IPv6 route via an IPv4 next hop), IPv4 subnets via its IPv4
        one, or over an IPv6-only underlay ``via inet6`` (RFC 5549)."""
        for h in self.hosts:
            routes = [r for p in self.hosts if p is not h for r in host_gw_routes(p)]
            if routes:
                ns_exec(h.ns, ["ip", "-batch", "-"], input=_lines(routes))

    # ------------------------------------------------------------------ helpers

    def _next_port(self) -> int:
        # Ports for one-off checks: distinct within this lab, away from the gossip port.
        self._port_seq += 1
        return 20000 + (os.getpid() + self._port_seq) % 20000

    def _parallel(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(items))) as pool:
            return list(pool.map(fn, items))


def down(prefix: str) -> list[str]:
    """Remove a lab left running (``keep=True``) or half-built by a crashed run; return the
    namespaces removed. Only names this module would generate for ``prefix`` are touched, and
    only processes recorded in its state file or living inside those namespaces are killed."""
    state_file = STATE_DIR / f"{prefix}.json"
    workdir: str | None = None
    neigh: Any = None
    if state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        # A recorded pid counts only if it is still the same process (same start time).
        recorded = [int(p) for p, t in state.get("pids", {}).items() if start_time(int(p)) == t]
        kill_pids(recorded)
        workdir = state.get("workdir")
        neigh = state.get("neighbours")
    names = leftover_namespaces(prefix)
    for ns in names:
        kill_pids(netns_pids(ns))
    delete_namespaces(names)
    if isinstance(neigh, dict):
        restore_neighbour_table(neigh)
    if workdir and Path(workdir).name.startswith(f"meshd-lab-{prefix}-"):
        shutil.rmtree(workdir, ignore_errors=True)
    state_file.unlink(missing_ok=True)
    return names


def raise_neighbour_table(
    hosts: int, families: tuple[int, ...] = (4,)
) -> dict[str, list[int]] | None:
    """Raise the machine's neighbour thresholds (root namespace) of each of ``families`` (the
    underlay's: ARP for IPv4, NDP for IPv6) if a full mesh of ``hosts`` on this kernel needs it;
    returns what to restore (``saved``/``set``, ``saved6``/``set6``) or None if nothing
    changed. Sends past gc_thresh3 fail with ENOBUFS: beyond ~30 hosts every mesh breaks."""
    record: dict[str, list[int]] = {}
    for fam in families:
        names, suffix = _NEIGH_SYSCTLS[fam]
        cur = neightable.read(names)
        new = None if cur is None else neightable.raised(cur, neightable.lab_entries(hosts))
        if cur is None or new is None:
            continue
        try:
            neightable.write(new, names)
        except OSError as exc:
            restore_neighbour_table(record)
            raise LabError(
                f"{hosts} hosts on one kernel need a larger neighbour table: "
                f"{neightable.sysctl_command(new, names)} failed ({exc.strerror})"
            ) from None
        record[f"saved{suffix}"], record[f"set{suffix}"] = list(cur), list(new)
    return record or None


_NEIGH_SYSCTLS = {4: (neightable.SYSCTLS, ""), 6: (neightable.SYSCTLS6, "6")}


def restore_neighbour_table(record: dict[str, list[int]]) -> list[str]:
    """Put back the thresholds ``raise_neighbour_table`` found, per family, unless someone
    changed them since (another lab, an operator): then theirs stay. Returns problems; never
    raises."""
    problems: list[str] = []
    for names, suffix in _NEIGH_SYSCTLS.values():
        if f"saved{suffix}" not in record and f"set{suffix}" not in record:
            continue
        try:
            a, b, c = (int(x) for x in record[f"saved{suffix}"])
            was_set = tuple(int(x) for x in record[f"set{suffix}"])
        except (KeyError, TypeError, ValueError):
            problems.append("neighbour thresholds: unreadable record, not restored")
            continue
        if neightable.read(names) != was_set:
            continue
        try:
            neightable.write((a, b, c), names)
        except OSError as exc:
            problems.append(
                f"cannot restore {neightable.sysctl_command((a, b, c), names)}: {exc.strerror}"
            )
    return problems
    try:
        neightable.write((a, b, c))
    except OSError as exc:
        return [f"cannot restore {neightable.sysctl_command((a, b, c))}: {exc.strerror}"]
    return []


@contextlib.contextmanager
def raised_neighbour_table(hosts: int) -> Iterator[dict[str, list[int]] | None]:
    """``raise_neighbour_table`` for a block (namespaces made by something other than a
    :class:`Topology`, such as the memberlist anchor's), restored on the way out."""
    record = raise_neighbour_table(hosts)
    try:
        yield record
    finally:
        if record is not None:
            restore_neighbour_table(record)


def _lines(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


__all__ = [
    "STATE_DIR",
    "UNDERLAY_FAMILIES",
    "Host",
    "Topology",
    "down",
    "raise_neighbour_table",
    "raised_neighbour_table",
    "restore_neighbour_table",
]
