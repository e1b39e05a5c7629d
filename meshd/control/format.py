"""What the CLI prints: pure functions from control replies to text (tables, JSON, lines).

No I/O and no typer here, so every format is unit-tested (tests/unit/test_format.py) and the lab
runner prints the same peers table as `meshd peers`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshd.control.protocol import (
    CrlReply,
    DoctorReply,
    KeyList,
    LeaveReply,
    PeerRow,
    StatusReply,
)

PEER_COLUMNS = (
    "NAME",
    "PUBLIC IP",
    "SUBNET",
    "BACKEND",
    "VTEP MAC",
    "STATE",
    "INC",
    "SEEN",
    "NOTE",
)


def both(first: str, second: str | None) -> str:
    """One cell for an address or subnet of each family: ``10.244.1.0/24,fd00:1::/64`` (the
    spelling Kubernetes uses for dual-stack ranges), or the one there is."""
    return first if not second else f"{first},{second}"


def to_json(reply: object) -> str:
    """Any reply as `--json` prints it."""
    return json.dumps(reply, indent=2)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks trimmed."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def peers(rows: Sequence[PeerRow], now: float | None = None) -> str:
    """The `meshd peers` table; a wireguard mesh gets a HANDSHAKE column (how long ago each
    peer's latest WireGuard handshake was, at ``now``, unix seconds)."""
    wg = any(r["backend"] == "wireguard" for r in rows)
    tunneled = any(r.get("tunnel") for r in rows)
    cols = list(PEER_COLUMNS)
    if wg:
        cols.insert(cols.index("NOTE"), "HANDSHAKE")
    if tunneled:
        cols.insert(cols.index("NOTE"), "TUNNEL")
    out: list[Sequence[str]] = [cols]
    t = time.time() if now is None else now
    for r in rows:
        me = r["self"]
        row = [
            r["name"],
            both(r["public_ip"], r.get("public_ip6")),
            both(r["subnet"], r.get("subnet6")),
            r["backend"],
            r["vtep_mac"] or "-",
            r["state"],
            str(r["incarnation"]),
            "-" if me else f"{r['last_seen']:.1f}s",
        ]
        if wg:
            shake = r.get("handshake")
            row.append("-" if me else "never" if not shake else f"{max(0.0, t - shake):.0f}s ago")
        if tunneled:
            row.append(_tunnel(r.get("tunnel")))
        row.append("self" if me else (r["flag"] or ""))
        out.append(row)
    text = table(out)
    if any(r.get("trust") == "shared-key" for r in rows):
        text += "\n" + UNAUTHENTICATED
    return text


def _tunnel(t: Mapping[str, Any] | None) -> str:
    """The TUNNEL cell: what probes through the tunnel say (``-``: not probed)."""
    if not t:
        return "-"
    if t.get("state") == "ok":
        return f"ok {t.get('rtt_ms')}ms"
    if t.get("state") == "unreachable":
        return f"UNREACHABLE ({t.get('failures')} lost)"
    return "?"


UNAUTHENTICATED = (
    "mesh: UNAUTHENTICATED (shared-key mode): any holder of the mesh key is believed about "
    "every member; use certificates (docs/security.md)"
)


def trust(t: Mapping[str, Any]) -> str:
    """One line: the mesh's trust mode, and in certificate mode the CA, our certificate's expiry
    and the revocation list in force."""
    if not t or t.get("mode") != "certificates":
        return "trust     " + UNAUTHENTICATED.removeprefix("mesh: ")
    cas = ", ".join(f"{a['name']} ({a['network']})" for a in t.get("ca", []))
    cert = t.get("cert") or {}
    expires = cert.get("not_after")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires)) if expires is not None else "?"
    crl = t.get("crl")
    line = f"trust     certificates, CA {cas}; this node's certificate expires {when}"
    line += f"; CRL #{crl['number']} ({crl['revoked']} revoked)" if crl else "; no CRL"
    if t.get("local"):
        line += f"; THIS NODE'S CERTIFICATE IS {str(t['local']).upper()}"
    return line


