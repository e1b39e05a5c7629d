"""Real `meshd join` daemons in two network namespaces joined by a veth pair, gossiping over UDP
on IPv6 (node6's part of issue 17; the full lab topologies are tests/e2e/test_dualstack.py).

* an IPv6-only underlay: no IPv4 address on either host; one daemon is told its address, the
  other finds it through its IPv6 default route; they join through ``[addr]:port``, see each
  other alive with IPv6 public IPs and subnets, and host-gw routes each other's IPv6 subnet via
  the peer's underlay address;
* a dual-stack underlay under a dual-stack overlay: gossip over IPv4, and each daemon announces
  the IPv6 address it found beside its IPv4 one (``public_ip6``) without being told.

Every namespace and process is removed even when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import write_key

REPO = Path(__file__).resolve().parents[2]
FAST = """
[gossip]
probe_interval = 0.4
probe_timeout = 0.2
gossip_interval = 0.1
push_pull_interval = 5
"""

pytestmark = pytest.mark.root


@dataclass
class Pair:
    """Two namespaces ``<p>a``/``<p>b`` with ``eth0`` each, one veth pair between them."""

    prefix: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, i: int) -> str:
        return f"{self.prefix}{'ab'[i]}"

    def ip(self, i: int, *args: str) -> str:
        return sh("ip", "netns", "exec", self.ns(i), *args)

    def build(self) -> None:
        for i in (0, 1):
            sh("ip", "netns", "add", self.ns(i))
            self.ip(i, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{self.prefix}va", "type", "veth", "peer", f"{self.prefix}vb")
        for i in (0, 1):
            dev = f"{self.prefix}v{'ab'[i]}"
            sh("ip", "link", "set", dev, "netns", self.ns(i))
            self.ip(i, "ip", "link", "set", dev, "name", "eth0")
            self.ip(i, "ip", "link", "set", "eth0", "up")

    def start(self, i: int, name: str, *args: str) -> Path:
        """``meshd join`` in namespace ``i``; returns its control socket."""
        home = self.tmp / name
        home.mkdir()
        key = self.tmp / "key"
        if not key.exists():
            write_key(key)
        conf = home / "meshd.toml"
        conf.write_text(FAST)
        sock = home / "meshd.sock"
        argv = [
            "ip", "netns", "exec", self.ns(i),
            sys.executable, "-m", "meshd", "join", "--config", str(conf),
            "--name", name, "--backend", "host-gw", "--key-file", str(key),
            "--state-dir", str(home / "state"), "--socket", str(sock),
            "--subnet-env", str(home / "subnet.env"), *args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = open(home / "log", "wb")  # noqa: SIM115 - the process writes it until it ends
        self.procs.append(
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        )
        return sock

    def logs(self) -> str:
        return "".join(
            f"\n--- {p.name} ---\n" + "\n".join((p / "log").read_text().splitlines()[-15:])
            for p in sorted(self.tmp.iterdir())
            if (p / "log").exists()
        )

    def teardown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for i in (0, 1):
            subprocess.run(["ip", "netns", "del", self.ns(i)], capture_output=True, check=False)


def sh(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def meshd(sock: Path, *args: str) -> Any:
    r = subprocess.run(
        [sys.executable, "-m", "meshd", *args, "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    if r.returncode != 0:
        return None
    return json.loads(r.stdout) if "--json" in args else r.stdout


def peers(sock: Path) -> dict[str, dict[str, Any]]:
    rows = meshd(sock, "peers", "--json")
    return {r["name"]: r for r in rows} if rows else {}


def wait_until(cond: Callable[[], bool], what: str, pair: Pair, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}{pair.logs()}")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    p = Pair(f"m6{secrets.token_hex(3)}", tmp_path)
    try:
        p.build()
        yield p
    finally:
        p.teardown()
        left = [n for n in sh("ip", "netns", "list").split() if n.startswith(p.prefix)]
        assert not left, f"left behind: {left}"


def both_alive(a: Path, b: Path) -> Callable[[], bool]:
    def check() -> bool:
        pa, pb = peers(a), peers(b)
        return (
            len(pa) == 2
            and len(pb) == 2
            and all(r["state"] == "alive" for r in (*pa.values(), *pb.values()))
        )

    return check


def test_daemons_gossip_over_an_ipv6_only_underlay(pair: Pair) -> None:
    for i in (0, 1):
        pair.ip(i, "ip", "-6", "addr", "add", f"2001:db8:77::{i + 1}/64", "dev", "eth0", "nodad")
    # h2 is not told its address: it finds it through its IPv6 default route.
    pair.ip(1, "ip", "-6", "route", "add", "default", "via", "2001:db8:77::fe", "dev", "eth0")
    a = pair.start(0, "h1", "--public-ip", "2001:db8:77::1", "--subnet", "fd00:77:1::/64")
    b = pair.start(1, "h2", "--subnet", "fd00:77:2::/64", "[2001:db8:77::1]:7950")
    wait_until(both_alive(a, b), "both daemons to see each other alive over IPv6", pair)
    seen = peers(a)["h2"]
    assert (seen["public_ip"], seen["subnet"]) == ("2001:db8:77::2", "fd00:77:2::/64")
    assert seen.get("public_ip6") is None and seen.get("subnet6") is None
    assert peers(b)["h1"]["public_ip"] == "2001:db8:77::1"
    status = meshd(a, "status")
    assert status.splitlines()[0].startswith("node      h1 (2001:db8:77::1) subnet fd00:77:1::/64")
    st = meshd(b, "status", "--json")
    # Gossip went out on the IPv6 socket; nothing was lost for want of the family. (A send
    # before the peer's socket listened may be refused: that is not this test's business.)
    assert st["counters"]["out"] > 0 and "family" not in st.get("lost_sends", {})

    def routed() -> bool:
        out = pair.ip(0, "ip", "-6", "route", "show", "proto", "109")
        return "fd00:77:2::/64 via 2001:db8:77::2 dev eth0" in out

    wait_until(routed, "h1's host-gw route to h2's IPv6 subnet", pair)
    env = pair.tmp / "h2" / "subnet.env"
    wait_until(env.exists, "h2's subnet.env", pair)
    text = env.read_text()
    assert "FLANNEL_IPV6_SUBNET=fd00:77:2::1/64\n" in text and "FLANNEL_SUBNET=" not in text


def test_a_dual_stack_underlay_announces_its_ipv6_address_too(pair: Pair) -> None:
    for i in (0, 1):
        pair.ip(i, "ip", "addr", "add", f"10.77.0.{i + 1}/24", "dev", "eth0")
        pair.ip(i, "ip", "-6", "addr", "add", f"2001:db8:78::{i + 1}/64", "dev", "eth0", "nodad")
    args = ["--network", "10.244.0.0/16", "--network", "fd00:78::/48"]
    a = pair.start(
        0,
        "h1",
        "--iface",
        "eth0",
        "--subnet",
        "10.244.1.0/24",
        "--subnet",
        "fd00:78:0:1::/64",
        *args,
    )
    b = pair.start(
        1,
        "h2",
        "--iface",
        "eth0",
        "--subnet",
        "fd00:78:0:2::/64",
        "--subnet",
        "10.244.2.0/24",
        *args,
        "10.77.0.1",
    )
    wait_until(both_alive(a, b), "both daemons to see each other alive", pair)
    seen = peers(a)["h2"]
    assert (seen["public_ip"], seen["public_ip6"]) == ("10.77.0.2", "2001:db8:78::2")
    assert (seen["subnet"], seen["subnet6"]) == ("10.244.2.0/24", "fd00:78:0:2::/64")
    line = meshd(b, "peers").splitlines()
    assert any(
        "10.77.0.1,2001:db8:78::1" in x and "10.244.1.0/24,fd00:78:0:1::/64" in x for x in line
    )

    def routed() -> bool:
        v4 = pair.ip(0, "ip", "route", "show", "proto", "109")
        v6 = pair.ip(0, "ip", "-6", "route", "show", "proto", "109")
        return (
            "10.244.2.0/24 via 10.77.0.2 dev eth0" in v4
            and "fd00:78:0:2::/64 via 2001:db8:78::2 dev eth0" in v6
        )

    # host-gw routes each family via the peer's underlay address of that family: the IPv6 one
    # is the address h2 found and announced.
    wait_until(routed, "h1's host-gw routes to both of h2's subnets", pair)
