"""`meshd leave --purge`: after leaving, remove what meshd made on this host.

The kernel side is ``dataplane/purge.py`` (devices, routes, nftables tables, the bridge
address, ip_forward). The files: subnet.env, the WireGuard key, the allocation's memory of a
subnet (the node id stays: joining again is a new claim under the same identity).
"""

from __future__ import annotations

import asyncio
import contextlib

from meshd.config import Config
from meshd.dataplane import purge
from meshd.keyfile import WIREGUARD_KEY

FORWARDING_MARKER = "ip_forward.orig"
"""File in the state dir keeping ip_forward's value before meshd first set it."""


def _bridge_address(cfg: Config) -> tuple[str, str] | None:
    if not cfg.bridge:
        return None
    with contextlib.suppress(OSError):
        for line in cfg.subnet_env.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "FLANNEL_SUBNET" and value:
                return cfg.bridge, value.strip()
    return None


def purge_host(cfg: Config) -> list[str]:
    """Remove meshd's kernel state and files; one line per thing removed."""
    done = asyncio.run(
        purge.purge(
            bridge_address=_bridge_address(cfg),
            forwarding_marker=cfg.state_dir / FORWARDING_MARKER,
        )
    )
    for path in (cfg.subnet_env, cfg.state_dir / WIREGUARD_KEY):
        if path.exists():
            path.unlink()
            done.append(str(path))
    return done
