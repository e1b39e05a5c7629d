"""Pods attached by real CNI plugins, run the way the kubelet runs them.

Kubernetes with flannel calls the ``flannel`` CNI plugin (flannel-io/cni-plugin) on every node: it
reads the node agent's subnet file (``FLANNEL_NETWORK``, ``FLANNEL_SUBNET``, ``FLANNEL_MTU``,
``FLANNEL_IPMASQ``; on a dual-stack node ``FLANNEL_IPV6_NETWORK`` and ``FLANNEL_IPV6_SUBNET`` as
well) and delegates to the standard ``bridge`` plugin with ``host-local`` address management: one
address range per family (the subnet), one route per cluster network. Here meshd is the node
agent. A lab built with ``cni=True`` has no bridge of its own: :meth:`Pods.cni_add` runs the plugin
inside a host's namespace with ``CNI_COMMAND=ADD`` and a pod namespace (by default the host's
container namespace), and the plugins make the bridge ``cni0``, the veth pair, the addresses and
the routes. In a dual-stack lab (``ipv6=True``) each pod gets an IPv4 and an IPv6 address
(:attr:`Pod.ip6`), the lab's planned ``container_ip`` and ``container_ip6``.

Where the plugins come from: the flannel plugin at ``$MESHD_CNI_FLANNEL``, else where Kubernetes
installs it (``/opt/cni/bin/flannel``); bridge and host-local in ``$MESHD_CNI_PATH``, else
``/usr/lib/cni`` (Debian's ``containernetworking-plugins``).

The hosts of a lab share one filesystem: each host's daemon writes its own subnet file
(``<workdir>/<host>/subnet.env``, see ``daemons.py``), and each host's plugins keep their state
apart (the flannel plugin's ``dataDir`` and host-local's ``ipam.dataDir`` under
``<workdir>/<host>/cni/``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from meshd.errors import LabError
from meshd.lab.namespaces import NETNS_DIR, ns_exec
from meshd.lab.topology import Host, Topology

FLANNEL_ENV = "MESHD_CNI_FLANNEL"
FLANNEL_DEFAULT = Path("/opt/cni/bin/flannel")
CNI_PATH_ENV = "MESHD_CNI_PATH"
CNI_PATH_DEFAULT = Path("/usr/lib/cni")
NETWORK_NAME = "meshnet"
CNI_VERSION = "0.3.1"


def find_flannel() -> Path:
    """The flannel plugin to run; LabError (one line saying how to point at it) if missing, or
    if bridge and host-local are not where it will look for them."""
    path = Path(os.environ.get(FLANNEL_ENV) or FLANNEL_DEFAULT)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise LabError(
            f"the flannel CNI plugin is not at {path}: install it at {FLANNEL_DEFAULT} or set "
            f"{FLANNEL_ENV}=/path/to/flannel (flannel-io/cni-plugin; see docs/kubernetes.md)"
        )
    plugins = cni_path()
    missing = [p for p in ("bridge", "host-local") if not (plugins / p).is_file()]
    if missing:
        raise LabError(
            f"CNI plugin(s) {', '.join(missing)} not in {plugins}: apt-get install "
            f"containernetworking-plugins, or set {CNI_PATH_ENV}"
        )
    return path


def cni_path() -> Path:
    return Path(os.environ.get(CNI_PATH_ENV) or CNI_PATH_DEFAULT)


def netconf(subnet_file: Path, data_dir: Path) -> dict[str, Any]:
    """The network configuration handed to the flannel plugin: docs/kubernetes.md's, with this
    host's subnet file and state directories (a real node keeps the plugins' defaults)."""
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "flannel",
        "subnetFile": str(subnet_file),
        "dataDir": str(data_dir / "flannel"),
        "ipam": {"type": "host-local", "dataDir": str(data_dir / "ipam")},
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
    }


def read_subnet_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a subnet file; {} while it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def result_addresses(result: dict[str, Any]) -> dict[int, str]:
    """The first address of each family in a CNI result (``ips``), without prefix lengths."""
    out: dict[int, str] = {}
    for entry in result.get("ips") or []:
        try:
            iface = ipaddress.ip_interface(str(entry["address"]))
        except (KeyError, TypeError, ValueError):
            continue
        out.setdefault(iface.version, str(iface.ip))
    return out


@dataclass(frozen=True)
class Pod:
    """A pod namespace attached by ``CNI ADD``."""

    host: Host
    ns: str
    container_id: str
    ip: str  # IPv4 address, without the prefix length
    result: dict[str, Any]  # the plugin's answer (CNI result JSON)
    ifname: str = "eth0"
    ip6: str | None = None  # IPv6 address (a dual-stack node), without the prefix length

    def ip_of(self, version: int) -> str | None:
        """The pod's address of family ``version`` (4 or 6), None if it has none."""
        return self.ip if version == 4 else self.ip6


