"""Upgrades that lose nothing (docs/operations.md, "Upgrading"): two packages built from this tree,
the previous release's stand-in first and this release second, and a container ping loop that
must not lose a packet while they are swapped.

- ``prev``: this tree built with ``MESHD_PROTOCOL_MINOR`` one below ours and version
  ``<ours>~prev``: what a node of the previous wire minor sends and accepts (0.1.0 itself cannot
  talk to this release: its envelope differs; CHANGELOG.md, docs/protocol.md "Versions").
- ``next``: this tree as it is, version ``<ours>+next`` (newer than ``prev`` for dpkg).

`test_dpkg_upgrade_of_a_live_host` upgrades a booted Debian 12 (systemd-nspawn, as test_deb.py
boots it) with ``dpkg -i`` while its pod pings a pod on a second host; the second host is a plain
daemon from the source tree in a network namespace cabled to the container (one booted root is
honest for the host being upgraded; the peer only has to be a live member of this release).
`test_rolling_upgrade_of_a_mixed_mesh` runs three hosts of ``prev`` in a namespace lab (the
packaged code of each build, extracted, under Debian's python3 as /usr/bin/meshd runs it),
restarts them one by one on ``next`` as the package's postinst would, lets a fourth host of
``next`` join through a host still on ``prev`` halfway, and keeps a full ping mesh running
throughout.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_deb import (  # the Debian root, its apt and its boot, shared with the install test
    Container,
    apt_install,
    apt_install_deb,
    base_root,
    chroot,
    in_root,
    run,
    timings,
)

from meshd import __version__
from meshd.control.client import request
from meshd.gossip.messages import PROTOCOL_MINOR
from meshd.lab import Daemon, Host, Lab, write_key
from meshd.lab.topology import down

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(900)]
__all__ = ["base_root", "chroot", "timings"]  # fixtures, used by name

REPO = Path(__file__).resolve().parents[2]
PREV, NEXT = f"{__version__}~prev", f"{__version__}+next"
# Debian's python3 running a package's /usr/lib/meshd, as the package's /usr/bin/meshd does.
LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'meshd'; "
    "from meshd.cli import main; sys.exit(main())"
)
# memberlist's LAN timers scaled down (the protocol is the same): a member that cannot decode
# another's datagrams suspects it within seconds, long before a rolling upgrade is over.
GOSSIP = """
[gossip]
probe_interval = 0.5
probe_timeout = 0.25
gossip_interval = 0.1
push_pull_interval = 5
suspicion_mult = 3
"""
PING_INTERVAL = 0.05

if os.geteuid() != 0:
    pytest.skip("needs root (debootstrap, namespaces, nspawn)", allow_module_level=True)


@dataclass(frozen=True)
class Builds:
    prev: Path
    next: Path


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> Builds:
    out = tmp_path_factory.mktemp("debs")
    made = []
    for version, minor in ((PREV, PROTOCOL_MINOR - 1), (NEXT, None)):
        env = {**os.environ, "MESHD_VERSION": version, "MESHD_DEB_DIR": str(out)}
        if minor is not None:
            env["MESHD_PROTOCOL_MINOR"] = str(minor)
        t0 = time.monotonic()
        r = run("bash", REPO / "packaging/build-deb.sh", cwd=REPO, env=env, check=False)
        timings[f"build_{version}"] = time.monotonic() - t0
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        speaks = PROTOCOL_MINOR if minor is None else minor
        assert f"protocol 1.{speaks}" in r.stdout, r.stdout
        made.append(out / f"meshd_{version}_all.deb")
    assert run("dpkg", "--compare-versions", PREV, "lt", NEXT, check=False).returncode == 0
    return Builds(*made)


# ------------------------------------------------------------------------------ ping loops


class PingLoop:
    """``ping`` from one namespace every PING_INTERVAL, its replies logged by sequence number, so
    that any packet lost in between shows, however short the gap."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
        self.proc, self.log, self.what = proc, log, what

    def replies(self) -> set[int]:
        return {int(s) for s in re.findall(r"icmp_seq=(\d+) ", self.log.read_text())}

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        """Until ``n`` more replies came in than now (a condition, not a sleep)."""
        want = len(self.replies()) + n
        wait_until(lambda: len(self.replies()) >= want, timeout, f"{n} replies on {self.what}")

    def stop(self) -> tuple[int, list[int]]:
        """Stop; returns (packets sent, sequence numbers lost after the first reply). The last
        packet, in flight when ping was interrupted, does not count as lost; nor do the ones
        before the path first answered (a neighbour being resolved, a route programmed just
        after gossip converged): `start_ping` waits for replies before anything is changed."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        text = self.log.read_text()
        m = re.search(r"(\d+) packets transmitted", text)
        assert m, f"{self.what}: no ping summary: {text[-500:]}"
        sent = int(m[1])
        got = self.replies()
        lost = sorted(set(range(min(got, default=sent), sent)) - got)
        return sent, lost


def start_ping(
    spawn: Callable[..., subprocess.Popen[bytes]], ns: str, dst: str, log: Path
) -> PingLoop:
    with open(log, "wb") as fh:
        proc = spawn(ns, ["ping", "-n", "-i", str(PING_INTERVAL), dst], stdout=fh)
    loop = PingLoop(proc, log, f"{ns} -> {dst}")
    loop.wait_for(5)
    return loop


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ask(sock: Path, cmd: str) -> Any:
    try:
        return request(sock, cmd, timeout=10)
    except Exception:  # noqa: BLE001 - not up yet (or restarting): the caller waits
        return None


def version_drops(st: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in st["dropped"].items() if k.startswith("protocol_") or "type" in k}


# ------------------------------------------------------------------------------ (a) dpkg -i


NS_B, NS_PA, NS_PB = "upgr-b", "upgr-pa", "upgr-pb"
A_IP, B_IP = "10.98.0.1", "10.98.0.2"
NETWORK = "10.244.0.0/16"


def host_config(name: str, ip: str, iface: str, seed: str, extra: str = "") -> str:
    return (
        f'name = "{name}"\nseeds = ["{seed}"]\niface = "{iface}"\npublic_ip = "{ip}"\n'
        f'network = "{NETWORK}"\n{extra}{GOSSIP}'
    )


def plug_pod(host_ns: list[str], pod_ns: str, subnet: str) -> str:
    """Cable pod namespace ``pod_ns`` to a host (``host_ns``: the argv prefix that runs a command
    there) with the subnet's first address on the host side; returns the pod's address."""
    base = subnet.split("/")[0].rsplit(".", 1)[0]
    gw, pod = f"{base}.1", f"{base}.2"
    run(*host_ns, "sh", "-ec", f"ip addr add {gw}/24 dev pod0 && ip link set pod0 up")
    run(
        "ip", "-n", pod_ns, "-batch", "-",
        input=f"link set lo up\naddr add {pod}/24 dev eth0\nlink set eth0 up\n"
        f"route add default via {gw}\n",
    )  # fmt: skip
    return pod


def subnet_of(env_text: str) -> str | None:
    """The subnet a subnet.env names (FLANNEL_SUBNET is the gateway form, 10.244.7.1/24)."""
    m = re.search(r"^FLANNEL_SUBNET=(\S+)$", env_text, re.M)
    return None if m is None else str(ipaddress.ip_network(m[1], strict=False))


def test_dpkg_upgrade_of_a_live_host(
    builds: Builds, chroot: Path, timings: dict[str, float], tmp_path: Path
) -> None:
    apt_install("systemd-container", "iputils-ping")
    apt_install_deb(chroot, builds.prev, timings)
    shutil.copy(builds.next, chroot / "root" / builds.next.name)
    key = in_root(chroot, "meshd", "keygen").stdout
    (chroot / "etc/meshd/key").write_text(key)
    (chroot / "etc/meshd/key").chmod(0o600)
    (chroot / "etc/meshd/meshd.toml").write_text(host_config("host-a", A_IP, "ul0", B_IP))
    (chroot / "usr/sbin/policy-rc.d").unlink()  # a real host: dpkg restarts the service

    box = Container(chroot, tmp_path / "console.log")
    b_proc: subprocess.Popen[bytes] | None = None
    pings: list[PingLoop] = []
    made = [NS_B, NS_PA, NS_PB]
    try:
        for ns in made:
            run("ip", "netns", "add", ns)
        t0 = time.monotonic()
        box.boot()
        timings["nspawn_boot"] = time.monotonic() - t0
        pid1 = str(box.pid1)
        inside = ["nsenter", "-t", pid1, "-n"]
        # The underlay: a cable from the container to host B; each pod a cable to its host.
        for dev, near, far in (("ul0", pid1, NS_B), ("pod0", pid1, NS_PA), ("pod0", NS_B, NS_PB)):
            link = ["link", "add", dev, "netns", near, "type", "veth", "peer", "name", "eth0"]
            run("ip", *link, "netns", far)
        box.sh(f"ip link set lo up && ip addr add {A_IP}/24 dev ul0 && ip link set ul0 up")
        run("ip", "-n", NS_B, "-batch", "-",
            input=f"link set lo up\naddr add {B_IP}/24 dev eth0\nlink set eth0 up\n")  # fmt: skip

        box.sh("systemctl enable --now meshd")
        b_dir = tmp_path / "host-b"
        b_dir.mkdir()
        (b_dir / "key").write_text(key)
        (b_dir / "key").chmod(0o600)
        (b_dir / "meshd.toml").write_text(host_config("host-b", B_IP, "eth0", A_IP))
        with open(tmp_path / "host-b.log", "wb") as log:
            b_proc = subprocess.Popen(
                ["ip", "netns", "exec", NS_B, sys.executable, "-m", "meshd", "join",
                 "--config", str(b_dir / "meshd.toml"), "--key-file", str(b_dir / "key"),
                 "--state-dir", str(b_dir / "state"), "--socket", str(b_dir / "sock"),
                 "--subnet-env", str(b_dir / "subnet.env")],
                stdout=log, stderr=subprocess.STDOUT, cwd=b_dir,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

        def a_status() -> dict[str, Any]:
            return json.loads(box.sh("meshd status --json").stdout)  # type: ignore[no-any-return]

        def b_sees_a() -> dict[str, Any]:
            rows = ask(b_dir / "sock", "peers") or []
            return next((r for r in rows if r["name"] == "host-a"), {})

        def settled() -> bool:
            a_env = box.sh("cat /run/meshd/subnet.env", check=False).stdout
            b_env = (b_dir / "subnet.env").read_text() if (b_dir / "subnet.env").exists() else ""
            return bool(subnet_of(a_env) and subnet_of(b_env)) and b_sees_a().get("state") == (
                "alive"
            )

        wait_until(settled, 60, "both hosts up, with their subnets, host-a alive on host-b")
        before = a_status()
        assert before["version"] == PREV and before["protocol"]["version"] == (
            f"1.{PROTOCOL_MINOR - 1}"
        )
        sub_a = subnet_of(box.sh("cat /run/meshd/subnet.env").stdout)
        sub_b = subnet_of((b_dir / "subnet.env").read_text())
        assert sub_a and sub_b and sub_a == before["node"]["subnet"]
        pod_a = plug_pod(inside, NS_PA, sub_a)
        pod_b = plug_pod(["ip", "netns", "exec", NS_B], NS_PB, sub_b)
        # The key and the configuration (a conffile we changed: dpkg keeps it, asking nothing,
        # as the package's copy did not change), and what the state directory holds.
        kept = "md5sum /etc/meshd/*; ls /var/lib/meshd"
        files = box.sh(kept).stdout
        main_pid = box.sh("systemctl show -p MainPID --value meshd").stdout.strip()

        def spawn(ns: str, argv: list[str], stdout: Any) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=stdout, stderr=subprocess.STDOUT
            )

        pings = [
            start_ping(spawn, NS_PA, pod_b, tmp_path / "a-to-b.log"),
            start_ping(spawn, NS_PB, pod_a, tmp_path / "b-to-a.log"),
        ]

        # The upgrade, as an operator runs it on a live host.
        t0 = time.monotonic()
        up = box.sh(f"dpkg -i /root/{builds.next.name}", check=False)
        timings["dpkg_i"] = time.monotonic() - t0
        journal = box.sh("journalctl -u meshd --no-pager -o cat | tail -40").stdout
        assert up.returncode == 0, up.stdout + up.stderr + journal
        assert box.sh("meshd --version").stdout.strip() == f"meshd {NEXT}"
        assert box.sh("systemctl is-active meshd").stdout.strip() == "active", journal
        assert box.sh("systemctl show -p MainPID --value meshd").stdout.strip() != main_pid

        after = a_status()
        assert after["version"] == NEXT and after["protocol"]["version"] == f"1.{PROTOCOL_MINOR}"
        for field in ("name", "node_id", "vtep_mac", "subnet", "public_ip", "since"):
            assert after["node"][field] == before["node"][field], field
        assert after["node"]["incarnation"] > before["node"]["incarnation"]
        assert box.sh(kept).stdout == files
        assert subnet_of(box.sh("cat /run/meshd/subnet.env").stdout) == sub_a
        wait_until(
            lambda: (
                b_sees_a().get("incarnation") == a_status()["node"]["incarnation"]
                and b_sees_a().get("state") == "alive"
                and a_status()["synced"]
            ),
            30,
            "host-b to see the upgraded host-a alive at its new incarnation",
        )
        for p in pings:  # and traffic keeps flowing after the daemon took over again
            p.wait_for(40)
        results = {p.what: p.stop() for p in pings}
        pings = []
        timings.update({f"pings {w}": float(sent) for w, (sent, _) in results.items()})
        assert {w: lost for w, (_, lost) in results.items() if lost} == {}, results
        assert all(sent > 60 for sent, _ in results.values()), results
        b_st = ask(b_dir / "sock", "status")
        assert version_drops(a_status()) == {} and version_drops(b_st) == {}
    finally:
        for p in pings:
            p.proc.kill()
        if b_proc is not None:
            b_proc.terminate()
            b_proc.wait(timeout=15)
        box.shutdown()
        for ns in made:
            run("ip", "netns", "del", ns, check=False)


# ------------------------------------------------------------------------------ (b) rolling


def extract(deb: Path, where: Path) -> Path:
    run("dpkg-deb", "-x", deb, where)
    return where / "usr/lib/meshd"


def start_packaged(lab: Lab, host: Host, lib: Path, key: Path, seeds: list[str]) -> Daemon:
    """``host``'s daemon from a package's /usr/lib/meshd (its state dir kept across restarts)."""
    argv = lab.daemon_argv(
        host,
        key_file=key,
        backend="vxlan",
        seeds=seeds,
        extra_args=["--config", str(lab.workdir / "gossip.toml")],
    )
    assert argv[1:3] == ["-m", "meshd"], argv
    argv = ["/usr/bin/python3", "-I", "-c", LAUNCH, str(lib), *argv[3:]]
    hdir = lab.workdir / host.name
    (hdir / "state").mkdir(parents=True, exist_ok=True)
    log_path = lab.workdir / f"{host.name}.log"
    with open(log_path, "ab") as log:
        proc = lab.spawn(host.ns, argv, stdout=log, env={"PATH": os.environ["PATH"]}, cwd=hdir)
    d = Daemon(host, argv, hdir, log_path, hdir / "meshd.sock", hdir / "state", proc)
    lab.daemons[host.name] = d
    return d


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    down("upgr")  # left behind by a run killed mid-test
    with Lab("upgr", hosts=4, workdir=tmp_path / "lab") as lab:
        yield lab


def test_rolling_upgrade_of_a_mixed_mesh(
    builds: Builds, lab: Lab, tmp_path: Path, timings: dict[str, float]
) -> None:
    apt_install("iputils-ping")
    libs = {
        v: extract(deb, tmp_path / v) for v, deb in (("prev", builds.prev), ("next", builds.next))
    }
    (lab.workdir / "gossip.toml").write_text(GOSSIP)
    key = write_key(lab.workdir / "key")
    h1, h2, h3, h4 = lab.hosts
    seed = f"{h1.underlay_ip}:7950"
    for h in (h1, h2, h3):
        start_packaged(lab, h, libs["prev"], key, [] if h is h1 else [seed])

    def status(h: Host) -> dict[str, Any]:
        return ask(lab.daemons[h.name].socket_path, "status") or {}

    def view(h: Host) -> dict[str, tuple[str, int]]:
        rows = ask(lab.daemons[h.name].socket_path, "peers") or []
        return {r["name"]: (r["state"], r["incarnation"]) for r in rows}

    def converged(hosts: list[Host]) -> Callable[[], bool]:
        def check() -> bool:
            want = {
                h.name: ("alive", (status(h).get("node") or {}).get("incarnation")) for h in hosts
            }
            return all(view(h) == want and status(h).get("synced") for h in hosts)

        return check

    def back(h: Host, inc: int, everyone: list[Host]) -> Callable[[], bool]:
        """``h`` restarted (a higher incarnation) and ``everyone`` sees everyone alive."""
        return lambda: (
            (status(h).get("node") or {}).get("incarnation", 0) > inc and converged(everyone)()
        )

    def reaches(a: Host, b: Host) -> Callable[[], bool]:
        argv = ["ping", "-n", "-c", "1", "-W", "1", b.container_ip]
        return lambda: (
            run("ip", "netns", "exec", a.container_ns, *argv, check=False).returncode == 0
        )

    def log_tails() -> str:
        return "\n".join(
            f"--- {d.host.name}\n" + "\n".join(d.log_path.read_text().splitlines()[-10:])
            for d in lab.daemons.values()
        )

    try:
        wait_until(converged([h1, h2, h3]), 60, "three hosts of the previous minor")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_tails()}") from None
    assert {status(h)["protocol"]["version"] for h in (h1, h2, h3)} == {f"1.{PROTOCOL_MINOR - 1}"}

    pings = [
        start_ping(lab.spawn, a.container_ns, b.container_ip, tmp_path / f"{a.name}-{b.name}.log")
        for a in (h1, h2, h3)
        for b in (h1, h2, h3)
        if a is not b
    ]
    try:
        t0 = time.monotonic()
        for i, h in enumerate((h1, h2, h3)):
            inc = status(h)["node"]["incarnation"]
            lab.stop_daemon(h.name)  # SIGTERM: the quiet stop of a package upgrade's restart
            start_packaged(lab, h, libs["next"], key, [seed])
            upgraded = [h1, h2, h3][: i + 1]
            everyone = [h1, h2, h3] if i == 0 else [h1, h2, h3, h4]
            try:
                wait_until(back(h, inc, everyone), 60, f"the mesh with {h.name} upgraded")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{log_tails()}") from None
            assert all(status(x)["protocol"]["version"] == f"1.{PROTOCOL_MINOR}" for x in upgraded)
            if i == 0:
                # Mixed: a newcomer of this release joins through a host of the previous minor,
                # and every pod reaches its pod: the old hosts learnt it from gossip.
                assert status(h2)["protocol"]["version"] == f"1.{PROTOCOL_MINOR - 1}"
                start_packaged(lab, h4, libs["next"], key, [f"{h2.underlay_ip}:7950"])
                wait_until(converged([h1, h2, h3, h4]), 60, "the newcomer h4 in the mixed mesh")
                for a, b in [(x, h4) for x in (h1, h2, h3)] + [(h4, x) for x in (h1, h2, h3)]:
                    wait_until(reaches(a, b), 20, f"{a.name}'s pod to reach {b.name}'s pod")
            for p in pings:
                p.wait_for(20)
        timings["rolling_upgrade"] = time.monotonic() - t0
    finally:
        results = {p.what: p.stop() for p in pings}
    assert {w: lost for w, (_, lost) in results.items() if lost} == {}, results
    assert all(sent > 100 for sent, _ in results.values()), results
    for h in (h1, h2, h3, h4):
        assert version_drops(status(h)) == {}, (h.name, status(h)["dropped"])
