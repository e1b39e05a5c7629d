"""meshd: a gossip-driven container network mesh (host-gw, ipip, vxlan) with no central store."""

__version__ = "0.2.0"
