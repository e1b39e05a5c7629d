"""Run commands under a user-mode-linux kernel, for kernel features this host lacks (ipip).

Debian's ``user-mode-linux`` package is a Linux kernel built as an ordinary program
(``linux.uml``), with ipip, vxlan, bridge and veth as modules. It boots in a second or two with the
host's ``/`` as its read-only root (hostfs), so bash, iproute2, python and this project's venv run
inside unchanged, against the guest kernel. No KVM, no disk image, no root filesystem to build.

Cache (``$MESHD_UML_CACHE``, default ``/var/cache/meshd/uml``)::

    linux          the kernel (usr/bin/linux.uml of the package)
    modules/lib/modules/<release>/   the needed modules and their dependency closure, with the
                   index files of ``depmod -b``: the guest loads them all with one
                   ``modprobe -d modules -S <release> -a <names>`` (~0.3 s; ~1.6 s as 13 insmods)
    modules/release, modules/names   the release and the module names for that modprobe
    modules/load-order   the .ko paths, dependencies first: the insmod fallback without kmod
    VERSION        kernel release and package file name
    run/<id>/      one directory per boot (command script, init copy, UML's pid file), removed after

``build()`` fetches the package with ``apt-get download`` (``apt-get update`` first if apt has no
list yet) and installs nothing into the system. The guest init is ``meshd/lab/guest/init.sh``.

Inside the guest ``/run``, ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are fresh tmpfs (so namespaces,
sockets and scratch files of the guest never mix with the host's): host files there are invisible
unless shared again (``ro_dirs``; the working directory, this package and the interpreter are shared
by themselves), and the command script lives in the cache. The host's files are read-only except
the directories passed as ``rw_dirs``. Every exec costs ~0.1 s in the guest; nftables
ip/inet tables are not available (the Debian UML build lacks NF_TABLES_IPV4/INET).

CLI: ``python -m meshd.lab.uml build|clean|info`` and ``python -m meshd.lab.uml --cmd 'ip -V'``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from meshd.errors import LabError

CACHE_ENV = "MESHD_UML_CACHE"
DEFAULT_CACHE = Path("/var/cache/meshd/uml")
PACKAGE = "user-mode-linux"
MODULES = ("ipip", "tunnel4", "ip_tunnel", "ip6_tunnel", "vxlan", "veth", "bridge", "dummy")
"""Loaded at boot with their dependencies (udp_tunnel, tunnel6, ipv6, stp, llc, ...): what the
lab and the three backends need; ``ip6_tunnel`` is ipip over an IPv6 underlay (``ip6tnl``).
``dummy`` gives tests a spare device. A cache built for fewer modules is rebuilt."""
GUEST_INIT = Path(__file__).with_name("guest") / "init.sh"
HIDDEN_IN_GUEST = ("/tmp", "/run", "/var/tmp", "/dev/shm", "/proc", "/sys", "/dev")
"""Host paths the guest cannot see: tmpfs (or kernel filesystems) are mounted over them. Host
directories below the first four can be shown again (``ro_dirs``/``rw_dirs``); ``run`` does so
by itself for the working directory, this package and the running interpreter's prefixes."""
_SHAREABLE = HIDDEN_IN_GUEST[:4]
NO_RESULT = 99  # CLI exit status when the guest gave no result (boot failure, timeout)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


@dataclass(frozen=True)
class UmlKernel:
    """A built cache: the kernel binary and the module directory for the guest."""

    root: Path
    kernel: Path
    moddir: Path
    release: str


@dataclass(frozen=True)
class UmlRun:
    """One boot: the command's status and output, the whole console, and timings."""

    rc: int
    output: str  # what the command printed (stdout and stderr), console noise excluded
    console: str  # everything the guest printed, for diagnosing boot problems
    boot_seconds: float  # start of linux.uml until the command started
    total_seconds: float  # boot + command + power-off


def hidden_in_guest(path: str | Path, under: Sequence[str] = HIDDEN_IN_GUEST) -> bool:
    p = os.path.realpath(path)
    return any(p == h or p.startswith(h + "/") for h in under)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Drop paths inside another one of the list: mounting the outer one shows them."""
    out: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == o or p.startswith(o + "/") for o in out):
            out.append(p)
    return out


def _check_shareable(path: str) -> str:
    if not Path(path).is_dir():
        raise LabError(f"cannot share {path} with the guest: not a directory")
    # The list travels on the kernel command line, ':'-separated, split on blanks.
    if re.search(r"[:\s]", path):
        raise LabError(f"cannot share {path} with the guest: ':' or blanks in the path")
    if hidden_in_guest(path) and not hidden_in_guest(path, _SHAREABLE):
        raise LabError(f"cannot share {path} with the guest: a kernel filesystem lives there")
    return path


# --------------------------------------------------------------------------- modules.dep


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep -> {relative .ko path: [dependency paths]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, rest = line.partition(":")
        deps[key.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    """kernel/lib/crc-ccitt.ko -> crc_ccitt (the kernel's name: dashes become underscores)."""
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(gz|xz|zst))?$", "", base)
    return base.replace("-", "_")