def allocation(a: Mapping[str, Any]) -> list[str]:
    """One line when this node allocates its subnet: from what, how, and whether it settled."""
    if not a:
        return []
    line = (
        f"subnet    allocated from {a.get('network')} (/{a.get('subnet_len')}, "
        f"{a.get('size')} subnets; lease {a.get('lease', 0):g} s), {a.get('origin')}, "
        + ("settled" if a.get("settled") else "NOT SETTLED (waiting for the mesh's state)")
    )
    if a.get("moves"):
        line += f"; moved {a['moves']}x, last: {a.get('last_move')}"
    return [line]


def status(st: StatusReply) -> list[str]:
    """The `meshd status` summary (``--json`` shows everything, including the last plan)."""
    n = st["node"]
    out = [
        f"node      {n['name']} ({both(n['public_ip'], n.get('public_ip6'))}) "
        f"subnet {both(n['subnet'], n.get('subnet6'))} "
        f"backend {n['backend']} incarnation {n['incarnation']}",
        trust(st.get("trust") or {}),
        *allocation(st.get("allocation") or {}),
        *allocation(st.get("allocation6") or {}),
        f"version   {st['version']}, up {st['uptime']}s, synced {st['synced']}",
        "members   " + ", ".join(f"{k} {v}" for k, v in st["members"].items()),
        f"datagrams in {st['counters'].get('in', 0)}, out {st['counters'].get('out', 0)}",
    ]
    if st["dropped"]:
        out.append("dropped   " + ", ".join(f"{k} {v}" for k, v in st["dropped"].items()))
    if st.get("lost_sends"):
        out.append(
            "lost sends "
            + ", ".join(f"{k} {v}" for k, v in st.get("lost_sends", {}).items())
            + " (the kernel refused them: docs/operations.md, troubleshooting)"
        )
    out += protocol(st.get("protocol") or {})
    out += dataplane(st["dataplane"], st["filter"])
    out += tunnel(st.get("tunnel"))
    out += masquerade(st.get("masquerade", {}))
    out += masquerade(st.get("masquerade6", {}))
    out.append("(meshd status --json shows everything, including the last plan)")
    return out


def tunnel(t: Mapping[str, Any] | None) -> list[str]:
    """The tunnel probes in one line (none for host-gw)."""
    if not t:
        return []
    c = t.get("counters") or {}
    down = t.get("unreachable") or []
    return [
        f"tunnel    probes to {t.get('targets', 0)} peer(s) from {t.get('local')}:"
        f"{t.get('port')}: {c.get('probes', 0)} sent, {c.get('replies', 0)} answered, "
        f"{c.get('timeouts', 0)} lost; "
        + (f"UNREACHABLE: {', '.join(down)}" if down else "every peer answers")
    ]


def protocol(pr: Mapping[str, Any]) -> list[str]:
    """The wire version spoken and accepted, and the last refusal (docs/protocol.md, Versions)."""
    if not pr:
        return []
    line = f"protocol  {pr.get('version')}, accepts {pr.get('accepts')}"
    last = pr.get("last_refused")
    if last:
        line += (
            f"; refused {last.get('version')} from {last.get('addr')} ({last.get('reason')}: "
            "a node of an incompatible release)"
        )
    return [line]


