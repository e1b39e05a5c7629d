"""The lab's WireGuard plumbing, without a daemon: wireguard-go in two lab hosts, each in a mount
namespace of its own (``private_dirs``, as ``start_daemon`` runs a wireguard daemon), configured
through the lab's ``wg`` helper; teardown and ``down`` stop the wireguard-go processes.

Run under ``flock /tmp/meshd-e2e.lock``: it shares the kernel with the other root tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.errors import LabError
from meshd.lab import Lab, down, leftover_namespaces
from meshd.lab.daemons import WG_DEVICE, WG_RUN_DIR
from meshd.lab.namespaces import private_dirs_argv
from meshd.lab.runner import preflight, tunnel_device

needs_wg = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("wireguard-go", "wg", "ip")),
    reason="needs root, iproute2, wireguard-go and wireguard-tools",
)
_seq = iter(range(1000))


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"w{os.getpid() % 100000}x{next(_seq)}"
    yield p
    left = leftover_namespaces(p)
    down(p)
    assert left == [], f"namespaces left behind: {left}"


# --------------------------------------------------------------------------- no root needed


def test_private_dirs_argv_execs_the_command_itself() -> None:
    argv = private_dirs_argv(["/run/wireguard"], ["python", "-m", "meshd", "join", "a b"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "sh"]
    script = argv[6]
    assert "mount -t tmpfs" in script and "/run/wireguard" in script
    assert script.endswith('exec "$@"')  # the same pid all the way down
    assert argv[7:] == ["sh", "python", "-m", "meshd", "join", "a b"]


def test_runner_knows_the_wireguard_device() -> None:
    assert tunnel_device("wireguard") == WG_DEVICE == "meshd.wg"


def test_preflight_without_wireguard_go_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshd.lab.runner as runner

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "kernel_supports", lambda kind: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(LabError) as err:
        preflight("wireguard")
    assert "\n" not in str(err.value)
    assert "wireguard-go" in str(err.value) and "apt-get install" in str(err.value)
    # wireguard-go alone is enough; so is the kernel module alone
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    preflight("wireguard")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(runner, "kernel_supports", lambda kind: kind == "wireguard")
    preflight("wireguard")


# --------------------------------------------------------------------------- root


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_wireguard_go(lab: Lab) -> dict[str, int]:
    """wireguard-go meshd.wg in every host, each under a private /run/wireguard (its parent exits
    once the device and socket exist; the daemonized child stays)."""
    for h in lab.hosts:
        proc = lab.spawn(
            h.ns,
            ["wireguard-go", WG_DEVICE],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            private_dirs=[WG_RUN_DIR],
        )
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out.decode()
    pids = {}
    for h in lab.hosts:
        pid = lab.wireguard_pid(h)
        assert pid is not None, f"no wireguard-go in {h.ns}"
        pids[h.name] = pid
    return pids


@pytest.mark.root
@needs_wg
def test_wireguard_go_per_host_no_socket_clash_and_teardown(prefix: str) -> None:
    lab = Lab(prefix, hosts=2).build()
    try:
        pids = _start_wireguard_go(lab)
        h1, h2 = lab.hosts
        assert pids["h1"] != pids["h2"]
        socks = [Path(f"/proc/{pids[h.name]}/root{WG_RUN_DIR}/{WG_DEVICE}.sock") for h in lab.hosts]
        inodes = {(s.stat().st_dev, s.stat().st_ino) for s in socks}
        assert len(inodes) == 2, "both hosts' wireguard-go share one socket"
        mounts = {os.readlink(f"/proc/{p}/ns/mnt") for p in pids.values()}
        assert len(mounts) == 2 and os.readlink("/proc/self/ns/mnt") not in mounts

        # The wg helper reaches each host's own device: configure a tunnel and ping through it.
        keys = {}
        for i, h in enumerate(lab.hosts, start=1):
            priv = lab.workdir / f"{h.name}.key"
            priv.write_text(lab.exec(None, ["wg", "genkey"]).stdout)
            keys[h.name] = lab.exec(None, ["wg", "pubkey"], input=priv.read_text()).stdout.strip()
            lab.wg(h, "set", WG_DEVICE, "private-key", str(priv), "listen-port", "51820")
            lab.exec(h.ns, ["ip", "addr", "add", f"10.250.0.{i}/24", "dev", WG_DEVICE])
            lab.exec(h.ns, ["ip", "link", "set", WG_DEVICE, "up"])
        for h, peer, i in ((h1, h2, 2), (h2, h1, 1)):
            endpoint = f"{peer.underlay_ip}:51820"
            lab.wg(h, "set", WG_DEVICE, "peer", keys[peer.name],
                   "endpoint", endpoint, "allowed-ips", f"10.250.0.{i}/32")  # fmt: skip
        assert lab.ping(h1.ns, "10.250.0.2", count=3)
        dump = lab.wg(h1, "show", WG_DEVICE, "dump").stdout.splitlines()
        assert dump[0].split("\t")[1] == keys["h1"]  # h1's own device, not h2's
        assert dump[1].split("\t")[0] == keys["h2"]
    finally:
        problems = lab.teardown()
    assert problems == []
    assert not any(_alive(p) for p in pids.values()), "wireguard-go outlived the lab"


@pytest.mark.root
@needs_wg
def test_down_stops_wireguard_go_of_a_kept_lab(prefix: str) -> None:
    with Lab(prefix, hosts=2, keep=True) as lab:
        pids = _start_wireguard_go(lab)
    assert all(_alive(p) for p in pids.values())
    assert len(down(prefix)) == 5
    assert not any(_alive(p) for p in pids.values()), "wireguard-go outlived the lab"