class Pods(Topology):
    """Attaching pods with the CNI plugins (mixed into :class:`meshd.lab.Lab`)."""

    @cached_property
    def pods(self) -> dict[str, Pod]:
        """Pods attached and not yet deleted, by container id."""
        return {}

    def host_dir(self, host: Host) -> Path:
        return self.workdir / host.name

    def subnet_file(self, host: Host) -> Path:
        """Where ``host``'s daemon writes its subnet file (``Daemons.daemon_argv``)."""
        return self.host_dir(host) / "subnet.env"

    def cni_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "cni"

    def wait_subnet_env(self, host: Host, timeout: float = 30.0) -> dict[str, str]:
        """The subnet file of ``host`` once its daemon has written it (with the IPv6 lines too
        when ``host`` is dual-stack)."""
        want = ["FLANNEL_SUBNET"] + (["FLANNEL_IPV6_SUBNET"] if host.subnet6 is not None else [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = read_subnet_env(self.subnet_file(host))
            if all(k in env for k in want):
                return env
            time.sleep(0.1)
        raise LabError(f"{host.name}: no {self.subnet_file(host)} after {timeout:g}s")

    def cni_call(
        self, host: Host, command: str, container_id: str, pod_ns: str, plugin: Path | None = None
    ) -> dict[str, Any]:
        """Run the flannel plugin in ``host``'s namespace as the kubelet would; its JSON answer
        ({} for DEL). A refusal raises LabError with the plugin's message."""
        flannel = plugin or find_flannel()
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": str(NETNS_DIR / pod_ns),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(cni_path()),
        }
        conf = netconf(self.subnet_file(host), self.cni_dir(host))
        res = ns_exec(
            host.ns,
            ["env", *(f"{k}={v}" for k, v in env.items()), str(flannel)],
            input=json.dumps(conf),
            check=False,
            timeout=60,
        )
        try:
            answer = json.loads(res.stdout) if res.stdout.strip() else {}
        except ValueError:
            answer = {"msg": res.stdout.strip()}
        if res.returncode != 0:
            why = answer.get("msg") or (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise LabError(f"CNI {command} on {host.name} ({pod_ns}): {why}")
        return dict(answer)

    def cni_add(self, host: Host, pod_ns: str | None = None, plugin: Path | None = None) -> Pod:
        """Attach a pod namespace (default: ``host``'s container namespace, which must then get
        the lab's planned ``container_ip``, and ``container_ip6`` if dual-stack) with
        ``CNI ADD``. A dual-stack host's pod must get an address of each family."""
        ns = pod_ns or host.container_ns
        cid = f"{self.prefix}-{ns}"
        result = self.cni_call(host, "ADD", cid, ns, plugin)
        got = result_addresses(result)
        families = (4, 6) if host.subnet6 is not None else (4,)
        for version in families:
            if version not in got:
                raise LabError(
                    f"CNI ADD on {host.name}: no IPv{version} address in the result {result}"
                )
            planned = host.container_ip_of(version)
            if pod_ns is None and got[version] != planned:
                raise LabError(
                    f"CNI ADD on {host.name}: the pod got {got[version]}, not {planned} "
                    "(host-local state left from an earlier run?)"
                )
        pod = Pod(host, ns, cid, got[4], result, ip6=got.get(6))
        self.pods[cid] = pod
        return pod

    def cni_del(self, pod: Pod, plugin: Path | None = None) -> None:
        """Detach a pod with ``CNI DEL`` (the veth, its address lease and the plugin's state)."""
        self.cni_call(pod.host, "DEL", pod.container_id, pod.ns, plugin)
        self.pods.pop(pod.container_id, None)


__all__ = [
    "CNI_PATH_DEFAULT",
    "FLANNEL_DEFAULT",
    "FLANNEL_ENV",
    "Pod",
    "Pods",
    "cni_path",
    "find_flannel",
    "netconf",
    "read_subnet_env",
    "result_addresses",
]