def module_closure(deps: Mapping[str, Sequence[str]], names: Iterable[str]) -> list[str]:
    """The .ko paths of ``names`` and everything they depend on, dependencies first (insmod
    order). Unknown names raise LabError (built in, or misspelt)."""
    by_name = {module_name(k): k for k in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        # modules.dep lists the full closure, nearest first; visiting it in reverse puts the
        # deepest dependencies first, and the recursion covers any order the file uses.
        for dep in reversed(deps.get(path, ())):
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            raise LabError(f"module {name} is not in the UML kernel's modules.dep (built in?)")
        visit(by_name[key])
    return order


# --------------------------------------------------------------------------- building the cache


def find_kernel(root: Path | None = None, modules: Sequence[str] = MODULES) -> UmlKernel | None:
    """The cache at ``root`` if it is complete and holds ``modules``, else None."""
    root = root or cache_dir()
    kernel, moddir = root / "linux", root / "modules"
    version = root / "VERSION"
    # (modules/release came with the modprobe layout: an older cache is rebuilt.)
    if not (kernel.is_file() and os.access(kernel, os.X_OK) and (moddir / "load-order").is_file()
            and (moddir / "release").is_file() and version.is_file()):  # fmt: skip
        return None
    try:
        cached = set((moddir / "names").read_text().split())
    except OSError:
        return None
    if not set(modules) <= cached:  # built before a module joined MODULES (ip6_tunnel)
        return None
    return UmlKernel(root, kernel, moddir, version.read_text().split()[0])


def build(
    root: Path | None = None,
    modules: Sequence[str] = MODULES,
    *,
    force: bool = False,
    log: TextIO | None = sys.stderr,
) -> UmlKernel:
    """Fetch ``user-mode-linux`` and fill the cache (no-op when complete, unless ``force``)."""
    root = root or cache_dir()
    if not force and (found := find_kernel(root, modules)) is not None:
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise LabError(f"building the UML cache needs {tool} (a Debian/Ubuntu host)")
    root.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (parallel test runs may all find no cache); the others wait, then
    # find the cache complete.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (found := find_kernel(root, modules)) is not None:
            return found
        _build_locked(root, modules, log)
    found = find_kernel(root, modules)
    if found is None:
        raise LabError(f"the UML cache in {root} is incomplete after building it")
    return found


def _build_locked(root: Path, modules: Sequence[str], log: TextIO | None) -> None:
    # Build beside the cache and rename into place: a crash never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".uml-build-", dir=root.parent))
    try:
        deb = _download(tmp, log)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
        mods = tmp / "x/usr/lib/uml/modules"
        releases = sorted(p.name for p in mods.iterdir()) if mods.is_dir() else []
        if len(releases) != 1 or not (tmp / "x/usr/bin/linux.uml").is_file():
            raise LabError(f"unexpected {PACKAGE} package layout ({deb.name})")
        release = releases[0]
        src = mods / release
        out = tmp / "cache"
        deps = parse_modules_dep((src / "modules.dep").read_text())
        order = module_closure(deps, modules)
        moddir = out / "modules"
        tree = moddir / "lib/modules" / release
        for ko in order:
            (tree / ko).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / ko, tree / ko)
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (src / name).is_file():
                # Lets modprobe answer "built in" instead of "not found" for those.
                shutil.copy2(src / name, tree / name)
        _depmod(moddir, release, tree, order, deps, log)
        (moddir / "release").write_text(release + "\n")
        (moddir / "names").write_text(" ".join(modules) + "\n")
        (moddir / "load-order").write_text("".join(f"lib/modules/{release}/{ko}\n" for ko in order))
        shutil.copy2(tmp / "x/usr/bin/linux.uml", out / "linux")
        os.chmod(out / "linux", 0o755)
        (out / "VERSION").write_text(f"{release} {deb.name}\n")
        (out / "run").mkdir()
        old = root.with_name(root.name + ".old")
        if root.exists():
            shutil.rmtree(old, ignore_errors=True)
            root.rename(old)
        out.rename(root)
        shutil.rmtree(old, ignore_errors=True)
        if log:
            print(f"uml: cache ready in {root}: kernel {release}, {len(order)} modules", file=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _depmod(
    moddir: Path,
    release: str,
    tree: Path,
    order: Sequence[str],
    deps: Mapping[str, Sequence[str]],
    log: TextIO | None,
) -> None:
    """Index the module tree for modprobe; without depmod, write modules.dep for insmod only."""
    if shutil.which("depmod") is not None:
        res = subprocess.run(
            ["depmod", "-b", str(moddir), release], capture_output=True, text=True, check=False
        )
        if res.returncode == 0:
            return
        if log:
            print(f"uml: depmod failed ({res.stderr.strip()}); modules load one by one", file=log)
    elif log:
        print("uml: no depmod (apt-get install kmod): modules load one by one", file=log)
    (tree / "modules.dep").write_text("".join(f"{ko}: {' '.join(deps[ko])}\n" for ko in order))


def _download(dest: Path, log: TextIO | None) -> Path:
    def attempt() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=dest, capture_output=True, text=True
        )

    res = attempt()
    if res.returncode != 0:
        # A fresh machine has no package lists yet: update once, then retry.
        if log:
            print("uml: apt-get update", file=log)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        res = attempt()
    debs = sorted(dest.glob(f"{PACKAGE}_*.deb"))
    if res.returncode != 0 or not debs:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise LabError(f"apt-get download {PACKAGE} failed: {last}")
    return debs[-1]


