"""Network-namespace fixtures for the integration tests: real kernel, cleaned up even on failure.

Topology (``hosts`` fixture), like the article and the shared lab, with unique names
``mdt-<random>-*`` so parallel or aborted runs never collide:

    <p>-ul   bridge ulbr: the underlay switch (optionally two segments joined by <p>-rt)
    <p>-h<i> eth0 10.99.0.<i>/24 (default via .254), bridge br (no address: meshd adds .1),
             veth into container <p>-c<i>; strict rp_filter
    <p>-c<i> eth0 10.244.<i>.2/24, default via 10.244.<i>.1
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@pytest.fixture(autouse=True)
def _need_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """``make(suffix) -> name``: a fresh namespace with lo up; all deleted afterwards."""
    prefix = f"mdt-{secrets.token_hex(3)}"
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{prefix}-{suffix}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "dev", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Host:
    i: int
    ns: str
    cns: str
    ip: str
    subnet: str
    container_ip: str


@dataclass
class Hosts:
    ul: str
    hosts: list[Host] = field(default_factory=list)


def add_host(make: Callable[[str], str], ul: str, i: int, ip: str | None = None,
             plen: int = 24) -> Host:
    h, c = make(f"h{i}"), make(f"c{i}")
    ip = ip or f"10.99.0.{i}"
    sh("ip", "-n", ul, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", h)
    sh("ip", "-n", ul, "link", "set", "dev", f"h{i}", "master", "ulbr", "up")
    sh("ip", "-n", h, "addr", "add", f"{ip}/{plen}", "dev", "eth0")
    sh("ip", "-n", h, "link", "set", "dev", "eth0", "up")
    sh("ip", "-n", h, "route", "add", "default", "via", "10.99.0.254")
    # Strict reverse-path filtering, as hardened hosts run it: the mesh must not rely on it off.
    sh("ip", "netns", "exec", h, "sh", "-c",
       "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter; "
       "echo 1 > /proc/sys/net/ipv4/conf/default/rp_filter")
    sh("ip", "-n", h, "link", "add", "name", "br", "type", "bridge")
    sh("ip", "-n", h, "link", "set", "dev", "br", "up")
    sh("ip", "-n", h, "link", "add", "veth-c", "type", "veth", "peer", "name", "eth0", "netns", c)
    sh("ip", "-n", h, "link", "set", "dev", "veth-c", "master", "br", "up")
    sh("ip", "-n", c, "addr", "add", f"10.244.{i}.2/24", "dev", "eth0")
    sh("ip", "-n", c, "link", "set", "dev", "eth0", "up")
    sh("ip", "-n", c, "route", "add", "default", "via", f"10.244.{i}.1")
    return Host(i, h, c, ip, f"10.244.{i}.0/24", f"10.244.{i}.2")


@pytest.fixture
def hosts(netns: Callable[[str], str]) -> Callable[[int], Hosts]:
    """``build(n) -> Hosts``: n hosts on one underlay switch, each with a container."""

    def build(n: int) -> Hosts:
        ul = netns("ul")
        sh("ip", "-n", ul, "link", "add", "name", "ulbr", "type", "bridge")
        sh("ip", "-n", ul, "link", "set", "dev", "ulbr", "up")
        topo = Hosts(ul)
        for i in range(1, n + 1):
            topo.hosts.append(add_host(netns, ul, i))
        return topo

    return build
