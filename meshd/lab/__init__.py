"""The lab: simulated hosts in network namespaces, fault injection, and a UML guest kernel.

One way to build a lab, shared by the end-to-end tests and ``meshd lab``:

- ``topology``: :class:`Lab`, N hosts (flat or routed) with a bridge and a container each.
- ``faults``: nftables packet loss and partitions inside a namespace.
- ``nettool``: stdlib TCP/UDP sender and sink, run inside namespaces.
- ``uml``: boot Debian's user-mode-linux kernel on the host's ``/`` for kernel features this
  host lacks (ipip).

Only the standard library and system commands (``ip``, ``ping``, ``nft``) are used.
"""

from __future__ import annotations

from meshd.lab.topology import Daemon, Host, Lab, down, leftover_namespaces

__all__ = ["Daemon", "Host", "Lab", "down", "leftover_namespaces"]
