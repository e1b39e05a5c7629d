"""The Debian package: build it, install it into a debootstrapped Debian 12 root with apt (its
dependencies come from the archive), run it there, and purge it.

A second test boots that root with systemd-nspawn (in its own network namespace) and runs the
hardened unit for real: refusal without a key, Type=notify start, capabilities, forwarding.

The debootstrap result is cached in MESHD_DEBOOTSTRAP_CACHE (default
/var/cache/meshd/debootstrap-bookworm) and never modified: every run works on a fresh copy, so
each run really resolves the package's dependencies from the archive. Downloaded .debs are kept in
<cache>.apt-archives. The archive is the host's own Debian mirror (its apt sources).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
CACHE = Path(os.environ.get("MESHD_DEBOOTSTRAP_CACHE", f"/var/cache/meshd/debootstrap-{SUITE}"))
STAMP = ".meshd-debootstrap-complete"
RECIPE = f"debootstrap --variant=minbase --include=systemd,systemd-sysv,iproute2 {SUITE}"
WANTS = "etc/systemd/system/multi-user.target.wants/meshd.service"
DSH_STATE = "var/lib/systemd/deb-systemd-helper-enabled/meshd.service.dsh-also"
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}
# Imports every module of the installed (or source) meshd and prints those that fail, as JSON.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
import meshd
failed = {}
for m in pkgutil.walk_packages(meshd.__path__, "meshd."):
    if m.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(m.name)
    except Exception as exc:
        failed[m.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""

if os.geteuid() != 0:
    pytest.skip("needs root (debootstrap, chroot, mount)", allow_module_level=True)


def run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def apt_install(*pkgs: str) -> None:
    missing = [
        p
        for p in pkgs
        if run("dpkg-query", "-W", "-f=${Status}", p, check=False).stdout != "install ok installed"
    ]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", env=env)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def host_debian_sources() -> list[str]:
    """The host's Debian archive entries for SUITE, as one-line `deb` entries: debootstrap and the
    chroot's apt use the same mirror as the host (the only network this project may reach)."""
    entries: list[tuple[str, str, str]] = []
    apt = Path("/etc/apt")
    for f in sorted([apt / "sources.list", *apt.glob("sources.list.d/*.list")]):
        if f.exists():
            for line in f.read_text().splitlines():
                m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)", line.strip())
                if m:
                    entries.append((m[1], m[2], m[3]))
    for f in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                for uri in fields.get("URIs", "").split():
                    for suite in fields.get("Suites", "").split():
                        entries.append((uri, suite, fields.get("Components", "main")))
    lines = [
        f"deb {uri} {suite} {comps}"
        for uri, suite, comps in entries
        if suite.split("-")[0].split("/")[0] == SUITE
    ]
    if not lines:
        pytest.skip(f"the host has no apt source for Debian {SUITE}")
    return lines


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    t: dict[str, float] = {}
    yield t
    # Shown with `pytest -s`; also recorded in the junit properties.
    print("\ntest_deb timings (s): " + json.dumps({k: round(v, 1) for k, v in t.items()}))


@pytest.fixture(scope="module")
def deb(timings: dict[str, float]) -> Path:
    t0 = time.monotonic()
    out = run("bash", REPO / "packaging/build-deb.sh", cwd=REPO, check=False)
    timings["build"] = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    debs = sorted((REPO / "dist").glob("meshd_*_all.deb"), key=lambda p: p.stat().st_mtime)
    assert debs, "build-deb.sh made no dist/meshd_*_all.deb"
    return debs[-1]


