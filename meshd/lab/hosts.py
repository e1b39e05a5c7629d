"""A lab host's names and addresses, and the ``ip -batch`` and ``sh`` lines that differ by IP
family: what :class:`meshd.lab.topology.Topology` plans and builds with.

Only the standard library is used, so the module also runs inside the UML guest.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

FORWARD6 = "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"
# Duplicate address detection off for every device of a namespace (all, default, and those
# moved in, still down): while a link-local address is tentative (~1-2 s after link up) the
# kernel sends no neighbour solicitation for a forwarded packet (it needs a link-local
# source), so the first packets a host forwards over IPv6 would be lost. Global addresses
# get "nodad" as well (addr_line).
NO_DAD = "for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done\n"
UNDERLAY_FAMILIES = ("ipv4", "ipv6", "dual")
"""``underlay_family``: IPv4 only (the default), IPv6 only (no IPv4 address on the underlay at
all, hosts and routers included), or both (a dual-stack underlay; gossip uses the IPv4 one)."""


@dataclass(frozen=True)
class Host:
    """One simulated host. Addresses are strings; ``subnet`` is a CIDR."""

    index: int
    name: str  # h1, h2, ...: also the meshd node name
    ns: str  # <prefix>-h<i>
    container_ns: str  # <prefix>-c<i>
    underlay_ip: str
    underlay_prefixlen: int
    segment: int  # 1, or 2 for even hosts of a routed lab
    port: str  # this host's port (veth end) on the underlay bridge, in <prefix>-ul
    subnet: str
    gateway: str  # first address of the subnet, on bridge "br"
    container_ip: str
    router_ip: str | None  # next hop of the default route in a routed lab
    # A dual-stack lab's second family: None in an IPv4-only lab (see the module docstring).
    underlay_ip6: str | None = None  # second underlay address (dual-stack underlay only)
    underlay_prefixlen6: int | None = None
    router_ip6: str | None = None  # next hop of the IPv6 default route (dual, routed)
    subnet6: str | None = None  # IPv6 pod subnet (ipv6=True)
    gateway6: str | None = None  # its first address, on bridge "br"
    container_ip6: str | None = None

    @property
    def underlay_cidr(self) -> str:
        return f"{self.underlay_ip}/{self.underlay_prefixlen}"

    @property
    def underlay_version(self) -> int:
        """The family of ``underlay_ip``, the address gossip uses (4 or 6)."""
        return 6 if ":" in self.underlay_ip else 4

    def underlay_of(self, version: int) -> str | None:
        """This host's underlay address of family ``version`` (4 or 6), None if it has none."""
        if self.underlay_version == version:
            return self.underlay_ip
        return self.underlay_ip6 if version == 6 else None

    def container_ip_of(self, version: int) -> str | None:
        """The container's address of family ``version``, None if the pods have no such one."""
        return self.container_ip if version == 4 else self.container_ip6

    def subnet_of(self, version: int) -> str | None:
        return self.subnet if version == 4 else self.subnet6

    @property
    def subnets(self) -> tuple[str, ...]:
        """The host's pod subnets, IPv4 first (one, or two in a dual-stack lab)."""
        return (self.subnet,) if self.subnet6 is None else (self.subnet, self.subnet6)


def host_gw_routes(peer: Host) -> list[str]:
    """The routes to ``peer``'s pod subnets via its underlay addresses (see add_host_gw_routes)."""
    v4, v6 = peer.underlay_of(4), peer.underlay_of(6)
    routes = []
    if v4 is not None:
        routes.append(f"route replace {peer.subnet} via {v4} dev eth0 onlink")
    elif v6 is not None:
        routes.append(f"route replace {peer.subnet} via inet6 {v6} dev eth0 onlink")
    if peer.subnet6 is not None and v6 is not None:
        routes.append(f"route replace {peer.subnet6} via {v6} dev eth0 onlink")
    return routes


def span(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    """How much of an underlay segment the lab numbers: all of an IPv4 one, the first 256
    addresses of an IPv6 one (so its router is ``::fe``, not ``::ffff:ffff:ffff:fffe``)."""
    return net.num_addresses if net.version == 4 else min(net.num_addresses, 256)


def nth_last(net: ipaddress.IPv4Network | ipaddress.IPv6Network, n: int) -> str:
    """The ``n``-th last address of the segment's span: 2 = the router, 3 = the outside host."""
    return str(net[span(net) - n])


def addr_line(cidr: str, dev: str) -> str:
    """``addr add`` for either family; an IPv6 one skips duplicate address detection, which
    would leave it "tentative" (unusable: no bind, no source) for a second or two."""
    return f"addr add {cidr} dev {dev}" + (" nodad" if ":" in cidr else "")


def default_dst(gateway: str) -> str:
    # "default" alone means IPv4 in an ip batch (no -6 per line): name the IPv6 one ::/0.
    return "::/0" if ":" in gateway else "default"


def bridge_lines(name: str, ipv6: bool) -> list[str]:
    """A bridge, up. With IPv6 its multicast snooping is off: with no MLD querier on the
    segment, snooping can stop neighbour solicitations reaching a port whose report it missed."""
    snoop = " mcast_snooping 0" if ipv6 else ""
    return [f"link add name {name} type bridge{snoop}", f"link set dev {name} up"]


def forwarding_script(ipv4: bool, ipv6: bool) -> str:
    """sh lines turning forwarding on per family (per namespace, off in a new one); with IPv6,
    duplicate address detection off first (see NO_DAD)."""
    lines = ["echo 1 > /proc/sys/net/ipv4/ip_forward || exit 1\n"] if ipv4 else []
    return "".join(lines) + (f"{NO_DAD}{FORWARD6} || exit 1\n" if ipv6 else "")


def container_batch(ns: str, ipv6: bool) -> str:
    """The command (run in its host) reading the container's batch on stdin."""
    if not ipv6:
        return f"ip -n {ns} -batch -"
    return f"ip netns exec {ns} sh -c {shlex.quote(NO_DAD + 'exec ip -batch -')}"


__all__ = [
    "FORWARD6",
    "NO_DAD",
    "UNDERLAY_FAMILIES",
    "Host",
    "addr_line",
    "bridge_lines",
    "container_batch",
    "default_dst",
    "forwarding_script",
    "host_gw_routes",
    "nth_last",
    "span",
]
