"""Membership between real daemons: converge, reject a foreign key, restart keeps identity,
leave is seen as left everywhere."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.lab import Lab, ns_exec

from .conftest import all_alive, cli, keygen, peers, states, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_membership_lifecycle(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    lab = make_lab("mship", 5)
    key = keygen(tmp_path / "key")
    other = keygen(tmp_path / "other.key")
    extra = ["--config", str(fast_config)]
    members = lab.hosts[:4]
    names = [h.name for h in members]
    lab.start_daemons(key_file=key, backend="host-gw", extra_args=extra, hosts=members)
    wait_until(all_alive(lab, names), 60, "4 daemons to see each other alive", lab)

    # peers --json carries the documented keys; exactly one row is self
    rows = cli(lab.daemons["h1"], "peers", "--json")
    assert {
        "name",
        "public_ip",
        "subnet",
        "backend",
        "vtep_mac",
        "state",
        "incarnation",
        "last_seen",
        "self",
    } <= set(rows[0])
    assert [r["name"] for r in rows if r["self"]] == ["h1"]
    assert {r["name"]: r["subnet"] for r in rows} == {h.name: h.subnet for h in members}

    # Prometheus endpoint, inside h1's namespace on localhost
    fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9950/metrics').read().decode())"

    def metrics() -> str:
        return ns_exec(lab.hosts[0].ns, [sys.executable, "-c", fetch]).stdout

    # Members that joined are not probed for JOIN_GRACE probe intervals (gossip/state.py):
    # the first probe answered comes a little after convergence.
    wait_until(
        lambda: re.search(r'meshd_probes_total\{result="ok"\} [1-9]', metrics()) is not None,
        30,
        "h1's first answered probe",
        lab,
    )
    text = metrics()
    assert 'meshd_members{state="alive"} 4' in text
    assert re.search(r'meshd_datagrams_total\{direction="out"\} [1-9]', text)
    assert re.search(r'meshd_probes_total\{result="ok"\} [1-9]', text)
    assert re.search(r"meshd_probe_rtt_seconds_count [1-9]", text)
    assert "meshd_reconcile_runs_total" in text
    assert 'meshd_anti_entropy_total{result="same"}' in text

    # A node holding another key is never admitted, and its datagrams are counted as drops.
    intruder = lab.start_daemon(lab.hosts[4], key_file=other, backend="host-gw", extra_args=extra)
    wait_until(
        lambda: cli(lab.daemons["h1"], "status", "--json")["dropped"].get("unknown_key", 0) > 0,
        30,
        "h1 to count the intruder's datagrams",
        lab,
    )
    for n in names:
        assert "h5" not in peers(lab.daemons[n])
    assert set(peers(intruder)) == {"h5"}
    lab.stop_daemon("h5")

    # kill -9 and restart keeps the node id; the incarnation goes up; everyone sees it alive.
    before = peers(lab.daemons["h1"])["h3"]
    lab.stop_daemon("h3", signal.SIGKILL)
    lab.start_daemon(lab.hosts[2], key_file=key, backend="host-gw", extra_args=extra, seeds=[])
    wait_until(
        lambda: (
            peers(lab.daemons["h3"]).get("h3", {}).get("node_id") == before["node_id"]
            and states(lab.daemons["h3"]) == {n: "alive" for n in names}
        ),
        60,
        "restarted h3 to rejoin (without seeds) with its identity",
        lab,
    )
    wait_until(
        lambda: peers(lab.daemons["h1"])["h3"]["incarnation"] > before["incarnation"],
        30,
        "h1 to see h3's higher incarnation",
        lab,
    )

    # leave: the daemon exits 0 and every other member shows it as left.
    r = cli(lab.daemons["h4"], "leave")
    assert "left the mesh" in r.stdout
    proc = lab.daemons["h4"].proc
    assert proc is not None and proc.wait(timeout=15) == 0
    wait_until(
        lambda: all(states(lab.daemons[n]).get("h4") == "left" for n in names[:3]),
        30,
        "h4 to be seen as left everywhere",
        lab,
    )
