"""The rtnetlink wire format of meshd's hot messages: pure ``bytes`` in and out, no socket.
Also the generic pieces: ``rta`` packs an attribute, ``attrs`` walks them (the one walker every
decoder here uses), ``messages`` splits a datagram, ``frame`` adds the header, and
``request_error`` turns a kernel errno into the one-line DataplaneError every netlink error
becomes.

Routes, neighbours and FDB entries, one each per peer, are the only objects whose count grows with
the mesh. pyroute2 spends ~0.5 ms of Python per message on them (~35x ``ip -batch``); packed here
with ``struct`` they cost a few microseconds (docs/dataplane.md). ``rtnl.py`` sends them. Devices
and addresses (a handful per pass) go through pyroute2 in netlink.py.

Layout (linux/netlink.h, rtnetlink.h, neighbour.h; host byte order)::

    nlmsghdr  len u32, type u16, flags u16, seq u32, pid u32                                (16)
    rtmsg     family, dst_len, src_len, tos, table, protocol, scope, type: u8; flags u32    (12)
    ndmsg     family u8, pad u8, pad u16, ifindex i32, state u16, flags u8, type u8         (12)
    rtattr    len u16, type u16, payload padded to 4
    nlmsgerr  error i32 (-errno, 0 = ACK), the request's nlmsghdr (+ payload unless
              NLM_F_CAPPED), then extended-ACK attributes when NLM_F_ACK_TLVS

Requests (``Request``): routes RTM_NEWROUTE (add: CREATE|EXCL, replace: CREATE|REPLACE; unicast,
scope universe, RTNH_F_ONLINK, RTA_DST/GATEWAY/OIF) and RTM_DELROUTE (scope NOWHERE and the
protocol: the kernel then deletes only a route with that protocol); neighbours RTM_NEWNEIGH /
RTM_DELNEIGH (NUD_PERMANENT, NDA_DST/LLADDR); FDB entries the same on AF_BRIDGE with
NTF_SELF and NUD_PERMANENT|NUD_NOARP (``bridge fdb ... self permanent``). Dump requests carry
their filter the way the kernel's strict checking wants it: rtm_protocol + rtm_table for routes,
NDA_IFINDEX for neighbours (ndm_ifindex must stay 0), ndm_ifindex for FDB.

Both families: a route's and a neighbour's family is its destination's (AF_INET or AF_INET6,
4- or 16-byte addresses); an IPv4 route with an IPv6 gateway carries it in RTA_VIA (``struct
rtvia``: family u16, address; RFC 5549, ``ip route add ... via inet6 ...``), and the kernel
reports it back the same way. An FDB entry's NDA_DST is 4 or 16 bytes (a vxlan device on an IPv4
or an IPv6 underlay). Dumps are per family (route and neighbour dump requests name one).

Lightweight-tunnel routes (ipip over an IPv6 underlay: ``ip route add <dst> encap ip6 dst <outer>
hoplimit 64 dev meshd.ip6tnl``, into an ``external`` ip6tnl device) carry no gateway and two more
attributes (linux/lwtunnel.h)::

    RTA_ENCAP_TYPE  u16 LWTUNNEL_ENCAP_IP6
    RTA_ENCAP       nested (NLA_F_NESTED): LWTUNNEL_IP6_DST (16 bytes), LWTUNNEL_IP6_HOPLIMIT (u8)

The kernel reports both back (RTA_ENCAP first); the decoders read the outer destination.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

from meshd.errors import DataplaneError

# linux/netlink.h
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR, NLM_F_DUMP_FILTERED = 0x10, 0x20
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR
NLMSGERR_ATTR_MSG = 1
# linux/rtnetlink.h (links and addresses: only what the monitor needs to tell them apart)
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE, RTA_VIA = 1, 4, 5, 6, 15, 18
RTA_ENCAP_TYPE, RTA_ENCAP = 21, 22
NLA_F_NESTED = 0x8000
# linux/lwtunnel.h
LWTUNNEL_ENCAP_IP6 = 4
LWTUNNEL_IP6_DST, LWTUNNEL_IP6_HOPLIMIT = 2, 4
# The outer hop limit of an encapsulated route, ipip's TTL on IPv4: without it the kernel takes
# the underlay route's default (net.ipv6.conf.*.hop_limit), whatever a host has set there.
ENCAP_HOPLIMIT = 64
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 4
MAIN_TABLE = 254
# linux/neighbour.h
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x2
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
AF_BRIDGE = 7

ZERO_MAC = "00:00:00:00:00:00"
GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)  # delete of a missing entry

HDR = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BBHiHBB")
RTA = struct.Struct("=HH")
U32 = struct.Struct("=I")
U16 = struct.Struct("=H")
I32 = struct.Struct("=i")
_HDR_LEN, _BODY_LEN = 16, 12  # nlmsghdr; rtmsg and ndmsg are both 12 bytes


# --- plain values: what callers pass and get back ------------------------------------------------


class RouteEntry(NamedTuple):
    dst: str  # CIDR
    gateway: str  # "" for none
    oif: int  # 0 for none
    onlink: bool
    encap6: str = ""  # outer IPv6 destination of an ``encap ip6`` route; "" for none


class NeighEntry(NamedTuple):
    dst: str
    lladdr: str


class FdbEntry(NamedTuple):
    lladdr: str
    dst: str


class Failure(NamedTuple):
    what: str  # e.g. "route add 10.244.2.0/24 via 10.244.2.0"
    error: DataplaneError


class Request(NamedTuple):
    """One message of a batch: ``body`` is everything after the nlmsghdr."""

    what: str
    type: int
    flags: int
    body: bytes
    ok: tuple[int, ...] = ()  # errnos that count as done (a delete of something already gone)


class RouteMsg(NamedTuple):
    """A decoded RTM_*ROUTE message (the fields meshd reads)."""

    family: int
    dst: str  # CIDR
    gateway: str
    oif: int
    flags: int
    proto: int
    table: int
    scope: int
    type: int
    priority: int = 0  # the metric (RTA_PRIORITY)
    encap6: str = ""  # LWTUNNEL_IP6_DST of an LWTUNNEL_ENCAP_IP6 route


class NeighMsg(NamedTuple):
    """A decoded RTM_*NEIGH message: a neighbour (AF_INET) or an FDB entry (AF_BRIDGE)."""

    family: int
    ifindex: int
    state: int
    flags: int
    dst: str
    lladdr: str


# --- errors --------------------------------------------------------------------------------------


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


def request_error(what: str, code: int, detail: str = "") -> DataplaneError:
    """The one translation of a kernel errno into a DataplaneError (netlink.py sends pyroute2's
    errors and rtnl.py its socket's through it too). One line: ``<what>: <strerror> (<ENAME>)``,
    then the kernel's extended-ACK message when it says more; the errno as ``err.errno``."""
    text = f"{what}: {os.strerror(code)} ({errno_name(code)})"
    detail = " ".join(detail.split())
    if detail and detail.rstrip(".").lower() != os.strerror(code).lower():
        text += f": {detail}"
    return DataplaneError(text, code)


def os_error(what: str, exc: OSError) -> DataplaneError:
    """A socket's OSError (send, receive, open) as a DataplaneError, through ``request_error``
    when it carries an errno."""
    if exc.errno:
        return request_error(what, exc.errno)
    return DataplaneError(f"{what}: {exc}")


# --- encoding ------------------------------------------------------------------------------------


def rta(kind: int, payload: bytes) -> bytes:
    """One attribute: header, payload, padding to 4 bytes."""
    n = 4 + len(payload)
    return RTA.pack(n, kind) + payload + b"\0" * (-n % 4)


def pack_ip(addr: str) -> bytes:
    """4 bytes for an IPv4 address, 16 for an IPv6 one, b"" for anything else."""
    try:
        if ":" in addr:
            return socket.inet_pton(AF_INET6, addr)
        return socket.inet_aton(addr) if addr.count(".") == 3 else b""
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return b""


def family_of(packed: bytes) -> int:
    return AF_INET6 if len(packed) == 16 else AF_INET


def ntop(raw: bytes | bytearray) -> str:
    """A 4- or 16-byte address as text (IPv6 compressed, as ``ipaddress`` prints it)."""
    if len(raw) == 4:
        return socket.inet_ntoa(raw)
    if not any(raw[:10]):  # ::/80 (IPv4-compatible, -mapped): libc spells it as dotted quad
        return str(ipaddress.IPv6Address(bytes(raw)))
    return socket.inet_ntop(AF_INET6, bytes(raw))


def pack_cidr(cidr: str) -> tuple[bytes, int]:
    """(address bytes, prefix length) of an IPv4 or IPv6 prefix; ValueError for anything else."""
    ip, _, plen = cidr.partition("/")
    packed = pack_ip(ip)
    if not packed or not plen.isdigit() or int(plen) > 8 * len(packed):
        raise ValueError(f"not an IP prefix: {cidr!r}")
    return packed, int(plen)


def pack_mac(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def _table(table: int) -> tuple[int, bytes]:
    # iproute2's rule: ids above 255 do not fit rtm_table and go in RTA_TABLE.
    return (table, b"") if table < 256 else (0, rta(RTA_TABLE, U32.pack(table)))


def what_route(op: str, e: RouteEntry) -> str:
    if e.encap6:
        return f"route {op} {e.dst} encap ip6 dst {e.encap6}"
    return f"route {op} {e.dst} via {e.gateway or '-'}"


def encode_encap6(dst: str) -> bytes:
    """RTA_ENCAP_TYPE and RTA_ENCAP of ``encap ip6 dst <dst> hoplimit 64``."""
    outer = pack_ip(dst)
    if len(outer) != 16:
        raise ValueError(f"not an IPv6 address: {dst!r}")
    nested = rta(LWTUNNEL_IP6_DST, outer) + rta(LWTUNNEL_IP6_HOPLIMIT, bytes((ENCAP_HOPLIMIT,)))
    # The order iproute2 writes them in (and the kernel reports them in).
    return rta(RTA_ENCAP | NLA_F_NESTED, nested) + rta(RTA_ENCAP_TYPE, U16.pack(LWTUNNEL_ENCAP_IP6))


def encode_route(op: str, e: RouteEntry, proto: int, table: int = MAIN_TABLE) -> Request:
    """``op``: add (fails with EEXIST if any route holds the prefix), replace, or del (only a
    route with ``proto``; one already gone counts as done). Raises ValueError on bad input."""
    dst, plen = pack_cidr(e.dst)
    family = family_of(dst)
    tid, tattr = _table(table)
    what = what_route(op, e)
    dst_attr = rta(RTA_DST, dst) if plen else b""
    if op == "del":
        body = RTMSG.pack(family, plen, 0, 0, tid, proto, RT_SCOPE_NOWHERE, 0, 0)
        return Request(what, RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, body + tattr + dst_attr, GONE)
    if op not in ("add", "replace"):
        raise ValueError(f"route operation {op!r}")
    excl = NLM_F_EXCL if op == "add" else NLM_F_REPLACE
    body = RTMSG.pack(
        family,
        plen,
        0,
        0,
        tid,
        proto,
        # no gateway: a route straight into a layer-3 device (wireguard, an encapsulating
        # ip6tnl), as `ip route add <dst> [encap ...] dev <dev>` scopes it
        RT_SCOPE_UNIVERSE if e.gateway else RT_SCOPE_LINK,
        RTN_UNICAST,
        RTNH_F_ONLINK if e.onlink else 0,
    )
    body += tattr + dst_attr
    if e.encap6:
        if e.gateway:
            raise ValueError("a route has a gateway or an encapsulation, not both")
        body += encode_encap6(e.encap6)
    if e.gateway:
        gw = pack_ip(e.gateway)
        if not gw:
            raise ValueError(f"not an IP address: {e.gateway!r}")
        if len(gw) == len(dst):
            body += rta(RTA_GATEWAY, gw)
        elif family == AF_INET:  # RFC 5549: an IPv4 route via an IPv6 next hop
            body += rta(RTA_VIA, U16.pack(AF_INET6) + gw)
        else:
            raise ValueError(f"an IPv6 route cannot go via an IPv4 gateway ({e.gateway})")
    if e.oif:
        body += rta(RTA_OIF, U32.pack(e.oif))
    return Request(what, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | excl, body)


def encode_neigh(op: str, ifindex: int, e: NeighEntry) -> Request:
    """``op``: replace (create or overwrite, permanent), add (EEXIST if present) or del."""
    what = f"neigh {op} {e.dst} lladdr {e.lladdr}"
    dst = pack_ip(e.dst)
    if not dst:
        raise ValueError(f"not an IP address: {e.dst!r}")
    family = family_of(dst)
    if op == "del":
        body = NDMSG.pack(family, 0, 0, ifindex, 0, 0, 0) + rta(NDA_DST, dst)
        return Request(what, RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, body, GONE)
    flags = {"replace": NLM_F_CREATE | NLM_F_REPLACE, "add": NLM_F_CREATE | NLM_F_EXCL}.get(op)
    if flags is None:
        raise ValueError(f"neighbour operation {op!r}")
    body = NDMSG.pack(family, 0, 0, ifindex, NUD_PERMANENT, 0, 0)
    body += rta(NDA_DST, dst) + rta(NDA_LLADDR, pack_mac(e.lladdr))
    return Request(what, RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | flags, body)


def encode_fdb(op: str, ifindex: int, e: FdbEntry) -> Request:
    """``op``: replace (one dst per MAC), add (EEXIST if the MAC has an entry) or del (that MAC
    and dst). No append: a vxlan device keeps several dsts only for the all-zero and multicast
    MACs (head-end replication), which meshd does not use."""
    what = f"fdb {op} {e.lladdr} dst {e.dst}"
    dst = pack_ip(e.dst)
    if not dst:
        raise ValueError(f"not an IP address: {e.dst!r}")
    body = NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
    body += rta(NDA_LLADDR, pack_mac(e.lladdr)) + rta(NDA_DST, dst)
    if op == "del":
        return Request(what, RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, body, GONE)
    flags = {"replace": NLM_F_CREATE | NLM_F_REPLACE, "add": NLM_F_CREATE | NLM_F_EXCL}.get(op)
    if flags is None:
        raise ValueError(f"fdb operation {op!r}")
    return Request(what, RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | flags, body)


def _v(family: int) -> str:
    return " inet6" if family == AF_INET6 else ""


def route_dump_request(proto: int, table: int = MAIN_TABLE, family: int = AF_INET) -> Request:
    # Strict checking wants every other header field zero; filter.protocol / table_id come
    # from rtm_protocol / rtm_table (or RTA_TABLE).
    tid, tattr = _table(table)
    body = RTMSG.pack(family, 0, 0, 0, tid, proto, 0, 0, 0) + tattr
    return Request(
        f"dump{_v(family)} routes proto {proto} table {table}",
        RTM_GETROUTE,
        NLM_F_REQUEST | NLM_F_DUMP,
        body,
    )


def neigh_dump_request(ifindex: int, family: int = AF_INET) -> Request:
    # Neighbour dumps filter on NDA_IFINDEX (ndm_ifindex must be 0 under strict checking).
    body = NDMSG.pack(family, 0, 0, 0, 0, 0, 0) + rta(NDA_IFINDEX, U32.pack(ifindex))
    return Request(
        f"dump{_v(family)} neighbours of link {ifindex}",
        RTM_GETNEIGH,
        NLM_F_REQUEST | NLM_F_DUMP,
        body,
    )


def fdb_dump_request(ifindex: int) -> Request:
    # FDB dumps filter on ndm_ifindex (the "bridge port"; for a vxlan device, the device).
    body = NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, 0, 0, 0)
    return Request(f"dump fdb of link {ifindex}", RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, body)


def frame(req: Request, seq: int, pid: int = 0) -> bytes:
    """The complete message: nlmsghdr + body."""
    return HDR.pack(_HDR_LEN + len(req.body), req.type, req.flags, seq, pid) + req.body


# --- decoding ------------------------------------------------------------------------------------


def decode_route(buf: bytes | bytearray, off: int, end: int) -> RouteMsg:
    """The route message whose body (rtmsg) starts at ``off`` and ends at ``end``."""
    family, plen, _, _, table, proto, scope, rtype, flags = RTMSG.unpack_from(buf, off)
    dst = gateway = encap6 = ""
    oif = priority = 0
    encap_type = -1
    for kind, a, b in attrs(buf, off + _BODY_LEN, end):
        if kind == RTA_DST and b - a in (4, 16):
            dst = ntop(buf[a:b])
        elif kind == RTA_GATEWAY and b - a in (4, 16):
            gateway = ntop(buf[a:b])
        elif kind == RTA_VIA and b - a in (6, 18):
            gateway = ntop(buf[a + 2 : b])
        elif kind == RTA_OIF and b - a == 4:
            oif = U32.unpack_from(buf, a)[0]
        elif kind == RTA_TABLE and b - a == 4:
            table = U32.unpack_from(buf, a)[0]
        elif kind == RTA_PRIORITY and b - a == 4:
            priority = U32.unpack_from(buf, a)[0]
        elif kind == RTA_ENCAP_TYPE and b - a >= 2:
            encap_type = U16.unpack_from(buf, a)[0]
        elif kind == RTA_ENCAP:
            for k, x, y in attrs(buf, a, b):
                if k == LWTUNNEL_IP6_DST and y - x == 16:
                    encap6 = ntop(buf[x:y])
    # The kernel writes RTA_ENCAP before RTA_ENCAP_TYPE: the type is known only now.
    if encap_type != LWTUNNEL_ENCAP_IP6:
        encap6 = ""
    return RouteMsg(
        family,
        f"{dst or ('::' if family == AF_INET6 else '0.0.0.0')}/{plen}",
        gateway,
        oif,
        flags,
        proto,
        table,
        scope,
        rtype,
        priority,
        encap6,
    )


def messages(buf: bytes | bytearray, size: int) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, body start, end) of each netlink message in the first ``size`` bytes."""
    off = 0
    while off + _HDR_LEN <= size:
        length, kind, flags = HDR.unpack_from(buf, off)[:3]
        if length < _HDR_LEN or off + length > size:
            return
        yield kind, flags, off + _HDR_LEN, off + length
        off += (length + 3) & ~3


def attrs(buf: bytes | bytearray, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute between ``off`` and ``end``; the
    NLA_F_NESTED / NLA_F_NET_BYTEORDER bits are dropped from the type."""
    while off + 4 <= end:
        alen, kind = RTA.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            return
        yield kind & 0x3FFF, off + 4, off + alen
        off += (alen + 3) & ~3


