"""`meshd lab`: the article's topology on one machine, with one real daemon per simulated host.

Builds the lab (meshd.lab.topology, the same module the end-to-end tests use), starts `meshd join`
in every host namespace (h1 is the seed), waits for the mesh to converge, then shows one host's
peers table, the container ping matrix and, for the tunnel backends, the tunnel device's packet
counters, and tears everything down (unless --keep).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meshd.control import client
from meshd.control import format as fmt
from meshd.dataplane import backends
from meshd.errors import ControlError, LabError
from meshd.lab import Lab, cleanup_on_signals, down, format_matrix, write_key
from meshd.lab.cni import find_flannel
from meshd.lab.daemons import WG_DEVICE

PREFIX = os.environ.get("MESHD_LAB_PREFIX", "mlab")
"""Namespace prefix of the lab (tests set their own so they never collide with a user's lab)."""
SETTLE_TIMEOUT = 15.0
"""Once every member is alive everywhere, seconds to wait for the data plane before judging."""
CONVERGE_TIMEOUT = 90.0
"""Seconds to wait for every container to reach every other one before giving up."""


def tunnel_device(backend: str, vni: int = 1, underlay: str = "ipv4") -> str | None:
    """The backend's device (ipip over an IPv6 underlay is an ip6tnl, ``meshd.ip6tnl``)."""
    ipip = "meshd.ip6tnl" if underlay == "ipv6" else "meshd.ipip"
    return {"ipip": ipip, "vxlan": f"meshd.{vni}", "wireguard": WG_DEVICE}.get(backend)


def kernel_supports(kind: str) -> bool:
    """Can this kernel run backend or link ``kind`` (``ip6tnl``: ipip over an IPv6 underlay)?
    Tried in a throwaway namespace; host-gw needs no device of its own."""
    if kind in backends.names() and backends.get(kind).kernel_module is None:
        return True
    ns = f"{PREFIX}-probe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        # An ipip device without a local address would clash with the fallback tunl0 (EEXIST).
        # (ip6tnl likewise, with its ip6tnl0.)
        args = {
            "vxlan": ["id", "1", "dstport", "8472"],
            "ipip": ["local", "192.0.2.1"],
            "ip6tnl": ["mode", "any", "local", "2001:db8::1"],
        }.get(kind, [])
        r = subprocess.run(
            ["ip", "-n", ns, "link", "add", "probe0", "type", kind, *args], capture_output=True
        )
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def link_kind(backend: str, underlay: str = "ipv4") -> str:
    """The kernel link a backend needs on this underlay: ipip over IPv6 is ``ip6tnl``."""
    return "ip6tnl" if backend == "ipip" and underlay == "ipv6" else backend


def preflight(backend: str, underlay: str = "ipv4") -> None:
    if os.geteuid() != 0:
        raise LabError("meshd lab needs root (it creates network namespaces): run it with sudo")
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        raise LabError("meshd lab needs iproute2 (apt-get install iproute2)")
    if backend == "wireguard":
        # The daemon falls back to userspace wireguard-go where the kernel has no module.
        if not kernel_supports(backend) and shutil.which("wireguard-go") is None:
            raise LabError(
                "wireguard: this kernel has no wireguard module and wireguard-go is not on "
                "PATH: apt-get install wireguard-go wireguard-tools"
            )
        return
    kind = link_kind(backend, underlay)
    if not kernel_supports(kind):
        module = "ip6_tunnel" if kind == "ip6tnl" else kind
        where = "" if underlay == "ipv4" else f" --underlay {underlay}"
        raise LabError(
            f"this kernel cannot create {kind} devices (module {module} missing): run the lab "
            f"in a user-mode-linux guest with `meshd lab --backend {backend}{where} --uml`"
        )


def run_lab(
    hosts: int,
    backend: str,
    routed: bool,
    keep: bool,
    say: Callable[[str], None] = print,
    shared_key: bool = False,
    allocate: bool = False,
    cni: bool = False,
    ipv6: bool = False,
    underlay: str | None = None,
) -> int:
    """Build, converge, show, tear down. Returns the exit code (0 only when every pair pings,
    over both families in a dual-stack lab).

    ``cni``: no lab bridge; each host's pod is attached by the flannel CNI plugin (bridge +
    host-local) reading the subnet file its daemon writes, and the daemons masquerade
    (``--ipmasq``), as docs/kubernetes.md sets a node up. With ``ipv6`` the plugin gives each
    pod an address of each family (FLANNEL_IPV6_SUBNET/FLANNEL_IPV6_NETWORK).
    ``ipv6``: dual-stack pods (an IPv4 and an IPv6 subnet per host). ``underlay``: ``ipv4``,
    ``ipv6`` (no IPv4 address on the underlay) or ``dual``; None picks ``ipv4``, or ``dual``
    for host-gw with ``ipv6`` (its IPv6 routes need an IPv6 next hop)."""
    if hosts < 2:
        raise LabError("--hosts: a mesh needs at least 2 hosts")
    if backend == "host-gw" and routed:
        say("note: host-gw needs one L2 segment; on a routed lab it must fail across the router")
    if underlay is None:
        underlay = "dual" if ipv6 and backend == "host-gw" else "ipv4"
        if underlay == "dual":
            say(
                "note: host-gw routes IPv6 pods via the peer's IPv6 underlay address: the "
                "underlay gets IPv6 addresses too (--underlay dual)"
            )
    if ipv6 and backend == "ipip" and underlay != "ipv6":
        say("note: ipip over IPv4 carries IPv4 only; IPv6 pods need --underlay ipv6 (ip6tnl)")
    preflight(backend, underlay)
    plugin = find_flannel() if cni else None
    if leftover := down(PREFIX):
        say(f"removed a previous lab ({len(leftover)} namespaces)")
    with (
        cleanup_on_signals(),
        Lab(
            PREFIX,
            hosts=hosts,
            routed=routed,
            keep=keep,
            cni=cni,
            ipv6=ipv6,
            underlay_family=underlay,
        ) as lab,
    ):
        say(
            f"built {hosts} hosts ({'two routed segments' if routed else 'one L2 segment'}, "
            f"{_UNDERLAY_WORDS[underlay]} underlay, {'dual-stack' if ipv6 else 'IPv4'} pods) "
            f"in {lab.build_seconds or 0:.1f}s; workdir {lab.workdir}"
        )
        neigh = lab.neighbour_thresholds or {}
        for fam, suffix in (("ipv4", ""), ("ipv6", "6")):
            if f"set{suffix}" in neigh:
                say(
                    f"raised net.{fam}.neigh.default.gc_thresh1/2/3 {neigh[f'saved{suffix}']} -> "
                    f"{neigh[f'set{suffix}']} for {hosts} hosts' neighbour entries "
                    f"(restored at teardown)"
                )
        key = write_key(lab.workdir / "key")
        lab.certificates = not shared_key
        if shared_key:
            say("trust: shared-key mode (--shared-key): the mesh key alone, unauthenticated")
        else:
            say(
                f"trust: certificates from a throwaway CA ({lab.ca.ca_cert}) binding each host's "
                "name, underlay IP and subnet"
            )
        lab.allocate = allocate
        lab.start_daemons(key_file=key, backend=backend, extra_args=["--ipmasq"] if cni else ())
        if allocate:
            say(
                f"started {hosts} meshd daemons ({backend}) at once with --network "
                f"{lab.pod_network} and no --subnet: each allocates its own"
            )
        else:
            say(
                f"started {hosts} meshd daemons ({backend}); h1 is the seed, "
                "the rest join through it"
            )
        if plugin is not None:
            _attach_pods(lab, plugin, say)
        ok = _converge(lab, say)
        if allocate:
            subnets = {h.name: h.subnet for h in lab.hosts}
            say("\nallocated subnets: " + ", ".join(f"{n} {s}" for n, s in subnets.items()))
            if len(set(subnets.values())) != len(subnets):
                say("FAILED: two hosts hold the same subnet")
                ok = False
        first = lab.daemons["h1"]
        say("\n$ meshd peers   # on h1\n" + fmt.peers(client.peers(first.socket_path)))
        dev = tunnel_device(backend, underlay=underlay)
        before = _counters(lab, dev)
        names = [h.name for h in lab.hosts]
        families = (4, 6) if ipv6 else (4,)
        failed: list[str] = []
        pairs = 0
        for family in families:
            matrix = lab.ping_matrix(count=2, family=family)
            pairs += len(matrix)
            say(
                f"\ncontainer -> container ping{' over IPv6' if family == 6 else ''} "
                f"(rows: source)\n" + format_matrix(matrix, names)
            )
            failed += [
                f"{a}->{b}{' (IPv6)' if family == 6 else ''}"
                for (a, b), good in sorted(matrix.items())
                if not good
            ]
        if before:
            say(f"\ntunnel {dev}: packets sent/received during the ping matrix")
            after = _counters(lab, dev)
            for h in lab.hosts:
                tx = after[h.name]["tx_packets"] - before[h.name]["tx_packets"]
                rx = after[h.name]["rx_packets"] - before[h.name]["rx_packets"]
                say(f"  {h.name}: tx +{tx}  rx +{rx}")
        src, dst = lab.hosts[0], lab.hosts[-1]
        # Pings are small; a bulk TCP transfer proves the tunnel MTU is right (per family: an
        # IPv6 header is 20 bytes longer, and so is an IPv6 underlay's encapsulation).
        for family in families:
            ip = str(dst.container_ip_of(family))
            what = f"4 MiB over TCP{'/IPv6' if family == 6 else ''} {src.name} -> {dst.name}"
            if lab.tcp_transfer(src.container_ns, dst.container_ns, ip, 4 << 20):
                say(f"\n{what} container: ok (sha256 matches)")
            else:
                say(f"\n{what} container: FAILED")
                failed.append(f"tcp{'/IPv6' if family == 6 else ''} {src.name}->{dst.name}")
        if keep:
            say(_keep_help(lab, first.socket_path, backend))
        if failed or not ok:
            _print_log_tails(lab, say)
            say(f"\nFAILED: {', '.join(failed) or 'did not converge'}")
            return 1
        say(
            f"\nOK: all {pairs} container pairs ping through {backend}"
            f"{' (IPv4 and IPv6)' if ipv6 else ''}{'' if keep else '; tearing the lab down'}"
        )
        return 0


_UNDERLAY_WORDS = {"ipv4": "IPv4", "ipv6": "IPv6-only", "dual": "dual-stack"}


def _counters(lab: Lab, dev: str | None) -> dict[str, dict[str, int]]:
    """The tunnel device's counters per host; empty when it has none (or not on every host)."""
    if dev is None:
        return {}
    try:
        return {h.name: lab.link_counters(h.ns, dev) for h in lab.hosts}
    except LabError:
        return {}


def _attach_pods(lab: Lab, plugin: Path, say: Callable[[str], None]) -> None:
    """CNI ADD of each host's pod, once its daemon has written the subnet file."""
    for h in list(lab.hosts):
        env = lab.wait_subnet_env(h)
        if lab.allocate:  # the pod's address comes from the subnet the daemon settled on
            lab.adopt_subnets()
            h = lab.host(h.name)
        pod = lab.cni_add(h, plugin=plugin)
        addrs = pod.ip if pod.ip6 is None else f"{pod.ip} {pod.ip6}"
        net6 = f" FLANNEL_IPV6_NETWORK={env['FLANNEL_IPV6_NETWORK']}" if pod.ip6 else ""
        say(
            f"  {h.name}: pod {addrs} attached by {plugin} (FLANNEL_NETWORK="
            f"{env.get('FLANNEL_NETWORK')}{net6} FLANNEL_MTU={env.get('FLANNEL_MTU')} "
            f"FLANNEL_IPMASQ={env.get('FLANNEL_IPMASQ')})"
        )


def _converge(lab: Lab, say: Callable[[str], None]) -> bool:
    """Wait until every daemon sees every host alive and every container pair pings."""
    n = len(lab.hosts)
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    last = ""
    t0 = time.monotonic()
    all_alive_at: float | None = None
    while time.monotonic() < deadline:
        seen = []
        if lab.allocate:
            for name, subnet in lab.adopt_subnets().items():
                say(f"  {time.monotonic() - t0:5.1f}s {name} settled on {subnet}")
        for d in lab.daemons.values():
            if not d.alive():
                raise LabError(f"meshd on {d.host.name} exited; see {d.log_path}")
            try:
                rows = client.peers(d.socket_path, timeout=5)
            except ControlError:
                rows = []
            seen.append(sum(1 for r in rows if r["state"] == "alive"))
        line = "members seen alive per host: " + " ".join(map(str, seen)) + f" (of {n})"
        if line != last:
            say(f"  {time.monotonic() - t0:5.1f}s {line}")
            last = line
        if all(s == n for s in seen):
            all_alive_at = all_alive_at or time.monotonic()
            families = (4, 6) if lab.ipv6 else (4,)
            if all(all(lab.ping_matrix(count=1, timeout=1, family=f).values()) for f in families):
                say(f"  converged in {time.monotonic() - t0:.1f}s")
                return True
            if time.monotonic() - all_alive_at > SETTLE_TIMEOUT:
                say(
                    f"  members converged, but not every container pings after "
                    f"{SETTLE_TIMEOUT:.0f}s"
                )
                return False
        time.sleep(0.5)
    say(f"did not converge within {CONVERGE_TIMEOUT:.0f}s")
    return False


def _print_log_tails(lab: Lab, say: Callable[[str], None]) -> None:
    for d in lab.daemons.values():
        tail = Path(d.log_path).read_text(errors="replace").splitlines()[-8:]
        say(f"--- {d.host.name} log ({d.log_path}) ---\n" + "\n".join(tail))


def _keep_help(lab: Lab, sock: Path, backend: str) -> str:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    wg = ""
    if backend == "wireguard":
        # wireguard-go's socket is in its mount namespace (each host's /run/wireguard is private)
        pid = lab.wireguard_pid(h1)
        where = f"nsenter -t {pid} -m -n" if pid else f"ip netns exec {h1.ns}"
        wg = f"\n  {where} wg show {WG_DEVICE}"
    return f"""
The lab keeps running. Look around:
  ip netns list | grep {PREFIX}
  meshd peers --socket {sock}
  meshd status --socket {sock}
  ip netns exec {h1.ns} ip route show proto 109
  ip netns exec {h1.ns} ip -d link show{wg}
  ip netns exec {h1.container_ns} ping {h2.container_ip}
  logs: {lab.workdir}/h*.log
Remove it with: meshd lab down"""


def run_in_guest(argv: list[str], say: Callable[[str], None] = print) -> int:
    """Re-run this very `meshd lab` command inside a user-mode-linux guest kernel (for ipip on
    kernels without it). The guest boots on the host's / read-only, so the same venv runs."""
    from meshd.lab import uml

    if reason := uml.available():
        raise LabError(f"cannot start a user-mode-linux guest: {reason}")
    say("booting a user-mode-linux guest (first run downloads Debian's kernel, ~40 MB)...")
    res = uml.run([sys.executable, "-m", "meshd", "lab", *argv], timeout=600, echo=sys.stdout)
    say(f"guest: booted in {res.boot_seconds:.1f}s, ran {res.total_seconds:.1f}s, exit {res.rc}")
    return res.rc


def lab_down(say: Callable[[str], None] = print) -> int:
    names = down(PREFIX)
    say(f"removed {len(names)} namespaces" if names else "no lab running")
    return 0
