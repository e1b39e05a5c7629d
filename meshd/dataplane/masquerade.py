"""Masquerade for the cluster network (``ipmasq = true``): flanneld's ``--ip-masq`` in nftables.

Pods must keep their own source address on their way to another host's pods (NetworkPolicy and
logs rely on it), and must be masqueraded when they leave the cluster network, whose addresses
nobody outside routes back. flanneld installs four iptables rules for that; the flannel CNI plugin
then (``FLANNEL_IPMASQ=true``) tells the bridge plugin not to masquerade at all. meshd keeps the
same four rules, in a table of its own::

    table ip meshd-nat {
        counter kept { }                           # named: they survive rule rewrites
        counter masqueraded { }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr NET ip daddr NET counter name "kept" return          # pod -> pod
            ip saddr NET ip daddr != 224.0.0.0/4 counter name "masqueraded" masquerade fully-random
            ip saddr != NET ip daddr SUBNET counter name "kept" return    # -> this node's pods
            ip saddr != NET ip daddr NET counter name "masqueraded" masquerade fully-random
        }
    }

NET is the cluster network (``network``), SUBNET this node's subnet. The last rule covers a host
reaching another node's pods from an address outside NET: the reply must come back through the
mesh, so it leaves with this host's address on the way out. Multicast leaves untouched. NAT
chains see only a connection's first packet; conntrack keeps each mapping after that.

Every change is one ``nft -f -`` transaction that deletes and rebuilds the whole table: atomic
(the kernel swaps it in at once, so a restart, a subnet change or a repair never leaves a moment
without the rules; established connections keep their mappings in conntrack) and complete (a
rule, chain or counter edited, added or deleted by hand goes away with the old table).

``apply(subnet)`` skips nft when that subnet was applied last. The first ``apply`` (a daemon
starting) and every forced one read the table back (``nft -j list``) and compare it with the
four rules above: identical, it is adopted untouched (a restart does not even reset its
counters); different or missing, it is rebuilt and counted as a repair. The subnet is an
argument of each ``apply`` because a node's subnet can change at runtime (allocation): the rules
follow it.

IPv6: a ``Masquerade`` for an IPv6 cluster network keeps the same four rules in ``table ip6
meshd-nat`` (``ip6 saddr``/``ip6 daddr``, multicast ``ff00::/8``), beside the IPv4 table; a
dual-stack node runs one of each (flanneld does the same with ip6tables).

Limits: other NAT rules on the host (iptables or nftables) run
beside these; a ``return`` here does not stop another table from masquerading.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from typing import Any

from meshd.dataplane import nft
from meshd.errors import DataplaneError

FAMILY = "ip"
FAMILY6 = "ip6"
TABLE = "meshd-nat"
CHAIN = "postrouting"
MULTICAST = "224.0.0.0/4"
MULTICAST6 = "ff00::/8"
log = logging.getLogger("meshd.dataplane")


class Masquerade:
    """Keeps ``table ip meshd-nat`` (``ip6 meshd-nat`` for an IPv6 ``network``) in step with
    the cluster network and this node's subnet of that family."""

    def __init__(self, network: str, netns: str | None = None) -> None:
        self.network = _net(network, "network")
        self.family = FAMILY6 if ":" in self.network else FAMILY
        self.netns = netns
        self._applied: str | None = None  # the subnet the kernel holds rules for, as we know
        self._applies = 0
        self._repairs = 0
        self._adopted = False
        self._last_apply: float | None = None
        self._last_error: str | None = None

    # ------------------------------------------------------------------ pure

    def rules(self, subnet: str) -> list[str]:
        """The four rules of the chain for this node's ``subnet``, as nft prints them."""
        sub = self._subnet(subnet)
        net = self.network
        ip = self.family
        mcast = MULTICAST6 if ip == FAMILY6 else MULTICAST
        return [
            f'{ip} saddr {net} {ip} daddr {net} counter name "kept" return',
            f'{ip} saddr {net} {ip} daddr != {mcast} counter name "masqueraded" '
            "masquerade fully-random",
            f'{ip} saddr != {net} {ip} daddr {sub} counter name "kept" return',
            f'{ip} saddr != {net} {ip} daddr {net} counter name "masqueraded" '
            "masquerade fully-random",
        ]

    def script(self, subnet: str) -> str:
        """The one nft transaction that replaces whatever ``ip meshd-nat`` holds by the rules."""
        t = f"{self.family} {TABLE}"
        rules = self.rules(subnet)
        return "".join(
            f"{line}\n"
            for line in [
                # "add" first so that "delete" cannot fail on a missing table.
                f"add table {t}",
                f"delete table {t}",
                f"add table {t}",
                f"add counter {t} kept",
                f"add counter {t} masqueraded",
                f"add chain {t} {CHAIN} {{ type nat hook postrouting priority srcnat; "
                "policy accept; }",
                *(f"add rule {t} {CHAIN} {r}" for r in rules),
            ]
        )

    def expected(self, subnet: str) -> dict[str, Any]:
        """What ``listing`` of a table holding exactly the rules returns."""
        return {
            "counters": ["kept", "masqueraded"],
            "chains": {CHAIN: ("nat", "postrouting", 100, "accept")},
            "rules": {CHAIN: self.rules(subnet)},
            "other": [],
        }

    # ------------------------------------------------------------------ kernel

    async def apply(self, subnet: str, *, force: bool = False) -> bool:
        """Make ``ip meshd-nat`` hold the rules for ``subnet``; True when the kernel changed.

        Without ``force`` nothing runs when ``subnet`` was applied last. On the first call and
        when forced, the table is read back: one that already matches is kept untouched (adopted
        at start; no gap and no counter reset across a restart), one that drifted or is missing
        is rebuilt in one atomic transaction. Raises DataplaneError (one line) if ``subnet`` is
        not inside the network, or nft is missing or refuses."""
        self._subnet(subnet)
        if subnet == self._applied and not force:
            return False
        try:
            if force or self._applied is None:
                seen = await self.read()
                if seen["present"] and listing_equal(seen, self.expected(subnet)):
                    if self._applies == 0 and not self._adopted:
                        self._adopted = True
                        log.info(
                            "masquerade: kept the table %s %s found at start",
                            self.family,
                            TABLE,
                            extra={"event": "masquerade_adopted", "reason": "found at start"},
                        )
                    self._done(subnet)
                    return False
                if self._applied == subnet:
                    self._repairs += 1
                    log.warning(
                        "masquerade: table %s %s %s; rebuilding it",
                        self.family,
                        TABLE,
                        "was changed by hand" if seen["present"] else "is missing",
                        extra={
                            "event": "masquerade_repaired",
                            "reason": "changed by hand" if seen["present"] else "missing",
                        },
                    )
            await nft.run(["-f", "-"], self.script(subnet), label="masquerade", netns=self.netns)
        except DataplaneError as exc:
            self._last_error = str(exc)
            self._applied = None
            raise
        if self._applied != subnet:
            log.info(
                "masquerade: traffic leaving %s is masqueraded (node %s)",
                self.network,
                subnet,
                extra={"event": "masquerade_applied", "subnet": subnet, "network": self.network},
            )
        self._applies += 1
        self._done(subnet)
        return True

    async def remove(self) -> None:
        """Delete ``table ip meshd-nat`` if it exists (``ipmasq`` switched off); nothing else."""
        self._applied = None
        await remove_table(self.netns, self.family)

    async def read(self) -> dict[str, Any]:
        """What the kernel holds: ``present``, the ``listing`` parts (see :func:`listing`) and
        the two counters' ``{"packets", "bytes"}``."""
        try:
            out = await nft.run(
                ["-j", "list", "table", self.family, TABLE],
                None,
                label="masquerade",
                netns=self.netns,
            )
        except nft.NftRefused:
            return {"present": False, **_empty()}
        return {"present": True, **listing(json.loads(out).get("nftables", []))}

    def status(self) -> dict[str, Any]:
        """JSON-able: what was last applied and whether it worked (no kernel access)."""
        return {
            "enabled": True,
            "table": f"{self.family} {TABLE}",
            "network": self.network,
            "subnet": self._applied,
            "netns": self.netns,
            "applies": self._applies,
            "repairs": self._repairs,
            "adopted": self._adopted,
            "last_apply": self._last_apply,
            "last_error": self._last_error,
        }

    def _done(self, subnet: str) -> None:
        self._applied = subnet
        self._last_apply = time.time()
        self._last_error = None

    def _subnet(self, subnet: str) -> str:
        sub = _net(subnet, "subnet")
        net, inner = ipaddress.ip_network(self.network), ipaddress.ip_network(sub)
        if inner.version != net.version or not inner.subnet_of(net):  # type: ignore[arg-type]
            raise DataplaneError(f"masquerade: subnet {sub} is outside network {self.network}")
        return sub


