"""Data-plane filter: encapsulated packets are accepted only from members' public IPs.

The tunnels carry no authentication: anyone who can reach a host's underlay address can hand its
VXLAN device (UDP ``vxlan_port``) or its ipip device (IP protocol 4) a packet to decapsulate, and
the kernel delivers the inner packet into the container network (flannel#961). The gossip key
does not help there. With ``filter = true`` the daemon keeps one nftables table that drops such
packets unless their outer source is a member's public IP.

What meshd owns and creates (nothing else is read or touched)::

    table inet meshd {
        counter accepted { }                       # named: they survive rule rewrites
        counter dropped { }
        set members { type ipv4_addr; }            # members' public IPs
        set members6 { type ipv6_addr; }           # ... their IPv6 ones (an IPv6 underlay)
        chain input {
            type filter hook input priority filter; policy accept;
            udp dport <vxlan_port> ip saddr @members counter name "accepted" accept   # vxlan
            udp dport <vxlan_port> ip6 saddr @members6 counter name "accepted" accept
            udp dport <vxlan_port> counter name "dropped" drop
        }
    }

The match is the backend's ``encapsulation`` (the registry in ``backends/``): ``udp dport
<vxlan_port>`` for vxlan (both families), ``ip protocol 4`` for ipip and, over IPv6 (ip6tnl),
``meta nfproto ipv6 meta l4proto { 4, 41 }`` (IPv4 or IPv6 inside), each with its own drop rule;
host-gw encapsulates nothing, so
the filter is inert there (``apply`` and ``remove`` do nothing, ``status`` says why). Every other
packet falls through the chain untouched (policy accept). The input hook runs after IP
reassembly (``ip_local_deliver``), so a fragmented outer packet is judged whole.

Every change is one ``nft -f -`` transaction that creates whatever is missing, rewrites the two
rules and replaces the set's contents: atomic (the kernel swaps the whole batch in at once, so
no packet sees a half-updated set) and idempotent (running it twice changes nothing; a rule or
element removed by hand is restored by the next ``apply``). If the table exists in an
incompatible shape (say, someone re-created ``members`` with another type), the transaction is
retried once as "delete the table and build it afresh" in a single batch.

Why the ``nft`` CLI and not a library: pyroute2's nftables support is partial (no sets with
elements in one batch, no named counters, no JSON listing), and libnftables' Python binding
(``python3-nftables``) is a distro package outside the venv. Membership changes are rare (a few
per minute even in churn), so one short-lived process per change costs nothing that matters, and
the nft syntax above is exactly what an operator sees with ``nft list table inet meshd``.

Limits: the filter trusts the outer source address; a host that can spoof a member's IP on the
underlay is not stopped (strict rp_filter or the underlay's own anti-spoofing is the answer).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from meshd.dataplane import backends, nft, prefix
from meshd.dataplane.model import unicast6_problem
from meshd.errors import ConfigError, DataplaneError

FAMILY = "inet"
TABLE = "meshd"
SET = "members"
SET6 = "members6"
IPV6_TUNNEL = "meta nfproto ipv6 meta l4proto { 4, 41 }"  # ip6tnl: IPv4 or IPv6 inside
CHAIN = "input"
log = logging.getLogger("meshd.dataplane")


class Firewall:
    """Keeps ``table inet meshd`` in step with the members' public IPs (see the module doc)."""

    def __init__(self, backend: str, vxlan_port: int = 8472, netns: str | None = None) -> None:
        try:
            be = backends.get(backend)
        except ValueError as exc:
            raise ConfigError(f"backend: {exc}") from None
        if not 1 <= vxlan_port <= 65535:
            raise ConfigError(f"vxlan_port: {vxlan_port} is not a UDP port")
        self.backend = backend
        self._encap = be.encapsulation(vxlan_port)
        self.vxlan_port = vxlan_port
        self.netns = netns
        self._applied: frozenset[str] | None = None
        self._applies = 0
        self._last_apply: float | None = None
        self._last_error: str | None = None
        self._recreated = 0
        self._refused: dict[str, str] = {}  # members' IPs kept out of the set, and why

    # ------------------------------------------------------------------ pure

    @property
    def active(self) -> bool:
        """False for a backend that encapsulates nothing (host-gw): nothing to filter."""
        return self._encap is not None

    @property
    def match(self) -> str:
        """The nft match selecting this backend's encapsulated packets."""
        if self._encap is None:
            raise DataplaneError(f"filter: backend {self.backend} encapsulates nothing")
        proto, number = self._encap
        return f"udp dport {number}" if proto == "udp" else f"ip protocol {number}"

    @property
    def match6(self) -> str:
        """The same for an IPv6 underlay (UDP: the same match, nft's inet table sees both)."""
        match = self.match  # raises for a backend that encapsulates nothing
        return match if match.startswith("udp") else IPV6_TUNNEL

    def script(self, member_ips: Iterable[str], *, recreate: bool = False) -> str:
        """The one nft transaction that makes the table hold exactly ``member_ips``."""
        ips = _validate(member_ips)
        ips4 = [ip for ip in ips if ":" not in ip]
        ips6 = [ip for ip in ips if ":" in ip]
        t = f"{FAMILY} {TABLE}"
        m4, m6 = self.match, self.match6
        drops = [m4] if m4 == m6 else [m4, m6]
        lines = []
        if recreate:
            # "add" first so that "delete" cannot fail on a missing table.
            lines += [f"add table {t}", f"delete table {t}"]
        lines += [
            f"add table {t}",
            f"add set {t} {SET} {{ type ipv4_addr; }}",
            f"add set {t} {SET6} {{ type ipv6_addr; }}",
            f"add counter {t} accepted",
            f"add counter {t} dropped",
            f"add chain {t} {CHAIN} {{ type filter hook input priority filter; policy accept; }}",
            # Rewriting the rules each time repairs hand edits; named counters keep their counts.
            f"flush chain {t} {CHAIN}",
            f'add rule {t} {CHAIN} {m4} ip saddr @{SET} counter name "accepted" accept',
            f'add rule {t} {CHAIN} {m6} ip6 saddr @{SET6} counter name "accepted" accept',
            *(f'add rule {t} {CHAIN} {m} counter name "dropped" drop' for m in drops),
            f"flush set {t} {SET}",
            f"flush set {t} {SET6}",
        ]
        # "{ }" is a syntax error: an empty set is just the flush
        if ips4:
            lines.append(f"add element {t} {SET} {{ {', '.join(ips4)} }}")
        if ips6:
            lines.append(f"add element {t} {SET6} {{ {', '.join(ips6)} }}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ kernel

    async def apply(self, member_ips: Iterable[str], *, force: bool = False) -> bool:
        """Make the set hold exactly ``member_ips`` (creating table, chain and rules if missing),
        less those that are not unicast (``unicast_only``; listed in ``status()["refused"]``).

        Skips the nft run when the same set was applied last, unless ``force`` (use it on a
        periodic resync, so a table deleted by hand comes back). Returns True if nft ran.
        Raises DataplaneError (one line) if nft is missing or refuses the change."""
        wanted, refused = unicast_only(member_ips)
        if refused.keys() != self._refused.keys():
            for why in sorted(refused.values()):
                log.warning(
                    "filter: not allowing a member's public IP: %s",
                    why,
                    extra={"event": "filter_refused", "reason": why},
                )
        self._refused = refused
        ips = frozenset(_validate(wanted))
        if not self.active or (ips == self._applied and not force):
            return False
        try:
            try:
                await self._nft(["-f", "-"], self.script(ips))
            except nft.NftRefused:
                # Something of ours exists in another shape: rebuild it, still atomically.
                await self._nft(["-f", "-"], self.script(ips, recreate=True))
                self._recreated += 1
        except DataplaneError as exc:
            self._last_error = str(exc)
            self._applied = None
            raise
        self._applied = ips
        self._applies += 1
        self._last_apply = time.time()
        self._last_error = None
        return True

    async def remove(self) -> None:
        """Delete ``table inet meshd`` if it exists (filter switched off, or the backend changed
        to host-gw), whatever the backend. Nothing else is touched."""
        self._applied = None
        t = f"{FAMILY} {TABLE}"
        await self._nft(["-f", "-"], f"add table {t}\ndelete table {t}\n")

    async def read(self) -> dict[str, Any]:
        """What the kernel holds now: ``present``, ``members`` and the two counters."""
        try:
            out = await self._nft(["-j", "list", "table", FAMILY, TABLE], None)
        except nft.NftRefused:
            return {"present": False, "members": [], "accepted": _zero(), "dropped": _zero()}
        res: dict[str, Any] = {
            "present": True,
            "members": [],
            "accepted": _zero(),
            "dropped": _zero(),
        }
        for item in json.loads(out).get("nftables", []):
            if "set" in item and item["set"].get("name") in (SET, SET6):
                res["members"] = sorted(
                    [*res["members"], *_elements(item["set"].get("elem", []))], key=_ip_key
                )
            elif "counter" in item and item["counter"].get("name") in ("accepted", "dropped"):
                c = item["counter"]
                res[c["name"]] = {"packets": int(c["packets"]), "bytes": int(c["bytes"])}
        return res

    def status(self) -> dict[str, Any]:
        """JSON-able: what was last applied and whether it worked (no kernel access)."""
        return {
            "table": f"{FAMILY} {TABLE}",
            "backend": self.backend,
            "active": self.active,
            "reason": None
            if self.active
            else (f"{self.backend} encapsulates nothing: nothing to filter"),
            "match": self.match if self.active else None,
            "netns": self.netns,
            "members": sorted(self._applied or (), key=_ip_key),
            "applies": self._applies,
            "recreated": self._recreated,
            "last_apply": self._last_apply,
            "last_error": self._last_error,
            "refused": dict(sorted(self._refused.items())),
        }

    async def _nft(self, args: list[str], stdin: str | None) -> str:
        return await nft.run(args, stdin, label="filter", netns=self.netns)


def _validate(ips: Iterable[str]) -> list[str]:
    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for ip in ips:
        try:
            out.add(ipaddress.ip_address(ip))
        except ValueError:
            raise DataplaneError(f"filter: {ip!r} is not an IP address") from None
    return [str(a) for a in sorted(out, key=lambda a: (a.version, int(a)))]


def _ip_key(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return a.version, int(a)


def unicast_only(ips: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The members' IPs the allow-set may hold, and the others with why not. A peer's public IP
    that is not unicast (0/8, loopback, multicast, 240/4, broadcast) would open the filter to
    packets nobody can be held to (127.0.0.1 lets any local process in); such an address is left
    out, not an error that would stop the filter for everyone else."""
    ok: list[str] = []
    refused: dict[str, str] = {}
    for ip in ips:
        problem = unicast6_problem(ip) if ":" in ip else prefix.unicast_problem(ip)
        if problem is None:
            ok.append(ip)
        else:
            refused[ip] = problem
    return ok, refused


def _elements(elems: list[Any]) -> list[str]:
    # nft -j prints plain strings, or {"prefix": ...}/{"elem": ...} objects for decorated ones.
    out = []
    for e in elems:
        if isinstance(e, str):
            out.append(e)
        elif isinstance(e, dict) and isinstance(e.get("elem"), dict):
            out.append(str(e["elem"].get("val")))
    return out


def _zero() -> dict[str, int]:
    return {"packets": 0, "bytes": 0}


__all__ = ["Firewall"]
