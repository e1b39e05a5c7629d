"""rtnl_link (devices, addresses) and the monitor's event decoding against pyroute2's codec: no
kernel, no root.

Every request meshd packs parses in pyroute2 to the fields we meant, and the same operation built
by pyroute2's own encoder (IPBatch) means the same thing; kernel-shaped answers and notifications
encoded by pyroute2 decode here to what pyroute2 reads from them.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshd.dataplane import netlink
from meshd.dataplane import rtnl_link as L
from meshd.dataplane import rtnl_wire as w

ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
ifindexes = st.integers(1, 2**31 - 1)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=15)
mtus = st.integers(68, 65535)
vxlan_params = st.tuples(st.integers(0, 2**24 - 1), ips, ifindexes, st.integers(1, 65535),
                         st.integers(0, 1)).map(
    lambda t: (("vxlan_id", t[0]), ("vxlan_local", t[1]), ("vxlan_link", t[2]),
               ("vxlan_port", t[3]), ("vxlan_learning", t[4])))
ipip_params = st.tuples(ips, ifindexes, st.integers(0, 255)).map(
    lambda t: (("ipip_local", t[0]), ("ipip_link", t[1]), ("ipip_ttl", t[2])))


def parse(data: bytes) -> Any:
    (msg,) = list(MarshalRtnl().parse(data))
    return msg


def norm(value: Any) -> Any:
    """pyroute2's parsed attributes as plain, order-free dicts (nested ones too)."""
    if isinstance(value, dict) and "attrs" in value:
        return {k: norm(v) for k, v in value["attrs"]}
    return value


def pyroute2_batch(method: str, *args: Any, **kw: Any) -> Any:
    ipb = IPBatch()
    getattr(ipb, method)(*args, **kw)
    return parse(bytes(ipb.batch))


def same(ours: Any, theirs: Any, fields: tuple[str, ...], skip: tuple[str, ...] = ()) -> None:
    assert ours["header"]["type"] == theirs["header"]["type"]
    assert ours["header"]["flags"] == theirs["header"]["flags"]
    for f in fields:
        assert ours[f] == theirs[f], f
    mine = {k: v for k, v in norm(ours).items() if k not in skip}
    assert mine == norm(theirs)


# --- links: encode here, decode with pyroute2 ---------------------------------------------------


@given(names, mtus, macs, vxlan_params)
def test_vxlan_create_decodes_in_pyroute2(
    name: str, mtu: int, mac: str, params: tuple[tuple[str, Any], ...]
) -> None:
    req = L.encode_link_create(name, "vxlan", mtu, mac, params)
    msg = parse(w.frame(req, 7))
    assert msg["header"]["type"] == L.RTM_NEWLINK
    assert msg["header"]["flags"] == (w.NLM_F_REQUEST | w.NLM_F_ACK | w.NLM_F_CREATE
                                      | w.NLM_F_EXCL)
    assert (msg["index"], msg["flags"], msg["change"]) == (0, 0, 0)
    assert (msg.get("ifname"), msg.get("mtu"), msg.get("address")) == (name, mtu, mac)
    assert msg.get(("linkinfo", "kind")) == "vxlan"
    data = norm(msg.get(("linkinfo", "data")))
    assert {k[5:].lower(): v for k, v in data.items()} == dict(params)
    # ... and back through our own decoder, as the kernel's answer would be.
    back = L.decode_link(w.frame(req, 1), 16, 16 + len(req.body))
    assert (back.name, back.kind, back.mtu, back.mac, back.params) == (
        name, "vxlan", mtu, mac, dict(params))


@given(names, mtus, ipip_params)
def test_ipip_create_decodes_in_pyroute2(
    name: str, mtu: int, params: tuple[tuple[str, Any], ...]
) -> None:
    msg = parse(w.frame(L.encode_link_create(name, "ipip", mtu, None, params), 1))
    assert msg.get(("linkinfo", "kind")) == "ipip" and msg.get("address") is None
    data = norm(msg.get(("linkinfo", "data")))
    assert {k[5:].lower(): v for k, v in data.items()} == dict(params)