async def remove_table(netns: str | None = None, family: str = FAMILY) -> None:
    """Delete ``table ip meshd-nat`` (``family`` ``ip6``: the IPv6 one) if it exists: what a
    daemon started with ``ipmasq = false`` does with the table an earlier run left (it knows no
    network to build a Masquerade from)."""
    t = f"{family} {TABLE}"
    await nft.run(
        ["-f", "-"], f"add table {t}\ndelete table {t}\n", label="masquerade", netns=netns
    )


def listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``nft -j list table`` output as comparable parts: named counters, chains (type, hook,
    priority, policy), each chain's rules rendered in nft's syntax (named counters, no
    handles), and ``other`` objects (sets, maps, ...) that a table of ours never holds. A rule
    with an expression this module does not write renders as ``?`` and so never matches."""
    out = _empty()
    for item in items:
        (kind, obj), *_ = item.items()
        if kind in ("metainfo", "table"):
            continue
        if kind == "counter":
            out["counters"].append(obj.get("name"))
            out["values"][obj.get("name")] = {
                "packets": int(obj.get("packets", 0)),
                "bytes": int(obj.get("bytes", 0)),
            }
        elif kind == "chain":
            out["chains"][obj.get("name")] = (
                obj.get("type"),
                obj.get("hook"),
                obj.get("prio"),
                obj.get("policy"),
            )
        elif kind == "rule":
            rendered = " ".join(_expr(e) for e in obj.get("expr", []))
            if "comment" in obj:
                rendered += " ?"
            out["rules"].setdefault(obj.get("chain"), []).append(rendered)
        else:
            out["other"].append(kind)
    out["counters"].sort()
    return out


def listing_equal(seen: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(seen.get(k) == want[k] for k in ("counters", "chains", "rules", "other"))


def _expr(e: dict[str, Any]) -> str:
    if "match" in e:
        m = e["match"]
        left, right = m.get("left"), m.get("right")
        field = left.get("payload", {}) if isinstance(left, dict) else {}
        proto = field.get("protocol")
        if proto not in ("ip", "ip6") or field.get("field") not in ("saddr", "daddr"):
            return "?"
        if isinstance(right, dict) and "prefix" in right:
            value = f"{right['prefix'].get('addr')}/{right['prefix'].get('len')}"
        elif isinstance(right, str):
            value = f"{right}/{128 if proto == 'ip6' else 32}"
        else:
            return "?"
        op = {"==": "", "!=": "!= "}.get(m.get("op"), "? ")
        return f"{proto} {field['field']} {op}{value}"
    if "counter" in e and isinstance(e["counter"], str):
        return f'counter name "{e["counter"]}"'
    if "return" in e:
        return "return"
    if "masquerade" in e:
        flags = (e["masquerade"] or {}).get("flags", [])
        flags = [flags] if isinstance(flags, str) else list(flags)
        return " ".join(["masquerade", *sorted(flags)])
    return "?"


def _empty() -> dict[str, Any]:
    return {"counters": [], "values": {}, "chains": {}, "rules": {}, "other": []}


def _net(cidr: str, what: str) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=True))
    except ValueError as exc:
        raise DataplaneError(f"masquerade: {what} {cidr!r}: {exc}") from None


__all__ = ["Masquerade", "listing", "remove_table"]