@pytest.fixture(scope="module")
def base_root(timings: dict[str, float]) -> Path:
    """The cached Debian root, debootstrapped (into a temporary name, then renamed) when missing
    or made by another recipe. Real hosts run systemd, so the root has it: the maintainer scripts
    then take their systemd paths, and the root can be booted."""
    if (CACHE / STAMP).exists() and (CACHE / STAMP).read_text().strip() == RECIPE:
        timings["debootstrap_cached"] = 0.0
        return CACHE
    apt_install("debootstrap")
    sources = host_debian_sources()
    mirror = next(s.split()[1] for s in sources if s.split()[2] == SUITE)
    tmp = CACHE.with_name(CACHE.name + ".partial")
    for d in (tmp, CACHE):
        assert not mounts_under(d), f"{d} has mounts: {mounts_under(d)}"
        shutil.rmtree(d, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    out = run(*RECIPE.split(), tmp, mirror, check=False)
    timings["debootstrap_first"] = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (tmp / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    # No package may start a service (invoke-rc.d and deb-systemd-invoke honour this).
    policy = tmp / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (tmp / STAMP).write_text(RECIPE + "\n")
    tmp.rename(CACHE)
    return CACHE


def mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [m for m in points if m == real or m.startswith(real + "/")]


@pytest.fixture
def chroot(base_root: Path, timings: dict[str, float]) -> Iterator[Path]:
    """A throw-away copy of the cached root, removed afterwards (never through a live mount)."""
    work = Path(tempfile.mkdtemp(prefix="meshd-deb-"))
    root = work / "root"
    try:
        t0 = time.monotonic()
        run("cp", "-a", "--reflink=auto", base_root, root)
        timings["copy_root"] = time.monotonic() - t0
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        yield root
    finally:
        left = mounts_under(work)
        if left:
            pytest.fail(f"mounts left under {work}: {left}; not removing it")
        shutil.rmtree(work)


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc and the shared apt download cache inside ``root``; unmounted whatever happens."""
    archives = CACHE.with_name(CACHE.name + ".apt-archives")
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        for target, args in [
            (root / "proc", ["-t", "proc", "proc"]),
            (root / "var/cache/apt/archives", ["--bind", str(archives)]),
        ]:
            run("mount", *args, target)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if run("umount", target, check=False).returncode != 0:
                run("umount", "-l", target, check=False)


def apt_install_deb(root: Path, deb: Path, timings: dict[str, float]) -> str:
    """Install ``deb`` with apt in ``root``; returns what apt printed."""
    shutil.copy(deb, root / "tmp" / deb.name)
    with mounted(root):
        in_root(root, "apt-get", "update", "-qq")
        t0 = time.monotonic()
        out = in_root(
            root, "apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}"
        )
        timings["apt_install"] = time.monotonic() - t0
    return out.stdout + out.stderr


def in_root(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = run("chroot", root, *cmd, env=CHROOT_ENV, check=False)
    if check and out.returncode != 0:
        pytest.fail(f"in chroot: {' '.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def test_install_run_purge(
    deb: Path,
    chroot: Path,
    timings: dict[str, float],
    record_property: Callable[[str, object], None],
) -> None:
    version = re.match(r"meshd_(.+)_all\.deb", deb.name)[1]  # type: ignore[index]
    printed = apt_install_deb(chroot, deb, timings)
    # A fresh install says what comes next, certificates first (docs/install.md).
    assert "meshd ca init" in printed and "meshd keygen" in printed, printed[-2000:]
    assert printed.index("meshd ca init") < printed.index("meshd keygen")

    # The command works, with Debian's python3, cryptography and msgpack and nothing from PyPI.
    assert in_root(chroot, "meshd", "--version").stdout.strip() == f"meshd {version}"
    key = in_root(chroot, "meshd", "keygen").stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert "join" in in_root(chroot, "meshd", "--help").stdout

    # Every module the source tree can import, the installed package can import too.
    installed = json.loads(
        in_root(chroot, "python3", "-I", "-c", IMPORT_ALL, "/usr/lib/meshd").stdout
    )
    source = json.loads(run(sys.executable, "-c", IMPORT_ALL, REPO).stdout)
    assert set(installed) <= set(source), {m: installed[m] for m in set(installed) - set(source)}

    # The daemon's devices and addresses go through the bundled pyroute2 (the pinned one, not
    # Debian's older python3-pyroute2), imported the lean way netlink.py does.
    pinned = re.search(r"^pyroute2==(\S+)", (REPO / "packaging/requirements.txt").read_text(), re.M)
    assert pinned is not None
    lean = (
        "import sys; sys.path.insert(0, '/usr/lib/meshd'); "
        "from meshd.dataplane import netlink; netlink._pyroute2(); "
        "import pyroute2; print(pyroute2.__version__, pyroute2.__file__)"
    )
    version_file = in_root(chroot, "python3", "-I", "-c", lean).stdout.split()
    assert version_file == [pinned[1], "/usr/lib/meshd/pyroute2/__init__.py"], version_file

    # Files and maintainer-script effects.
    for path in [
        "usr/bin/meshd",
        "lib/systemd/system/meshd.service",
        "etc/meshd/meshd.toml",
        "usr/share/man/man1/meshd.1.gz",
        "usr/share/doc/meshd/copyright",
    ]:
        assert (chroot / path).is_file(), path
    assert (chroot / "var/lib/meshd").is_dir()
    conffiles = in_root(chroot, "dpkg-query", "-W", "-f=${Conffiles}", "meshd").stdout
    assert "/etc/meshd/meshd.toml" in conffiles
    assert (chroot / "etc/meshd/meshd.toml").read_text() == (REPO / "conf/meshd.toml").read_text()
    assert list((chroot / "usr/lib/meshd/meshd").glob("__pycache__/*.pyc")), "postinst compiles"
    unit = (chroot / "lib/systemd/system/meshd.service").read_text()
    assert "Type=notify" in unit and "ExecStart=/usr/bin/meshd join" in unit
    # Installing does not enable the unit (it cannot run before a key and a subnet exist), but
    # records it, so that purge cleans up after a `systemctl enable`.
    assert not (chroot / WANTS).exists()
    assert (chroot / DSH_STATE).exists()
    in_root(chroot, "systemctl", "enable", "meshd")
    assert (chroot / WANTS).is_symlink()

    # What an operator creates, and what the daemon writes, goes on purge.
    (chroot / "etc/meshd/key").write_text(key + "\n")
    (chroot / "etc/meshd/key").chmod(0o600)
    (chroot / "var/lib/meshd/state.json").write_text("{}")
    with mounted(chroot):
        in_root(chroot, "apt-get", "purge", "-y", "-q", "meshd")
    assert in_root(chroot, "dpkg-query", "-W", "-f=${Status}", "meshd", check=False).stdout in (
        "",
        "unknown ok not-installed",
    )
    for path in [
        "etc/meshd",
        "var/lib/meshd",
        "usr/lib/meshd",
        "usr/bin/meshd",
        "lib/systemd/system/meshd.service",
        WANTS,
        DSH_STATE,
    ]:
        assert not (chroot / path).is_symlink() and not (chroot / path).exists(), (
            f"{path} survived the purge"
        )

    for k, v in timings.items():
        record_property(f"seconds_{k}", round(v, 1))


class Container:
    """The installed root booted with systemd-nspawn: its own PID 1, and its own network namespace
    with a veth pair as the underlay (10.99.0.2/24, default route), so nothing touches the host."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self, timeout: float = 90.0) -> None:
        t0 = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-D",
                    str(self.root),
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    # the wireguard backend's userspace device (wireguard-go) needs the tun node
                    "--bind=/dev/net/tun",
                    "--quiet",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        state = ""
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                pytest.skip(f"systemd-nspawn cannot boot here: {self.log.read_text()[-2000:]}")
            # nspawn forks helpers first; the container's PID 1 is the child running systemd.
            self.pid1 = self._systemd_child() or 0
            if self.pid1:
                out = self.sh("systemctl is-system-running", check=False)
                state = (out.stdout + out.stderr).strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        pytest.fail(
            f"container not up in {timeout}s (PID 1 {self.pid1}: {state!r}):\n"
            f"{self.log.read_text()[-1500:]}"
        )

    def _systemd_child(self) -> int | None:
        assert self.proc is not None
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return next(
                (int(k) for k in kids if Path(f"/proc/{k}/comm").read_text().strip() == "systemd"),
                None,
            )
        except OSError:
            return None

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = run("nsenter", "-t", str(self.pid1), "-a", "/bin/sh", "-c", script, check=False)
        if check and out.returncode != 0:
            pytest.fail(f"in container: {script} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.pid1:
            self.sh("systemctl poweroff", check=False)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def test_service_under_systemd(
    deb: Path, chroot: Path, timings: dict[str, float], tmp_path: Path
) -> None:
    apt_install("systemd-container")
    apt_install_deb(chroot, deb, timings)
    with mounted(chroot):  # what the package recommends/suggests for the wireguard backend
        in_root(chroot, "apt-get", "install", "-y", "-q", "wireguard-go", "wireguard-tools")
    conf = chroot / "etc/meshd/meshd.toml"
    text, n = re.subn(
        r'^# subnet = ".*"$', 'subnet = "10.244.9.0/24"', conf.read_text(), flags=re.M
    )
    assert n == 1, "conf/meshd.toml has no commented top-level `# subnet = ...` line any more"
    conf.write_text(text)
    shutil.copy(deb, chroot / "root" / deb.name)  # nspawn mounts a fresh /tmp

    box = Container(chroot, tmp_path / "console.log")
    try:
        t0 = time.monotonic()
        box.boot()
        timings["nspawn_boot"] = time.monotonic() - t0
        box.sh(
            "ip link add v0 type veth peer name v1 && ip addr add 10.99.0.2/24 dev v0"
            " && ip link set v0 up && ip link set v1 up"
            " && ip route add default via 10.99.0.1 dev v0 onlink"
        )

        # No key: the service does not start, and the journal says how to make one.
        assert box.sh("systemctl start meshd", check=False).returncode != 0
        assert box.sh("systemctl is-active meshd", check=False).stdout.strip() != "active"
        journal = box.sh("journalctl -u meshd --no-pager -o cat").stdout
        assert "meshd keygen > /etc/meshd/key" in journal, journal

        # With a key: Type=notify start returns once the daemon reported READY=1.
        box.sh(
            "meshd keygen > /etc/meshd/key && chmod 600 /etc/meshd/key"
            " && systemctl reset-failed meshd"
        )
        t0 = time.monotonic()
        start = box.sh("systemctl start meshd", check=False)
        timings["service_start"] = time.monotonic() - t0
        journal = box.sh("journalctl -u meshd --no-pager -o cat").stdout
        assert start.returncode == 0, journal
        assert box.sh("systemctl is-active meshd").stdout.strip() == "active"

        # Least privilege held, and still enough: one capability, yet forwarding is on and the
        # VXLAN device exists; the state and runtime directories were writable.
        status = box.sh("cat /proc/$(systemctl show -p MainPID --value meshd)/status").stdout
        caps = dict(re.findall(r"^(Cap\w+):\s*([0-9a-f]+)$", status, re.M))
        assert int(caps["CapEff"], 16) == int(caps["CapBnd"], 16) == 1 << 12, caps  # NET_ADMIN
        assert re.search(r"^NoNewPrivs:\s*1$", status, re.M)
        assert box.sh("cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1", journal
        box.sh("ip link show meshd.1")
        st = json.loads(box.sh("meshd status --json").stdout)
        assert st["node"]["subnet"] == "10.244.9.0/24"
        box.sh("test -s /var/lib/meshd/state.json || ls /var/lib/meshd | grep -q .")

        # The unit's resource limits and umask, as systemd applied them; under UMask=0077 what
        # others must read still is (subnet.env for CNI), and the state is private.
        props = box.sh("systemctl show -p MemoryMax -p TasksMax -p LimitNOFILE -p UMask meshd")
        shown = dict(ln.split("=", 1) for ln in props.stdout.split())
        assert shown == {
            "MemoryMax": str(256 << 20),
            "TasksMax": "128",
            "LimitNOFILE": "1024",
            "UMask": "0077",
        }, shown
        assert box.sh("stat -c %a /run/meshd/subnet.env").stdout.strip() == "644"
        assert box.sh("stat -c %a /run/meshd/meshd.sock").stdout.strip() == "600"
        main_pid = box.sh("systemctl show -p MainPID --value meshd").stdout.strip()
        timings["daemon_tasks"] = float(box.sh(f"ls /proc/{main_pid}/task | wc -l").stdout)
        timings["daemon_fds"] = float(box.sh(f"ls /proc/{main_pid}/fd | wc -l").stdout)

        # `systemctl reload` is SIGHUP: the key file is read again, the daemon runs on.
        box.sh("systemctl reload meshd")
        box.sh("journalctl -u meshd --no-pager -o cat | grep -q 'reload: keyring unchanged'")
        assert box.sh("systemctl show -p MainPID --value meshd").stdout.strip() == main_pid

        # control_group under this unit (no CAP_CHOWN): members read, only root changes things,
        # others get nothing. Each refusal is one line from the CLI.
        text, n = re.subn(
            r'^# control_group = ".*"$', 'control_group = "meshdctl"', conf.read_text(), flags=re.M
        )
        assert n == 1, "conf/meshd.toml has no commented `# control_group = ...` line any more"
        conf.write_text(text)
        box.sh("groupadd meshdctl && systemctl restart meshd")
        assert box.sh("stat -c %a /run/meshd/meshd.sock").stdout.strip() == "666"
        member = "runuser -u nobody -g nogroup -G meshdctl -- "
        outsider = "runuser -u nobody -g nogroup -- "
        assert json.loads(box.sh(member + "meshd peers --json").stdout)[0]["self"]
        box.sh(member + "meshd status")
        refused = box.sh(member + "meshd leave", check=False)
        assert refused.returncode != 0, refused.stdout
        assert "permission denied: leave needs root" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        nobody = box.sh(outsider + "meshd status", check=False)
        assert nobody.returncode != 0 and "neither root nor in the control group" in nobody.stderr
        assert box.sh("systemctl is-active meshd").stdout.strip() == "active"  # nobody left

        # The wireguard backend under the unit (this kernel has no module: wireguard-go, a child
        # in the unit's cgroup, needing /dev/net/tun and /run/wireguard). A restart of the
        # service (KillMode=process) keeps that process, so the device is adopted, not rebuilt.
        wg_conf = conf.read_text()
        text, n = re.subn(r'^# backend = ".*"$', 'backend = "wireguard"', wg_conf, flags=re.M)
        assert n == 1, "conf/meshd.toml has no commented `# backend = ...` line any more"
        conf.write_text(text)
        restart = box.sh("systemctl restart meshd", check=False)
        journal = box.sh("journalctl -u meshd --no-pager -o cat").stdout
        assert restart.returncode == 0, journal[-3000:]
        st = json.loads(box.sh("meshd status --json").stdout)["dataplane"]
        assert st["last_error"] is None, (st, journal[-3000:])
        wgst = st["wireguard"]
        assert wgst["implementation"] in ("wireguard-go", "kernel"), wgst
        box.sh("ip link show meshd.wg && wg show meshd.wg listen-port | grep -qx 51820")
        box.sh("test $(stat -c %a /var/lib/meshd/wireguard.key) = 600")
        box.sh("systemctl restart meshd")
        st = json.loads(box.sh("meshd status --json").stdout)["dataplane"]
        assert (
            st["wireguard"]["pid"] == wgst["pid"]
            and st["wireguard"]["public_key"] == (wgst["public_key"])
        ), st["wireguard"]
        if wgst["implementation"] == "wireguard-go":
            assert "adopted" in st["wireguard"]["why"], st["wireguard"]
        conf.write_text(wg_conf)
        # six starts in two minutes by now: past the unit's StartLimitBurst, which is the point
        # of that limit; reset-failed clears the count as an operator would
        box.sh("systemctl reset-failed meshd; systemctl restart meshd")

        # A stop is quiet: the kernel state and subnet.env (for CNI plugins) stay.
        box.sh("systemctl stop meshd")
        box.sh("ip link show meshd.1 && test -f /run/meshd/subnet.env")

        # Upgrade (a reinstall runs the same scripts): a running, enabled daemon is restarted
        # and stays enabled. Then remove: the daemon is stopped.
        box.sh("systemctl enable --now meshd && rm /usr/sbin/policy-rc.d")
        pid = box.sh("systemctl show -p MainPID --value meshd").stdout.strip()
        box.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall /root/{deb.name}")
        assert box.sh("systemctl is-active meshd").stdout.strip() == "active"
        assert box.sh("systemctl show -p MainPID --value meshd").stdout.strip() != pid
        assert box.sh("systemctl is-enabled meshd").stdout.strip() == "enabled"
        box.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q meshd")
        assert box.sh("systemctl is-active meshd", check=False).stdout.strip() == "inactive"
        box.sh("ip link show meshd.1 && test -f /etc/meshd/key")
    finally:
        box.shutdown()
