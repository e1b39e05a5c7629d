"""The rtnetlink wire format of devices and IPv4 addresses: pure ``bytes`` in and out, no socket.

Not the hot path (a pass touches one or two devices), but the reason meshd can run without
pyroute2, whose import alone costs the daemon ~11 MiB (issue 7). ``rtnl.Rtnl`` sends these
requests; ``netlink.Netlink`` turns the answers into ``LinkInfo`` and address tuples.

Layout (linux/rtnetlink.h, if_link.h, if_addr.h; host byte order unless marked)::

    ifinfomsg  family u8, pad u8, type u16, index i32, flags u32, change u32               (16)
    ifaddrmsg  family u8, prefixlen u8, flags u8, scope u8, index u32                      (8)
    IFLA_LINKINFO { IFLA_INFO_KIND "vxlan", IFLA_INFO_DATA { IFLA_VXLAN_ID u32, ... } }

Requests: RTM_GETLINK by index or IFLA_IFNAME; RTM_NEWLINK with CREATE|EXCL (name, MTU, MAC
and the kind's parameters, all fixed at creation), or without them to set MTU / MAC / IFF_UP of
an existing device; RTM_DELLINK; RTM_NEWADDR / RTM_DELADDR with IFA_LOCAL = IFA_ADDRESS (as
``ip addr add``); an address dump filtered by ifa_index.

Link parameters keep pyroute2's names and value types (``vxlan_port`` a host-order int,
``vxlan_local`` a dotted string), which ``model.device_spec`` compares against. Only the scalar
vxlan and ipip attributes are decoded; other kinds' data is left out of ``LinkMsg.params``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from meshd.dataplane.rtnl_wire import (
    GONE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    U32,
    Request,
    attrs,
    pack_cidr,
    pack_mac,
    rta,
)

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link's counters are half its message; meshd reads none
# linux/if_link.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_EXT_MASK = 1, 3, 4, 18, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
# linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_SECONDARY = 0x01
IFF_UP = 0x1
AF_UNSPEC, AF_INET = 0, socket.AF_INET

IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
IFNAMSIZ = 16


class LinkMsg(NamedTuple):
    """A decoded RTM_*LINK message (the fields meshd reads)."""

    ifindex: int
    name: str
    kind: str  # IFLA_INFO_KIND, "" without linkinfo
    mtu: int
    mac: str | None  # IFLA_ADDRESS as colon-separated hex, whatever its length
    flags: int  # IFF_*
    params: dict[str, Any]  # IFLA_INFO_DATA, pyroute2's names


class AddrMsg(NamedTuple):
    """A decoded RTM_*ADDR message."""

    family: int
    ifindex: int
    prefixlen: int
    flags: int  # ifa_flags (IFA_F_SECONDARY, ...)
    address: str  # IFA_ADDRESS, else IFA_LOCAL, "" for neither (as pyroute2's "address")


# --- link parameters: pyroute2's names, the kernel's types -------------------------------------

_Codec = tuple[Callable[[bytes], Any], Callable[[Any], bytes]]


def _int(fmt: str) -> _Codec:
    s = struct.Struct(fmt)

    def decode(raw: bytes) -> Any:
        return s.unpack(raw)[0] if len(raw) == s.size else None

    return decode, s.pack


def _ip4_bytes(value: Any) -> bytes:
    packed = socket.inet_aton(value) if isinstance(value, str) and value.count(".") == 3 else b""
    if not packed:
        raise ValueError(f"not an IPv4 address: {value!r}")
    return packed


_CODECS: dict[str, _Codec] = {
    "u8": _int("=B"),
    "u16": _int("=H"),
    "u32": _int("=I"),
    "be16": _int(">H"),
    "ip4": (lambda raw: socket.inet_ntoa(raw) if len(raw) == 4 else None, _ip4_bytes),
    "flag": (lambda raw: True, lambda value: b""),
}

# IFLA_VXLAN_* / IFLA_IPTUN_* numbers -> (pyroute2's name, type). Left out: the IPv6 and
# structured ones, and IFLA_VXLAN_LABEL (pyroute2 reads the kernel's be32 as host order).
LINK_DATA: dict[str, dict[int, tuple[str, str]]] = {
    "vxlan": {
        1: ("vxlan_id", "u32"),
        2: ("vxlan_group", "ip4"),
        3: ("vxlan_link", "u32"),
        4: ("vxlan_local", "ip4"),
        5: ("vxlan_ttl", "u8"),
        6: ("vxlan_tos", "u8"),
        7: ("vxlan_learning", "u8"),
        8: ("vxlan_ageing", "u32"),
        9: ("vxlan_limit", "u32"),
        11: ("vxlan_proxy", "u8"),
        12: ("vxlan_rsc", "u8"),
        13: ("vxlan_l2miss", "u8"),
        14: ("vxlan_l3miss", "u8"),
        15: ("vxlan_port", "be16"),
        18: ("vxlan_udp_csum", "u8"),
        19: ("vxlan_udp_zero_csum6_tx", "u8"),
        20: ("vxlan_udp_zero_csum6_rx", "u8"),
        21: ("vxlan_remcsum_tx", "u8"),
        22: ("vxlan_remcsum_rx", "u8"),
        23: ("vxlan_gbp", "flag"),
        24: ("vxlan_remcsum_nopartial", "flag"),
        25: ("vxlan_collect_metadata", "u8"),
        27: ("vxlan_gpe", "flag"),
        28: ("vxlan_ttl_inherit", "flag"),
        29: ("vxlan_df", "u8"),
    },
    "ipip": {
        1: ("ipip_link", "u32"),
        2: ("ipip_local", "ip4"),
        3: ("ipip_remote", "ip4"),
        4: ("ipip_ttl", "u8"),
        5: ("ipip_tos", "u8"),
        9: ("ipip_proto", "u8"),
        10: ("ipip_pmtudisc", "u8"),
        15: ("ipip_encap_type", "u16"),
        16: ("ipip_encap_flags", "u16"),
        17: ("ipip_encap_sport", "be16"),
        18: ("ipip_encap_dport", "be16"),
        19: ("ipip_collect_metadata", "flag"),
        20: ("ipip_fwmark", "u32"),
    },
}
_BY_NAME = {
    kind: {name: (num, typ) for num, (name, typ) in table.items()}
    for kind, table in LINK_DATA.items()
}


def encode_params(kind: str, params: Sequence[tuple[str, Any]]) -> bytes:
    """IFLA_INFO_DATA's payload for ``kind``. Raises ValueError on a name or value it cannot
    encode (the caller's mistake, not the kernel's)."""
    names = _BY_NAME.get(kind, {})
    out = b""
    for name, value in params:
        if name not in names:
            raise ValueError(f"unknown {kind} parameter {name!r}")
        num, typ = names[name]
        if typ == "flag" and not value:
            continue  # a flag is on by being there
        try:
            out += rta(num, _CODECS[typ][1](value))
        except (struct.error, TypeError) as exc:
            raise ValueError(f"{kind} parameter {name}={value!r}: {exc}") from None
    return out


def decode_params(kind: str, buf: bytes | bytearray, off: int, end: int) -> dict[str, Any]:
    table = LINK_DATA.get(kind)
    out: dict[str, Any] = {}
    if table is None:
        return out
    for num, a, b in attrs(buf, off, end):
        hit = table.get(num)
        if hit is not None:
            value = _CODECS[hit[1]][0](bytes(buf[a:b]))
            if value is not None:
                out[hit[0]] = value
    return out


# --- requests ------------------------------------------------------------------------------------


def _name_attr(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise ValueError(f"not a device name: {name!r}")
    return rta(IFLA_IFNAME, raw + b"\0")


def link_get_request(name: str | None = None, index: int | None = None) -> Request:
    """RTM_GETLINK for one device, by name or by index; answered by one RTM_NEWLINK (or ENODEV)."""
    if name is None and not index:
        raise ValueError("get link: neither a name nor an index")
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0 if name is not None else int(index or 0), 0, 0)
    if name is not None:
        body += _name_attr(name)
    body += rta(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
    return Request(f"get link {name or index}", RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, body)


def encode_link_create(
    name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[tuple[str, Any]]
) -> Request:
    """RTM_NEWLINK with CREATE|EXCL: a device of ``kind`` with everything fixed at creation."""
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + _name_attr(name)
    if mtu is not None:
        body += rta(IFLA_MTU, U32.pack(mtu))
    if mac is not None:
        body += rta(IFLA_ADDRESS, pack_mac(mac))
    info = rta(IFLA_INFO_KIND, kind.encode() + b"\0")
    data = encode_params(kind, params)
    if data:
        info += rta(IFLA_INFO_DATA, data)
    body += rta(IFLA_LINKINFO, info)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return Request(f"create {kind} device {name}", RTM_NEWLINK, flags, body)


def encode_link_set(
    index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
) -> Request:
    """RTM_NEWLINK without CREATE on an existing device, in one message: the kernel sets the
    MAC before it changes the flags, so ``mac=..., up=True`` brings it up with the new one."""
    change = IFF_UP if up is not None else 0
    body = IFINFOMSG.pack(AF_UNSPEC, 0, index, IFF_UP if up else 0, change)
    what = [f"set link {index}"]
    if mtu is not None:
        body += rta(IFLA_MTU, U32.pack(mtu))
        what.append(f"mtu {mtu}")
    if mac is not None:
        body += rta(IFLA_ADDRESS, pack_mac(mac))
        what.append(f"address {mac}")
    if up is not None:
        what.append("up" if up else "down")
    return Request(" ".join(what), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body)


def encode_link_delete(index: int) -> Request:
    """RTM_DELLINK; a device already gone counts as done."""
    body = IFINFOMSG.pack(AF_UNSPEC, 0, index, 0, 0)
    return Request(f"delete link {index}", RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body, GONE)


def encode_addr(op: str, index: int, cidr: str, ok: tuple[int, ...] = ()) -> Request:
    """``op``: add (CREATE|EXCL) or del, of the IPv4 ``cidr`` on device ``index``. ``ok``: the
    errnos that count as done."""
    ip, plen = pack_cidr(cidr)
    body = IFADDRMSG.pack(AF_INET, plen, 0, 0, index) + rta(IFA_LOCAL, ip) + rta(IFA_ADDRESS, ip)
    if op == "add":
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        return Request(f"add address {cidr} to link {index}", RTM_NEWADDR, flags, body, ok)
    if op == "del":
        what = f"delete address {cidr} from link {index}"
        return Request(what, RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, body, ok)
    raise ValueError(f"address operation {op!r}")


def addr_dump_request(index: int | None = None) -> Request:
    # Strict checking filters on ifa_index (prefixlen, flags and scope must stay 0).
    body = IFADDRMSG.pack(AF_INET, 0, 0, 0, index or 0)
    what = "dump addresses" + (f" of link {index}" if index else "")
    return Request(what, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body)


# --- decoding ------------------------------------------------------------------------------------


def _text(buf: bytes | bytearray, a: int, b: int) -> str:
    return bytes(buf[a:b]).split(b"\0", 1)[0].decode(errors="replace")


def decode_link(buf: bytes | bytearray, off: int, end: int) -> LinkMsg:
    """The link message whose body (ifinfomsg) starts at ``off`` and ends at ``end``."""
    _, _, index, flags, _ = IFINFOMSG.unpack_from(buf, off)
    name = kind = ""
    mtu = 0
    mac: str | None = None
    data: tuple[int, int] | None = None
    for num, a, b in attrs(buf, off + IFINFOMSG.size, end):
        if num == IFLA_IFNAME:
            name = _text(buf, a, b)
        elif num == IFLA_MTU and b - a == 4:
            mtu = U32.unpack_from(buf, a)[0]
        elif num == IFLA_ADDRESS:
            mac = bytes(buf[a:b]).hex(":")
        elif num == IFLA_LINKINFO:
            for inum, ia, ib in attrs(buf, a, b):
                if inum == IFLA_INFO_KIND:
                    kind = _text(buf, ia, ib)
                elif inum == IFLA_INFO_DATA:
                    data = (ia, ib)
    params = decode_params(kind, buf, *data) if data is not None else {}
    return LinkMsg(index, name, kind, mtu, mac, flags, params)


def decode_addr(buf: bytes | bytearray, off: int, end: int) -> AddrMsg:
    """The address message whose body (ifaddrmsg) starts at ``off`` and ends at ``end``."""
    family, plen, flags, _, index = IFADDRMSG.unpack_from(buf, off)
    address = local = ""
    for num, a, b in attrs(buf, off + IFADDRMSG.size, end):
        if num in (IFA_ADDRESS, IFA_LOCAL) and b - a == 4:
            ip = socket.inet_ntoa(bytes(buf[a:b]))
            if num == IFA_ADDRESS:
                address = ip
            else:
                local = ip
    return AddrMsg(family, index, plen, flags, address or local)