def clean(root: Path | None = None) -> None:
    shutil.rmtree(root or cache_dir(), ignore_errors=True)


# --------------------------------------------------------------------------- running


def run(
    command: Sequence[str] | str,
    *,
    timeout: float = 300.0,
    rw_dirs: Sequence[str | Path] = (),
    ro_dirs: Sequence[str | Path] = (),
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    mem_mb: int = 768,
    root: Path | None = None,
    echo: TextIO | None = None,
) -> UmlRun:
    """Boot the guest, run ``command`` (argv list, or a bash snippet), power off.

    ``cwd`` (default: ours) is where the command starts; ``env`` is exported to it (PYTHONPATH
    is passed through by default); ``rw_dirs`` are host directories mounted writable, ``ro_dirs``
    host directories under /tmp, /run, /var/tmp or /dev/shm to show read-only (the cwd, this
    package and the interpreter's prefixes are added by themselves); ``echo`` receives the
    console as it arrives. Raises LabError when the guest gives no result (boot failure,
    timeout), with the console's last lines.
    """
    if os.geteuid() != 0:
        # Not for UML itself (it runs unprivileged) but for what the lab does inside: the
        # hostfs root is only usable as the same user, and namespaces need root there.
        raise LabError("the UML runner needs root")
    kern = find_kernel(root) or build(root)
    workdir = Path(os.getcwd() if cwd is None else cwd)
    rw = _outermost(_check_shareable(os.path.realpath(d)) for d in rw_dirs)
    # What the command most likely needs, when it sits where the guest's tmpfs would hide it:
    # e.g. a CI checkout under /tmp with its venv.
    wanted = [
        *ro_dirs,
        workdir,
        Path(__file__).resolve().parents[2],
        sys.prefix,
        sys.base_prefix,
    ]  # fmt: skip
    ro = _outermost(
        _check_shareable(real)
        for real in (os.path.realpath(d) for d in wanted)
        if hidden_in_guest(real, _SHAREABLE) and Path(real).is_dir()
    )
    if hidden_in_guest(kern.root):
        raise LabError(f"the UML cache {kern.root} is under a path the guest cannot see")
    exports = dict(env or {})
    if "PYTHONPATH" in os.environ:
        exports.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    (kern.root / "run").mkdir(exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="boot-", dir=kern.root / "run"))
    try:
        script = ["set -o pipefail 2>/dev/null"]
        # A cwd the guest cannot see (tmpfs there) falls back to /.
        script.append(f"cd {shlex.quote(str(workdir))} 2>/dev/null || cd /")
        script += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
        script.append(command if isinstance(command, str) else shlex.join(command))
        (rundir / "cmd.sh").write_text("\n".join(script) + "\n")
        # The init runs from our copy: package data may lose its exec bit on install, and the
        # copy is certainly visible in the guest.
        init = rundir / "init"
        shutil.copyfile(GUEST_INIT, init)
        os.chmod(init, 0o755)
        nonce = secrets.token_hex(6)
        argv = [
            str(kern.kernel),
            f"mem={mem_mb}M",
            f"umid=meshd-{os.getpid()}-{nonce}",
            f"uml_dir={rundir}",  # UML's pid file and mconsole socket: inside the run dir
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            f"init={init}",
            # Console 0 is our pipe, every other console and serial line is disabled.
            "con=null",
            "ssl=null",
            "con0=fd:0,fd:1",
            "quiet",
            f"meshd_moddir={kern.moddir}",
            f"meshd_cmd={rundir / 'cmd.sh'}",
            f"meshd_nonce={nonce}",
        ]
        if ro:
            argv.append("meshd_ro=" + ":".join(ro))
        if rw:
            argv.append("meshd_rw=" + ":".join(rw))
        return _boot(argv, nonce, timeout, echo)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _boot(argv: list[str], nonce: str, timeout: float, echo: TextIO | None) -> UmlRun:
    lines: list[str] = []
    begin_at: list[float] = []
    begin, end = f"MESHD-UML-BEGIN {nonce}", re.compile(rf"MESHD-UML-END {nonce} rc=(\d+)")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # UML is many host processes (one per guest address space): its own session lets us
        # find and end all of them by process group.
        start_new_session=True,
    )

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            if line == begin:
                begin_at.append(time.monotonic())
            lines.append(line)
            if echo is not None:
                print(line, file=echo, flush=True)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _end_group(proc)
        thread.join(5)
    total = time.monotonic() - t0
    console = "\n".join(lines)
    rc: int | None = None
    out: list[str] = []
    inside = False
    for line in lines:
        if line == begin:
            inside = True
        elif m := end.fullmatch(line):
            rc, inside = int(m.group(1)), False
        elif inside:
            out.append(line)
    if rc is None:
        why = f"timed out after {timeout:g}s" if timed_out else f"exit status {proc.returncode}"
        tail = "\n".join(lines[-15:])
        raise LabError(f"the UML guest gave no result ({why}); console ends with:\n{tail}")
    boot = (begin_at[0] - t0) if begin_at else total
    return UmlRun(rc, "\n".join(out), console, boot, total)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill UML's process group (after a timeout, or helpers left after a power-off) and wait
    until it is really gone, so a caller checking right after sees nothing left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    deadline = time.monotonic() + 10
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def run_in_uml(
    command: Sequence[str] | str,
    timeout: float = 300.0,
    rw_dirs: Sequence[str | Path] = (),
    **kwargs: object,
) -> tuple[int, str]:
    """(exit status, output) of ``command`` run in the guest; see :func:`run` for options."""
    res = run(command, timeout=timeout, rw_dirs=rw_dirs, **kwargs)  # type: ignore[arg-type]
    return res.rc, res.output


