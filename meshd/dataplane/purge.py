"""Removing everything meshd put in this host's kernel (`meshd leave --purge`).

What goes: every device named ``meshd.*`` (the vxlan, ipip and wireguard devices; their
neighbours and FDB entries go with them; a ``wireguard-go`` holding ``meshd.wg`` is stopped, which
removes its device), every main-table route with meshd's protocol (109), IPv4 and IPv6, meshd's
nftables tables (the filter's ``inet meshd``, the masquerade's ``ip meshd-nat`` and ``ip6
meshd-nat``), the bridge address meshd added (the subnet's first address, when a bridge was
configured; the bridge itself may predate meshd and stays), and ``net.ipv4.ip_forward`` (and
``net.ipv6.conf.all.forwarding``) go back to the value meshd found, when it kept one.

Nothing that is not meshd's is touched: routes of other protocols, other devices, other tables.
Idempotent: a second purge finds nothing and removes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from meshd.dataplane import masquerade, nft, wireguard
from meshd.dataplane.firewall import Firewall
from meshd.dataplane.model import MAIN_TABLE, RTPROT_MESHD
from meshd.dataplane.netlink import Netlink
from meshd.dataplane.reconciler import forwarding_marker as forwarding_marker_of
from meshd.dataplane.rtnl_wire import AF_INET6
from meshd.errors import DataplaneError

PREFIX = "meshd."


async def _stop_wireguard_go(name: str, netns: str | None) -> bool:
    dev = await asyncio.to_thread(wireguard.find_device, name, netns)
    if dev is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(dev.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(f"/proc/{dev.pid}"):
        await asyncio.sleep(0.05)
    return True


async def purge(
    netns: str | None = None,
    *,
    bridge_address: tuple[str, str] | None = None,
    forwarding_marker: Path | None = None,
) -> list[str]:
    """Remove meshd's kernel state; returns one line per thing removed. ``bridge_address``:
    (bridge, cidr) meshd added; ``forwarding_marker``: the file holding ip_forward's value
    before meshd set it (read, applied, deleted)."""
    done: list[str] = []
    async with Netlink(netns) as nl:
        for link in await nl.links():
            if not link.name.startswith(PREFIX):
                continue
            if link.name == "meshd.wg" and await _stop_wireguard_go(link.name, netns):
                done.append(f"stopped wireguard-go ({link.name})")
                if await nl.link(link.name) is None:
                    done.append(f"device {link.name}")
                    continue
            await nl.delete_link(link.index)
            done.append(f"device {link.name}")
        routes = await nl.dump_routes(RTPROT_MESHD)
        with contextlib.suppress(DataplaneError):  # a kernel without IPv6
            routes += await nl.dump_routes(RTPROT_MESHD, MAIN_TABLE, AF_INET6)
        if routes:
            failures = await nl.routes_apply("del", routes, RTPROT_MESHD)
            if failures:
                raise DataplaneError(f"purge: {failures[0].error}")
            done.append(f"{len(routes)} route(s) with protocol {RTPROT_MESHD}")
        if bridge_address is not None:
            name, cidr = bridge_address
            br = await nl.link(name)
            if br is not None:
                have = {f"{ip}/{plen}" for _, ip, plen, _ in await nl.addresses(br.index)}
                if cidr in have:
                    await nl.del_address(br.index, cidr)
                    done.append(f"address {cidr} on {name}")
        for sysctl in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            marker = forwarding_marker_of(forwarding_marker, sysctl)
            if marker is not None and marker.exists():
                was = marker.read_text().strip()
                if was in ("0", "1"):
                    old = await nl.sysctl(sysctl, was)
                    if old != was:
                        done.append(f"{sysctl} back to {was}")
                marker.unlink()
    try:
        tables = await nft.run(["list", "tables"], None, label="purge", netns=netns)
    except DataplaneError:
        tables = ""  # no nft: nothing of ours can be there
    if "table inet meshd" in tables:
        await Firewall("vxlan", netns=netns).remove()
        done.append("nftables table inet meshd")
    if "table ip meshd-nat" in tables:
        await masquerade.remove_table(netns)
        done.append("nftables table ip meshd-nat")
    if "table ip6 meshd-nat" in tables:
        await masquerade.remove_table(netns, masquerade.FAMILY6)
        done.append("nftables table ip6 meshd-nat")
    return done
