"""rtnl_wire's IPv6 messages against pyroute2's codec, as test_rtnl_wire.py does for IPv4: no
kernel, no root. IPv6 routes, neighbours and FDB destinations, an IPv4 route via an IPv6 next
hop (RTA_VIA, RFC 5549), and per-family dump requests."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshd.dataplane import rtnl_wire as w
from meshd.dataplane.objects import canonical

# Above ::/80: pyroute2 prints IPv4-compatible and -mapped addresses the libc way (::1.2.3.4),
# ipaddress (and meshd) the RFC 5952 way; test_decoded_addresses_are_in_the_models_form has them.
ip6s = st.integers(2**80, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
any_ip6s = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
prefixes6 = st.tuples(st.integers(2**80, 2**128 - 1), st.integers(48, 128)).map(
    lambda t: str(ipaddress.IPv6Network((t[0], t[1]), strict=False))
)
prefixes4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 32)).map(
    lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False))
)
macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
ifindexes = st.integers(1, 2**31 - 1)


def parse(data: bytes) -> dict[str, Any]:
    (msg,) = list(MarshalRtnl().parse(data))
    return msg  # type: ignore[no-any-return]


def attrs(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg["attrs"]}


def pyroute2_batch(kind: str, *args: Any, **kw: Any) -> dict[str, Any]:
    ipb = IPBatch()
    getattr(ipb, kind)(*args, **kw)
    return parse(bytes(ipb.batch))


@given(prefixes6, ip6s, ifindexes, st.booleans(), st.sampled_from(["add", "replace"]))
def test_ipv6_route_decodes_in_pyroute2_and_back(
    dst: str, gw: str, oif: int, onlink: bool, op: str
) -> None:
    req = w.encode_route(op, w.RouteEntry(dst, gw, oif, onlink), 109)
    msg = parse(w.frame(req, 7))
    a = attrs(msg)
    ip, plen = dst.split("/")
    assert (msg["family"], msg["dst_len"], msg["proto"]) == (socket.AF_INET6, int(plen), 109)
    assert msg["flags"] == (w.RTNH_F_ONLINK if onlink else 0)
    assert (a["RTA_DST"], a["RTA_GATEWAY"], a["RTA_OIF"]) == (ip, gw, oif)
    back = w.decode(w.frame(req, 1))
    assert isinstance(back, w.RouteMsg)
    assert (back.family, back.dst, back.gateway, back.oif) == (socket.AF_INET6, dst, gw, oif)


@given(prefixes4, ip6s, ifindexes)
def test_ipv4_route_via_inet6_carries_rta_via(dst: str, gw: str, oif: int) -> None:
    req = w.encode_route("add", w.RouteEntry(dst, gw, oif, True), 109)
    msg = parse(w.frame(req, 7))
    a = attrs(msg)
    assert msg["family"] == socket.AF_INET and "RTA_GATEWAY" not in a
    assert a["RTA_VIA"] == {"family": socket.AF_INET6, "addr": gw}
    back = w.decode(w.frame(req, 1))
    assert isinstance(back, w.RouteMsg) and (back.dst, back.gateway) == (dst, gw)


@pytest.mark.parametrize("op", ["add", "replace"])
def test_routes_mean_what_pyroute2_means(op: str) -> None:
    v6 = w.RouteEntry("fd00:2::/64", "fd00:2::", 5, True)
    ours = parse(w.frame(w.encode_route(op, v6, 109), 1))
    theirs = pyroute2_batch(
        "route", op, dst=v6.dst, gateway=v6.gateway, oif=5, proto=109, table=254, flags=4
    )
    for f in ("family", "dst_len", "proto", "scope", "type", "flags", "table"):
        assert ours[f] == theirs[f], f
    assert {k: v for k, v in attrs(ours).items()} == {
        k: v for k, v in attrs(theirs).items() if k != "RTA_TABLE"
    }
    v4 = w.RouteEntry("10.1.0.0/24", "fd00::1", 3, False)
    ours = parse(w.frame(w.encode_route(op, v4, 109), 1))
    theirs = pyroute2_batch(
        "route",
        op,
        dst=v4.dst,
        via={"family": socket.AF_INET6, "addr": "fd00::1"},
        oif=3,
        proto=109,
        table=254,
    )
    assert (ours["family"], ours["dst_len"]) == (theirs["family"], theirs["dst_len"])
    assert attrs(ours)["RTA_VIA"] == attrs(theirs)["RTA_VIA"]


def test_ipv6_route_del_names_the_family_and_the_protocol() -> None:
    msg = parse(w.frame(w.encode_route("del", w.RouteEntry("fd00:2::/64", "", 0, False), 109), 1))
    assert (msg["family"], msg["proto"], msg["dst_len"]) == (socket.AF_INET6, 109, 64)
    assert attrs(msg)["RTA_DST"] == "fd00:2::"


@given(ip6s, macs, ifindexes, st.sampled_from(["replace", "del"]))
def test_ipv6_neighbour_means_what_pyroute2_means(
    dst: str, mac: str, ifindex: int, op: str
) -> None:
    ours = parse(w.frame(w.encode_neigh(op, ifindex, w.NeighEntry(dst, mac)), 1))
    kw: dict[str, Any] = {"ifindex": ifindex, "dst": dst}
    if op != "del":
        kw.update(lladdr=mac, state=w.NUD_PERMANENT)
    theirs = pyroute2_batch("neigh", op, **kw)
    assert ours["header"]["type"] == theirs["header"]["type"]
    assert ours["header"]["flags"] == theirs["header"]["flags"]
    for f in ("family", "ifindex") + (("state", "flags") if op != "del" else ()):
        assert ours[f] == theirs[f], f
    assert attrs(ours) == attrs(theirs)
    assert ours["family"] == socket.AF_INET6


@given(macs, ip6s, ifindexes, st.sampled_from(["replace", "del"]))
def test_fdb_with_an_ipv6_dst_means_what_pyroute2_means(
    mac: str, dst: str, ifindex: int, op: str
) -> None:
    ours = parse(w.frame(w.encode_fdb(op, ifindex, w.FdbEntry(mac, dst)), 1))
    theirs = pyroute2_batch(
        "fdb",
        op,
        ifindex=ifindex,
        lladdr=mac,
        dst=dst,
        state=w.NUD_PERMANENT | w.NUD_NOARP,
        flags=w.NTF_SELF,
    )
    for f in ("family", "ifindex", "state", "flags"):
        assert ours[f] == theirs[f], f
    assert attrs(ours) == attrs(theirs) == {"NDA_LLADDR": mac, "NDA_DST": dst}


def test_ipv6_dump_requests_carry_the_family_and_the_filter() -> None:
    r = parse(w.frame(w.route_dump_request(109, 254, socket.AF_INET6), 1))
    assert (r["family"], r["proto"], r["table"]) == (socket.AF_INET6, 109, 254)
    n = parse(w.frame(w.neigh_dump_request(7, socket.AF_INET6), 1))
    assert (n["family"], n["ifindex"], attrs(n)["NDA_IFINDEX"]) == (socket.AF_INET6, 0, 7)


@given(prefixes6, st.one_of(st.just(""), ip6s), st.integers(0, 2**31 - 1))
def test_ipv6_route_dump_message_decodes_like_pyroute2(dst: str, gw: str, oif: int) -> None:
    ip, plen = dst.split("/")
    m = rtmsg()
    m["header"]["type"] = w.RTM_NEWROUTE
    m["family"], m["dst_len"], m["proto"], m["scope"], m["type"] = 10, int(plen), 109, 0, 1
    m["table"], m["flags"] = 254, 4
    # The kernel's order for an IPv6 route: table, dst, priority, gateway, oif, cacheinfo, pref.
    kattrs: list[tuple[str, Any]] = [("RTA_TABLE", 254), ("RTA_DST", ip), ("RTA_PRIORITY", 1024)]
    if gw:
        kattrs.append(("RTA_GATEWAY", gw))
    if oif:
        kattrs.append(("RTA_OIF", oif))
    kattrs.append(("RTA_PREF", 0))
    m["attrs"] = kattrs
    m.encode()
    buf = bytes(m.data)
    got = w.decode(buf)
    assert got == w.RouteMsg(10, dst, gw, oif, 4, 109, 254, 0, 1, 1024)
    entry = w.route_entry(buf, 16, len(buf), 109, 254, {}, socket.AF_INET6)
    assert entry == w.RouteEntry(dst, gw, oif, True)
    assert w.route_entry(buf, 16, len(buf), 109, 254, {}) is None  # asked for IPv4


def test_a_route_via_inet6_in_a_dump_decodes_its_gateway() -> None:
    m = rtmsg()
    m["header"]["type"] = w.RTM_NEWROUTE
    m["family"], m["dst_len"], m["proto"], m["type"], m["table"] = 2, 24, 109, 1, 254
    m["attrs"] = [
        ("RTA_TABLE", 254),
        ("RTA_DST", "10.1.0.0"),
        ("RTA_VIA", {"family": 10, "addr": "fd00::1"}),
        ("RTA_OIF", 3),
    ]
    m.encode()
    buf = bytes(m.data)
    assert w.route_entry(buf, 16, len(buf), 109, 254, {}) == w.RouteEntry(
        "10.1.0.0/24", "fd00::1", 3, False
    )


@given(ip6s, macs, ifindexes, st.sampled_from([socket.AF_INET6, w.AF_BRIDGE]))
def test_ipv6_neighbour_and_fdb_dump_messages_decode(
    dst: str, mac: str, ifindex: int, family: int
) -> None:
    m = ndmsg()
    m["header"]["type"] = w.RTM_NEWNEIGH
    m["family"], m["ifindex"], m["state"], m["flags"] = family, ifindex, w.NUD_PERMANENT, 0
    m["attrs"] = [("NDA_DST", dst), ("NDA_LLADDR", mac), ("NDA_PROBES", 0)]
    m.encode()
    buf = bytes(m.data)
    assert w.decode(buf) == w.NeighMsg(family, ifindex, w.NUD_PERMANENT, 0, dst, mac)
    if family == socket.AF_INET6:
        assert w.neigh_entry(buf, 16, len(buf), ifindex, {}, socket.AF_INET6) == w.NeighEntry(
            dst, mac
        )
        assert w.neigh_entry(buf, 16, len(buf), ifindex, {}) is None
    elif mac != "00:00:00:00:00:00":
        assert w.fdb_entry(buf, 16, len(buf), ifindex, {}) == w.FdbEntry(mac, dst)


@given(any_ip6s)
def test_decoded_addresses_are_in_the_models_form(ip: str) -> None:
    # The model keys IPv6 entries by ipaddress's spelling; the kernel's bytes decode to it.
    assert w.ntop(socket.inet_pton(socket.AF_INET6, ip)) == canonical(ip) == ip


def test_an_ipv6_route_via_an_ipv4_gateway_is_refused() -> None:
    with pytest.raises(ValueError, match="IPv6 route cannot go via an IPv4 gateway"):
        w.encode_route("add", w.RouteEntry("fd00::/64", "10.0.0.1", 1, False), 109)


# --- the fixed-layout fast paths for IPv6 dumps agree with the general decoder --------------------

KERNEL_ROUTE6 = [  # the kernel's order (6.x), timers after the key
    ("RTA_TABLE", 254),
    ("RTA_DST", "fd00:244:2::"),
    ("RTA_PRIORITY", 1024),
    ("RTA_GATEWAY", "fd00:244:2::"),
    ("RTA_OIF", 5),
    ("RTA_CACHEINFO", {"rta_clntref": 0, "rta_lastuse": 0, "rta_expires": 0, "rta_error": 0,
                       "rta_used": 0, "rta_id": 0, "rta_ts": 0, "rta_tsage": 0}),
    ("RTA_PREF", 0),
]  # fmt: skip
OTHER_ROUTE6 = [("RTA_DST", "fd00:244:2::"), ("RTA_OIF", 5), ("RTA_GATEWAY", "fd00:244:2::")]


def _route6(attrs: list[tuple[str, Any]], proto: int = 109) -> bytes:
    m = rtmsg()
    m["header"]["type"] = w.RTM_NEWROUTE
    m["family"], m["dst_len"], m["proto"], m["type"], m["flags"], m["table"] = (
        10,
        64,
        proto,
        1,
        4,
        254,
    )
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def _neigh6(
    attrs: list[tuple[str, Any]], family: int, ifindex: int = 7, state: int = 0x80
) -> bytes:
    m = ndmsg()
    m["header"]["type"] = w.RTM_NEWNEIGH
    m["family"], m["ifindex"], m["state"], m["flags"] = family, ifindex, state, w.NTF_SELF
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


@pytest.mark.parametrize("layout", [KERNEL_ROUTE6, OTHER_ROUTE6], ids=["kernel", "other"])
def test_ipv6_route_entry_fast_and_general_paths_agree(layout: list[tuple[str, Any]]) -> None:
    want = w.RouteEntry("fd00:244:2::/64", "fd00:244:2::", 5, True)
    memo: w.Memo = {}
    msg = _route6(layout)
    for _ in range(2):  # decoded, then looked up
        assert w.route_entry(msg, 16, len(msg), 109, 254, memo, socket.AF_INET6) == want
        assert w.route_entry(msg, 16, len(msg), 109, 254, None, socket.AF_INET6) == want
    # Either path remembers it: the fixed layout without its timers, another by all its bytes.
    assert [len(k) for k in memo] == [76 if layout is KERNEL_ROUTE6 else len(msg) - 16]
    assert w.route_entry(msg, 16, len(msg), 110, 254, {}, socket.AF_INET6) is None
    assert w.route_entry(_route6(layout, 110), 16, len(msg), 109, 254, {}, socket.AF_INET6) is None


@pytest.mark.parametrize("fdb", [False, True], ids=["neighbour", "fdb"])
def test_ipv6_neighbour_and_fdb_fast_and_general_paths_agree(fdb: bool) -> None:
    mac = "02:aa:bb:cc:dd:ee"
    if fdb:
        kernel = [("NDA_LLADDR", mac), ("NDA_DST", "fd00:99::2"), ("NDA_PROBES", 0)]
        other = [("NDA_DST", "fd00:99::2"), ("NDA_LLADDR", mac)]
        want: Any = w.FdbEntry(mac, "fd00:99::2")

        def entry(m: bytes, memo: w.Memo | None, ifindex: int = 7) -> Any:
            return w.fdb_entry(m, 16, len(m), ifindex, memo)

        family = w.AF_BRIDGE
    else:
        kernel = [("NDA_DST", "fd00:244:2::"), ("NDA_LLADDR", mac), ("NDA_PROBES", 0)]
        other = [("NDA_LLADDR", mac), ("NDA_DST", "fd00:244:2::")]
        want = w.NeighEntry("fd00:244:2::", mac)

        def entry(m: bytes, memo: w.Memo | None, ifindex: int = 7) -> Any:
            return w.neigh_entry(m, 16, len(m), ifindex, memo, socket.AF_INET6)

        family = socket.AF_INET6
    for layout, kept in ((kernel, 1), (other, 0)):
        memo: w.Memo = {}
        msg = _neigh6(layout, family)
        for _ in range(2):
            assert entry(msg, memo) == want
            assert entry(msg, None) == want
        assert len(memo) == kept
        assert entry(_neigh6(layout, family, ifindex=8), {}) is None
    if not fdb:
        reachable = _neigh6(kernel, family, state=0x02)  # a cache entry, not ours
        assert entry(reachable, {}) is None
