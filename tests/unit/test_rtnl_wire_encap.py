"""rtnl_wire's lightweight-tunnel routes (``encap ip6 dst X hoplimit 64``: ipip over an IPv6
underlay) against pyroute2's codec and the kernel's dump layout: no kernel, no root.

pyroute2 cannot encode an ``ip6`` encapsulation (its route request knows mpls, seg6, bpf and
seg6local) and decodes RTA_ENCAP of type LWTUNNEL_ENCAP_IP6 only as hex: the nested attributes
are checked here against what pyroute2's generic ``nla`` codec makes of linux/lwtunnel.h's
LWTUNNEL_IP6_* map, byte for byte."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPBatch
from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import LWTUNNEL_ENCAP_IP6

from meshd.dataplane import rtnl_wire as w

ip6s = st.integers(2**80, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
prefixes = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 32)).map(
        lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False))
    ),
    st.tuples(st.integers(2**80, 2**128 - 1), st.integers(48, 128)).map(
        lambda t: str(ipaddress.IPv6Network((t[0], t[1]), strict=False))
    ),
)
ifindexes = st.integers(1, 2**31 - 1)


class ip6_encap(nla):  # type: ignore[misc]  # noqa: N801 - pyroute2's naming
    """linux/lwtunnel.h, enum lwtunnel_ip6_t (what pyroute2's rtmsg lacks)."""

    nla_map = (
        (0, "LWTUNNEL_IP6_UNSPEC", "none"),
        (1, "LWTUNNEL_IP6_ID", "be64"),
        (2, "LWTUNNEL_IP6_DST", "ip6addr"),
        (3, "LWTUNNEL_IP6_SRC", "ip6addr"),
        (4, "LWTUNNEL_IP6_HOPLIMIT", "uint8"),
        (5, "LWTUNNEL_IP6_TC", "uint8"),
        (6, "LWTUNNEL_IP6_FLAGS", "be16"),
    )


def parse(data: bytes) -> Any:
    (msg,) = list(MarshalRtnl().parse(data))
    return msg


def pyroute2_nested(attrs: list[tuple[str, Any]]) -> bytes:
    """The payload pyroute2's codec makes of these LWTUNNEL_IP6_* attributes."""
    e = ip6_encap()
    e["attrs"] = attrs
    e.encode()
    return bytes(e.data)[4:]  # without the container's own header


def pyroute2_decoded(payload: bytes) -> dict[str, Any]:
    e = ip6_encap(data=w.rta(0, payload))
    e.decode()
    return dict(e["attrs"])


def test_constants_are_the_kernels() -> None:
    # rtmsg's nla_map is linux/rtnetlink.h's enum in order; LWTUNNEL_* as pyroute2 has them
    # (linux/lwtunnel.h: NONE, MPLS, IP, ILA, IP6; IP6_UNSPEC, ID, DST, SRC, HOPLIMIT).
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    names = [n for n, _ in rtmsg.nla_map]
    assert names.index("RTA_ENCAP_TYPE") == w.RTA_ENCAP_TYPE == 21
    assert names.index("RTA_ENCAP") == w.RTA_ENCAP == 22
    assert w.LWTUNNEL_ENCAP_IP6 == LWTUNNEL_ENCAP_IP6 == 4
    assert (w.LWTUNNEL_IP6_DST, w.LWTUNNEL_IP6_HOPLIMIT) == (2, 4)


@given(prefixes, ip6s, ifindexes, st.sampled_from(["add", "replace"]))
def test_an_encapsulated_route_means_what_pyroute2_decodes(
    dst: str, outer: str, oif: int, op: str
) -> None:
    req = w.encode_route(op, w.RouteEntry(dst, "", oif, False, outer), 109)
    ours = parse(w.frame(req, 1))
    # Everything but the encapsulation as pyroute2 writes the same route without one.
    theirs = parse(
        bytes(_batch("route", op, dst=dst, oif=oif, proto=109, table=254, scope=253, type=1))
    )
    for f in ("family", "dst_len", "proto", "scope", "type", "flags", "table"):
        assert ours[f] == theirs[f], f
    assert ours["header"]["flags"] == theirs["header"]["flags"]
    a = {k: v for k, v, *_ in ours["attrs"]}
    assert a["RTA_ENCAP_TYPE"] == LWTUNNEL_ENCAP_IP6
    assert "RTA_GATEWAY" not in a and "RTA_VIA" not in a
    assert {k: v for k, v in a.items() if not k.startswith("RTA_ENCAP")} == {
        k: v for k, v in theirs["attrs"] if k != "RTA_TABLE"
    }
    nested = ours.nla("RTA_ENCAP")
    assert nested["header"]["type"] == w.RTA_ENCAP | w.NLA_F_NESTED  # as iproute2 sends it
    payload = bytes(nested["value"])
    assert payload == pyroute2_nested(
        [("LWTUNNEL_IP6_DST", outer), ("LWTUNNEL_IP6_HOPLIMIT", w.ENCAP_HOPLIMIT)]
    )
    assert pyroute2_decoded(payload) == {"LWTUNNEL_IP6_DST": outer, "LWTUNNEL_IP6_HOPLIMIT": 64}
    back = w.decode(w.frame(req, 1))
    assert isinstance(back, w.RouteMsg)
    assert (back.dst, back.gateway, back.oif, back.encap6) == (dst, "", oif, outer)


def _batch(kind: str, *args: Any, **kw: Any) -> bytes:
    ipb = IPBatch()
    getattr(ipb, kind)(*args, **kw)
    return bytes(ipb.batch)


def test_an_encapsulated_route_refuses_a_gateway_and_an_ipv4_outer_address() -> None:
    with pytest.raises(ValueError, match="a gateway or an encapsulation, not both"):
        w.encode_route("add", w.RouteEntry("10.1.0.0/24", "fd00::1", 3, False, "fd00::2"), 109)
    with pytest.raises(ValueError, match="not an IPv6 address: '10.99.0.2'"):
        w.encode_route("add", w.RouteEntry("10.1.0.0/24", "", 3, False, "10.99.0.2"), 109)
    e = w.RouteEntry("10.1.0.0/24", "", 3, False, "fd00::2")
    assert w.what_route("replace", e) == "route replace 10.1.0.0/24 encap ip6 dst fd00::2"
    # A delete names the prefix and the protocol only, whatever the route carries.
    plain = w.RouteEntry("10.1.0.0/24", "", 0, False)
    assert w.encode_route("del", e, 109).body == w.encode_route("del", plain, 109).body


# --- what the kernel sends back -------------------------------------------------------------------


def kernel_route(dst: str, oif: int, outer: str, encap_type: int = w.LWTUNNEL_ENCAP_IP6) -> bytes:
    """An RTM_NEWROUTE as the kernel dumps an ``encap ip6`` route (6.x, ip6_tun_fill_encap_info):
    RTA_ENCAP nested without NLA_F_NESTED, with every LWTUNNEL_IP6_* it knows (id, dst, src,
    hoplimit, tc, flags), before RTA_ENCAP_TYPE; an IPv6 route has its priority and timers."""
    packed, plen = w.pack_cidr(dst)
    v6 = len(packed) == 16
    body = w.RTMSG.pack(
        w.AF_INET6 if v6 else w.AF_INET, plen, 0, 0, 254, 109, w.RT_SCOPE_LINK, 1, 0
    )
    body += w.rta(w.RTA_TABLE, w.U32.pack(254)) + w.rta(w.RTA_DST, packed)
    if v6:
        body += w.rta(w.RTA_PRIORITY, w.U32.pack(1024))
    nested = (
        w.rta(7, b"")  # LWTUNNEL_IP6_PAD before the 64-bit id
        + w.rta(1, bytes(8))
        + w.rta(w.LWTUNNEL_IP6_DST, socket.inet_pton(socket.AF_INET6, outer))
        + w.rta(3, bytes(16))
        + w.rta(w.LWTUNNEL_IP6_HOPLIMIT, b"\x40")
        + w.rta(5, b"\x00")
        + w.rta(6, b"\x00\x00")
    )
    body += w.rta(w.RTA_OIF, w.U32.pack(oif))
    body += w.rta(w.RTA_ENCAP, nested) + w.rta(w.RTA_ENCAP_TYPE, w.U16.pack(encap_type))
    if v6:
        body += w.rta(12, bytes(32)) + w.rta(20, b"\x00")  # RTA_CACHEINFO, RTA_PREF
    req = w.Request("", w.RTM_NEWROUTE, w.NLM_F_MULTI, body)
    return w.frame(req, 1)


@given(prefixes, ip6s, ifindexes)
def test_a_dumped_encapsulated_route_decodes_to_its_entry(dst: str, outer: str, oif: int) -> None:
    msg = kernel_route(dst, oif, outer)
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    want = w.RouteEntry(dst, "", oif, False, outer)
    memo: w.Memo = {}
    for _ in range(2):  # the general decoder, then its memo (keyed by the whole message)
        assert w.route_entry(msg, 16, len(msg), 109, 254, memo, fam) == want
    assert list(memo) == [msg[16:]]
    assert w.route_entry(msg, 16, len(msg), 110, 254, {}, fam) is None  # (a memo per filter)
    theirs = parse(msg)
    assert pyroute2_decoded(bytes(theirs.nla("RTA_ENCAP")["value"]))["LWTUNNEL_IP6_DST"] == outer


def test_an_encapsulation_of_another_type_is_not_an_ip6_one() -> None:
    msg = kernel_route("10.1.2.0/24", 5, "fd00::2", encap_type=1)  # LWTUNNEL_ENCAP_MPLS
    assert w.route_entry(msg, 16, len(msg), 109, 254, {}) == w.RouteEntry(
        "10.1.2.0/24", "", 5, False
    )


def test_entries_differing_only_in_the_outer_destination_differ() -> None:
    a = kernel_route("fd00:244:2::/64", 5, "fd00:99::2")
    b = kernel_route("fd00:244:2::/64", 5, "fd00:99::3")
    memo: w.Memo = {}
    ea = w.route_entry(a, 16, len(a), 109, 254, memo, socket.AF_INET6)
    eb = w.route_entry(b, 16, len(b), 109, 254, memo, socket.AF_INET6)
    assert ea is not None and eb is not None
    assert (ea.encap6, eb.encap6) == ("fd00:99::2", "fd00:99::3")