@pytest.mark.parametrize(
    ("kind", "params", "mtu", "mac"),
    [
        ("vxlan", (("vxlan_id", 1), ("vxlan_local", "10.99.0.1"), ("vxlan_link", 2),
                   ("vxlan_port", 8472), ("vxlan_learning", 0)), 1450, "02:aa:bb:cc:dd:ee"),
        ("ipip", (("ipip_local", "10.99.0.1"), ("ipip_link", 2), ("ipip_ttl", 64)), 1480, None),
        ("bridge", (), None, None),
    ],
)
def test_create_means_what_pyroute2_means(
    kind: str, params: tuple[tuple[str, Any], ...], mtu: int | None, mac: str | None
) -> None:
    ours = parse(w.frame(L.encode_link_create("meshd.x", kind, mtu, mac, params), 1))
    kw: dict[str, Any] = dict(params)
    if mtu is not None:
        kw["mtu"] = mtu
    if mac is not None:
        kw["address"] = mac
    theirs = pyroute2_batch("link", "add", ifname="meshd.x", kind=kind, **kw)
    same(ours, theirs, ("family", "index", "flags", "change"))


@pytest.mark.parametrize(
    "kw",
    [{"mtu": 1400}, {"mac": "02:00:00:00:00:01"}, {"up": True}, {"up": False},
     {"mac": "02:00:00:00:00:01", "up": True}, {"mtu": 9000, "mac": "02:00:00:00:00:02"}],
)
def test_set_means_what_pyroute2_means(kw: dict[str, Any]) -> None:
    ours = parse(w.frame(L.encode_link_set(5, **kw), 1))
    theirs_kw: dict[str, Any] = {}
    if "mtu" in kw:
        theirs_kw["mtu"] = kw["mtu"]
    if "mac" in kw:
        theirs_kw["address"] = kw["mac"]
    if "up" in kw:
        theirs_kw["state"] = "up" if kw["up"] else "down"
    theirs = pyroute2_batch("link", "set", index=5, **theirs_kw)
    same(ours, theirs, ("family", "index", "flags", "change"))


def test_set_names_every_change() -> None:
    req = L.encode_link_set(5, mtu=1400, mac="02:00:00:00:00:01", up=False)
    assert req.what == "set link 5 mtu 1400 address 02:00:00:00:00:01 down"


def test_delete_and_get_mean_what_pyroute2_means() -> None:
    d = L.encode_link_delete(5)
    same(parse(w.frame(d, 1)), pyroute2_batch("link", "del", index=5), ("family", "index"))
    assert set(d.ok) >= {19}  # ENODEV: already gone is done
    # Gets ask the kernel to leave out the counters; otherwise what pyroute2 sends.
    by_index = parse(w.frame(L.link_get_request(index=5), 1))
    same(by_index, pyroute2_batch("link", "get", index=5), ("family", "index"),
         skip=("IFLA_EXT_MASK",))
    by_name = parse(w.frame(L.link_get_request("eth0"), 1))
    same(by_name, pyroute2_batch("link", "get", ifname="eth0"), ("family", "index"),
         skip=("IFLA_EXT_MASK",))
    assert norm(by_name)["IFLA_EXT_MASK"] == L.RTEXT_FILTER_SKIP_STATS


# --- addresses -----------------------------------------------------------------------------------


@given(ips, st.integers(0, 32), ifindexes, st.sampled_from(["add", "del"]))
def test_address_means_what_pyroute2_means(ip: str, plen: int, index: int, op: str) -> None:
    ours = parse(w.frame(L.encode_addr(op, index, f"{ip}/{plen}"), 1))
    theirs = pyroute2_batch("addr", op, index=index, address=ip, prefixlen=plen)
    same(ours, theirs, ("family", "prefixlen", "flags", "scope", "index"))


def test_address_dump_request_carries_the_filter() -> None:
    m = parse(w.frame(L.addr_dump_request(7), 1))
    assert m["header"]["flags"] == w.NLM_F_REQUEST | w.NLM_F_DUMP
    assert (m["family"], m["index"], m["prefixlen"], m["flags"], m["scope"], m["attrs"]) == (
        socket.AF_INET, 7, 0, 0, 0, [])
    assert parse(w.frame(L.addr_dump_request(), 1))["index"] == 0


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        lambda: L.encode_link_create("x" * 16, "vxlan", None, None, ()),
        lambda: L.encode_link_create("", "vxlan", None, None, ()),
        lambda: L.encode_link_create("a\0b", "vxlan", None, None, ()),
        lambda: L.encode_link_create("vx", "vxlan", None, "02:00", ()),
        lambda: L.encode_link_create("vx", "vxlan", None, None, (("vxlan_idd", 1),)),
        lambda: L.encode_link_create("vx", "vxlan", None, None, (("vxlan_local", "fe80::1"),)),
        lambda: L.encode_link_create("vx", "vxlan", None, None, (("vxlan_port", 70000),)),
        lambda: L.encode_link_create("vx", "vxlan", None, None, (("vxlan_id", "1"),)),
        lambda: L.encode_link_create("br", "bridge", None, None, (("vxlan_id", 1),)),
        lambda: L.encode_addr("add", 1, "10.0.0.1"),
        lambda: L.encode_addr("replace", 1, "10.0.0.1/24"),
        lambda: L.link_get_request(),
    ],
)
def test_bad_input_is_a_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        bad()