def decode_neigh(buf: bytes | bytearray, off: int, end: int) -> NeighMsg:
    """The neighbour / FDB message whose body (ndmsg) starts at ``off`` and ends at ``end``."""
    family, _, _, ifindex, state, flags, _ = NDMSG.unpack_from(buf, off)
    dst = lladdr = ""
    for kind, a, b in attrs(buf, off + _BODY_LEN, end):
        if kind == NDA_DST and b - a in (4, 16):
            dst = ntop(buf[a:b])
        elif kind == NDA_LLADDR and b - a == 6:
            lladdr = buf[a:b].hex(":")
        elif kind == NDA_IFINDEX and family == AF_BRIDGE and not ifindex and b - a == 4:
            ifindex = U32.unpack_from(buf, a)[0]
    return NeighMsg(family, ifindex, state, flags, dst, lladdr)


def decode(msg: bytes | bytearray) -> RouteMsg | NeighMsg:
    """One complete route or neighbour message (header included)."""
    length, kind = HDR.unpack_from(msg, 0)[:2]
    if kind in (RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE):
        return decode_route(msg, _HDR_LEN, length)
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH):
        return decode_neigh(msg, _HDR_LEN, length)
    raise ValueError(f"not a route or neighbour message: type {kind}")


def decode_error(buf: bytes | bytearray, off: int, end: int, flags: int) -> tuple[int, str]:
    """(errno, extended-ACK message) of the NLMSG_ERROR whose body starts at ``off``."""
    code = -I32.unpack_from(buf, off)[0]
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        # After the error: the request's header, and its payload unless capped.
        a = off + 4 + (_HDR_LEN if flags & NLM_F_CAPPED else U32.unpack_from(buf, off + 4)[0])
        for kind, x, y in attrs(buf, (a + 3) & ~3, end):
            if kind == NLMSGERR_ATTR_MSG:
                detail = bytes(buf[x:y]).rstrip(b"\0").decode(errors="replace")
    return code, detail


