"""What the hostile end-to-end tests share: datagrams sent, sniffed and injected inside a lab's
namespaces, a daemon's counters and tables, and each host's data plane as the kernel has it."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from meshd.control.client import request
from meshd.dataplane.netns import netns_path, run_in_netns
from meshd.gossip.security import HEADER_LEN, HINT_LEN, TO_ANY, Keyring, Sealer
from meshd.lab import Daemon, Host, ns_exec

T = TypeVar("T")
ATTACKER_ID = b"\xa7" * 16
RTPROT_MESHD = "109"
"""meshd's route protocol (docs/dataplane.md, "Routes")."""

# Relaxed timers: a flood on 2 cores must not cause a (legitimate) false suspicion, which would
# change an incarnation and blur "the table is unchanged".
STEADY_GOSSIP = """
[gossip]
probe_interval = 1.0
probe_timeout = 0.5
gossip_interval = 0.2
push_pull_interval = 10
dead_probe_interval = 2
suspicion_mult = 4
"""


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that joined netns ``ns`` (its sockets live there)."""
    return run_in_netns(netns_path(ns), fn)


# ------------------------------------------------------------------------------- daemons


def status(d: Daemon) -> dict[str, Any]:
    return request(d.socket_path, "status", timeout=10)  # type: ignore[no-any-return]


def counters(d: Daemon) -> dict[str, int]:
    return status(d)["counters"]  # type: ignore[no-any-return]


def drops(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith("drop."))


def snapshot(d: Daemon) -> dict[str, tuple[Any, ...]]:
    """What must not change: every member's identity, state, incarnation and claim."""
    rows = request(d.socket_path, "peers", timeout=10)
    return {
        r["name"]: (r["node_id"], r["state"], r["incarnation"], r["subnet"], r["public_ip"])
        for r in rows
    }


def node_id_of(d: Daemon, name: str) -> bytes:
    rows = request(d.socket_path, "peers", timeout=10)
    return bytes.fromhex(next(r["node_id"] for r in rows if r["name"] == name))


def sealer_for(key_file: Path, node_id: bytes = ATTACKER_ID) -> Sealer:
    return Sealer(Keyring.parse(key_file.read_text()), node_id)


def opener(key_file: Path, datagram: bytes, ids: Iterable[bytes]) -> Sealer:
    """A sealer that opens ``datagram`` as its recipient would: the member of ``ids`` whose node
    id starts with the envelope's recipient hint (the full id is authenticated, not sent)."""
    if datagram[0] & TO_ANY:
        return sealer_for(key_file)
    hint = datagram[HEADER_LEN - HINT_LEN : HEADER_LEN]
    return sealer_for(key_file, next((i for i in ids if i[:HINT_LEN] == hint), ATTACKER_ID))


def all_node_ids(d: Daemon) -> list[bytes]:
    """Every member's node id, from one daemon's peers table."""
    return [bytes.fromhex(r["node_id"]) for r in request(d.socket_path, "peers", timeout=10)]


# ------------------------------------------------------------------------------- the kernel


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = ns_exec(None, ["ip", "-n", ns, "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def vxlan_view(h: Host, dev: str = "meshd.1") -> tuple[set[str], dict[str, str], dict[str, str]]:
    """(meshd's routes, permanent neighbours ip -> mac, FDB mac -> dst) on ``h``."""
    routes = {str(r["dst"]) for r in ip_json(h.ns, "route", "show", "proto", RTPROT_MESHD)}
    neigh = {
        str(n["dst"]): str(n.get("lladdr"))
        for n in ip_json(h.ns, "neigh", "show", "dev", dev)
        if "PERMANENT" in (n.get("state") or [])
    }
    out = ns_exec(None, ["bridge", "-n", h.ns, "-j", "fdb", "show", "dev", dev]).stdout
    fdb = {str(e["mac"]): str(e["dst"]) for e in json.loads(out or "[]") if e.get("dst")}
    return routes, neigh, fdb


# ------------------------------------------------------------------------------- the wire


def send_from(ns: str, payload: bytes, dst: tuple[str, int]) -> None:
    """One UDP datagram from namespace ``ns`` (an ephemeral port of the host's address)."""

    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(payload, dst)

    in_ns(ns, run)


def sniff(
    ns: str,
    ifname: str,
    src_ip: str | None,
    dport: int,
    want: Callable[[bytes], bool],
    timeout: float = 30,
) -> bytes:
    """The first Ethernet frame arriving on ``ifname`` in ``ns`` that carries a UDP datagram
    from ``src_ip`` (None: any) to port ``dport`` whose payload satisfies ``want``."""

    def run() -> bytes:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)) as s:
            s.bind((ifname, 0x0800))
            s.settimeout(timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                frame, meta = s.recvfrom(65535)
                if meta[2] == socket.PACKET_OUTGOING:
                    continue
                ip = frame[14:]
                ihl = (ip[0] & 0x0F) * 4
                if ip[9] != 17 or (src_ip is not None and socket.inet_ntoa(ip[12:16]) != src_ip):
                    continue
                if struct.unpack("!H", ip[ihl + 2 : ihl + 4])[0] == dport and want(ip[ihl + 8 :]):
                    return frame
        raise AssertionError(f"no datagram from {src_ip or 'anyone'} to {dport} on {ns}/{ifname}")

    return in_ns(ns, run)


def udp_payload(frame: bytes) -> bytes:
    ihl = (frame[14] & 0x0F) * 4
    return frame[14 + ihl + 8 :]


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total >> 16) + (total & 0xFFFF)
    return ~total & 0xFFFF


def fix_udp_checksum(frame: bytes) -> bytes:
    """veth offloads checksums: a sniffed frame may carry only the pseudo-header sum (the kernel
    trusted it on the way in). Recompute it, so the replay is what a wire would have carried."""
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    udp = bytearray(ip[ihl : struct.unpack("!H", ip[2:4])[0]])
    udp[6:8] = b"\0\0"
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    udp[6:8] = struct.pack("!H", _csum(pseudo + bytes(udp)) or 0xFFFF)
    return frame[: 14 + ihl] + bytes(udp)


def inject(ns: str, ifname: str, frame: bytes) -> None:
    """Transmit ``frame`` unchanged (addresses and all) out of ``ifname`` in ``ns``."""

    def run() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((ifname, 0))
            s.send(frame)

    in_ns(ns, run)


def send_spoofed(ns: str, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """One UDP datagram from namespace ``ns`` with a forged source address (a raw socket:
    the kernel routes it and fills in the IP checksum; UDP checksum 0 = none, valid in IPv4)."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,
        64,
        17,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )

    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(ip + udp, (dst[0], 0))

    in_ns(ns, run)