def run_pytest(nodeid: str, root: str | Path, timeout: float = 900.0) -> UmlRun:
    """Run one pytest node id in the guest (for tests of kernel features this host lacks), with
    the same interpreter and files; the caller asserts on ``rc`` and ``output``."""
    return run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", nodeid],
        cwd=root, timeout=timeout,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip


def available() -> str | None:
    """None if :func:`run` can work here, else the reason it cannot (for test skips)."""
    if os.geteuid() != 0:
        return "needs root"
    if find_kernel() is None and shutil.which("apt-get") is None:
        return f"no UML cache in {cache_dir()} and no apt-get to build one"
    return None


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m meshd.lab.uml",
        description="Run a command under Debian's user-mode-linux kernel (host / as root).",
    )
    p.add_argument("action", nargs="?", default="run", choices=["run", "build", "clean", "info"])
    p.add_argument("--cmd", default="uname -a", help="bash snippet to run in the guest")
    p.add_argument("--rw", action="append", default=[], metavar="DIR",
                   help="host directory to mount read-write in the guest (repeatable)")  # fmt: skip
    p.add_argument("--ro", action="append", default=[], metavar="DIR",
                   help="host dir under /tmp or /run to show read-only (repeatable)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--mem", type=int, default=768, help="guest memory in MiB")
    p.add_argument("--force", action="store_true", help="build: rebuild even if cached")
    p.add_argument("-q", "--quiet", action="store_true", help="run: print only the output")
    a = p.parse_args(argv)
    try:
        if a.action == "clean":
            clean()
            return 0
        if a.action == "build":
            k = build(force=a.force)
            print(f"{k.kernel} ({k.release})")
            return 0
        if a.action == "info":
            found = find_kernel()
            print(f"cache: {cache_dir()}: " + (f"kernel {found.release}" if found else "not built"))
            return 0
        res = run(a.cmd, timeout=a.timeout, rw_dirs=a.rw, ro_dirs=a.ro, mem_mb=a.mem,
                  echo=None if a.quiet else sys.stdout)  # fmt: skip
    except LabError as exc:
        print(f"meshd.lab.uml: {exc}", file=sys.stderr)
        return NO_RESULT
    if a.quiet:
        print(res.output)
    print(
        f"uml: rc={res.rc} boot {res.boot_seconds:.2f}s total {res.total_seconds:.2f}s",
        file=sys.stderr,
    )
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