# --- dump answers straight to entries (the converged pass reads thousands of these) ---------------

# The kernel writes a route / neighbour / FDB entry of the kind meshd makes with a fixed attribute
# layout (6.x, checked on every message): one unpack then reads it whole. Anything else -- another
# kernel's order, extra attributes, an encapsulated route -- takes the general decoder above; the
# answer is the same (a route's is memoized too, by the whole message).
_L4 = 8  # length of an attribute holding 4 bytes


def _hdr(length: int, kind: int) -> int:
    value: int = U32.unpack(RTA.pack(length, kind))[0]
    return value


# rtmsg, RTA_TABLE, RTA_DST, RTA_GATEWAY, RTA_OIF
_ROUTE_HDRS = struct.Struct("=12xI4xI4xI4xI")
_ROUTE_LAYOUT = (
    _hdr(_L4, RTA_TABLE),
    _hdr(_L4, RTA_DST),
    _hdr(_L4, RTA_GATEWAY),
    _hdr(_L4, RTA_OIF),
)
_ROUTE_FIXED = struct.Struct("=BBBBBBBBI4xI4x4s4x4s4xI")
# ndmsg, NDA_DST, NDA_LLADDR (neighbour) / NDA_LLADDR, NDA_DST (FDB)
_NEIGH_HDRS = struct.Struct("=12xI4xI")
_NEIGH_LAYOUT = (_hdr(_L4, NDA_DST), _hdr(10, NDA_LLADDR))
_NEIGH_FIXED = struct.Struct("=B3xiHBx4x4s4x6s")
_FDB_HDRS = struct.Struct("=12xI8xI")
_FDB_LAYOUT = (_hdr(10, NDA_LLADDR), _hdr(_L4, NDA_DST))
_FDB_FIXED = struct.Struct("=B3xiHBx4x6s2x4x4s")
# IPv6 (6.x): rtmsg, RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_GATEWAY, RTA_OIF, then RTA_CACHEINFO
# (timers) and RTA_PREF, left out of the key as the neighbour's timers are.
_ROUTE6_HDRS = struct.Struct("=12xI4xI16xI4xI16xI4x")
_ROUTE6_LAYOUT = (
    _hdr(_L4, RTA_TABLE),
    _hdr(20, RTA_DST),
    _hdr(_L4, RTA_PRIORITY),
    _hdr(20, RTA_GATEWAY),
    _hdr(_L4, RTA_OIF),
)
_ROUTE6_FIXED = struct.Struct("=BBBBBBBBI4xI4x16s8x4x16s4xI")
_NEIGH6_HDRS = struct.Struct("=12xI16xI6x")
_NEIGH6_LAYOUT = (_hdr(20, NDA_DST), _hdr(10, NDA_LLADDR))
_NEIGH6_FIXED = struct.Struct("=B3xiHBx4x16s4x6s")
_FDB6_HDRS = struct.Struct("=12xI8xI16x")
_FDB6_LAYOUT = (_hdr(10, NDA_LLADDR), _hdr(20, NDA_DST))
_FDB6_FIXED = struct.Struct("=B3xiHBx4x6s2x4x16s")


