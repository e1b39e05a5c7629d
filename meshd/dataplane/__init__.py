"""The kernel data plane: peer table -> desired state -> plan -> netlink.

``model`` is pure and cheap to import (the CLI and the daemon's peer view use it without root);
``Reconciler`` and ``discover_underlay`` bring asyncio and the netlink sockets (``netlink``,
``rtnl*``; no pyroute2), so they are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshd.dataplane.model import RTPROT_MESHD, PeerView, Plan, Underlay

if TYPE_CHECKING:
    from meshd.dataplane.reconciler import Reconciler
    from meshd.dataplane.underlay import discover_underlay

__all__ = ["RTPROT_MESHD", "PeerView", "Plan", "Reconciler", "Underlay", "discover_underlay"]


def __getattr__(name: str) -> Any:
    if name == "Reconciler":
        from meshd.dataplane.reconciler import Reconciler

        return Reconciler
    if name == "discover_underlay":
        from meshd.dataplane.underlay import discover_underlay

        return discover_underlay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
