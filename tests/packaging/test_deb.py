"""The Debian package: build it, install it into a debootstrapped Debian 12 root with apt (its
dependencies come from the archive), run it there, and purge it.

The bare debootstrap result is cached in MESHD_DEBOOTSTRAP_CACHE (default
/var/cache/meshd/debootstrap-bookworm) and never modified: every run works on a fresh copy, so
each run really resolves the package's dependencies from the archive. Downloaded .debs are kept in
<cache>.apt-archives. The archive is the host's own Debian mirror (its apt sources).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
CACHE = Path(os.environ.get("MESHD_DEBOOTSTRAP_CACHE", f"/var/cache/meshd/debootstrap-{SUITE}"))
STAMP = ".meshd-debootstrap-complete"
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
    missing = [p for p in pkgs if run("dpkg-query", "-W", "-f=${Status}", p, check=False)
               .stdout != "install ok installed"]
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
    lines = [f"deb {uri} {suite} {comps}" for uri, suite, comps in entries
             if suite.split("-")[0].split("/")[0] == SUITE]
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
    """The cached bare Debian root; debootstrapped (into a temporary name, then renamed) if absent."""
    if (CACHE / STAMP).exists():
        timings["debootstrap_cached"] = 0.0
        return CACHE
    apt_install("debootstrap")
    sources = host_debian_sources()
    mirror = next(s.split()[1] for s in sources if s.split()[2] == SUITE)
    tmp = CACHE.with_name(CACHE.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(CACHE, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    out = run("debootstrap", "--variant=minbase", SUITE, tmp, mirror, check=False)
    timings["debootstrap_first"] = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (tmp / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    # No service may start inside the chroot (invoke-rc.d / deb-systemd-invoke honour this).
    policy = tmp / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (tmp / STAMP).write_text(f"{time.time()}\n")
    tmp.rename(CACHE)
    return CACHE


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == real for line in f)


@pytest.fixture
def chroot(base_root: Path, timings: dict[str, float]) -> Iterator[Path]:
    """A throw-away copy of the cached root with /proc and the apt download cache mounted."""
    work = Path(tempfile.mkdtemp(prefix="meshd-deb-"))
    root = work / "root"
    t0 = time.monotonic()
    run("cp", "-a", "--reflink=auto", base_root, root)
    timings["copy_root"] = time.monotonic() - t0
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    archives = CACHE.with_name(CACHE.name + ".apt-archives")
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    mounts = [(root / "proc", ["-t", "proc", "proc"]),
              (root / "var/cache/apt/archives", ["--bind", str(archives)])]
    mounted: list[Path] = []
    try:
        for target, args in mounts:
            run("mount", *args, target)
            mounted.append(target)
        yield root
    finally:
        for target in reversed(mounted):
            if run("umount", target, check=False).returncode != 0:
                run("umount", "-l", target, check=False)
        still = [t for t in mounted if is_mounted(t)]
        if still:  # never rm -rf through a live mount
            pytest.fail(f"could not unmount {still}; left {work} in place")
        shutil.rmtree(work)


def in_root(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = run("chroot", root, *cmd, env=CHROOT_ENV, check=False)
    if check and out.returncode != 0:
        pytest.fail(f"in chroot: {' '.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def test_install_run_purge(deb: Path, chroot: Path, timings: dict[str, float],
                           record_property: pytest.RecordProperty) -> None:
    version = re.match(r"meshd_(.+)_all\.deb", deb.name)[1]  # type: ignore[index]
    shutil.copy(deb, chroot / "tmp" / deb.name)
    in_root(chroot, "apt-get", "update", "-qq")
    t0 = time.monotonic()
    in_root(chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}")
    timings["apt_install"] = time.monotonic() - t0

    # The command works, with Debian's python3, cryptography and msgpack and nothing from PyPI.
    assert in_root(chroot, "meshd", "--version").stdout.strip() == f"meshd {version}"
    key = in_root(chroot, "meshd", "keygen").stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert "join" in in_root(chroot, "meshd", "--help").stdout

    # Every module the source tree can import, the installed package can import too.
    installed = json.loads(in_root(chroot, "python3", "-I", "-c", IMPORT_ALL, "/usr/lib/meshd").stdout)
    source = json.loads(run(sys.executable, "-c", IMPORT_ALL, REPO).stdout)
    assert set(installed) <= set(source), {m: installed[m] for m in set(installed) - set(source)}

    # Files and maintainer-script effects.
    for path in ["usr/bin/meshd", "lib/systemd/system/meshd.service", "etc/meshd/meshd.toml",
                 "usr/share/man/man1/meshd.1.gz", "usr/share/doc/meshd/copyright"]:
        assert (chroot / path).is_file(), path
    assert (chroot / "var/lib/meshd").is_dir()
    assert oct((chroot / "var/lib/meshd").stat().st_mode & 0o777) == "0o700"
    conffiles = in_root(chroot, "dpkg-query", "-W", "-f=${Conffiles}", "meshd").stdout
    assert "/etc/meshd/meshd.toml" in conffiles
    assert (chroot / "etc/meshd/meshd.toml").read_text() == (REPO / "conf/meshd.toml").read_text()
    assert list((chroot / "usr/lib/meshd/meshd").glob("__pycache__/*.pyc")), "postinst compiles"
    unit = (chroot / "lib/systemd/system/meshd.service").read_text()
    assert "Type=notify" in unit and "ExecStart=/usr/bin/meshd join" in unit
    # Installing does not enable the unit (it cannot run before a key and a subnet exist).
    assert not (chroot / "etc/systemd/system/multi-user.target.wants/meshd.service").exists()

    # What an operator creates, and what the daemon writes, goes on purge.
    (chroot / "etc/meshd/key").write_text(key + "\n")
    (chroot / "etc/meshd/key").chmod(0o600)
    (chroot / "var/lib/meshd/state.json").write_text("{}")
    in_root(chroot, "apt-get", "purge", "-y", "-q", "meshd")
    assert in_root(chroot, "dpkg-query", "-W", "-f=${Status}", "meshd", check=False).stdout \
        in ("", "unknown ok not-installed")
    for path in ["etc/meshd", "var/lib/meshd", "usr/lib/meshd", "usr/bin/meshd",
                 "lib/systemd/system/meshd.service"]:
        assert not (chroot / path).exists(), f"{path} survived the purge"

    for k, v in timings.items():
        record_property(f"seconds_{k}", round(v, 1))