Memo = dict[bytes, Any]
"""Decoded entries by the bytes they came from: a converged kernel sends the same messages on
every pass, and a dict lookup is ~10x cheaper than decoding. Keys cover every byte the entry
depends on (and the memo is per filter), so a hit is exactly what decoding would give."""


def route_entry(
    buf: bytes | bytearray,
    off: int,
    end: int,
    proto: int,
    table: int,
    memo: Memo | None = None,
    family: int = AF_INET,
) -> RouteEntry | None:
    """The route of ``family`` at ``off`` (rtmsg) as an entry, or None if it is not that family,
    ``proto`` or ``table``."""
    if family == AF_INET6 and end - off >= 76:
        key = bytes(buf[off : off + 76])  # up to RTA_OIF: not the timers after
        if memo is not None and key in memo:
            return cast("RouteEntry | None", memo[key])
        if _ROUTE6_HDRS.unpack_from(key) == _ROUTE6_LAYOUT:
            fam, plen, _, _, _, rproto, _, _, flags, tid, dst, gw, oif = _ROUTE6_FIXED.unpack(key)
            entry = None
            if fam == AF_INET6 and rproto == proto and tid == table:
                entry = RouteEntry(
                    f"{ntop(dst)}/{plen}", ntop(gw), oif, bool(flags & RTNH_F_ONLINK)
                )
            if memo is not None:
                memo[key] = entry
            return entry
    if end - off == 44 and family == AF_INET:
        key = bytes(buf[off:end])
        if memo is not None and key in memo:
            return cast("RouteEntry | None", memo[key])
        if _ROUTE_HDRS.unpack_from(key) == _ROUTE_LAYOUT:
            fam, plen, _, _, _, rproto, _, _, flags, tid, dst, gw, oif = _ROUTE_FIXED.unpack(key)
            entry = None
            if fam == AF_INET and rproto == proto and tid == table:
                ntoa = socket.inet_ntoa
                entry = RouteEntry(
                    f"{ntoa(dst)}/{plen}", ntoa(gw), oif, bool(flags & RTNH_F_ONLINK)
                )
            if memo is not None:
                memo[key] = entry
            return entry
    # Other layouts, encapsulated routes among them (RTA_ENCAP instead of RTA_GATEWAY): the
    # general decoder (~5 us), memoized on the whole message (a FIB dump's RTA_CACHEINFO of a
    # route that does not expire is constant, so a converged kernel repeats it byte for byte).
    key = bytes(buf[off:end]) if memo is not None else b""
    if memo is not None and key in memo:
        return cast("RouteEntry | None", memo[key])
    m = decode_route(buf, off, end)
    got = None
    if m.family == family and m.proto == proto and m.table == table:
        got = RouteEntry(m.dst, m.gateway, m.oif, bool(m.flags & RTNH_F_ONLINK), m.encap6)
    if memo is not None:
        memo[key] = got
    return got


