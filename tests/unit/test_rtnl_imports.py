"""When the daemon imports pyroute2: not before a ``Netlink`` opens (``meshd peers`` and config
validation never load it), then the installed package, whole.

The tests themselves import pyroute2 whole, so this runs in fresh interpreters.
"""

from __future__ import annotations

import subprocess
import sys

NOT_YET = (
    "import meshd.dataplane.netlink, meshd.dataplane.reconciler, meshd.daemon, sys; "
    "assert not any(m.startswith('pyroute2') for m in sys.modules), "
    "sorted(m for m in sys.modules if m.startswith('pyroute2'))[:5]"
)
LOADED = (
    "import importlib.metadata; from meshd.dataplane import netlink; pr2 = netlink._pyroute2(); "
    "assert pr2.AsyncIPRoute.__module__ == 'pyroute2.iproute.linux', pr2.AsyncIPRoute; "
    "import pyroute2; v = importlib.metadata.version('pyroute2'); "
    "assert pyroute2.__version__ == v, (pyroute2.__version__, v)"
)


def run(code: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_netlink_reconciler_and_daemon_import_no_pyroute2_until_a_socket_opens() -> None:
    run(NOT_YET)


def test_the_first_netlink_loads_the_installed_pyroute2() -> None:
    run(LOADED)
