"""Find the underlay: the device peers are reached through, this node's address on it (IPv4 or
IPv6) and, on a dual-stack underlay, its IPv6 one too, and the device's MTU."""

from __future__ import annotations

import ipaddress

from meshd.dataplane.model import Underlay
from meshd.dataplane.netlink import Netlink
from meshd.dataplane.rtnl_wire import AF_INET6
from meshd.errors import DataplaneError


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


async def discover_underlay(
    iface: str | None,
    public_ip: str | None,
    *,
    netns: str | None = None,
    public_ip6: str | None = None,
    dual_stack: bool = False,
) -> Underlay:
    """``iface`` (default: the device holding ``public_ip`` when that is given, else the one
    holding the IPv4 default route, else the IPv6 one) and its primary address (or
    ``public_ip``, IPv4 or IPv6, which must be assigned to it; without it, IPv4 first, then a
    global IPv6 one). ``public_ip6`` (must be assigned to the same device), or with
    ``dual_stack`` the device's first global IPv6 address, becomes ``Underlay.ip6`` when the
    main address is IPv4. Raises a one-line DataplaneError when nothing fits."""
    async with Netlink(netns) as nl:
        addrs = await nl.addresses(family=0)
        index: int | None = None
        if iface is not None:
            link = await nl.link(iface)
            if link is None:
                raise DataplaneError(f"underlay: interface {iface} does not exist")
            index = link.index
        elif public_ip is not None:
            index = next((i for i, ip, _, _ in addrs if _same(ip, public_ip)), None)
            if index is None:
                raise DataplaneError(f"underlay: {public_ip} is not assigned to any interface")
        else:
            index = await nl.default_route_oif() or await nl.default_route_oif(AF_INET6)
            if index is None:
                raise DataplaneError("underlay: no default route; set iface or public_ip")
        link = await nl.link(index=index)
        if link is None:
            raise DataplaneError(f"underlay: interface {iface or index} vanished")
        mine = [(ip, plen, sec) for i, ip, plen, sec in addrs if i == link.index]
        v4 = [(ip, plen) for ip, plen, sec in mine if ":" not in ip and not sec]
        v6 = [(ip, plen) for ip, plen, sec in mine if ":" in ip and not sec]
        if public_ip is not None:
            ip, plen = _pick(mine, public_ip, link.name)
        elif v4 or v6:
            ip, plen = (v4 or v6)[0]
        else:
            raise DataplaneError(f"underlay: {link.name} has no IPv4 or global IPv6 address")
        ip6: str | None = None
        plen6 = 0
        if ":" not in ip:
            if public_ip6 is not None:
                ip6, plen6 = _pick(mine, public_ip6, link.name)
            elif dual_stack and v6:
                ip6, plen6 = v6[0]
        return Underlay(link.name, link.index, ip, plen, link.mtu, ip6, plen6)


def _pick(mine: list[tuple[str, int, bool]], want: str, name: str) -> tuple[str, int]:
    hit = [(ip, plen) for ip, plen, _ in mine if _same(ip, want)]
    if not hit:
        raise DataplaneError(f"underlay: {want} is not assigned to {name}")
    return hit[0]
