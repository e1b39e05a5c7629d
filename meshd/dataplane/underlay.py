"""Find the underlay: the device peers are reached through, this node's IPv4 on it, its MTU."""

from __future__ import annotations

from meshd.dataplane.model import Underlay
from meshd.dataplane.netlink import Netlink
from meshd.errors import DataplaneError


async def discover_underlay(
    iface: str | None, public_ip: str | None, *, netns: str | None = None
) -> Underlay:
    """``iface`` (default: the device holding the IPv4 default route, or the one holding
    ``public_ip`` when that is given) and its primary IPv4 (or ``public_ip``, which must be
    assigned to it). Raises a one-line DataplaneError when nothing fits."""
    async with Netlink(netns) as nl:
        addrs = await nl.addresses()
        index: int | None = None
        if iface is not None:
            link = await nl.link(iface)
            if link is None:
                raise DataplaneError(f"underlay: interface {iface} does not exist")
            index = link.index
        elif public_ip is not None:
            index = next((i for i, ip, _, _ in addrs if ip == public_ip), None)
            if index is None:
                raise DataplaneError(f"underlay: {public_ip} is not assigned to any interface")
        else:
            index = await nl.default_route_oif()
            if index is None:
                raise DataplaneError("underlay: no IPv4 default route; set iface or public_ip")
        link = await nl.link(index=index)
        if link is None:
            raise DataplaneError(f"underlay: interface {iface or index} vanished")
        mine = [(ip, plen, sec) for i, ip, plen, sec in addrs if i == link.index]
        if public_ip is not None:
            hit = [(ip, plen) for ip, plen, _ in mine if ip == public_ip]
            if not hit:
                raise DataplaneError(f"underlay: {public_ip} is not assigned to {link.name}")
            ip, plen = hit[0]
        else:
            primary = [(ip, plen) for ip, plen, sec in mine if not sec]
            if not primary:
                raise DataplaneError(f"underlay: {link.name} has no IPv4 address")
            ip, plen = primary[0]
        return Underlay(link.name, link.index, ip, plen, link.mtu)
