"""One timed TCP stream between two namespaces, for bench_throughput.py (stdlib only, run by file
path with ``python -S``, like meshd/lab/nettool.py, so it needs nothing but the interpreter).

    sink --port P --seed S [--ready F]         accept one connection, check every byte, print JSON
    send --host H --port P --bytes N --seed S  send N bytes, print JSON

nettool's ``tcp-send`` draws every chunk from ``os.urandom`` and both of its sides hash
everything with sha256: right for proving a path intact, but at hundreds of MB/s that is the
Python process's CPU, not the network, and on 2 cores it competes with the kernel's. Here the
payload is one 1 MiB pseudo-random block (from ``--seed``: not compressible, nothing to hide in
zeros) sent over and over from a memoryview, and the sink compares what it receives with the
same block, one memcmp per chunk (~1 ms per 64 MiB here; sha256 takes ~40 ms even with SHA
extensions, on each side), so a corrupting path still fails.

The sender's clock runs from just before ``connect`` to the sink's one-byte answer, which the sink
sends only after EOF: the whole transfer, handshake included, delivered and checked. Both sides
report their own CPU time (``cpu_s``, the process's: it excludes softirq work the kernel does on
the way). The sender also reads, right around that same window, the machine's /proc/stat (one
kernel for every namespace: ``busy_ticks`` of ``total_ticks``, all CPUs, 10 ms ticks) and its
namespace's TCP retransmissions (/proc/net/snmp is per network namespace).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from collections.abc import Sequence

BLOCK = 1 << 20


def block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def _cpu_s() -> float:
    # CLOCK_PROCESS_CPUTIME_ID, ns resolution (os.times counts 10 ms ticks; a transfer: ~20 ms)
    return time.process_time()


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat's first line."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def retransmitted() -> int:
    """Tcp RetransSegs of this network namespace."""
    with open("/proc/net/snmp") as fh:
        tcp = [line.split() for line in fh if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")])


def sink(a: argparse.Namespace) -> dict[str, object]:
    # Twice the block, so every chunk of up to BLOCK bytes is one slice, wherever it starts.
    expected = block(a.seed) * 2
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    if a.ready:
        with open(a.ready, "w"):
            pass
    conn, _ = srv.accept()
    conn.settimeout(a.timeout)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total, bad_at = 0, None
    while n := conn.recv_into(buf, BLOCK):
        off = total % BLOCK
        # startswith at an offset: one memcmp, no copy (a memoryview == compares item by item).
        if bad_at is None and not expected.startswith(view[:n], off):
            bad_at = total
        total += n
    conn.sendall(b"k")
    conn.close()
    srv.close()
    return {
        "bytes": total,
        "intact": bad_at is None,
        "first_bad_offset": bad_at,
        "seconds": time.perf_counter() - t0,
        "cpu_s": _cpu_s() - cpu0,
    }


def send(a: argparse.Namespace) -> dict[str, object]:
    data = memoryview(block(a.seed))
    re0, (busy0, total0) = retransmitted(), cpu_ticks()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    conn = socket.create_connection((a.host, a.port), timeout=a.timeout)
    left = a.bytes
    while left:
        n = min(left, BLOCK)
        conn.sendall(data[:n])
        left -= n
    conn.shutdown(socket.SHUT_WR)
    ack = conn.recv(1)
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    busy1, total1 = cpu_ticks()
    conn.close()
    if ack != b"k":
        raise OSError("the sink closed without acknowledging the transfer")
    return {
        "bytes": a.bytes,
        "seconds": seconds,
        "cpu_s": cpu,
        "busy_ticks": busy1 - busy0,
        "total_ticks": total1 - total0,
        "retransmits": retransmitted() - re0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sp = ap.add_subparsers(dest="cmd", required=True)
    x = sp.add_parser("sink")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--timeout", type=float, default=60.0)
    x.add_argument("--ready", help="created once the socket listens")
    x.set_defaults(func=sink)
    x = sp.add_parser("send")
    x.add_argument("--host", required=True)
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--bytes", type=int, default=64 << 20)
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--timeout", type=float, default=60.0)
    x.set_defaults(func=send)
    a = ap.parse_args(argv)
    try:
        print(json.dumps(a.func(a)), flush=True)
    except OSError as exc:  # TimeoutError included: one line, non-zero exit
        print(f"tcp_stream: {a.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
