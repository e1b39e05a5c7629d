"""`meshd doctor` and the tunnel probes on real daemons: a healthy lab host exits 0; when a
firewall on h1 drops h2's vxlan packets while gossip still flows, `peers` marks h2's tunnel
unreachable on both sides, `doctor` exits 1 naming h2 (the probe and the rule that drops it),
and the metrics count it; lifting the rule heals all of it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Lab, ns_exec

from .conftest import all_alive, cli, keygen, peers, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]

BLOCK = """
table inet ops {
  chain in { type filter hook input priority -5; udp dport 8472 ip saddr 10.99.0.2 drop; }
}
"""


def doctor(lab: Lab, name: str) -> tuple[int, dict[str, Any], str]:
    d = lab.daemons[name]
    text = cli(d, "doctor", check=False)
    js = cli(d, "doctor", "--json", check=False)  # parsed when it exits 0
    reply = js if isinstance(js, dict) else json.loads(js.stdout)
    return text.returncode, reply, text.stdout + text.stderr


def tunnel(lab: Lab, name: str, peer: str) -> str | None:
    t = peers(lab.daemons[name]).get(peer, {}).get("tunnel")
    return t.get("state") if t else None


def test_doctor_names_the_peer_whose_tunnel_a_firewall_breaks(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    lab = make_lab("doc", 3)
    key = keygen(tmp_path / "key")
    lab.start_daemons(key_file=key, backend="vxlan", extra_args=["--config", str(fast_config)])
    wait_until(all_alive(lab, ["h1", "h2", "h3"]), 60, "mesh up", lab)
    wait_until(
        lambda: all(tunnel(lab, "h1", p) == "ok" for p in ("h2", "h3")), 30, "tunnels ok", lab
    )

    rc, reply, text = doctor(lab, "h1")
    assert rc == 0 and reply["ok"], text
    checks = {f["check"] for f in reply["findings"]}
    assert {"forwarding", "kernel", "mtu", "firewall", "clock", "subnet.env", "tunnel"} <= checks
    assert "doctor: healthy" in text

    ns_exec(lab.hosts[0].ns, ["nft", "-f", "-"], input=BLOCK)
    try:
        # Gossip still flows (h2 stays alive), but its tunnel to h1 is broken both ways.
        wait_until(lambda: tunnel(lab, "h1", "h2") == "unreachable", 30, "h1 sees it", lab)
        wait_until(lambda: tunnel(lab, "h2", "h1") == "unreachable", 30, "h2 sees it", lab)
        assert peers(lab.daemons["h1"])["h2"]["state"] == "alive"
        assert tunnel(lab, "h1", "h3") == "ok"
        rc, reply, text = doctor(lab, "h1")
        assert rc == 1 and not reply["ok"], text
        bad = [f for f in reply["findings"] if f["level"] == "fail"]
        assert {(f["check"], f["peer"]) for f in bad} == {("tunnel", "h2"), ("firewall", "h2")}
        assert "doctor: 2 problem(s) (peers: h2)" in text
        assert "UDP 8472" in text
        rc2, _, text2 = doctor(lab, "h2")  # the other side names h1
        assert rc2 == 1 and "h1" in text2
        # The metrics endpoint (127.0.0.1:9950 in each host's namespace).
        metrics = ns_exec(
            lab.hosts[0].ns,
            [sys.executable, "-c", "import urllib.request as u;"
             "print(u.urlopen('http://127.0.0.1:9950/metrics').read().decode())"],
        ).stdout  # fmt: skip
        assert "meshd_tunnel_unreachable_peers 1" in metrics, metrics
    finally:
        ns_exec(lab.hosts[0].ns, ["nft", "delete", "table", "inet", "ops"])
    wait_until(lambda: tunnel(lab, "h1", "h2") == "ok", 30, "healed", lab)
    assert doctor(lab, "h1")[0] == 0
