"""Packet loss and partitions inside lab namespaces, with nftables only.

This host's kernel has no sch_netem, but nftables' ``numgen random mod 100 < N`` drops a random
share of packets, and drop rules (or a cut between two ports of the underlay bridge) partition
hosts. There is no delay, jitter or reordering this way.

Every fault lives in its own nft table whose name starts with ``meshd_fault_``, so healing is
deleting tables and can never touch rules anything else installed:

==========================  ==============================================  =================
function                    table                                           family
==========================  ==============================================  =================
``loss``                    ``meshd_fault_loss_<proto>_<port|all>``         inet
``partition``               ``meshd_fault_part`` (one set of addresses)     inet
``partition_l2``            ``meshd_fault_l2_<port a>_<port b>``            bridge
==========================  ==============================================  =================

Gotcha: with br_netfilter loaded (net.bridge.bridge-nf-call-iptables=1 by default, also in a new
netns), bridged IPv4 frames traverse the inet forward hook too, so an "in" loss rule in a host
namespace also hits bridge-local traffic to the same port.

Needs ``nft`` (apt-get install nftables). The UML guest kernel has no nf_tables for ip/inet.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from typing import Literal

from meshd.errors import LabError
from meshd.lab.daemons import DEFAULT_GOSSIP_PORT
from meshd.lab.namespaces import ns_exec
from meshd.lab.topology import Host, Topology

TABLE_PREFIX = "meshd_fault_"
Direction = Literal["in", "out", "both"]
Kind = Literal["loss", "partition", "l2"]
_HOOKS: dict[str, tuple[str, ...]] = {
    # "in" includes forward: traffic routed through the host (to its containers) is hit as well.
    "in": ("input", "forward"),
    "out": ("output",),
    "both": ("input", "forward", "output"),
}
_KIND_RE = {
    "loss": re.compile(rf"^{TABLE_PREFIX}loss_"),
    "partition": re.compile(rf"^{TABLE_PREFIX}part$"),
    "l2": re.compile(rf"^{TABLE_PREFIX}l2_"),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # interface names we accept in rules
# Before the usual filter priority (0), so a fault wins over anything a test adds at 0.
_PRIORITY = -10


def available() -> str | None:
    """None if faults can be injected here, else why not (for skips and one-line refusals)."""
    if shutil.which("nft") is None:
        return "fault injection needs nft (apt-get install nftables)"
    res = ns_exec(None, ["nft", "list", "tables"], check=False, timeout=10)
    if res.returncode != 0:
        # E.g. the UML guest kernel: no nf_tables at all ("Protocol not supported").
        err = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"this kernel cannot run nftables: {err}"
    return None


def _nft(ns: str, script: str) -> None:
    if shutil.which("nft") is None:
        raise LabError("fault injection needs nft (apt-get install nftables)")
    # One "nft -f" per change: atomic (all of it or nothing) and one process instead of many.
    ns_exec(ns, ["nft", "-f", "-"], input=script)


def loss(
    ns: str,
    percent: float,
    proto: str = "udp",
    dport: int | None = DEFAULT_GOSSIP_PORT,
    direction: Direction = "in",
) -> str:
    """Drop ``percent``% (random, per packet) of ``proto`` packets to ``dport`` (None: any port
    or a protocol without ports) in ``ns``. Replaces an earlier loss rule for the same
    proto/port. Returns the table name."""
    if not 0 <= percent <= 100:
        raise LabError(f"loss percent must be within 0..100, not {percent}")
    if direction not in _HOOKS:
        raise LabError(f"direction must be in, out or both, not {direction!r}")
    if not re.fullmatch(r"[a-z]+", proto):
        raise LabError(f"bad protocol {proto!r}")
    table = f"{TABLE_PREFIX}loss_{proto}_{dport if dport is not None else 'all'}"
    # numgen random mod 100 is uniform over 0..99 per packet: drop when below the threshold.
    # Fractional percentages are rounded: the rule works in whole percent.
    pct = round(percent)
    match = f"{proto} dport {dport}" if dport is not None else f"meta l4proto {proto}"
    lines = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{"]
    for hook in _HOOKS[direction]:
        lines += [
            f"  chain {hook} {{",
            f"    type filter hook {hook} priority {_PRIORITY}; policy accept;",
            f"    {match} numgen random mod 100 < {pct} counter drop",
            "  }",
        ]
    lines.append("}")
    # "add then delete" first: re-applying with another percentage replaces, never stacks.
    _nft(ns, "\n".join(lines) + "\n")
    return table


def partition(ns: str, addresses: Iterable[str]) -> str:
    """Drop everything between ``ns`` and ``addresses`` (IPs or CIDRs), both ways, in its
    input, output and forward hooks. Adds to the partition already set up in ``ns``.

    Pass a peer's underlay IP to cut gossip and tunnel traffic (ipip/vxlan packets carry it), and
    its pod subnet too for host-gw routed traffic."""
    addrs = [str(ipaddress.ip_network(a, strict=False)) for a in addresses]
    if not addrs:
        raise LabError("partition needs at least one address")
    table = f"{TABLE_PREFIX}part"
    lines = [
        f"table inet {table} {{",
        # interval: CIDRs; auto-merge: adding an address twice (or one inside a CIDR) is fine.
        "  set peers { type ipv4_addr; flags interval; auto-merge; }",
    ]
    for hook in _HOOKS["both"]:
        lines += [
            f"  chain {hook} {{",
            f"    type filter hook {hook} priority {_PRIORITY}; policy accept;",
            "  }",
        ]
    lines.append("}")
    # Rules go in only when the table is new; "table ... {}" above is a no-op if it exists.
    if not _has_table(ns, "inet", table):
        for hook in _HOOKS["both"]:
            lines += [
                f"add rule inet {table} {hook} ip saddr @peers counter drop",
                f"add rule inet {table} {hook} ip daddr @peers counter drop",
            ]
    lines.append(f"add element inet {table} peers {{ {', '.join(addrs)} }}")
    _nft(ns, "\n".join(lines) + "\n")
    return table


def partition_l2(ul_ns: str, port_a: str, port_b: str) -> str:
    """Stop the underlay bridge in ``ul_ns`` forwarding between two of its ports, both ways: like
    pulling the cable between two hosts while both keep their links to everyone else. Backend
    agnostic (ARP is cut too)."""
    for p in (port_a, port_b):
        if not _NAME_RE.match(p):
            raise LabError(f"bad port name {p!r}")
    table = f"{TABLE_PREFIX}l2_{port_a}_{port_b}"
    script = (
        f"table bridge {table} {{\n"
        "  chain forward {\n"
        f"    type filter hook forward priority {_PRIORITY}; policy accept;\n"
        f'    iifname "{port_a}" oifname "{port_b}" counter drop\n'
        f'    iifname "{port_b}" oifname "{port_a}" counter drop\n'
        "  }\n"
        "}\n"
    )
    _nft(ul_ns, script)
    return table


def tables(ns: str) -> list[tuple[str, str]]:
    """(family, name) of the fault tables in ``ns``."""
    res = ns_exec(ns, ["nft", "-j", "list", "tables"])
    out: list[tuple[str, str]] = []
    for item in json.loads(res.stdout).get("nftables", []):
        t = item.get("table")
        if t and str(t.get("name", "")).startswith(TABLE_PREFIX):
            out.append((str(t["family"]), str(t["name"])))
    return out


def heal(ns: str, kind: Kind | None = None) -> list[str]:
    """Remove the faults of one ``kind`` (default: all) from ``ns``; return the tables deleted."""
    if kind is not None and kind not in _KIND_RE:
        raise LabError(f"kind must be loss, partition or l2, not {kind!r}")
    doomed = [(fam, name) for fam, name in tables(ns) if kind is None or _KIND_RE[kind].match(name)]
    if doomed:
        _nft(ns, "".join(f"delete table {fam} {name}\n" for fam, name in doomed))
    return [name for _, name in doomed]


def show(ns: str) -> str:
    """The fault tables of ``ns`` with their counters (nft syntax)."""
    return "".join(
        ns_exec(ns, ["nft", "list", "table", fam, name]).stdout for fam, name in tables(ns)
    )


def dropped(ns: str) -> int:
    """Packets the fault rules in ``ns`` have dropped so far (sum of their counters)."""
    total = 0
    for fam, name in tables(ns):
        res = ns_exec(ns, ["nft", "-j", "list", "table", fam, name])
        for item in json.loads(res.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"].get("packets", 0))
    return total


def _has_table(ns: str, family: str, name: str) -> bool:
    return (family, name) in tables(ns)


# --------------------------------------------------------------------------- lab-level helpers


def split(lab: Topology, *groups: Sequence[Host]) -> None:
    """Partition the lab into ``groups``: every host drops its underlay IP and pod subnet
    traffic with every host of the other groups (e.g. ``split(lab, hosts[:2], hosts[2:])``)."""
    for i, group in enumerate(groups):
        others = [h for j, g in enumerate(groups) if j != i for h in g]
        addrs = [a for h in others for a in (h.underlay_ip, h.subnet)]
        for h in group:
            if addrs:
                partition(h.ns, addrs)


def loss_everywhere(
    lab: Topology, percent: float, proto: str = "udp", dport: int | None = DEFAULT_GOSSIP_PORT
) -> None:
    """The same inbound loss on every host of the lab (gossip port by default)."""
    for h in lab.hosts:
        loss(h.ns, percent, proto, dport, "in")


def cut(lab: Topology, a: Host, b: Host) -> str:
    """L2 cut between two hosts on the underlay switch."""
    return partition_l2(lab.ul_ns, a.port, b.port)


def heal_all(lab: Topology) -> None:
    """Remove every fault from every namespace of the lab."""
    for ns in [lab.ul_ns, *(h.ns for h in lab.hosts)]:
        heal(ns)


__all__ = [
    "available",
    "cut",
    "dropped",
    "heal",
    "heal_all",
    "loss",
    "loss_everywhere",
    "partition",
    "partition_l2",
    "show",
    "split",
    "tables",
]
