"""rtnl_wire against pyroute2's codec: no kernel, no root.

Every message meshd packs is parsed by pyroute2's parser and must give the fields we meant; and
the same operation built by pyroute2's own encoder (IPBatch) must mean the same thing. Messages
shaped like the kernel's dump answers, encoded by pyroute2, must decode to the same fields here.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshd.dataplane import rtnl_wire as w
from meshd.dataplane.rtnl import Rtnl
from meshd.errors import DataplaneError

ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
prefixes = st.tuples(ips, st.integers(1, 32)).map(lambda t: f"{t[0]}/{t[1]}")
ifindexes = st.integers(1, 2**31 - 1)
tables = st.sampled_from([254, 255, 100, 1000, 70000])
protos = st.integers(1, 255)


def parse(data: bytes) -> dict[str, Any]:
    (msg,) = list(MarshalRtnl().parse(data))
    return msg  # type: ignore[no-any-return]


def attrs(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg["attrs"]}


def table_of(msg: dict[str, Any]) -> int:
    return int(attrs(msg).get("RTA_TABLE", msg["table"]))


def pyroute2_batch(kind: str, *args: Any, **kw: Any) -> dict[str, Any]:
    ipb = IPBatch()
    getattr(ipb, kind)(*args, **kw)
    return parse(bytes(ipb.batch))


# --- encode here, decode with pyroute2 -----------------------------------------------------------


@given(prefixes, ips, ifindexes, st.booleans(), protos, tables, st.sampled_from(["add", "replace"]))
def test_route_new_decodes_in_pyroute2(
    dst: str, gw: str, oif: int, onlink: bool, proto: int, table: int, op: str
) -> None:
    req = w.encode_route(op, w.RouteEntry(dst, gw, oif, onlink), proto, table)
    msg = parse(w.frame(req, 42))
    a = attrs(msg)
    ip, plen = dst.split("/")
    assert msg["header"]["type"] == w.RTM_NEWROUTE and msg["header"]["sequence_number"] == 42
    flags = w.NLM_F_REQUEST | w.NLM_F_ACK | w.NLM_F_CREATE
    flags |= w.NLM_F_EXCL if op == "add" else w.NLM_F_REPLACE
    assert msg["header"]["flags"] == flags
    assert (msg["family"], msg["dst_len"], msg["proto"], table_of(msg)) == (
        socket.AF_INET,
        int(plen),
        proto,
        table,
    )
    assert (msg["scope"], msg["type"], msg["flags"]) == (0, w.RTN_UNICAST, 4 if onlink else 0)
    assert (a["RTA_DST"], a["RTA_GATEWAY"], a["RTA_OIF"]) == (ip, gw, oif)
    # ... and back through our own decoder
    back = w.decode(w.frame(req, 1))
    assert isinstance(back, w.RouteMsg)
    assert (back.dst, back.gateway, back.oif, back.proto, back.table) == (
        dst,
        gw,
        oif,
        proto,
        table,
    )


@given(prefixes, protos, tables)
def test_route_del_decodes_in_pyroute2(dst: str, proto: int, table: int) -> None:
    msg = parse(w.frame(w.encode_route("del", w.RouteEntry(dst, "", 0, False), proto, table), 1))
    assert msg["header"]["type"] == w.RTM_DELROUTE
    assert msg["header"]["flags"] == w.NLM_F_REQUEST | w.NLM_F_ACK
    # Scope NOWHERE (any scope) and the protocol: the kernel deletes only a route with `proto`.
    assert (msg["proto"], msg["scope"], table_of(msg)) == (proto, w.RT_SCOPE_NOWHERE, table)
    assert attrs(msg).get("RTA_DST") == dst.split("/")[0]
    assert "RTA_GATEWAY" not in attrs(msg)


@given(ips, macs, ifindexes, st.sampled_from(["replace", "add", "del"]))
def test_neigh_decodes_in_pyroute2(dst: str, mac: str, ifindex: int, op: str) -> None:
    msg = parse(w.frame(w.encode_neigh(op, ifindex, w.NeighEntry(dst, mac)), 3))
    a = attrs(msg)
    assert (msg["family"], msg["ifindex"], a["NDA_DST"]) == (socket.AF_INET, ifindex, dst)
    if op == "del":
        assert msg["header"]["type"] == w.RTM_DELNEIGH and "NDA_LLADDR" not in a
    else:
        assert msg["header"]["type"] == w.RTM_NEWNEIGH
        assert (msg["state"], a["NDA_LLADDR"]) == (w.NUD_PERMANENT, mac)


@given(macs, ips, ifindexes, st.sampled_from(["replace", "add", "del"]))
def test_fdb_decodes_in_pyroute2(mac: str, dst: str, ifindex: int, op: str) -> None:
    msg = parse(w.frame(w.encode_fdb(op, ifindex, w.FdbEntry(mac, dst)), 3))
    a = attrs(msg)
    assert (msg["family"], msg["ifindex"], msg["state"], msg["flags"]) == (
        w.AF_BRIDGE,
        ifindex,
        w.NUD_PERMANENT | w.NUD_NOARP,
        w.NTF_SELF,
    )
    assert (a["NDA_LLADDR"], a["NDA_DST"]) == (mac, dst)
    assert msg["header"]["type"] == (w.RTM_DELNEIGH if op == "del" else w.RTM_NEWNEIGH)


# --- the same operation through pyroute2's encoder means the same ---------------------------------


def _same(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    fields: tuple[str, ...],
    skip_attrs: tuple[str, ...] = (),
) -> None:
    assert ours["header"]["type"] == theirs["header"]["type"]
    assert ours["header"]["flags"] == theirs["header"]["flags"]
    for f in fields:
        assert ours[f] == theirs[f], f
    mine = {k: v for k, v in attrs(ours).items() if k not in skip_attrs}
    other = {k: v for k, v in attrs(theirs).items() if k not in skip_attrs}
    assert mine == other


@pytest.mark.parametrize("op", ["add", "replace"])
@pytest.mark.parametrize("onlink", [True, False])
def test_route_means_what_pyroute2_means(op: str, onlink: bool) -> None:
    e = w.RouteEntry("10.244.2.0/24", "10.244.2.0", 5, onlink)
    ours = parse(w.frame(w.encode_route(op, e, 109), 1))
    theirs = pyroute2_batch(
        "route",
        op,
        dst=e.dst,
        gateway=e.gateway,
        oif=e.oif,
        proto=109,
        table=254,
        flags=4 if onlink else 0,
    )
    # pyroute2 repeats the table in RTA_TABLE; iproute2 (and we) only do so above 255.
    _same(
        ours,
        theirs,
        ("family", "dst_len", "proto", "scope", "type", "flags", "table"),
        ("RTA_TABLE",),
    )


def test_route_del_means_what_pyroute2_means() -> None:
    ours = parse(
        w.frame(w.encode_route("del", w.RouteEntry("10.244.2.0/24", "", 0, False), 109), 1)
    )
    theirs = pyroute2_batch("route", "del", dst="10.244.2.0/24", proto=109, table=254)
    # Scope differs on purpose: NOWHERE (as `ip route del`) matches a route of any scope.
    _same(ours, theirs, ("family", "dst_len", "proto", "table"), ("RTA_TABLE",))


@pytest.mark.parametrize("op", ["replace", "del"])
def test_neigh_means_what_pyroute2_means(op: str) -> None:
    ours = parse(w.frame(w.encode_neigh(op, 5, w.NeighEntry("10.244.2.0", "02:aa:bb:cc:dd:ee")), 1))
    kw: dict[str, Any] = {"ifindex": 5, "dst": "10.244.2.0"}
    if op != "del":
        kw.update(lladdr="02:aa:bb:cc:dd:ee", state=w.NUD_PERMANENT)
    theirs = pyroute2_batch("neigh", op, **kw)
    _same(ours, theirs, ("family", "ifindex") + (("state", "flags") if op != "del" else ()))


@pytest.mark.parametrize("op", ["replace", "add", "del"])
def test_fdb_means_what_pyroute2_means(op: str) -> None:
    e = w.FdbEntry("02:aa:bb:cc:dd:ee", "10.99.0.2")
    ours = parse(w.frame(w.encode_fdb(op, 5, e), 1))
    theirs = pyroute2_batch(
        "fdb",
        op,
        ifindex=5,
        lladdr=e.lladdr,
        dst=e.dst,
        state=w.NUD_PERMANENT | w.NUD_NOARP,
        flags=w.NTF_SELF,
    )
    _same(ours, theirs, ("family", "ifindex", "state", "flags"))


def test_dump_requests_carry_the_filter() -> None:
    r = parse(w.frame(w.route_dump_request(109), 1))
    assert r["header"]["flags"] == w.NLM_F_REQUEST | w.NLM_F_DUMP
    assert (r["proto"], r["table"], r["dst_len"], r["scope"], r["type"]) == (109, 254, 0, 0, 0)
    assert table_of(parse(w.frame(w.route_dump_request(109, 1000), 1))) == 1000
    n = parse(w.frame(w.neigh_dump_request(7), 1))
    assert (n["family"], n["ifindex"], attrs(n)["NDA_IFINDEX"]) == (socket.AF_INET, 0, 7)
    f = parse(w.frame(w.fdb_dump_request(7), 1))
    assert (f["family"], f["ifindex"], f["attrs"]) == (w.AF_BRIDGE, 7, [])


# --- encode with pyroute2 (shaped like the kernel's answers), decode here -------------------------


@given(
    prefixes,
    st.one_of(st.just(""), ips),
    st.integers(0, 2**31 - 1),
    st.integers(0, 255),
    protos,
    tables,
    st.integers(0, 255),
)
def test_route_dump_message_decodes_like_pyroute2(
    dst: str, gw: str, oif: int, flags: int, proto: int, table: int, scope: int
) -> None:
    ip, plen = dst.split("/")
    m = rtmsg()
    m["header"]["type"] = w.RTM_NEWROUTE
    m["family"], m["dst_len"], m["proto"], m["scope"], m["type"] = 2, int(plen), proto, scope, 1
    m["table"], m["flags"] = min(table, 252), flags
    kattrs: list[tuple[str, Any]] = [("RTA_TABLE", table), ("RTA_DST", ip)]
    if gw:
        kattrs.append(("RTA_GATEWAY", gw))
    if oif:
        kattrs.append(("RTA_OIF", oif))
    kattrs.append(("RTA_PRIORITY", 100))  # the metric: the default route's tie-break
    kattrs.append(("RTA_PREF", 0))  # an attribute meshd does not read is skipped
    m["attrs"] = kattrs
    m.encode()
    got = w.decode(bytes(m.data))
    assert got == w.RouteMsg(2, dst, gw, oif, flags, proto, table, scope, 1, 100)


@given(
    ips,
    macs,
    ifindexes,
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.sampled_from([socket.AF_INET, w.AF_BRIDGE]),
)
def test_neigh_dump_message_decodes_like_pyroute2(
    dst: str, mac: str, ifindex: int, state: int, flags: int, family: int
) -> None:
    m = ndmsg()
    m["header"]["type"] = w.RTM_NEWNEIGH
    m["family"], m["ifindex"], m["state"], m["flags"] = family, ifindex, state, flags
    m["attrs"] = [("NDA_DST", dst), ("NDA_LLADDR", mac), ("NDA_PROBES", 0)]
    m.encode()
    got = w.decode(bytes(m.data))
    assert got == w.NeighMsg(family, ifindex, state, flags, dst, mac)


def test_decode_refuses_other_messages() -> None:
    with pytest.raises(ValueError):
        w.decode(struct.pack("=IHHII", 16, 16, 0, 0, 0))  # RTM_NEWLINK


# --- errors --------------------------------------------------------------------------------------


def _nlmsgerr(code: int, text: str, capped: bool) -> bytes:
    req = w.frame(w.encode_route("add", w.RouteEntry("10.0.0.0/8", "1.2.3.4", 2, False), 109), 9)
    echo = req[:16] if capped else req
    tlv = struct.pack("=HH", 4 + len(text) + 1, w.NLMSGERR_ATTR_MSG) + text.encode() + b"\0"
    tlv += b"\0" * (-len(tlv) % 4)
    flags = w.NLM_F_ACK_TLVS | (w.NLM_F_CAPPED if capped else 0)
    body = struct.pack("=i", -code) + echo + tlv
    return struct.pack("=IHHII", 16 + len(body), w.NLMSG_ERROR, flags, 9, 0) + body


@pytest.mark.parametrize("capped", [True, False])
def test_extended_ack_message_is_read(capped: bool) -> None:
    data = _nlmsgerr(errno.ENODEV, "Nexthop device\nis not up", capped)
    flags = struct.unpack_from("=H", data, 6)[0]
    assert w.decode_error(data, 16, len(data), flags) == (errno.ENODEV, "Nexthop device\nis not up")


def test_request_error_is_one_line_with_the_errno_name() -> None:
    err = w.request_error("route add 10.244.2.0/24 via 10.244.2.0", errno.ENODEV, "Nexthop\ndev")
    assert str(err) == (
        "route add 10.244.2.0/24 via 10.244.2.0: No such device (ENODEV): Nexthop dev"
    )
    assert err.errno == errno.ENODEV
    # A kernel message that only repeats strerror is not repeated.
    assert str(w.request_error("x", errno.EEXIST, "File exists")) == "x: File exists (EEXIST)"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: w.encode_route("add", w.RouteEntry("10.0.0.0", "1.2.3.4", 1, False), 109),
        lambda: w.encode_route("add", w.RouteEntry("10.0.0.0/33", "1.2.3.4", 1, False), 109),
        lambda: w.encode_route("add", w.RouteEntry("fd00::/64", "1.2.3.4", 1, False), 109),
        lambda: w.encode_route("move", w.RouteEntry("10.0.0.0/8", "1.2.3.4", 1, False), 109),
        lambda: w.encode_neigh("replace", 1, w.NeighEntry("10.0.0.1", "02:00:00:00:00")),
        lambda: w.encode_neigh("replace", 1, w.NeighEntry("10.0.0", "02:00:00:00:00:01")),
        lambda: w.encode_fdb("append", 1, w.FdbEntry("02:00:00:00:00:01", "10.0.0.1")),
    ],
)
def test_bad_input_is_a_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        bad()


def test_bad_entries_fail_alone_without_touching_a_socket() -> None:
    r = Rtnl()  # never opened: nothing valid is left to send
    fails = asyncio.run(r.routes_apply("add", [w.RouteEntry("nonsense", "1.2.3.4", 1, False)], 109))
    assert [f.what for f in fails] == ["route add nonsense via 1.2.3.4"]
    assert isinstance(fails[0].error, DataplaneError) and "\n" not in str(fails[0].error)


# --- dump answers straight to entries: fixed-layout fast path == general decoder -----------------


def _route_msg(attrs: list[tuple[str, Any]], proto: int = 109, flags: int = 4) -> bytes:
    m = rtmsg()
    m["header"]["type"] = w.RTM_NEWROUTE
    m["family"], m["dst_len"], m["proto"], m["type"], m["flags"] = 2, 24, proto, 1, flags
    m["table"] = 254
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def _neigh_msg(
    attrs: list[tuple[str, Any]], family: int, ifindex: int = 7, state: int = w.NUD_PERMANENT
) -> bytes:
    m = ndmsg()
    m["header"]["type"] = w.RTM_NEWNEIGH
    m["family"], m["ifindex"], m["state"], m["flags"] = family, ifindex, state, w.NTF_SELF
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


KERNEL_ROUTE = [
    ("RTA_TABLE", 254),
    ("RTA_DST", "10.244.2.0"),
    ("RTA_GATEWAY", "10.244.2.0"),
    ("RTA_OIF", 5),
]
OTHER_ROUTE = [
    ("RTA_DST", "10.244.2.0"),
    ("RTA_PRIORITY", 7),
    ("RTA_OIF", 5),
    ("RTA_GATEWAY", "10.244.2.0"),
    ("RTA_TABLE", 254),
]
ROUTE = w.RouteEntry("10.244.2.0/24", "10.244.2.0", 5, True)
NEIGH_KERNEL = [("NDA_DST", "10.244.2.0"), ("NDA_LLADDR", "02:aa:bb:cc:dd:ee"), ("NDA_PROBES", 0)]
NEIGH_OTHER = [("NDA_LLADDR", "02:aa:bb:cc:dd:ee"), ("NDA_DST", "10.244.2.0")]
FDB_KERNEL = [("NDA_LLADDR", "02:aa:bb:cc:dd:ee"), ("NDA_DST", "10.99.0.2"), ("NDA_PROBES", 0)]
FDB_OTHER = [("NDA_DST", "10.99.0.2"), ("NDA_LLADDR", "02:aa:bb:cc:dd:ee")]


@pytest.mark.parametrize("layout", [KERNEL_ROUTE, OTHER_ROUTE])
def test_route_entry_fast_and_general_paths_agree(layout: list[tuple[str, Any]]) -> None:
    memo: w.Memo = {}
    msg = _route_msg(layout)
    for _ in range(2):  # decoded, then looked up
        assert w.route_entry(msg, 16, len(msg), 109, 254, memo) == ROUTE
        assert w.route_entry(msg, 16, len(msg), 109, 254) == ROUTE
    assert len(memo) == 1  # either path remembers it (the general one by the whole message)
    assert w.route_entry(msg, 16, len(msg), 110, 254, {}) is None
    assert w.route_entry(msg, 16, len(msg), 109, 100, {}) is None
    v6 = bytearray(msg)
    v6[16] = socket.AF_INET6
    assert w.route_entry(v6, 16, len(v6), 109, 254, {}) is None
    no_onlink = _route_msg(layout, flags=0)
    assert w.route_entry(no_onlink, 16, len(no_onlink), 109, 254) == ROUTE._replace(onlink=False)


@pytest.mark.parametrize("layout", [NEIGH_KERNEL, NEIGH_OTHER])
def test_neigh_entry_fast_and_general_paths_agree(layout: list[tuple[str, Any]]) -> None:
    memo: w.Memo = {}
    want = w.NeighEntry("10.244.2.0", "02:aa:bb:cc:dd:ee")
    msg = _neigh_msg(layout, socket.AF_INET)
    for _ in range(2):
        assert w.neigh_entry(msg, 16, len(msg), 7, memo) == want
    for other in (
        _neigh_msg(layout, socket.AF_INET, ifindex=8),
        _neigh_msg(layout, socket.AF_INET, state=0x02),  # NUD_REACHABLE: a cache entry
        _neigh_msg(layout, w.AF_BRIDGE),
    ):
        assert w.neigh_entry(other, 16, len(other), 7, {}) is None
    bare = _neigh_msg([("NDA_DST", "10.244.2.0")], socket.AF_INET)  # no lladdr: not ours
    assert w.neigh_entry(bare, 16, len(bare), 7, memo) is None


@pytest.mark.parametrize("layout", [FDB_KERNEL, FDB_OTHER])
def test_fdb_entry_fast_and_general_paths_agree(layout: list[tuple[str, Any]]) -> None:
    memo: w.Memo = {}
    want = w.FdbEntry("02:aa:bb:cc:dd:ee", "10.99.0.2")
    msg = _neigh_msg(layout, w.AF_BRIDGE)
    for _ in range(2):
        assert w.fdb_entry(msg, 16, len(msg), 7, memo) == want
    assert w.fdb_entry(_neigh_msg(layout, w.AF_BRIDGE, ifindex=8), 16, len(msg), 7, {}) is None
    assert w.fdb_entry(_neigh_msg(layout, socket.AF_INET), 16, len(msg), 7, {}) is None
    zero = [(k, "00:00:00:00:00:00" if k == "NDA_LLADDR" else v) for k, v in layout]
    z = _neigh_msg(zero, w.AF_BRIDGE)  # the all-zero default-destination entry is not a peer
    assert w.fdb_entry(z, 16, len(z), 7, memo) is None
