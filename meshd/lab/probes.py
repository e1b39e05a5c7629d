"""Checks on a lab's traffic: reachability matrices, TCP and UDP transfers, captures, counters.

Each check runs real tools inside the namespaces (``ping``, ``tcpdump``, ``ip -s``, and the
stdlib ``nettool.py`` for what those lack), so its answer is what the kernel did. Only stdlib and
system commands are used, so the module also runs inside the UML guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from meshd.errors import LabError
from meshd.lab.namespaces import ns_exec
from meshd.lab.topology import Host, Topology

NETTOOL = Path(__file__).with_name("nettool.py")
_PING_MANY_FROM = 10  # hosts; see Probes.ping_matrix


class Probes(Topology):
    """What a lab can check about its own network (mixed into :class:`meshd.lab.Lab`)."""

    def ping(self, src_ns: str, dst_ip: str, count: int = 1, timeout: float = 2.0) -> bool:
        """True if ``dst_ip`` answers at least one of ``count`` pings from ``src_ns``."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{timeout:g}", dst_ip]
        res = ns_exec(src_ns, argv, check=False, timeout=count * (timeout + 0.2) + 10)
        return res.returncode == 0

    def ping_matrix(
        self,
        count: int = 1,
        timeout: float = 2.0,
        hosts: Sequence[Host] | None = None,
        *,
        family: int = 4,
    ) -> dict[tuple[str, str], bool]:
        """Container-to-container reachability for every ordered pair: (src, dst) name -> ok,
        over IPv4 or (``family=6``, a dual-stack lab) IPv6.

        Small labs run one ``ping`` per pair (~10 ms each here). From 10 hosts on, one
        ``nettool ping-many`` per source container: N processes instead of N*(N-1), which
        matters where every exec is slow (20 hosts in the UML guest: ~10 s instead of ~55 s)."""
        hs = list(hosts or self.hosts)
        if family not in (4, 6):
            raise LabError(f"family must be 4 or 6, not {family}")
        missing = [h.name for h in hs if h.container_ip_of(family) is None]
        if missing:
            raise LabError(f"{', '.join(missing)}: no IPv{family} container address")
        dst = {h.name: str(h.container_ip_of(family)) for h in hs}
        pairs = [(a, b) for a in hs for b in hs if a is not b]
        if len(hs) < _PING_MANY_FROM and shutil.which("ping") is not None:
            results = self._parallel(
                lambda ab: self.ping(ab[0].container_ns, dst[ab[1].name], count, timeout), pairs
            )
            return {(a.name, b.name): ok for (a, b), ok in zip(pairs, results, strict=True)}

        def from_host(src: Host) -> dict[str, bool]:
            targets = [dst[h.name] for h in hs if h is not src]
            res = ns_exec(
                src.container_ns,
                _nettool("ping-many", "--targets", ",".join(targets), "--count", count,
                         "--timeout", float(timeout)),
                check=False,
                timeout=count * timeout + 30,
            )  # fmt: skip
            try:
                return {str(k): bool(v) for k, v in json.loads(res.stdout).items()}
            except (ValueError, AttributeError):
                return {}

        replies = dict(zip((h.name for h in hs), self._parallel(from_host, hs), strict=True))
        return {(a.name, b.name): replies[a.name].get(dst[b.name], False) for a, b in pairs}

    def tcp_transfer(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        nbytes: int = 4 << 20,
        *,
        port: int | None = None,
        timeout: float = 30.0,
    ) -> bool:
        """Send ``nbytes`` random bytes over TCP; True if the receiver's sha256 matches."""
        return self._tcp(src_ns, dst_ns, dst_ip, nbytes, port, timeout, peer=False) is not None

    def seen_source(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        *,
        port: int | None = None,
        timeout: float = 10.0,
    ) -> str | None:
        """The source address a TCP connection from ``src_ns`` to ``dst_ip`` arrives with in
        ``dst_ns`` (NAT on the way shows here), or None if it failed within ``timeout``."""
        seen = self._tcp(src_ns, dst_ns, dst_ip, 1024, port, timeout, peer=True)
        return None if seen is None else seen.split()[-1]

    def _tcp(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        nbytes: int,
        port: int | None,
        timeout: float,
        *,
        peer: bool,
    ) -> str | None:
        """One TCP transfer; the sink's output line when the sha256 matched, else None."""
        port = port or self._next_port()
        ready = self.workdir / f"tcp-{port}.ready"
        ready.unlink(missing_ok=True)
        sink = self.spawn(
            dst_ns,
            _nettool(
                "tcp-sink", "--port", port, "--timeout", timeout, "--ready", ready,
                "--bind", _any_address(dst_ip), *(["--peer"] if peer else []),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            if not _wait_for(ready, 10.0, sink):
                return None
            sent = ns_exec(
                src_ns,
                _nettool(
                    "tcp-send", "--host", dst_ip, "--port", port, "--bytes", nbytes,
                    "--timeout", timeout,
                ),
                check=False,
                timeout=timeout + 10,
            )  # fmt: skip
            out, _ = sink.communicate(timeout=timeout + 10)
            got = out.decode().strip()
            want = sent.stdout.strip()
            ok = sent.returncode == 0 and want != "" and got.startswith(want)
            return got if ok and len(got.split()) == len(want.split()) + peer else None
        except (subprocess.TimeoutExpired, LabError):
            return None
        finally:
            self.stop(sink, signal.SIGKILL)
            ready.unlink(missing_ok=True)

    def udp_count(
        self,
        src_ns: str,
        dst_ns: str,
        dst_ip: str,
        port: int,
        count: int,
        *,
        pps: float = 5000.0,
        settle: float = 0.3,
    ) -> int:
        """Send ``count`` UDP datagrams from ``src_ns``; return how many the sink in ``dst_ns``
        received (to measure injected loss and partitions). The sink is stopped ``settle``
        seconds after the sender is done."""
        tag = f"run{self._next_port()}-"
        ready = self.workdir / f"udp-{tag}.ready"
        sink = self.spawn(
            dst_ns,
            _nettool(
                "udp-sink",
                "--port",
                port,
                "--idle",
                0,
                "--first",
                120,
                "--ready",
                ready,
                "--tag",
                tag,
                "--bind",
                _any_address(dst_ip),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_for(ready, 10.0, sink):
                raise LabError(f"udp sink on {dst_ns}:{port} did not start")
            ns_exec(
                src_ns,
                _nettool("udp-send", "--host", dst_ip, "--port", port, "--count", count,
                         "--pps", pps, "--tag", tag),
                timeout=count / pps + 30 if pps else 60,
            )  # fmt: skip
            time.sleep(settle)
            sink.send_signal(signal.SIGTERM)
            out, _ = sink.communicate(timeout=10)
            return int(out.decode().strip() or 0)
        finally:
            self.stop(sink, signal.SIGKILL)
            ready.unlink(missing_ok=True)

    def set_rp_filter(self, mode: int) -> None:
        """Set rp_filter (0 off, 1 strict, 2 loose) on every host, for all/default and every
        existing device: the kernel uses max(all, device), so setting "all" alone can't lower it."""
        if mode not in (0, 1, 2):
            raise LabError(f"rp_filter mode must be 0, 1 or 2, not {mode}")
        script = f"for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo {mode} > $f; done"
        self._parallel(lambda h: ns_exec(h.ns, ["sh", "-c", script]), self.hosts)

    def link_counters(self, ns: str, ifname: str) -> dict[str, int]:
        """rx_/tx_ bytes, packets, errors, dropped (and the rest of stats64) of one link."""
        res = ns_exec(None, ["ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname])
        stats = json.loads(res.stdout)[0].get("stats64", {})
        return {
            f"{direction}_{k}": int(v)
            for direction in ("rx", "tx")
            for k, v in stats.get(direction, {}).items()
            if isinstance(v, int)
        }

    def capture(
        self,
        ns: str,
        ifname: str,
        bpf: str,
        during: Callable[[], object] | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[str]:
        """Up to ``count`` packets matching ``bpf`` on ``ifname`` in ``ns``, as tcpdump lines,
        captured while ``during()`` runs (e.g. a ping): proof that traffic took a given path."""
        if shutil.which("tcpdump") is None:
            raise LabError("capturing needs tcpdump (apt-get install tcpdump)")
        argv = ["tcpdump", "-l", "-n", "-c", str(count), "-i", ifname, *shlex.split(bpf)]
        proc = self.spawn(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_listening(proc, f"{ns}/{ifname}", timeout)
            if during is not None:
                during()
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Fewer packets than asked for: stop it and keep what it printed.
                proc.send_signal(signal.SIGINT)
                out, _ = proc.communicate(timeout=5)
            return [line for line in out.decode(errors="replace").splitlines() if line]
        finally:
            self.stop(proc, signal.SIGKILL)

    @contextlib.contextmanager
    def recording(self, ns: str, ifname: str = "any", bpf: str = "") -> Iterator[list[str]]:
        """Every packet matching ``bpf`` on ``ifname`` in ``ns`` while the block runs: the list
        yielded is filled when the block ends, one tcpdump line per packet (``-n -q``: addresses,
        ports, protocol and length). Unlike :meth:`capture`, nothing is left out: the packets go
        to a file (a pipe read only at the end would fill and stall tcpdump), and a capture that
        lost packets raises LabError."""
        if shutil.which("tcpdump") is None:
            raise LabError("capturing needs tcpdump (apt-get install tcpdump)")
        pcap = self.workdir / f"rec-{self._next_port()}.pcap"
        # --immediate-mode: else the kernel hands packets over in blocks, up to a second late,
        # and what the last block holds when SIGINT comes is lost (and not counted as dropped).
        # Headers only (-s), a large kernel buffer (-B, KiB) and buffered writes keep up with a
        # bulk transfer through a tunnel (the lengths printed are the packets' own).
        argv = ["tcpdump", "-n", "--immediate-mode", "-s", "128", "-B", "65536", "-Z", "root",
                "-i", ifname, "-w", str(pcap)]  # fmt: skip
        proc = self.spawn(ns, [*argv, *shlex.split(bpf)], stderr=subprocess.PIPE)
        lines: list[str] = []
        try:
            _wait_listening(proc, f"{ns}/{ifname}", 5.0)
            yield lines
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
            dropped = re.search(rb"(\d+) packets? dropped by kernel", err)
            if dropped is None or int(dropped[1]) != 0:
                raise LabError(f"tcpdump on {ns}/{ifname}: {err.decode(errors='replace')}")
            # inside ns: "-i any" records interface indexes, named as that namespace names them
            res = ns_exec(ns, ["tcpdump", "-n", "-q", "-r", str(pcap)], timeout=60)
            lines += [line for line in res.stdout.splitlines() if line]
        finally:
            self.stop(proc, signal.SIGKILL)
            pcap.unlink(missing_ok=True)


def _wait_listening(proc: subprocess.Popen[bytes], where: str, timeout: float) -> None:
    """Until tcpdump says "listening on ..." on stderr (after "verbose output suppressed"): the
    capture is armed. Raw reads, so a partial line cannot block us."""
    assert proc.stderr is not None
    said, deadline = b"", time.monotonic() + timeout
    while b"listening on" not in said:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, left))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
        if not chunk:
            err = said.decode(errors="replace").strip()
            raise LabError(f"tcpdump on {where} did not start: {err}")
        said += chunk


def format_matrix(matrix: Mapping[tuple[str, str], bool], names: Sequence[str]) -> str:
    """The ping matrix as a table: rows are sources, columns destinations."""
    width = max(len(n) for n in names) + 1
    out = [" " * width + "".join(n.rjust(width) for n in names)]
    for a in names:
        cells = ["-" if a == b else ("ok" if matrix.get((a, b)) else "FAIL") for b in names]
        out.append(a.ljust(width) + "".join(c.rjust(width) for c in cells))
    return "\n".join(out)


def _nettool(*args: object) -> list[str]:
    """nettool.py run by file path with this interpreter (works in the UML guest too)."""
    # -S: no site import; nettool needs only the standard library (saves ~30 ms per start).
    return [
        sys.executable,
        "-S",
        str(NETTOOL),
        *(f"{a:g}" if isinstance(a, float) else str(a) for a in args),
    ]


def _any_address(dst_ip: str) -> str:
    """The wildcard a sink binds to for traffic to ``dst_ip``: one family only, so a peer's
    address is never shown IPv4-mapped (``::ffff:a.b.c.d``)."""
    return "::" if ":" in dst_ip else "0.0.0.0"


def _wait_for(path: Path, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


__all__ = ["NETTOOL", "Probes", "format_matrix"]
