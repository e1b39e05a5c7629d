"""Network namespaces and the processes inside them: naming, exec, kill, delete.

The bottom of the lab: nothing here knows about hosts, bridges or meshd. :class:`Processes` is
the part of a lab that remembers what it started (in any namespace) so teardown can stop it.

Only stdlib and the ``ip`` command are used, so the module also runs inside the UML guest.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from meshd.errors import LabError

NETNS_DIR = Path("/run/netns")


def lab_ns_pattern(prefix: str) -> re.Pattern[str]:
    """Every namespace name a lab with ``prefix`` creates: underlay, router, outside, hosts,
    containers."""
    return re.compile(rf"^{re.escape(prefix)}-(ul|rt|out|h\d+|c\d+)$")


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (None: the caller's own namespace)."""
    return [*argv] if ns is None else ["ip", "netns", "exec", ns, *argv]


def private_dirs_argv(dirs: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``argv`` run in a mount namespace of its own with a fresh, empty tmpfs (0700) on each of
    ``dirs`` (created first where missing), which its children inherit.

    Every lab host shares the machine's filesystem, so two hosts' ``wireguard-go meshd.wg`` would
    both want /run/wireguard/meshd.wg.sock ("UAPI listen error: unix socket in use"). ``unshare``
    and ``sh`` exec in turn, so the process started is ``argv`` itself (same pid)."""
    mounts = [
        f"mkdir -p {shlex.quote(d)} && mount -t tmpfs -o mode=0700 meshd-lab {shlex.quote(d)}"
        for d in dirs
    ]
    script = " && ".join([*mounts, 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def ns_exec(
    ns: str | None,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 60.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``ns`` and wait; with ``check``, a failure raises LabError naming it."""
    full = ns_argv(ns, argv)
    try:
        res = subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"cannot run {full[0]}: not installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {shlex.join(full)}") from exc
    if check and res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(
            f"{shlex.join(full)} failed (rc={res.returncode}): {err[-1] if err else 'no output'}"
        )
    return res


def leftover_namespaces(prefix: str) -> list[str]:
    """Namespaces named like a lab with ``prefix`` would name them (to assert a clean teardown)."""
    if not NETNS_DIR.is_dir():
        return []
    pat = lab_ns_pattern(prefix)
    return sorted(n for n in os.listdir(NETNS_DIR) if pat.match(n))


def netns_pids(ns: str) -> list[int]:
    res = ns_exec(None, ["ip", "netns", "pids", ns], check=False, timeout=10)
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def netns_processes(ns: str, comm: str) -> list[int]:
    """The pids in namespace ``ns`` whose command name (``/proc/<pid>/comm``) is ``comm``."""
    found = []
    for pid in netns_pids(ns):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm[:15]:
                found.append(pid)
        except OSError:  # gone meanwhile
            continue
    return found


def kill_pids(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    pending = set(pids) - {os.getpid()}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = {p for p in pending if _pid_alive(p)}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        # A zombie still "exists" for kill(0); it is dead for our purposes.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, identifies one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def delete_namespaces(names: Iterable[str]) -> None:
    """Delete those of ``names`` that exist, in one ``ip -batch`` (``-force``: keep going)."""
    present = [n for n in names if netns_exists(n)]
    if present:
        ns_exec(
            None,
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {n}\n" for n in present),
            check=False,
        )


@contextlib.contextmanager
def cleanup_on_signals(signums: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP raise KeyboardInterrupt, like Ctrl-C, so the
    ``with Lab(...)`` inside it tears down instead of dying with namespaces left behind.
    Main thread only (Python delivers signals there)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Processes:
    """Commands run inside namespaces; what runs in the background is stopped on request."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def exec(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` and wait for it (see :func:`ns_exec`)."""
        return ns_exec(ns, argv, check=check, timeout=timeout, input=input)

    def spawn(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | None = subprocess.DEVNULL,
        stderr: IO[Any] | int | None = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        private_dirs: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``ns`` in the background; :meth:`stop_processes` stops it.

        ``ip netns exec`` execs the command, so the Popen's pid is the command itself; it leads its
        own session, so teardown can signal the whole process group it creates. ``private_dirs``:
        in its own mount namespace with a fresh tmpfs on each (see :func:`private_dirs_argv`).
        """
        if private_dirs:
            argv = private_dirs_argv(private_dirs, argv)
        proc = subprocess.Popen(
            ns_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def running(self) -> list[subprocess.Popen[bytes]]:
        """The spawned processes that have not exited."""
        return [p for p in self._procs if p.poll() is None]

    def stop(
        self,
        proc: subprocess.Popen[bytes],
        sig: int = signal.SIGTERM,
        timeout: float = 5.0,
        *,
        group: bool = True,
    ) -> int | None:
        """Signal ``proc``'s process group (``group=False``: ``proc`` alone), wait up to
        ``timeout`` (then SIGKILL); return its rc."""
        kill = os.killpg if group else os.kill
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def stop_processes(self) -> None:
        """Stop every process :meth:`spawn` started (SIGTERM, then SIGKILL after a grace)."""
        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


__all__ = [
    "NETNS_DIR",
    "Processes",
    "cleanup_on_signals",
    "delete_namespaces",
    "kill_pids",
    "lab_ns_pattern",
    "leftover_namespaces",
    "netns_exists",
    "netns_pids",
    "netns_processes",
    "ns_argv",
    "ns_exec",
    "private_dirs_argv",
    "start_time",
]
