"""The kernel's IPv4 neighbour (ARP) table: how many entries a mesh needs, and the thresholds.

The kernel keeps one ARP table for the whole machine, every network namespace included, and
``net.ipv4.neigh.default.gc_thresh3`` (default 1024) caps it: past it, a send that needs a new
entry fails with ENOBUFS (``Udp SndbufErrors`` in /proc/net/snmp unless the socket set
IP_RECVERR). A real host on an L2 segment (host-gw routes, vxlan's underlay, the gossip itself)
needs one underlay entry per peer; a lab of N hosts on one kernel needs N·(N−1) of them. Entries
the data plane writes as permanent (vxlan's per-peer neighbours) are exempt from the limit.

The pure half (``wanted``, ``recommended``, ``lab_entries``) is what the daemon's warning,
``meshd doctor`` and the lab share; ``read``/``write`` touch /proc/sys (the root namespace's
values are the ones that count). Standard library only: the lab runs this in a UML guest too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SYSCTLS = tuple(f"net.ipv4.neigh.default.gc_thresh{i}" for i in (1, 2, 3))
"""gc_thresh1 (no collection below it), gc_thresh2 (soft limit: entries idle for 5 s are
collected above it), gc_thresh3 (hard limit: no new entry past it)."""
SYSCTLS6 = tuple(f"net.ipv6.neigh.default.gc_thresh{i}" for i in (1, 2, 3))
"""The same for IPv6's neighbour (NDP) table, which an IPv6 underlay fills the same way: one
entry per peer on its L2 segment, the same defaults and the same ENOBUFS past gc_thresh3."""
FIXED_MARGIN = 64  # routers, gateways, containers' entries beside the peers
PROC_SYS = Path("/proc/sys")


def wanted(entries: int) -> int:
    """Entries to plan room for: the peers' plus a quarter and a fixed margin for the rest."""
    return entries + entries // 4 + FIXED_MARGIN


def lab_entries(hosts: int) -> int:
    """Underlay entries a full mesh of ``hosts`` namespaces on one kernel needs: each host
    talks to every other (N·(N−1)), plus a host's and its container's entry for each other."""
    return hosts * (hosts - 1) + 2 * hosts


def recommended(entries: int) -> tuple[int, int, int]:
    """gc_thresh1/2/3 for ``entries``: thresh3 the power of two at or above twice ``wanted``
    (so thresh2, half of it, still holds them all and nothing in use is collected), thresh1 a
    quarter of it."""
    t3 = 1024
    while t3 < 2 * wanted(entries):
        t3 *= 2
    return t3 // 4, t3 // 2, t3


def short(entries: int, thresh3: int) -> bool:
    """Does a table capped at ``thresh3`` lack room for ``entries`` (margin included)?"""
    return wanted(entries) > thresh3


def raised(current: tuple[int, int, int], entries: int) -> tuple[int, int, int] | None:
    """The thresholds to set for ``entries``, never lower than ``current``; None when the
    current ones have room."""
    if not short(entries, current[2]):
        return None
    rec = recommended(entries)
    return (max(current[0], rec[0]), max(current[1], rec[1]), max(current[2], rec[2]))


def warn_due(peers: int, thresh3: int, warned_for: int) -> bool:
    """Should the daemon warn that ``peers`` need more room than ``thresh3``? At the first
    shortfall, then again each time the peers grew by a quarter since the last warning."""
    if not short(peers, thresh3):
        return False
    return warned_for == 0 or peers >= warned_for + max(1, warned_for // 4)


def sysctl_command(values: tuple[int, int, int], names: tuple[str, ...] = SYSCTLS) -> str:
    """The fix, as an operator types it (``names``: SYSCTLS6 for the IPv6 table)."""
    return "sysctl -w " + " ".join(f"{n}={v}" for n, v in zip(names, values, strict=True))


def _path(name: str) -> Path:
    return PROC_SYS.joinpath(*name.split("."))


def read(names: tuple[str, ...] = SYSCTLS) -> tuple[int, int, int] | None:
    """This namespace's view of gc_thresh1/2/3 (``names``: SYSCTLS6 for the IPv6 table); None
    if unreadable (not Linux, no /proc)."""
    try:
        a, b, c = (int(_path(n).read_text().strip()) for n in names)
    except (OSError, ValueError):
        return None
    return a, b, c


def write(
    values: tuple[int, int, int] | Mapping[str, int], names: tuple[str, ...] = SYSCTLS
) -> None:
    """Set gc_thresh1/2/3 (root; ``names``: SYSCTLS6 for the IPv6 table). Written in the order
    that keeps thresh1 <= thresh2 <= thresh3 at every step, raising or lowering. Raises
    OSError."""
    vals = tuple(values[n] for n in names) if isinstance(values, Mapping) else values
    cur = read(names) or (0, 0, 0)
    order = (2, 1, 0) if vals[2] >= cur[2] else (0, 1, 2)
    for i in order:
        _path(names[i]).write_text(f"{vals[i]}\n")


__all__ = [
    "SYSCTLS",
    "SYSCTLS6",
    "lab_entries",
    "raised",
    "read",
    "recommended",
    "short",
    "sysctl_command",
    "wanted",
    "warn_due",
    "write",
]
