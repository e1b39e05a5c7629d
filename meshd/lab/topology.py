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

Everything is built with ``ip -batch`` (one process per namespace rather than per command: process
creation dominates, ~0.1-0.2 s each inside a UML guest) and host namespaces are configured in
parallel. ``teardown()`` removes everything this object created, also after a partial build: the
processes it spawned (and any other process left inside its namespaces), the namespaces (which takes
every link, route and nft table inside with them) and its scratch directory.

Only stdlib and the ``ip``/``ping`` commands are used, so the module also runs inside the UML guest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from meshd.errors import LabError

NETNS_DIR = Path("/run/netns")
STATE_DIR = Path(os.environ.get("MESHD_LAB_STATE_DIR", "/run/meshd-lab"))
"""Where a kept lab (``keep=True`` / ``detach()``) records its namespaces, processes, workdir."""
NETTOOL = Path(__file__).with_name("nettool.py")
DEFAULT_GOSSIP_PORT = 7950
"""Same as meshd.config.DEFAULT_PORT (not imported: the lab depends on nothing of the daemon)."""
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$|^[a-z]$")
_PING_MANY_FROM = 10  # hosts; see Lab.ping_matrix
_MAX_PARALLEL = 16  # concurrent ip/ping processes; beyond this, CPU (not latency) is the limit


def _ns_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-(ul|rt|h\d+|c\d+)$")


@dataclass(frozen=True)
class Host:
    """One simulated host. Addresses are strings; ``subnet`` is a CIDR."""

    index: int
    name: str  # h1, h2, ...: also the meshd node name
    ns: str  # <prefix>-h<i>
    container_ns: str  # <prefix>-c<i>
    underlay_ip: str
    underlay_prefixlen: int
    segment: int  # 1, or 2 for even hosts of a routed lab
    port: str  # this host's port (veth end) on the underlay bridge, in <prefix>-ul
    subnet: str
    gateway: str  # first address of the subnet, on bridge "br"
    container_ip: str
    router_ip: str | None  # next hop of the default route in a routed lab

    @property
    def underlay_cidr(self) -> str:
        return f"{self.underlay_ip}/{self.underlay_prefixlen}"


