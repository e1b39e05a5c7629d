"""The reconciler writes a dual-stack node's subnet.env with both families (flanneld's
FLANNEL_IPV6_NETWORK/SUBNET beside the IPv4 pair)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from records import rec  # tests/unit is on sys.path (pytest prepend import mode)
from test_reconciler import Harness, alive, run_virtual  # tests/unit is on sys.path


def test_a_dual_stack_node_writes_both_families(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path, network6="fd00:10:244::/48")
        h.local = replace(h.local, subnet6="fd00:10:244:1::/64")
        h.r.set_local(h.local, settled=True)
        try:
            await h.start(alive(rec(2)))
            env = tmp_path / "subnet.env"
            await h.until(env.exists)
            text = env.read_text()
            assert text.startswith(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                "FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
            ), text
        finally:
            await h.close()

    run_virtual(main)
