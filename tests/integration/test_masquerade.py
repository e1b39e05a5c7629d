"""meshd.dataplane.masquerade against the real kernel: nftables NAT in lab namespaces.

Two hosts with static host-gw routes (no daemon) and an "outside" machine on the underlay that
has no route to the pods. The masquerade runs in h1 only. Proven here: pod-to-pod traffic keeps
the pod's source address while traffic leaving the cluster network is masqueraded (without the
rules the outside machine cannot answer at all); applying is idempotent, an identical table is
adopted untouched, drift (a rule deleted or added by hand, the table deleted) is repaired by a
forced apply, the rules follow a subnet change, and remove() leaves every other table alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.dataplane.masquerade import Masquerade, listing
from meshd.errors import DataplaneError
from meshd.lab import Lab, ns_exec


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def table(ns: str) -> str:
    """The table as nft prints it, counter values left out."""
    out = ns_exec(ns, ["nft", "list", "table", "ip", "meshd-nat"]).stdout
    return "\n".join(ln for ln in out.splitlines() if "packets" not in ln)


def tables(ns: str) -> set[str]:
    out = ns_exec(ns, ["nft", "list", "tables"]).stdout
    return {ln.strip() for ln in out.splitlines() if ln.strip()}


def rule_handles(ns: str) -> list[int]:
    out = ns_exec(ns, ["nft", "-a", "list", "chain", "ip", "meshd-nat", "postrouting"]).stdout
    return [int(ln.rsplit("# handle ", 1)[1]) for ln in out.splitlines() if "saddr" in ln]


@pytest.mark.root
def test_masquerade_keeps_pod_sources_and_repairs_drift(lab: Callable[..., Lab]) -> None:
    lb = lab(2, outside=True)
    h1, h2 = lb.hosts
    out_ns, out_ip = lb.outside_ns, lb.outside_ip
    assert out_ns is not None and out_ip is not None
    lb.add_host_gw_routes()
    net = lb.pod_network

    # Without masquerading the outside machine cannot answer a pod: it has no route back.
    assert lb.seen_source(h1.container_ns, out_ns, out_ip, timeout=2) is None
    assert lb.seen_source(h1.container_ns, h2.container_ns, h2.container_ip) == h1.container_ip

    ns_exec(h1.ns, ["nft", "add table inet other; add chain inet other c"])
    mq = Masquerade(net, netns=h1.ns)
    assert run(mq.apply(h1.subnet))
    text = table(h1.ns)
    for rule in mq.rules(h1.subnet):
        assert rule in text
    assert "type nat hook postrouting priority srcnat; policy accept;" in text

    # Pod to pod across hosts: the pod's own address arrives (the bug, with ipmasq on);
    # pod to outside: masqueraded to h1's underlay address, and answered.
    assert lb.seen_source(h1.container_ns, h2.container_ns, h2.container_ip) == h1.container_ip
    assert lb.seen_source(h1.container_ns, out_ns, out_ip) == h1.underlay_ip
    assert lb.ping(h1.container_ns, out_ip)
    values = run(mq.read())["values"]
    assert values["masqueraded"]["packets"] >= 2 and values["kept"]["packets"] >= 1
    # Traffic into h1's pods from outside the network (h2's host itself) is left alone.
    assert lb.seen_source(h2.ns, h1.container_ns, h1.container_ip) == h2.underlay_ip

    # Idempotent: the same subnet is not re-applied; forced, the kernel already matches.
    assert not run(mq.apply(h1.subnet))
    assert not run(mq.apply(h1.subnet, force=True))
    assert table(h1.ns) == text and mq.status()["applies"] == 1

    # A restart adopts the identical table untouched: counters keep counting from where they were.
    before = run(mq.read())["values"]["masqueraded"]["packets"]
    fresh = Masquerade(net, netns=h1.ns)
    assert not run(fresh.apply(h1.subnet))
    assert fresh.status()["adopted"] and fresh.status()["subnet"] == h1.subnet
    assert run(fresh.read())["values"]["masqueraded"]["packets"] == before

    # Drift: a rule deleted by hand is noticed only by a forced apply, which restores it.
    ns_exec(h1.ns, ["nft", f"delete rule ip meshd-nat postrouting handle {rule_handles(h1.ns)[1]}"])
    assert lb.seen_source(h1.container_ns, out_ns, out_ip, timeout=2) is None
    assert not run(mq.apply(h1.subnet))
    assert run(mq.apply(h1.subnet, force=True))
    assert table(h1.ns) == text and mq.status()["repairs"] == 1
    assert lb.seen_source(h1.container_ns, out_ns, out_ip) == h1.underlay_ip

    # A rule added by hand (here: one that would masquerade pod-to-pod) goes too.
    ns_exec(h1.ns, ["nft", f"insert rule ip meshd-nat postrouting ip saddr {net} masquerade"])
    assert lb.seen_source(h1.container_ns, h2.container_ns, h2.container_ip) == h1.underlay_ip
    assert run(mq.apply(h1.subnet, force=True))
    assert table(h1.ns) == text and mq.status()["repairs"] == 2
    assert lb.seen_source(h1.container_ns, h2.container_ns, h2.container_ip) == h1.container_ip

    # The table deleted by hand comes back whole.
    ns_exec(h1.ns, ["nft", "delete table ip meshd-nat"])
    assert run(mq.apply(h1.subnet, force=True))
    assert table(h1.ns) == text and mq.status()["repairs"] == 3

    # The node's subnet changes (allocation): the rules follow, in one transaction.
    moved = "10.244.200.0/24"
    assert run(mq.apply(moved))
    assert f"ip saddr != {net} ip daddr {moved}" in table(h1.ns)
    assert h1.subnet not in table(h1.ns) and mq.status()["subnet"] == moved
    assert mq.status()["last_error"] is None and mq.status()["repairs"] == 3

    run(mq.remove())
    assert "table ip meshd-nat" not in tables(h1.ns) and "table inet other" in tables(h1.ns)
    assert lb.seen_source(h1.container_ns, out_ns, out_ip, timeout=2) is None
    run(mq.remove())  # removing twice is fine
    assert not run(mq.read())["present"]
    # After remove() the next apply installs the table again (it does not trust a stale "applied").
    assert run(mq.apply(h1.subnet))
    assert table(h1.ns) == text


def test_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mq = Masquerade("10.244.0.0/16")
    with pytest.raises(DataplaneError, match=r"^masquerade: subnet 10.9.0.0/24 is outside network"):
        run(mq.apply("10.9.0.0/24"))
    with pytest.raises(DataplaneError, match=r"^masquerade: subnet '10.244.1.1/24': "):
        mq.script("10.244.1.1/24")
    with pytest.raises(DataplaneError, match=r"^masquerade: network 'nope': "):
        Masquerade("nope")
    script = mq.script("10.244.3.0/24")
    # One transaction that starts from nothing: a repair never leaves a half-made table.
    assert script.startswith("add table ip meshd-nat\ndelete table ip meshd-nat\n")
    assert "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24" in script
    monkeypatch.setenv("PATH", str(tmp_path))  # no nft anywhere
    with pytest.raises(DataplaneError) as exc:
        run(mq.apply("10.244.3.0/24"))
    assert str(exc.value) == "masquerade: nft not found (apt-get install nftables)"
    assert mq.status()["last_error"] == str(exc.value)
    with pytest.raises(DataplaneError, match="nft not found"):
        run(mq.remove())


def test_listing_never_matches_what_it_does_not_know() -> None:
    mq = Masquerade("10.244.0.0/16")
    want = mq.expected("10.244.1.0/24")

    def rule(*expr: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"rule": {"chain": "postrouting", "expr": list(expr), **extra}}

    def match(field: str, op: str, addr: str, plen: int) -> dict[str, Any]:
        return {
            "match": {
                "op": op,
                "left": {"payload": {"protocol": "ip", "field": field}},
                "right": {"prefix": {"addr": addr, "len": plen}},
            }
        }

    masq = {"masquerade": {"flags": "fully-random"}}
    items = [
        {"counter": {"name": "kept", "packets": 1, "bytes": 2}},
        {"counter": {"name": "masqueraded", "packets": 3, "bytes": 4}},
        {"chain": {"name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100,
                   "policy": "accept"}},
        rule(match("saddr", "==", "10.244.0.0", 16), match("daddr", "==", "10.244.0.0", 16),
             {"counter": "kept"}, {"return": None}),
        rule(match("saddr", "==", "10.244.0.0", 16), match("daddr", "!=", "224.0.0.0", 4),
             {"counter": "masqueraded"}, masq),
        rule(match("saddr", "!=", "10.244.0.0", 16), match("daddr", "==", "10.244.1.0", 24),
             {"counter": "kept"}, {"return": None}),
        rule(match("saddr", "!=", "10.244.0.0", 16), match("daddr", "==", "10.244.0.0", 16),
             {"counter": "masqueraded"}, masq),
    ]  # fmt: skip
    seen = listing(items)
    assert {k: seen[k] for k in want} == want
    assert seen["values"]["masqueraded"] == {"packets": 3, "bytes": 4}
    # A comment, an unknown expression, a set or another policy each make it differ.
    variants = [
        items[:3] + [rule(*items[3]["rule"]["expr"], comment="x")] + items[4:],
        items[:3] + [rule({"log": None}, *items[3]["rule"]["expr"])] + items[4:],
        [*items, {"set": {"name": "s"}}],
        [items[0], items[1], {"chain": {**items[2]["chain"], "policy": "drop"}}, *items[3:]],
        items[:-1],
    ]
    for v in variants:
        got = listing(v)
        assert {k: got[k] for k in want} != want


@pytest.mark.root
def test_an_ipv6_network_gets_its_own_ip6_table_adopted_and_repaired(
    lab: Callable[..., Lab],
) -> None:
    lb = lab(1)
    (h1,) = lb.hosts
    mq = Masquerade("fd00:244::/32", netns=h1.ns)
    assert mq.rules("fd00:244:1::/64")[1] == (
        'ip6 saddr fd00:244::/32 ip6 daddr != ff00::/8 counter name "masqueraded" '
        "masquerade fully-random"
    )
    with pytest.raises(DataplaneError, match="subnet 10.244.1.0/24 is outside network"):
        mq.rules("10.244.1.0/24")
    assert run(mq.apply("fd00:244:1::/64"))
    assert {"table ip6 meshd-nat"} <= tables(h1.ns) and "table ip meshd-nat" not in tables(h1.ns)
    listed = ns_exec(h1.ns, ["nft", "list", "table", "ip6", "meshd-nat"]).stdout
    assert "ip6 saddr != fd00:244::/32 ip6 daddr fd00:244:1::/64" in listed
    # A restarted daemon adopts the table untouched; a rule deleted by hand is put back.
    again = Masquerade("fd00:244::/32", netns=h1.ns)
    assert not run(again.apply("fd00:244:1::/64")) and again.status()["adopted"]
    assert again.status()["table"] == "ip6 meshd-nat"
    out = ns_exec(h1.ns, ["nft", "-a", "list", "chain", "ip6", "meshd-nat", "postrouting"]).stdout
    handle = next(ln.rsplit("# handle ", 1)[1] for ln in out.splitlines() if "saddr" in ln)
    ns_exec(h1.ns, ["nft", "delete", "rule", "ip6", "meshd-nat", "postrouting", "handle", handle])
    assert run(again.apply("fd00:244:1::/64", force=True)) and again.status()["repairs"] == 1
    run(again.remove())
    assert "table ip6 meshd-nat" not in tables(h1.ns)
