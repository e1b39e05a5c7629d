"""Failure detection and healing between real daemons, with faults injected by nftables
(meshd.lab.faults: this kernel has no netem).

* crash: kill -9 of a member makes every other member see it suspect, then dead, within a window
  computed from the configured gossip parameters; restarted, it keeps its identity;
* loss: a minute of 20% loss of the gossip every host receives (so both directions of every
  exchange: 36% per ping/ack round trip) never makes anyone declare a live member dead;
* partition: 2|2 (faults.split) for longer than the suspicion time (each side sees the other
  dead and reaps its routes), then healed: everyone is alive again by itself and every container
  pings every other (vxlan);
* an outgoing datagram refused locally (sendto() fails with EPERM) is loss, not a reason for the
  daemon to stop (it did, until the fix this test came with).

Every observation polls the control socket directly (meshd.control.client, what the CLI uses):
a few milliseconds per request, so a state held for a fraction of a second is not missed.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.config import GossipConfig, build, load_file
from meshd.control.client import request
from meshd.errors import ControlError
from meshd.gossip.queue import retransmit_limit
from meshd.lab import DEFAULT_GOSSIP_PORT, Daemon, Host, Lab, faults, ns_exec

from .conftest import FAST_GOSSIP, all_alive, keygen, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]
LOSS_SECONDS = 60.0
LOSS_PERCENT = 20
# conftest's FAST_GOSSIP with memberlist's suspicion_mult (4, not 3): with 3, the simulator
# (meshd.sim, same core) shows ~1.5 false deaths a minute among 5 nodes at 20% loss; with 4, none
# in 6 simulated minutes. Refutation gets 1.6 s instead of 1.2 s before confirmations can end it.
LOSSY_GOSSIP = FAST_GOSSIP.replace("suspicion_mult = 3", "suspicion_mult = 4")
assert LOSSY_GOSSIP != FAST_GOSSIP


@pytest.fixture(autouse=True)
def _need_nft() -> None:
    reason = faults.available()
    if reason:
        pytest.skip(reason)


def gossip_config(path: Path) -> GossipConfig:
    return build(load_file(path)).gossip


def table(d: Daemon) -> dict[str, dict[str, Any]]:
    """``peers`` straight from the control socket; {} if the daemon does not answer."""
    try:
        rows = request(d.socket_path, "peers", timeout=5)
    except ControlError:
        return {}
    return {r["name"]: r for r in rows}


def counters(d: Daemon) -> dict[str, int]:
    return request(d.socket_path, "status", timeout=10)["counters"]  # type: ignore[no-any-return]


def _why(d: Daemon) -> str:
    try:
        request(d.socket_path, "peers", timeout=5)
    except ControlError as exc:
        tail = d.log_path.read_text(errors="replace").splitlines()[-20:]
        return f"{exc} (running: {d.alive()})\n" + "\n".join(tail)
    return "answers again"


def crash_window(g: GossipConfig, n: int) -> tuple[float, float]:
    """(suspect by, dead by) after a crash, in seconds, from the protocol (docs/protocol.md):
    the first prober reaches the victim within one round robin over the other n - 1 members and
    concludes its probe at the next tick; then the suspicion runs at most its max timeout
    (no confirmation); the verdict spreads within the broadcast's retransmissions."""
    suspect_by = n * g.probe_interval
    lo = g.suspicion_mult * max(1.0, math.log10(n)) * g.probe_interval
    spread = retransmit_limit(g.retransmit_mult, n, g.retransmit_miss) * g.gossip_interval
    return suspect_by + spread, suspect_by + g.suspicion_max_timeout_mult * lo + 2 * spread


def routes(h: Host) -> set[str]:
    out = ns_exec(None, ["ip", "-n", h.ns, "-j", "route", "show", "proto", "109"]).stdout
    return {str(r["dst"]) for r in json.loads(out or "[]")}


