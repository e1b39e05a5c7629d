"""What the daemon imports of pyroute2: nothing until a ``Netlink`` opens, then only the pieces
for devices and addresses (``netlink._pyroute2``), never the package's ``__init__``, which pulls in
every module of the library (NDB, IPDB, nftables, ...: 12.7 MiB of RSS where the pieces take 6.7).

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
LEAN = (
    "import sys; from meshd.dataplane import netlink; netlink._pyroute2(); "
    "mods = {m for m in sys.modules if m.startswith('pyroute2')}; "
    "assert 'pyroute2.iproute.linux' in mods, sorted(mods); "
    "heavy = sorted(m for m in mods if (m.split('.') + [''])[1] in "
    "('ndb', 'ipdb', 'nftables', 'ipset', 'ipvs', 'iwutil', 'plan9', 'conntrack', 'wiset')); "
    "assert not heavy, heavy; "
    "import pyroute2; assert pyroute2.__version__ == __import__('importlib.metadata')"
    ".metadata.version('pyroute2'), pyroute2.__version__; "
    "from pyroute2 import IPBatch, NDB"
)


def run(code: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_netlink_reconciler_and_daemon_import_no_pyroute2_until_a_socket_opens() -> None:
    run(NOT_YET)


def test_netlink_imports_only_the_pieces_it_uses_and_the_full_package_still_loads() -> None:
    run(LEAN)
