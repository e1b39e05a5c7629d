"""Tiny traffic generator and sink for the lab (stdlib only, runnable as a plain script).

    tcp-sink --port P [--ready F] [--peer]   accept one connection, print "<bytes> <sha256>"
                                             (--peer: then the sender's address as seen here)
    tcp-send --host H --port P --bytes N     send N random bytes, print "<bytes> <sha256>"
    udp-sink --port P [--idle S] [--ready F] count datagrams until S seconds of silence (or
                                             SIGTERM), print the count
    udp-send --host H --port P --count N [--pps R]   send N numbered datagrams, print N
    ping-many --targets A,B,... [--count N] [--timeout S]   ICMP echo, print {"A": true, ...}

--tag T on both udp sides marks one run's datagrams, so late ones of an earlier run are ignored.

The lab runs each side inside a namespace as ``ip netns exec NS <python> nettool.py ...``. It is
started by file path, not ``-m``, so it needs neither meshd on sys.path nor anything but the
interpreter: the same file works on the host and inside the UML guest. ``--ready F`` creates F once
the socket is bound, so callers wait for it instead of sleeping.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence


def _ready(path: str | None) -> None:
    if path:
        with open(path, "w"):
            pass


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp_sink(a: argparse.Namespace) -> None:
    srv = socket.socket(_family(a.bind), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    _ready(a.ready)
    conn, peer = srv.accept()
    conn.settimeout(a.timeout)
    digest, total = hashlib.sha256(), 0
    while chunk := conn.recv(65536):
        digest.update(chunk)
        total += len(chunk)
    # The one-byte reply tells the sender everything arrived before it reports success.
    conn.sendall(b"k")
    conn.close()
    print(total, digest.hexdigest(), *([peer[0]] if a.peer else []))


def tcp_send(a: argparse.Namespace) -> None:
    conn = socket.create_connection((a.host, a.port), timeout=a.timeout)
    digest, left = hashlib.sha256(), a.bytes
    while left:
        # Random bytes: a corrupting path (bad checksum offload, wrong MTU) cannot hide in zeros.
        chunk = os.urandom(min(left, 65536))
        digest.update(chunk)
        conn.sendall(chunk)
        left -= len(chunk)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    conn.close()
    print(a.bytes, digest.hexdigest())


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def udp_sink(a: argparse.Namespace) -> None:
    sock = socket.socket(_family(a.bind), socket.SOCK_DGRAM)
    try:
        # Large buffer so a burst is not lost in the socket itself: the count must measure the
        # network (and injected faults), not our reader. FORCE ignores rmem_max (root only).
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((a.bind, a.port))
    tag = a.tag.encode()
    # SIGTERM ends the count at once: a caller that knows the sender is done need not wait for
    # silence (which, when everything is dropped, would cost the whole --first wait).
    signal.signal(signal.SIGTERM, _raise_stop)
    _ready(a.ready)
    count, deadline = 0, time.monotonic() + a.max
    # The first datagram may take a while (sender start-up); silence counts only after it.
    sock.settimeout(a.first)
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                break
            # Count only this run's datagrams: packets of an earlier run can still arrive late
            # (queued behind an unresolved ARP entry during a cut, then flushed on heal).
            if data.startswith(tag):
                count += 1
            sock.settimeout(a.idle or None)
    except _Stop:
        pass
    print(count, flush=True)


def udp_send(a: argparse.Namespace) -> None:
    sock = socket.socket(_family(a.host), socket.SOCK_DGRAM)
    gap = 1.0 / a.pps if a.pps else 0.0
    tag = a.tag.encode()
    start = time.monotonic()
    for i in range(a.count):
        # EPERM: a local nft rule dropped it on output (an injected fault); ECONNREFUSED: an
        # ICMP error for an earlier datagram. Both are losses to count, not reasons to stop.
        with contextlib.suppress(PermissionError, ConnectionRefusedError):
            sock.sendto(tag + b"%08d" % i + b"x" * 56, (a.host, a.port))
        if gap:
            # Pace against the start time, so per-call overhead does not add up.
            delay = start + (i + 1) * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(a.count)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int, v6: bool = False) -> bytes:
    body = b"meshd-lab-ping"
    if v6:  # type 128; the kernel fills in an ICMPv6 checksum (it covers a pseudo-header)
        return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + body
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(head + body), ident, seq) + body


def ping_many(a: argparse.Namespace) -> None:
    """ICMP echo to many targets from one process: a ping matrix of N hosts costs N processes,
    not N*(N-1) -- that matters where every exec is slow (the UML guest: ~0.15 s each)."""
    targets = [t for t in a.targets.split(",") if t]
    # One family per run (the lab pings a matrix per family): IPv6 if the targets are.
    v6 = any(":" in t for t in targets)
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        reply = 129
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        reply = 0
    ident = os.getpid() & 0xFFFF
    answered: set[str] = set()
    for seq in range(a.count):
        for t in targets:
            if t not in answered:
                # An unreachable target (no route: ENETUNREACH) is just a failed one.
                with contextlib.suppress(OSError):
                    sock.sendto(_echo_request(ident, seq, v6), (t, 0))
        deadline = time.monotonic() + a.timeout
        while len(answered) < len(targets) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            src = addr[0]
            # An ICMPv6 raw socket gets the ICMP message alone, an ICMP one the IP header too.
            ihl = 0 if v6 else (data[0] & 0x0F) * 4
            if len(data) >= ihl + 8:
                kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                # The raw socket sees every ICMP packet of the namespace: only our replies count.
                if kind == reply and rid == ident and src in targets:
                    answered.add(src)
        if len(answered) == len(targets):
            break
    print(json.dumps({t: t in answered for t in targets}))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sp = p.add_subparsers(dest="cmd", required=True)
    x = sp.add_parser("ping-many")
    x.add_argument(
        "--targets", required=True, help="comma-separated addresses, all IPv4 or all IPv6"
    )
    x.add_argument("--count", type=int, default=1, help="rounds for targets not answered yet")
    x.add_argument("--timeout", type=float, default=2.0, help="seconds to wait per round")
    x.set_defaults(func=ping_many)
    x = sp.add_parser("tcp-sink")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--bind", default="0.0.0.0")
    x.add_argument("--timeout", type=float, default=30.0)
    x.add_argument("--ready")
    x.add_argument("--peer", action="store_true", help="also print the sender's address")
    x.set_defaults(func=tcp_sink)
    x = sp.add_parser("tcp-send")
    x.add_argument("--host", required=True)
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--bytes", type=int, default=4 << 20)
    x.add_argument("--timeout", type=float, default=30.0)
    x.set_defaults(func=tcp_send)
    x = sp.add_parser("udp-sink")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--bind", default="0.0.0.0")
    x.add_argument("--idle", type=float, default=1.0, help="stop after this much silence")
    x.add_argument("--first", type=float, default=10.0, help="wait this long for the first one")
    x.add_argument("--max", type=float, default=60.0, help="stop after this long in any case")
    x.add_argument("--ready")
    x.add_argument("--tag", default="", help="count only datagrams starting with this")
    x.set_defaults(func=udp_sink)
    x = sp.add_parser("udp-send")
    x.add_argument("--host", required=True)
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--count", type=int, default=1000)
    x.add_argument("--pps", type=float, default=0.0)
    x.add_argument("--tag", default="", help="prefix of every datagram")
    x.set_defaults(func=udp_send)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except OSError as exc:  # TimeoutError included: one line, non-zero exit
        print(f"nettool: {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
