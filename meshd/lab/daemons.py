"""meshd daemons inside a lab's hosts: their command line, start, restart and stop.

The lab depends on nothing of the daemon: it runs ``python -m meshd join`` as a process, so a
test sees exactly what an operator would run.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from meshd.errors import LabError
from meshd.lab.certs import LabCA
from meshd.lab.namespaces import netns_processes, ns_exec
from meshd.lab.topology import Host, Topology

DEFAULT_GOSSIP_PORT = 7950
"""Same as meshd.config.DEFAULT_PORT (not imported: the lab depends on nothing of the daemon)."""
WG_DEVICE = "meshd.wg"
WG_RUN_DIR = "/run/wireguard"
"""Where wireguard-go puts its UAPI socket: private to each host's daemon (see start_daemon)."""


def host_port(ip: str, port: int) -> str:
    """A seed as ``meshd join`` takes it: ``10.99.0.1:7950`` or ``[fd00:99::1]:7950``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def write_key(path: Path) -> Path:
    """A fresh cluster key from ``meshd keygen`` at ``path``, created 0600 (never readable by
    others, not even for a moment), as an operator would make it."""
    key = subprocess.run(
        [sys.executable, "-m", "meshd", "keygen"], capture_output=True, text=True, check=True
    ).stdout
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return path


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


class Daemons(Topology):
    """Starting and stopping one daemon per host (mixed into :class:`meshd.lab.Lab`)."""

    certificates: bool = True
    """Daemons run in certificate mode, with a throwaway CA in the work directory (``ca``);
    False: shared-key mode (the mesh key alone)."""
    allocate: bool = False
    """Daemons get ``--network`` and no ``--subnet``: each allocates its own (with certificates,
    a pool grant of the pod network); `adopt_subnets` then moves each host's pod side there."""

    @cached_property
    def daemons(self) -> dict[str, Daemon]:
        """Every daemon started so far, by host name (a stopped one keeps its entry)."""
        return {}

    @cached_property
    def ca(self) -> LabCA:
        """The lab's cluster CA (made on first use): the pod network is its grant."""
        return LabCA(self.workdir / "ca", self.pod_network, self.pod_network6)

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
        plen = int(host.subnet.rpartition("/")[2])
        plen6 = int(host.subnet6.rpartition("/")[2]) if host.subnet6 else None
        trust = (
            self.ca.args(
                host,
                pool_len=plen if self.allocate else None,
                pool_len6=plen6 if self.allocate else None,
            )
            if self.certificates and "--ca" not in extra_args
            else []
        )
        where = (
            ["--network", self.pod_network, "--subnet-len", str(plen)]
            if self.allocate
            else ["--subnet", host.subnet]
        )
        if host.subnet6 is not None:
            # Dual-stack pods: the second family's subnet (or network) as the flag once more.
            where += (
                ["--network", str(self.pod_network6), "--subnet-len6", str(plen6)]
                if self.allocate
                else ["--subnet", host.subnet6]
            )
        # A dual-stack underlay: gossip over the IPv4 address, the IPv6 one announced beside it
        # (the flag once per family, as for --subnet).
        second = ["--public-ip", host.underlay_ip6] if host.underlay_ip6 is not None else []
        return [
            sys.executable, "-m", "meshd", "join", *seeds,
            "--name", host.name,
            "--public-ip", host.underlay_ip,
            *second,
            "--iface", "eth0",
            *where,
            "--backend", backend,
            "--port", str(port),
            "--key-file", str(key_file),
            "--state-dir", str(hdir / "state"),
            "--socket", str(hdir / "meshd.sock"),
            # every host namespace shares the machine's /run: keep each host's file apart
            "--subnet-env", str(hdir / "subnet.env"),
            # the CNI path needs the cluster networks (FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK:
            # the pods' routes; the CA's grants in cert mode)
            *(self._cni_networks(host) if self.cni and not self.allocate else []),
            *trust,
            *extra_args,
        ]  # fmt: skip

    def _cni_networks(self, host: Host) -> list[str]:
        """``--network`` once per pod family of ``host`` (its subnets are given with
        ``--subnet``): what subnet.env names as the cluster networks."""
        nets = [self.pod_network]
        if host.subnet6 is not None and self.pod_network6 is not None:
            nets.append(self.pod_network6)
        return [arg for net in nets for arg in ("--network", net)]

    def seeds_for(self, host: Host, port: int = DEFAULT_GOSSIP_PORT) -> list[str]:
        """The first host is the seed; every other host joins through it."""
        seed = self.hosts[0]
        return [] if host is seed else [host_port(seed.underlay_ip, port)]

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
        # wireguard-go (the daemon's child, outliving it) puts its socket in /run/wireguard, one
        # directory for the whole machine: each host's daemon gets its own, as a real host has.
        private = (WG_RUN_DIR,) if backend == "wireguard" else ()
        with open(log_path, "ab") as log:
            # cwd: "python -m" puts the working directory first on sys.path, so a caller sitting
            # in another checkout (a benchmark of a frozen commit) would run that one instead.
            proc = self.spawn(
                host.ns,
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=penv,
                cwd=hdir,
                private_dirs=private,
            )
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

    def allocated_subnet(self, host: Host) -> str | None:
        """The subnet ``host``'s daemon settled on, from the subnet.env it writes once the
        subnet settled (as a CNI plugin would read it); None before."""
        return self._subnet_env_value(host, "FLANNEL_SUBNET")

    def allocated_subnet6(self, host: Host) -> str | None:
        """The IPv6 subnet ``host``'s daemon settled on (``FLANNEL_IPV6_SUBNET``), None before
        or without one."""
        return self._subnet_env_value(host, "FLANNEL_IPV6_SUBNET")

    def _subnet_env_value(self, host: Host, key: str) -> str | None:
        """The subnet of ``key`` in ``host``'s subnet.env (its first address/len: as a CIDR)."""
        try:
            text = (self.workdir / host.name / "subnet.env").read_text()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name == key and value:
                return str(ipaddress.ip_network(value, strict=False))
        return None

    def adopt_subnets(self) -> dict[str, str]:
        """Allocating: move each host's pod side (bridge, container) to the subnet its daemon
        settled on, where that changed; returns the hosts moved and their subnet."""
        moved = {}
        for h in list(self.hosts):
            subnet = self.allocated_subnet(h)
            subnet6 = self.allocated_subnet6(h) if h.subnet6 is not None else None
            if subnet is not None and (subnet != h.subnet or subnet6 not in (None, h.subnet6)):
                new = self.readdress(h, subnet, subnet6)
                moved[new.name] = " ".join(new.subnets)
                d = self.daemons.get(new.name)
                if d is not None:
                    d.host = new
        return moved

    def stop_daemon(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop one daemon (``sig=SIGKILL`` for a crash); ``start_daemon`` restarts it.

        Only the daemon is signalled, as ``kill PID`` would: the wireguard-go it started stays
        in its process group and must outlive it (the restarted daemon adopts the device).
        Teardown still stops everything in the lab's namespaces."""
        d = self.daemons[name]
        if d.proc is not None:
            self.stop(d.proc, sig, timeout, group=False)
            d.proc = None

    def wireguard_pid(self, host: Host) -> int | None:
        """The pid of the wireguard-go process in ``host``'s namespace, None if there is none."""
        pids = netns_processes(host.ns, "wireguard-go")
        if len(pids) > 1:
            raise LabError(f"{len(pids)} wireguard-go processes in {host.ns}: {pids}")
        return pids[0] if pids else None

    def wg(self, host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``wg ARGS`` for ``host``'s WireGuard device (e.g. ``wg(h, "show", "meshd.wg",
        "dump")``): in the mount and network namespaces of its wireguard-go, where that one's
        socket is; in ``host``'s namespace when there is none (a kernel device)."""
        pid = self.wireguard_pid(host)
        if pid is None:
            return ns_exec(host.ns, ["wg", *args], check=check)
        return ns_exec(None, ["nsenter", "-t", str(pid), "-m", "-n", "wg", *args], check=check)

    def stop_processes(self) -> None:
        super().stop_processes()
        for d in self.daemons.values():
            d.proc = None


__all__ = ["DEFAULT_GOSSIP_PORT", "WG_DEVICE", "WG_RUN_DIR", "Daemon", "Daemons", "host_port"]