def test_crash_then_lossy_minute(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    cfg = tmp_path / "lossy.toml"
    cfg.write_text(LOSSY_GOSSIP)
    g = gossip_config(cfg)
    lab = make_lab("fcrash", 5)
    key = keygen(tmp_path / "key")
    extra = ["--config", str(cfg)]
    names = [h.name for h in lab.hosts]
    lab.start_daemons(key_file=key, backend="host-gw", extra_args=extra)
    wait_until(all_alive(lab, names), 60, "5 daemons alive", lab)

    # --- crash: suspect, then dead, on every survivor, within the configured window ----------
    victim, survivors = lab.daemons["h5"], [lab.daemons[n] for n in names[:4]]
    node_id = table(survivors[0])["h5"]["node_id"]
    suspect_by, dead_by = crash_window(g, len(names))
    margin = 2.0  # x: CPU contention of 5 daemons plus the poller on 2 cores
    first: dict[tuple[str, str], float] = {}  # (observer, state) -> seconds after the kill
    lab.stop_daemon("h5", signal.SIGKILL)
    t0 = time.monotonic()
    deadline = t0 + margin * dead_by + 5
    while time.monotonic() < deadline and not all(
        (d.host.name, "dead") in first for d in survivors
    ):
        for d in survivors:
            state = table(d).get("h5", {}).get("state")
            if state in ("suspect", "dead"):
                first.setdefault((d.host.name, state), time.monotonic() - t0)
        time.sleep(0.05)
    for d in survivors:
        o = d.host.name
        assert (o, "dead") in first, f"{o} never saw h5 dead within {margin * dead_by + 5:.1f}s"
        assert (o, "suspect") in first, f"{o} saw h5 dead without a suspicion first: {first}"
        assert first[(o, "suspect")] < first[(o, "dead")]
        assert first[(o, "suspect")] <= margin * suspect_by + 2, first
        assert first[(o, "dead")] <= margin * dead_by + 2, first

    # Restarted without seeds: same identity, alive everywhere again.
    lab.start_daemon(lab.hosts[4], key_file=key, backend="host-gw", extra_args=extra, seeds=[])
    wait_until(all_alive(lab, names), 60, "h5 back after its restart", lab)
    assert table(victim)["h5"]["node_id"] == node_id

    # --- a minute of loss: nobody declared dead, ever ---------------------------------------
    # Every host loses 20% of the gossip it receives: both directions of every exchange (ping
    # and ack, request and answer) are lossy. (Rules in the output hook too would compound to
    # 36% per datagram: see docs/faults.md for what that does.)
    faults.loss_everywhere(lab, LOSS_PERCENT, "udp", DEFAULT_GOSSIP_PORT)
    seen: Counter[tuple[str, str, str]] = Counter()  # (observer, member, state) -> polls
    polls, end = 0, time.monotonic() + LOSS_SECONDS
    while time.monotonic() < end:
        for d in lab.daemons.values():
            rows = table(d)
            assert rows, f"{d.host.name} stopped answering under loss: " + _why(d)
            for name, row in rows.items():
                seen[(d.host.name, name, row["state"])] += 1
        polls += 1
        time.sleep(0.5)  # the sampling period of a claim over the whole minute, not a deadline
    dropped = sum(faults.dropped(h.ns) for h in lab.hosts)
    faults.heal_all(lab)
    deaths = {k: v for k, v in seen.items() if k[2] in ("dead", "left")}
    suspicions = sum(v for k, v in seen.items() if k[2] == "suspect")
    assert polls >= LOSS_SECONDS / 1.0, f"only {polls} polls: the poller starved"
    assert dropped > 100, f"the loss rules dropped only {dropped} datagrams"
    assert not deaths, f"false deaths under {LOSS_PERCENT}% loss: {deaths}"
    print(
        f"loss: {dropped} gossip datagrams dropped, {suspicions} suspect observations, "
        f"0 deaths in {polls} polls; crash: {first}"
    )
    wait_until(all_alive(lab, names), 30, "everyone alive after the loss", lab)
    for d in lab.daemons.values():
        assert d.alive()


@pytest.mark.parametrize("method", ["cut", "split"])
def test_partition_heals_by_itself(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path, method: str
) -> None:
    """``cut``: the underlay switch stops forwarding across the split (the wire); ``split``:
    faults.split's drop rules in every host (a host firewall: sends across fail with EPERM)."""
    g = gossip_config(fast_config)
    lab = make_lab(f"fpart{method[0]}", 4)
    key = keygen(tmp_path / "key")
    lab.start_daemons(key_file=key, backend="vxlan", extra_args=["--config", str(fast_config)])
    names = [h.name for h in lab.hosts]
    wait_until(all_alive(lab, names), 60, "4 daemons alive", lab)
    wait_until(lambda: all(lab.ping_matrix(count=1, timeout=1).values()), 30, "pings", lab)
    left, right = lab.hosts[:2], lab.hosts[2:]

    def states(observers: list[Host], others: list[Host]) -> set[str | None]:
        return {
            table(lab.daemons[o.name]).get(x.name, {}).get("state")
            for o in observers
            for x in others
        }

    if method == "cut":
        for a in left:
            for b in right:
                faults.cut(lab, a, b)
    else:
        faults.split(lab, left, right)
    _, dead_by = crash_window(g, len(names))
    # Until each side sees the other dead, nobody may doubt its own side (no loss there).
    own: set[str | None] = set()
    deadline = time.monotonic() + 2 * dead_by + 10
    while time.monotonic() < deadline:
        own |= states(left, left) | states(right, right)
        if states(left, right) == {"dead"} and states(right, left) == {"dead"}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(
            f"sides not dead to each other within {2 * dead_by + 10:.0f}s: "
            f"{states(left, right)} {states(right, left)}"
        )
    assert own == {"alive"}, f"a member doubted its own side during the partition: {own}"
    # Dead for longer than reap_after: the other side's routes are gone on each side.
    wait_until(
        lambda: all(
            routes(h) == {p.subnet for p in side if p is not h}
            for side in (left, right)
            for h in side
        ),
        g.reap_after + 15,
        "routes to the other side reaped",
        lab,
    )
    assert not lab.ping(left[0].container_ns, right[0].container_ip, count=1, timeout=1)

    faults.heal_all(lab)
    # Healing needs a dead probe (every dead_probe_interval) to get through, a refutation and a
    # push-pull answer back; allow many rounds of each.
    heal_by = 10 * g.dead_probe_interval + g.push_pull_interval + 20
    wait_until(all_alive(lab, names), heal_by, "everyone alive again after the heal", lab)
    wait_until(
        lambda: all(routes(h) == {p.subnet for p in lab.hosts if p is not h} for h in lab.hosts),
        20,
        "every route back",
        lab,
    )
    wait_until(
        lambda: all(lab.ping_matrix(count=1, timeout=1).values()),
        30,
        "every container to ping every other after the heal",
        lab,
    )
    for d in lab.daemons.values():
        assert d.alive()


def test_send_error_keeps_daemon_alive(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    """A local firewall dropping some outgoing gossip (sendto fails with EPERM) is loss, nothing
    more: the daemon keeps running and answering, and the mesh stays whole."""
    lab = make_lab("fsend", 3)
    key = keygen(tmp_path / "key")
    lab.start_daemons(key_file=key, backend="host-gw", extra_args=["--config", str(fast_config)])
    names = [h.name for h in lab.hosts]
    wait_until(all_alive(lab, names), 60, "3 daemons alive", lab)
    h1 = lab.hosts[0]
    faults.loss(h1.ns, 30, "udp", DEFAULT_GOSSIP_PORT, "out")
    d = lab.daemons["h1"]
    # Many refusals, each counted as what it is, while the daemon keeps answering.
    wait_until(
        lambda: counters(d).get("send_error.eperm", 0) >= 10,
        30,
        "h1 to count 10 refused sends (send_error.eperm)",
        lab,
    )
    assert faults.dropped(h1.ns) >= 10
    st = request(d.socket_path, "status", timeout=10)
    assert st.get("lost_sends", {}).get("eperm", 0) >= 10, st.get("lost_sends")
    assert st["counters"]["send_error"] >= sum(st["lost_sends"].values())
    faults.heal_all(lab)
    assert table(d), "h1 stopped answering after refused sends: " + _why(d)
    assert d.alive()
    wait_until(all_alive(lab, names), 30, "everyone alive after the heal", lab)