def neigh_entry(
    buf: bytes | bytearray,
    off: int,
    end: int,
    ifindex: int,
    memo: Memo | None = None,
    family: int = AF_INET,
) -> NeighEntry | None:
    """The permanent neighbour of ``family`` with a link-layer address on ``ifindex`` at
    ``off``."""
    if family == AF_INET6 and end - off >= 42:
        key = bytes(buf[off : off + 42])  # ndmsg, NDA_DST, NDA_LLADDR: not the timers after
        if memo is not None and key in memo:
            return cast("NeighEntry | None", memo[key])
        if _NEIGH6_HDRS.unpack_from(key) == _NEIGH6_LAYOUT:
            fam, idx, state, _, dst, mac = _NEIGH6_FIXED.unpack(key)
            entry = None
            if fam == AF_INET6 and idx == ifindex and state & NUD_PERMANENT:
                entry = NeighEntry(ntop(dst), mac.hex(":"))
            if memo is not None:
                memo[key] = entry
            return entry
    if end - off >= 30 and family == AF_INET:
        key = bytes(buf[off : off + 30])  # ndmsg, NDA_DST, NDA_LLADDR: not the timers after
        if memo is not None and key in memo:
            return cast("NeighEntry | None", memo[key])
        if _NEIGH_HDRS.unpack_from(key) == _NEIGH_LAYOUT:
            fam, idx, state, _, dst, mac = _NEIGH_FIXED.unpack(key)
            entry = None
            if fam == AF_INET and idx == ifindex and state & NUD_PERMANENT:
                entry = NeighEntry(socket.inet_ntoa(dst), mac.hex(":"))
            if memo is not None:
                memo[key] = entry
            return entry
    m = decode_neigh(buf, off, end)
    if m.family != family or m.ifindex != ifindex or not m.state & NUD_PERMANENT:
        return None
    return NeighEntry(m.dst, m.lladdr) if m.dst and m.lladdr else None


