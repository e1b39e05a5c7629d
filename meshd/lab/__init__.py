"""The lab: simulated hosts in network namespaces, fault injection, and a UML guest kernel.

One way to build a lab, shared by the end-to-end tests, the integration tests and ``meshd lab``:

- ``namespaces``: run, kill and delete things in network namespaces (the bottom layer).
- ``topology``: :class:`Topology`, N hosts (flat or routed) with a bridge and a container each,
  built and torn down; ``down(prefix)`` for a lab left running.
- ``probes``: ping matrices, TCP/UDP transfers, captures, link counters on a topology.
- ``daemons``: ``meshd join`` in each host: argv, start, restart, stop.
- ``cni``: pods attached by the real flannel CNI plugin (bridge + host-local), as the kubelet
  runs it, in a lab built with ``cni=True``.
- ``faults``: nftables packet loss and partitions inside a namespace.
- ``nettool``: stdlib TCP/UDP sender and sink, run inside namespaces.
- ``uml``: boot Debian's user-mode-linux kernel on the host's ``/`` for kernel features this
  host lacks (ipip).
- ``runner``: ``meshd lab``, the demo built from all of the above.

:class:`Lab` is what tests use: a topology with its probes and its daemons.
Only the standard library and system commands (``ip``, ``ping``, ``nft``) are used.
"""

from __future__ import annotations

from meshd.lab.cni import Pod, Pods
from meshd.lab.daemons import DEFAULT_GOSSIP_PORT, Daemon, Daemons, write_key
from meshd.lab.namespaces import cleanup_on_signals, leftover_namespaces, ns_exec
from meshd.lab.probes import Probes, format_matrix
from meshd.lab.topology import Host, Topology, down


class Lab(Probes, Daemons, Pods):
    """N simulated hosts in network namespaces that can be probed, run meshd daemons and, with
    ``cni=True``, have their pods attached by the CNI plugins.

    ``with Lab("t1", hosts=3) as lab:`` builds on entry and tears down on exit (unless ``keep``
    and no exception: then the lab is detached and left running for ``down(prefix)``); see
    :class:`Topology` for the parameters.
    """


__all__ = [
    "DEFAULT_GOSSIP_PORT",
    "Daemon",
    "Host",
    "Lab",
    "Pod",
    "Topology",
    "cleanup_on_signals",
    "down",
    "format_matrix",
    "leftover_namespaces",
    "ns_exec",
    "write_key",
]
