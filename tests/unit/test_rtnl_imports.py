"""The daemon's data plane runs without pyroute2 (issue 7: importing it cost ~11 MiB of RSS).

pyroute2 stays installed for the tests, which check our codec against it; so this runs in a
fresh interpreter, where nothing else has imported it yet.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = (
    "import meshd.dataplane.netlink, meshd.dataplane.reconciler, meshd.daemon; import sys; "
    "assert not any(m.startswith('pyroute2') for m in sys.modules), "
    "sorted(m for m in sys.modules if m.startswith('pyroute2'))[:5]"
)


def test_netlink_reconciler_and_daemon_never_import_pyroute2() -> None:
    res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