def fdb_entry(
    buf: bytes | bytearray, off: int, end: int, ifindex: int, memo: Memo | None = None
) -> FdbEntry | None:
    """The unicast FDB entry with a remote dst on ``ifindex`` at ``off`` (not the all-zero
    default-destination entries)."""
    if end - off >= 44 and _FDB6_HDRS.unpack_from(buf, off) == _FDB6_LAYOUT:
        key = bytes(buf[off : off + 44])  # ndmsg, NDA_LLADDR, NDA_DST (IPv6)
        if memo is not None and key in memo:
            return cast("FdbEntry | None", memo[key])
        fam, idx, _, _, mac, dst = _FDB6_FIXED.unpack(key)
        entry = None
        if fam == AF_BRIDGE and idx == ifindex and mac != _ZERO_MAC:
            entry = FdbEntry(mac.hex(":"), ntop(dst))
        if memo is not None:
            memo[key] = entry
        return entry
    if end - off >= 32:
        key = bytes(buf[off : off + 32])  # ndmsg, NDA_LLADDR, NDA_DST
        if memo is not None and key in memo:
            return cast("FdbEntry | None", memo[key])
        if _FDB_HDRS.unpack_from(key) == _FDB_LAYOUT:
            fam, idx, _, _, mac, dst = _FDB_FIXED.unpack(key)
            entry = None
            if fam == AF_BRIDGE and idx == ifindex and mac != _ZERO_MAC:
                entry = FdbEntry(mac.hex(":"), socket.inet_ntoa(dst))
            if memo is not None:
                memo[key] = entry
            return entry
    m = decode_neigh(buf, off, end)
    if m.family != AF_BRIDGE or m.ifindex != ifindex or not m.dst or not m.lladdr:
        return None
    return None if m.lladdr == ZERO_MAC else FdbEntry(m.lladdr, m.dst)


_ZERO_MAC = bytes(6)