# --- kernel-shaped answers, encoded by pyroute2, decoded here ------------------------------------


def _link_msg(index: int, name: str, mtu: int, mac: str | None, flags: int,
              linkinfo: dict[str, Any] | None, event: int = L.RTM_NEWLINK) -> bytes:
    m = ifinfmsg()
    m["header"]["type"] = event
    m["index"], m["flags"], m["change"] = index, flags, 0
    a: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_TXQLEN", 1000),
                                ("IFLA_MTU", mtu)]
    if mac is not None:
        a.append(("IFLA_ADDRESS", mac))
    a.append(("IFLA_BROADCAST", "ff:ff:ff:ff:ff:ff"))
    if linkinfo is not None:
        a.append(("IFLA_LINKINFO", linkinfo))
    a.append(("IFLA_NUM_TX_QUEUES", 1))
    m["attrs"] = a
    m.encode()
    return bytes(m.data)


@given(ifindexes, names, mtus, macs, st.integers(0, 2**32 - 1), vxlan_params,
       st.integers(0, 255), st.integers(0, 600))
def test_vxlan_link_decodes_like_pyroute2(
    index: int, name: str, mtu: int, mac: str, flags: int,
    params: tuple[tuple[str, Any], ...], ttl: int, ageing: int,
) -> None:
    # The kernel sends every parameter; some meshd does not set (ttl, ageing, a port range).
    data = [(f"IFLA_{k.upper()}", v) for k, v in params]
    data += [("IFLA_VXLAN_TTL", ttl), ("IFLA_VXLAN_AGEING", ageing),
             ("IFLA_VXLAN_PORT_RANGE", {"low": 0, "high": 0}), ("IFLA_VXLAN_DF", 0)]
    raw = _link_msg(index, name, mtu, mac, flags,
                    {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": data})]})
    got = L.decode_link(raw, 16, len(raw))
    theirs = parse(raw)
    assert (got.ifindex, got.name, got.kind, got.mtu, got.mac, got.flags) == (
        theirs["index"], theirs.get("ifname"), theirs.get(("linkinfo", "kind")),
        theirs.get("mtu"), theirs.get("address"), theirs["flags"])
    want = {k[5:].lower(): v for k, v in norm(theirs.get(("linkinfo", "data"))).items()}
    del want["vxlan_port_range"]  # structured: not decoded here
    assert got.params == want
    assert got.params["vxlan_ttl"] == ttl and dict(params).items() <= got.params.items()


@given(ifindexes, names, mtus, ipip_params)
def test_ipip_link_decodes_like_pyroute2(
    index: int, name: str, mtu: int, params: tuple[tuple[str, Any], ...]
) -> None:
    data = [(f"IFLA_{k.upper()}", v) for k, v in params]
    data += [("IFLA_IPIP_REMOTE", "0.0.0.0"), ("IFLA_IPIP_TOS", 0), ("IFLA_IPIP_PMTUDISC", 1),
             ("IFLA_IPIP_PROTO", 4), ("IFLA_IPIP_FWMARK", 0)]
    raw = _link_msg(index, name, mtu, None, 0x91,
                    {"attrs": [("IFLA_INFO_KIND", "ipip"), ("IFLA_INFO_DATA", {"attrs": data})]})
    got = L.decode_link(raw, 16, len(raw))
    theirs = parse(raw)
    want = {k[5:].lower(): v for k, v in norm(theirs.get(("linkinfo", "data"))).items()}
    assert got.params == want and dict(params).items() <= got.params.items()
    assert (got.kind, got.mac) == ("ipip", None)


def test_plain_link_and_other_kinds_have_no_params() -> None:
    raw = _link_msg(2, "eth0", 1500, "02:00:00:00:00:01", 0x1003, None)
    assert L.decode_link(raw, 16, len(raw)) == L.LinkMsg(
        2, "eth0", "", 1500, "02:00:00:00:00:01", 0x1003, {})
    veth = _link_msg(3, "v0", 1500, "02:00:00:00:00:02", 0x1003,
                     {"attrs": [("IFLA_INFO_KIND", "veth")]})
    assert L.decode_link(veth, 16, len(veth)).kind == "veth"
    lo = _link_msg(1, "lo", 65536, None, 0x49, None)
    assert L.decode_link(lo, 16, len(lo)).mac is None


def _addr_msg(index: int, ip: str, plen: int, flags: int, attrs: list[str],
              event: int = L.RTM_NEWADDR) -> bytes:
    m = ifaddrmsg()
    m["header"]["type"] = event
    m["family"], m["prefixlen"], m["flags"], m["scope"], m["index"] = 2, plen, flags, 0, index
    m["attrs"] = [(a, ip) for a in attrs] + [("IFA_LABEL", "eth0"), ("IFA_FLAGS", flags)]
    m.encode()
    return bytes(m.data)


@given(ifindexes, ips, st.integers(0, 32), st.integers(0, 255),
       st.sampled_from([["IFA_ADDRESS", "IFA_LOCAL"], ["IFA_LOCAL"], ["IFA_ADDRESS"]]))
def test_address_decodes_like_pyroute2(
    index: int, ip: str, plen: int, flags: int, which: list[str]
) -> None:
    raw = _addr_msg(index, ip, plen, flags, which)
    got = L.decode_addr(raw, 16, len(raw))
    theirs = parse(raw)
    assert got == L.AddrMsg(2, theirs["index"], theirs["prefixlen"], theirs["flags"],
                            theirs.get("address") or theirs.get("local"))
    assert got.address == ip


# --- notifications -> Event ----------------------------------------------------------------------


def _events(*raws: bytes) -> list[netlink.Event | None]:
    datagram = b"".join(raws)  # the kernel packs several notifications in one datagram
    return [netlink._event(kind, datagram, off, end)
            for kind, _, off, end in w.messages(datagram, len(datagram))]


def test_notifications_become_events() -> None:
    link = _link_msg(9, "meshd.1", 1450, "02:aa:bb:cc:dd:ee", 0x11043, None)
    gone = _link_msg(9, "meshd.1", 1450, "02:aa:bb:cc:dd:ee", 0x1002, None, L.RTM_DELLINK)
    addr = _addr_msg(9, "10.244.1.0", 32, 0x80, ["IFA_ADDRESS", "IFA_LOCAL"], L.RTM_DELADDR)
    r = rtmsg()
    r["header"]["type"] = w.RTM_NEWROUTE
    r["family"], r["dst_len"], r["proto"], r["table"], r["type"] = 2, 24, 109, 254, 1
    r["attrs"] = [("RTA_TABLE", 254), ("RTA_DST", "10.244.2.0"), ("RTA_GATEWAY", "10.244.2.0"),
                  ("RTA_OIF", 9)]
    r.encode()
    r6 = rtmsg()
    r6["header"]["type"] = w.RTM_NEWROUTE
    r6["family"], r6["dst_len"] = socket.AF_INET6, 64
    r6.encode()
    neighs = []
    for family, state in ((2, w.NUD_PERMANENT), (w.AF_BRIDGE, 0x02), (socket.AF_INET6, 0x80)):
        n = ndmsg()
        n["header"]["type"] = w.RTM_NEWNEIGH if family != w.AF_BRIDGE else w.RTM_DELNEIGH
        n["family"], n["ifindex"], n["state"] = family, 9, state
        n["attrs"] = [("NDA_DST", "10.99.0.2" if family != socket.AF_INET6 else "fe80::1"),
                      ("NDA_LLADDR", "02:00:00:00:00:02")]
        n.encode()
        neighs.append(bytes(n.data))
    E = netlink.Event
    assert _events(link, gone, addr, bytes(r.data), bytes(r6.data), *neighs) == [
        E("link", True, index=9, name="meshd.1", up=True, mtu=1450, lladdr="02:aa:bb:cc:dd:ee"),
        E("link", False, index=9, name="meshd.1", up=False, mtu=1450,
          lladdr="02:aa:bb:cc:dd:ee"),
        E("addr", False, index=9, dst="10.244.1.0"),
        E("route", True, index=9, dst="10.244.2.0/24", proto=109),
        None,  # IPv6
        E("neigh", True, index=9, dst="10.99.0.2", lladdr="02:00:00:00:00:02", permanent=True),
        E("fdb", False, index=9, dst="10.99.0.2", lladdr="02:00:00:00:00:02", permanent=False),
        None,  # IPv6 neighbour
    ]


def test_messages_stop_at_a_truncated_one() -> None:
    link = _link_msg(9, "x", 1500, None, 0, None)
    assert [k for k, *_ in w.messages(link + link[:20], len(link) + 20)] == [L.RTM_NEWLINK]