def dataplane(dp: Mapping[str, Any], fw: Mapping[str, Any]) -> list[str]:
    """A few readable lines out of the data-plane and filter status (the JSON has the plan)."""
    if not dp:
        return ["dataplane not started"]
    ul = dp.get("underlay") or {}
    where = f" ({both(ul['ip'], ul.get('ip6'))})" if ul.get("ip") else ""
    out = [
        f"dataplane {dp.get('backend')} device {dp.get('device') or '-'} on "
        f"{ul.get('ifname')}{where}, routes proto {dp.get('protocol')}, "
        f"{len(dp.get('programmed') or [])} peer(s) programmed"
    ]
    last = dp.get("last_run") or {}
    if last:
        out.append(
            f"          {dp.get('runs', 0)} passes, last {last.get('duration_ms')} ms "
            f"({last.get('reason')}), {dp.get('applied_total', 0)} changes applied in all"
        )
    wg = dp.get("wireguard")
    if wg:
        out.append(
            f"          wireguard {wg.get('implementation') or 'not running'}: {wg.get('why')}; "
            f"port {wg.get('listen_port') or '-'}, {wg.get('peers', 0)} peer(s), "
            f"{wg.get('handshakes', 0)} with a handshake; public key {wg.get('public_key')}"
        )
    change = (dp.get("last_change") or {}).get("plan") or {}
    counts = {k: v for k, v in (change.get("counts") or {}).items() if v}
    if counts:
        out.append("          last change: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for label, key in (("conflicted", "conflicts"), ("skipped", "skipped")):
        for name, why in sorted((dp.get(key) or {}).items()):
            out.append(f"          {label} {name}: {why}")
    if dp.get("last_error"):
        out.append(f"          error: {dp['last_error']}")
    if fw.get("active"):
        out.append(
            f"filter    {fw.get('table')}: {len(fw.get('members') or [])} member IPs"
            + (f", error: {fw['last_error']}" if fw.get("last_error") else "")
        )
    return out


def masquerade(mq: Mapping[str, Any]) -> list[str]:
    """One line when meshd masquerades (``ipmasq``), none otherwise."""
    if not mq.get("enabled"):
        return []
    return [
        f"masquerade {mq.get('table')}: traffic leaving {mq.get('network')} "
        f"(node {mq.get('subnet') or 'not applied'}), {mq.get('repairs', 0)} repair(s)"
        + (f", error: {mq['last_error']}" if mq.get("last_error") else "")
    ]


def keys(ring: KeyList) -> str:
    """Key ids, one a line, the primary marked."""
    return "\n".join(
        f"{kid}{'  (primary)' if kid == ring['primary'] else ''}" for kid in ring["keys"]
    )


def leave(reply: LeaveReply) -> str:
    return "left the mesh" + ("" if reply["spread"] else " (not confirmed by all peers)")


def crl_install(reply: CrlReply) -> str:
    """`meshd crl install`: what is in force now."""
    what = "installed" if reply["installed"] else "already in force (this one or a newer one)"
    serials = ", ".join(reply["revoked"]) or "none"
    return f"CRL {reply['number']} from {reply['issuer']!r} {what}; revoked serials: {serials}"


def doctor(reply: DoctorReply) -> str:
    """`meshd doctor`: one line per finding (problems first), its fix indented below, and a
    summary line."""
    order = {"fail": 0, "warn": 1, "ok": 2}
    found = sorted(reply["findings"], key=lambda f: order.get(f["level"], 3))
    width = max((len(f["check"]) for f in found), default=0)
    out: list[str] = []
    for f in found:
        level = f["level"].upper() if f["level"] != "ok" else "ok"
        out.append(f"{level:<5} {f['check']:<{width}}  {f['message']}")
        if f["level"] != "ok" and f["fix"]:
            out.append(f"{'':<5} {'':<{width}}  fix: {f['fix']}")
    fails = sum(f["level"] == "fail" for f in found)
    warns = sum(f["level"] == "warn" for f in found)
    if fails:
        peers = sorted({f["peer"] for f in found if f["level"] == "fail" and f["peer"]})
        names = f" (peers: {', '.join(peers)})" if peers else ""
        out.append(f"doctor: {fails} problem(s){names}, {warns} warning(s)")
    else:
        out.append(f"doctor: healthy, {warns} warning(s)")
    return "\n".join(out)