@dataclass
class Daemon:
    """A ``meshd join`` process started by :meth:`Lab.start_daemon`."""

    host: Host
    argv: list[str]
    workdir: Path
    log_path: Path
    socket_path: Path
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (None: the caller's own namespace)."""
    return [*argv] if ns is None else ["ip", "netns", "exec", ns, *argv]


def ns_exec(
    ns: str | None,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 60.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``ns`` and wait; with ``check``, a failure raises LabError naming it."""
    full = ns_argv(ns, argv)
    try:
        res = subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"cannot run {full[0]}: not installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {shlex.join(full)}") from exc
    if check and res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(
            f"{shlex.join(full)} failed (rc={res.returncode}): {err[-1] if err else 'no output'}"
        )
    return res


def leftover_namespaces(prefix: str) -> list[str]:
    """Namespaces named like a lab with ``prefix`` would name them (to assert a clean teardown)."""
    if not NETNS_DIR.is_dir():
        return []
    pat = _ns_pattern(prefix)
    return sorted(n for n in os.listdir(NETNS_DIR) if pat.match(n))


def netns_pids(ns: str) -> list[int]:
    res = ns_exec(None, ["ip", "netns", "pids", ns], check=False, timeout=10)
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def _kill_pids(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    pending = set(pids) - {os.getpid()}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = {p for p in pending if _pid_alive(p)}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        # A zombie still "exists" for kill(0); it is dead for our purposes.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, identifies one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def delete_namespaces(names: Iterable[str]) -> None:
    """Delete those of ``names`` that exist, in one ``ip -batch`` (``-force``: keep going)."""
    present = [n for n in names if netns_exists(n)]
    if present:
        ns_exec(
            None,
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {n}\n" for n in present),
            check=False,
        )


def down(prefix: str) -> list[str]:
    """Remove a lab left running (``keep=True``) or half-built by a crashed run; return the
    namespaces removed. Only names this module would generate for ``prefix`` are touched, and
    only processes recorded in its state file or living inside those namespaces are killed."""
    state_file = STATE_DIR / f"{prefix}.json"
    workdir: str | None = None
    if state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        # A recorded pid counts only if it is still the same process (same start time).
        recorded = [int(p) for p, t in state.get("pids", {}).items() if _start_time(int(p)) == t]
        _kill_pids(recorded)
        workdir = state.get("workdir")
    names = leftover_namespaces(prefix)
    for ns in names:
        _kill_pids(netns_pids(ns))
    delete_namespaces(names)
    if workdir and Path(workdir).name.startswith(f"meshd-lab-{prefix}-"):
        shutil.rmtree(workdir, ignore_errors=True)
    state_file.unlink(missing_ok=True)
    return names


class Lab:
    """N simulated hosts in network namespaces; a context manager that always cleans up.

    ``with Lab("t1", hosts=3) as lab:`` builds on entry and tears down on exit (unless ``keep``
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
    ) -> None:
        """Plan the lab (nothing is created before :meth:`build`).

        ``underlay`` is the flat segment, ``segments`` the two of a ``routed`` lab; host *i*
        gets address *i* in its segment and the *i*-th ``/subnet_prefixlen`` of ``pod_network``.
        ``mtu`` is the underlay cables' (the pod side keeps 1500). ``workdir`` holds logs,
        sockets and daemon state (default: a fresh directory in /tmp, removed on teardown; a
        given one is kept). ``keep``: leave the lab running when the ``with`` block ends
        normally (see :meth:`detach`).
        """
        if not _PREFIX_RE.match(prefix):
            raise LabError(f"lab prefix {prefix!r}: use 1-20 lowercase letters, digits, dashes")
        if hosts < 1:
            raise LabError("a lab needs at least one host")
        self.prefix = prefix
        self.routed = routed
        self.mtu = mtu
        self.keep = keep
        self.ul_ns = f"{prefix}-ul"
        self.router_ns: str | None = f"{prefix}-rt" if routed else None
        nets = [ipaddress.IPv4Network(s) for s in (segments if routed else (underlay,))]
        self.segments = nets
        self.router_ips = [str(n[-2]) for n in nets] if routed else []
        pods = ipaddress.IPv4Network(pod_network)
        if subnet_prefixlen < pods.prefixlen or subnet_prefixlen > 30:
            raise LabError(f"subnet /{subnet_prefixlen} does not fit in {pods}")
        if hosts >= 2 ** (subnet_prefixlen - pods.prefixlen):
            raise LabError(f"{hosts} hosts do not fit in {pods} with /{subnet_prefixlen} subnets")
        sub_size = 2 ** (32 - subnet_prefixlen)
        self.hosts: list[Host] = []
        for i in range(1, hosts + 1):
            seg = 2 if routed and i % 2 == 0 else 1
            net = nets[seg - 1]
            # Host i keeps address .i on whichever segment it sits; the router takes the last one.
            if i >= net.num_addresses - (2 if routed else 1):
                raise LabError(f"{hosts} hosts do not fit in underlay {net}")
            sub = ipaddress.IPv4Network(
                (int(pods.network_address) + i * sub_size, subnet_prefixlen)
            )
            self.hosts.append(
                Host(
                    index=i,
                    name=f"h{i}",
                    ns=f"{prefix}-h{i}",
                    container_ns=f"{prefix}-c{i}",
                    underlay_ip=str(net[i]),
                    underlay_prefixlen=net.prefixlen,
                    segment=seg,
                    port=f"h{i}",
                    subnet=str(sub),
                    gateway=str(sub[1]),
                    container_ip=str(sub[2]),
                    router_ip=self.router_ips[seg - 1] if routed else None,
                )
            )
        self._own_workdir = workdir is None
        self._workdir: Path | None = Path(workdir) if workdir is not None else None
        self._created: list[str] = []  # namespaces this object may delete
        self._procs: list[subprocess.Popen[bytes]] = []
        self.daemons: dict[str, Daemon] = {}
        self._detached = False
        self._port_seq = 0
        self.build_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lab:
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
        for h in self.hosts:
            names += [h.ns, h.container_ns]
        return names

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

    def build(self) -> Lab:
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
            self._build_underlay()
            self._parallel(self._build_host, self.hosts)
        except BaseException:
            self.teardown()
            raise
        self.build_seconds = time.monotonic() - t0
        return self

    def _build_underlay(self) -> None:
        ul = ["link set lo up", "link add name ulbr type bridge", "link set dev ulbr up"]
        if self.routed:
            ul += ["link add name ulbr2 type bridge", "link set dev ulbr2 up"]
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
        ns_exec(self.ul_ns, ["ip", "-batch", "-"], input=_lines(ul))
        if self.router_ns:
            rt = ["link set lo up"]
            for seg, net in enumerate(self.segments, start=1):
                rt += [
                    f"addr add {self.router_ips[seg - 1]}/{net.prefixlen} dev eth{seg}",
                    f"link set dev eth{seg} up",
                ]
            ns_exec(self.router_ns, ["sh", "-c", _FORWARD_THEN_BATCH], input=_lines(rt))

    def _build_host(self, h: Host) -> None:
        prefixlen = ipaddress.IPv4Network(h.subnet).prefixlen
        host = [
            "link set lo up",
            f"addr add {h.underlay_cidr} dev eth0",
            "link set dev eth0 up",
            # "br" alone parses as the keyword "broadcast": always "name br" / "dev br".
            "link add name br type bridge",
            f"addr add {h.gateway}/{prefixlen} dev br",
            "link set dev br up",
            f"link add name veth0 type veth peer name eth0 netns {h.container_ns}",
            "link set dev veth0 master br up",
        ]
        if h.router_ip:
            host.append(f"route add default via {h.router_ip} dev eth0")
        ctr = [
            "link set lo up",
            f"addr add {h.container_ip}/{prefixlen} dev eth0",
            "link set dev eth0 up",
            f"route add default via {h.gateway}",
        ]
        # One process chain per host: forwarding (a per-namespace sysctl, off in a new netns, so
        # it must be written from inside), the host batch, then the container's (its eth0 exists
        # only once the host batch has run).
        script = (
            "echo 1 > /proc/sys/net/ipv4/ip_forward || exit 1\n"
            f"ip -batch - <<'EOF' || exit 1\n{_lines(host)}EOF\n"
            f"exec ip -n {h.container_ns} -batch - <<'EOF'\n{_lines(ctr)}EOF\n"
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
                    _kill_pids(netns_pids(ns))
        try:
            delete_namespaces(self._created)
        except LabError as exc:
            problems.append(str(exc))
        problems += [f"namespace {n} still exists" for n in self._created if netns_exists(n)]
        self._created = []
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        (STATE_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
        return problems

    def detach(self) -> Path:
        """Leave the lab running for ``down(prefix)``: record it in a state file and forget it."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        pids = {str(p.pid): _start_time(p.pid) for p in self._procs if p.poll() is None}
        state = {
            "prefix": self.prefix,
            "namespaces": self._created,
            "pids": pids,
            "workdir": str(self._workdir) if self._workdir and self._own_workdir else None,
        }
        path = STATE_DIR / f"{self.prefix}.json"
        path.write_text(json.dumps(state, indent=1))
        self._detached = True
        return path

    # ------------------------------------------------------------------ processes

    def exec(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` and wait for it (see :func:`ns_exec`)."""
        return ns_exec(ns, argv, check=check, timeout=timeout, input=input)

    def spawn(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | None = subprocess.DEVNULL,
        stderr: IO[Any] | int | None = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``ns`` in the background; it is killed on teardown.

        ``ip netns exec`` execs the command, so the Popen's pid is the command itself; it leads its
        own session, so teardown can signal the whole process group it creates.
        """
        proc = subprocess.Popen(
            ns_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5.0
    ) -> int | None:
        """Signal ``proc``'s process group, wait up to ``timeout`` (then SIGKILL); return its rc."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def stop_processes(self) -> None:
        """Stop every process :meth:`spawn` started (SIGTERM, then SIGKILL after a grace)."""
        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for d in self.daemons.values():
            d.proc = None

    # ------------------------------------------------------------------ checks

    def ping(self, src_ns: str, dst_ip: str, count: int = 1, timeout: float = 2.0) -> bool:
        """True if ``dst_ip`` answers at least one of ``count`` pings from ``src_ns``."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{timeout:g}", dst_ip]
        res = ns_exec(src_ns, argv, check=False, timeout=count * (timeout + 0.2) + 10)
        return res.returncode == 0

    def ping_matrix(
        self, count: int = 1, timeout: float = 2.0, hosts: Sequence[Host] | None = None
    ) -> dict[tuple[str, str], bool]:
        """Container-to-container reachability for every ordered pair: (src, dst) name -> ok.

        Small labs run one ``ping`` per pair (~10 ms each here). From 10 hosts on, one
        ``nettool ping-many`` per source container: N processes instead of N*(N-1), which
        matters where every exec is slow (20 hosts in the UML guest: ~10 s instead of ~55 s)."""
        hs = list(hosts or self.hosts)
        pairs = [(a, b) for a in hs for b in hs if a is not b]
        if len(hs) < _PING_MANY_FROM and shutil.which("ping") is not None:
            results = self._parallel(
                lambda ab: self.ping(ab[0].container_ns, ab[1].container_ip, count, timeout), pairs
            )
            return {(a.name, b.name): ok for (a, b), ok in zip(pairs, results, strict=True)}

        def from_host(src: Host) -> dict[str, bool]:
            targets = [h.container_ip for h in hs if h is not src]
            res = ns_exec(
                src.container_ns,
                _nettool("ping-many", "--targets", ",".join(targets), "--count", count,
                         "--timeout", float(timeout)),
                check=False,
                timeout=count * timeout + 30,
            )  # fmt: skip
            try:
                return {str(k): bool(v) for k, v in json.loads(res.stdout).items()}
            except (ValueError, AttributeError):
                return {}

        replies = dict(zip((h.name for h in hs), self._parallel(from_host, hs), strict=True))
        return {(a.name, b.name): replies[a.name].get(b.container_ip, False) for a, b in pairs}

    def tcp_transfer(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        nbytes: int = 4 << 20,
        *,
        port: int | None = None,
        timeout: float = 30.0,
    ) -> bool:
        """Send ``nbytes`` random bytes over TCP; True if the receiver's sha256 matches."""
        port = port or self._next_port()
        ready = self.workdir / f"tcp-{port}.ready"
        ready.unlink(missing_ok=True)
        sink = self.spawn(
            dst_ns,
            _nettool("tcp-sink", "--port", port, "--timeout", timeout, "--ready", ready),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_for(ready, 10.0, sink):
                return False
            sent = ns_exec(
                src_ns,
                _nettool(
                    "tcp-send",
                    "--host",
                    dst_ip,
                    "--port",
                    port,
                    "--bytes",
                    nbytes,
                    "--timeout",
                    timeout,
                ),
                check=False,
                timeout=timeout + 10,
            )
            out, _ = sink.communicate(timeout=timeout + 10)
            got = out.decode().strip()
            return sent.returncode == 0 and got != "" and got == sent.stdout.strip()
        except (subprocess.TimeoutExpired, LabError):
            return False
        finally:
            self.stop(sink, signal.SIGKILL)
            ready.unlink(missing_ok=True)

    def udp_count(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        port: int,
        count: int,
        *,
        pps: float = 5000.0,
        settle: float = 0.3,
    ) -> int:
        """Send ``count`` UDP datagrams from ``src_ns``; return how many the sink in ``dst_ns``
        received (to measure injected loss and partitions). The sink is stopped ``settle``
        seconds after the sender is done."""
        tag = f"run{self._next_port()}-"
        ready = self.workdir / f"udp-{tag}.ready"
        sink = self.spawn(
            dst_ns,
            _nettool(
                "udp-sink",
                "--port",
                port,
                "--idle",
                0,
                "--first",
                120,
                "--ready",
                ready,
                "--tag",
                tag,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_for(ready, 10.0, sink):
                raise LabError(f"udp sink on {dst_ns}:{port} did not start")
            ns_exec(
                src_ns,
                _nettool("udp-send", "--host", dst_ip, "--port", port, "--count", count,
                         "--pps", pps, "--tag", tag),
                timeout=count / pps + 30 if pps else 60,
            )  # fmt: skip
            time.sleep(settle)
            sink.send_signal(signal.SIGTERM)
            out, _ = sink.communicate(timeout=10)
            return int(out.decode().strip() or 0)
        finally:
            self.stop(sink, signal.SIGKILL)
            ready.unlink(missing_ok=True)

    def set_rp_filter(self, mode: int) -> None:
        """Set rp_filter (0 off, 1 strict, 2 loose) on every host, for all/default and every
        existing device: the kernel uses max(all, device), so setting "all" alone can't lower it."""
        if mode not in (0, 1, 2):
            raise LabError(f"rp_filter mode must be 0, 1 or 2, not {mode}")
        script = f"for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo {mode} > $f; done"
        self._parallel(lambda h: ns_exec(h.ns, ["sh", "-c", script]), self.hosts)

    def link_counters(self, ns: str, ifname: str) -> dict[str, int]:
        """rx_/tx_ bytes, packets, errors, dropped (and the rest of stats64) of one link."""
        res = ns_exec(None, ["ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname])
        stats = json.loads(res.stdout)[0].get("stats64", {})
        return {
            f"{direction}_{k}": int(v)
            for direction in ("rx", "tx")
            for k, v in stats.get(direction, {}).items()
            if isinstance(v, int)
        }

    def capture(
        self,
        ns: str,
        ifname: str,
        bpf: str,
        during: Callable[[], object] | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[str]:
        """Up to ``count`` packets matching ``bpf`` on ``ifname`` in ``ns``, as tcpdump lines,
        captured while ``during()`` runs (e.g. a ping): proof that traffic took a given path."""
        if shutil.which("tcpdump") is None:
            raise LabError("capturing needs tcpdump (apt-get install tcpdump)")
        argv = ["tcpdump", "-l", "-n", "-c", str(count), "-i", ifname, *shlex.split(bpf)]
        proc = self.spawn(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # tcpdump says "listening on ..." on stderr once the capture is armed.
            assert proc.stderr is not None
            # (after "verbose output suppressed"); raw reads, so a partial line cannot block us.
            said, deadline = b"", time.monotonic() + timeout
            while b"listening on" not in said:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([proc.stderr], [], [], max(0.0, left))
                chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
                if not chunk:
                    err = said.decode(errors="replace").strip()
                    raise LabError(f"tcpdump on {ns}/{ifname} did not start: {err}")
                said += chunk
            if during is not None:
                during()
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Fewer packets than asked for: stop it and keep what it printed.
                proc.send_signal(signal.SIGINT)
                out, _ = proc.communicate(timeout=5)
            return [line for line in out.decode(errors="replace").splitlines() if line]
        finally:
            self.stop(proc, signal.SIGKILL)

    def add_host_gw_routes(self) -> None:
        """Static host-gw plumbing (route to every peer subnet via its underlay IP, onlink):
        the article's first recipe, for tests of the lab itself. Flat labs only."""
        for h in self.hosts:
            routes = [
                f"route replace {p.subnet} via {p.underlay_ip} dev eth0 onlink"
                for p in self.hosts
                if p is not h
            ]
            if routes:
                ns_exec(h.ns, ["ip", "-batch", "-"], input=_lines(routes))

    # ------------------------------------------------------------------ daemons

    def daemon_argv(
        self,
        host: Host,
        *,
        key_file: str | Path,
        backend: str,
        seeds: Sequence[str] = (),
        port: int = DEFAULT_GOSSIP_PORT,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """The ``python -m meshd join ...`` command line for ``host``; state dir and socket live
        under ``<workdir>/<host name>/``."""
        hdir = Path(workdir or self.workdir) / host.name
        return [
            sys.executable, "-m", "meshd", "join", *seeds,
            "--name", host.name,
            "--public-ip", host.underlay_ip,
            "--iface", "eth0",
            "--subnet", host.subnet,
            "--backend", backend,
            "--port", str(port),
            "--key-file", str(key_file),
            "--state-dir", str(hdir / "state"),
            "--socket", str(hdir / "meshd.sock"),
            # every host namespace shares the machine's /run: keep each host's file apart
            "--subnet-env", str(hdir / "subnet.env"),
            *extra_args,
        ]  # fmt: skip

    def seeds_for(self, host: Host, port: int = DEFAULT_GOSSIP_PORT) -> list[str]:
        """The first host is the seed; every other host joins through it."""
        seed = self.hosts[0]
        return [] if host is seed else [f"{seed.underlay_ip}:{port}"]

    def start_daemon(
        self,
        host: Host,
        *,
        key_file: str | Path,
        backend: str,
        port: int = DEFAULT_GOSSIP_PORT,
        seeds: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Daemon:
        """Start (or restart, reusing its state dir) the daemon of ``host``; log to
        ``<workdir>/<host>.log`` (appended, so a restart keeps the earlier run's lines)."""
        hdir = self.workdir / host.name
        (hdir / "state").mkdir(parents=True, exist_ok=True)
        argv = self.daemon_argv(
            host, key_file=key_file, backend=backend, port=port,
            seeds=self.seeds_for(host, port) if seeds is None else seeds, extra_args=extra_args,
        )  # fmt: skip
        log_path = self.workdir / f"{host.name}.log"
        penv = dict(os.environ if env is None else env)
        # "python -m meshd" must find this very package, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        penv["PYTHONPATH"] = os.pathsep.join(filter(None, [root, penv.get("PYTHONPATH")]))
        penv.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "ab") as log:
            # cwd: "python -m" puts the working directory first on sys.path, so a caller sitting
            # in another checkout (a benchmark of a frozen commit) would run that one instead.
            proc = self.spawn(host.ns, argv, stdout=log, stderr=subprocess.STDOUT, env=penv,
                              cwd=hdir)
        d = Daemon(host, argv, hdir, log_path, hdir / "meshd.sock", hdir / "state", proc)
        self.daemons[host.name] = d
        return d

    def start_daemons(
        self,
        *,
        key_file: str | Path,
        backend: str,
        port: int = DEFAULT_GOSSIP_PORT,
        extra_args: Sequence[str] = (),
        hosts: Sequence[Host] | None = None,
    ) -> list[Daemon]:
        """One daemon per host (first = seed, the rest join through it)."""
        return [
            self.start_daemon(
                h, key_file=key_file, backend=backend, port=port, extra_args=extra_args
            )
            for h in (hosts or self.hosts)
        ]

    def stop_daemon(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop one daemon (``sig=SIGKILL`` for a crash); ``start_daemon`` restarts it."""
        d = self.daemons[name]
        if d.proc is not None:
            self.stop(d.proc, sig, timeout)
            d.proc = None

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


# sh snippet: switch forwarding on, then read an ip batch from stdin (router namespace).
_FORWARD_THEN_BATCH = "echo 1 > /proc/sys/net/ipv4/ip_forward && exec ip -batch -"


def _nettool(*args: object) -> list[str]:
    """nettool.py run by file path with this interpreter (works in the UML guest too)."""
    # -S: no site import; nettool needs only the standard library (saves ~30 ms per start).
    return [
        sys.executable,
        "-S",
        str(NETTOOL),
        *(f"{a:g}" if isinstance(a, float) else str(a) for a in args),
    ]


def _lines(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _wait_for(path: Path, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def cleanup_on_signals(signums: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP raise KeyboardInterrupt, like Ctrl-C, so the
    ``with Lab(...)`` inside it tears down instead of dying with namespaces left behind.
    Main thread only (Python delivers signals there)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def format_matrix(matrix: Mapping[tuple[str, str], bool], names: Sequence[str]) -> str:
    """The ping matrix as a table: rows are sources, columns destinations."""
    width = max(len(n) for n in names) + 1
    out = [" " * width + "".join(n.rjust(width) for n in names)]
    for a in names:
        cells = ["-" if a == b else ("ok" if matrix.get((a, b)) else "FAIL") for b in names]
        out.append(a.ljust(width) + "".join(c.rjust(width) for c in cells))
    return "\n".join(out)


__all__ = [
    "DEFAULT_GOSSIP_PORT",
    "Daemon",
    "Host",
    "Lab",
    "cleanup_on_signals",
    "delete_namespaces",
    "down",
    "format_matrix",
    "leftover_namespaces",
    "netns_exists",
    "netns_pids",
    "ns_argv",
    "ns_exec",
]
