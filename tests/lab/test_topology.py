"""The lab itself: namespaces, addressing, teardown, traffic helpers and fault injection.

Static host-gw routes stand in for a backend, so these tests need no daemon. Every lab gets a
prefix unique to this process, and each test asserts that nothing named like it is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd import neightable, pki
from meshd.errors import LabError
from meshd.lab import DEFAULT_GOSSIP_PORT, Lab, down, faults, format_matrix, leftover_namespaces
from meshd.lab.namespaces import netns_exists, ns_exec

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)
_no_nft = faults.available() if os.geteuid() == 0 else "needs root"
needs_nft = pytest.mark.skipif(_no_nft is not None, reason=f"{_no_nft}")
needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping (iputils-ping)")

_seq = iter(range(1000))


def _prefix() -> str:
    # Unique per process and test: labs of concurrent runs never collide.
    return f"t{os.getpid() % 100000}x{next(_seq)}"


@pytest.fixture
def prefix() -> Iterator[str]:
    p = _prefix()
    yield p
    left = leftover_namespaces(p)
    down(p)  # never leave anything behind, even when the test failed
    assert left == [], f"namespaces left behind: {left}"


@pytest.fixture
def flat3(prefix: str) -> Iterator[Lab]:
    with Lab(prefix, hosts=3) as lab:
        lab.add_host_gw_routes()
        yield lab


# --------------------------------------------------------------------------- no root needed


def test_addressing_flat() -> None:
    lab = Lab("addr", hosts=3)
    h1, h2, h3 = lab.hosts
    assert (h1.ns, h1.container_ns, h1.name) == ("addr-h1", "addr-c1", "h1")
    assert (h2.underlay_ip, h2.underlay_cidr) == ("10.99.0.2", "10.99.0.2/24")
    assert (h3.subnet, h3.gateway, h3.container_ip) == ("10.244.3.0/24", "10.244.3.1", "10.244.3.2")
    assert h1.router_ip is None
    assert lab.namespaces == ["addr-ul", "addr-h1", "addr-c1", "addr-h2", "addr-c2", "addr-h3",
                              "addr-c3"]  # fmt: skip


def test_addressing_routed_alternates_segments() -> None:
    lab = Lab("addr", hosts=4, routed=True)
    assert [h.segment for h in lab.hosts] == [1, 2, 1, 2]
    assert [h.underlay_ip for h in lab.hosts] == ["10.99.1.1", "10.99.2.2", "10.99.1.3",
                                                  "10.99.2.4"]  # fmt: skip
    assert [h.router_ip for h in lab.hosts[:2]] == ["10.99.1.254", "10.99.2.254"]
    assert lab.router_ns == "addr-rt"


def test_configurable_networks() -> None:
    lab = Lab("addr", hosts=2, underlay="192.168.50.0/24", pod_network="172.20.0.0/16")
    assert lab.hosts[1].underlay_ip == "192.168.50.2"
    assert lab.hosts[1].subnet == "172.20.2.0/24"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "Bad-Prefix"}, "prefix"),
        ({"hosts": 0}, "at least one"),
        ({"hosts": 300}, "do not fit"),
        ({"hosts": 7, "underlay": "10.99.0.0/29"}, "do not fit"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabError, match=message):
        Lab(**kwargs)  # type: ignore[arg-type]


def test_daemon_argv(tmp_path: Path) -> None:
    lab = Lab("argv", hosts=2, workdir=tmp_path)
    h2 = lab.hosts[1]
    argv = lab.daemon_argv(h2, key_file="/k", backend="vxlan", seeds=lab.seeds_for(h2), port=7950)
    assert argv[:4] == [sys.executable, "-m", "meshd", "join"]
    assert argv[4] == f"10.99.0.1:{DEFAULT_GOSSIP_PORT}"
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert flags == {
        "--name": "h2",
        "--public-ip": "10.99.0.2",
        "--iface": "eth0",
        "--subnet": "10.244.2.0/24",
        "--backend": "vxlan",
        "--port": "7950",
        "--key-file": "/k",
        "--state-dir": f"{tmp_path}/h2/state",
        "--socket": f"{tmp_path}/h2/meshd.sock",
        "--subnet-env": f"{tmp_path}/h2/subnet.env",
        # certificate mode by default: the lab's throwaway CA certified h2
        "--ca": f"{tmp_path}/ca/ca.crt",
        "--cert": f"{tmp_path}/ca/h2.crt",
    }
    assert lab.seeds_for(lab.hosts[0]) == []
    cert = pki.load_certificate(tmp_path / "ca" / "h2.crt")
    assert (cert.name, cert.public_ip, cert.grant.subnet) == ("h2", "10.99.0.2", "10.244.2.0/24")
    assert (tmp_path / "ca" / "h2.key").stat().st_mode & 0o777 == 0o600
    lab.certificates = False
    assert "--ca" not in lab.daemon_argv(h2, key_file="/k", backend="vxlan")


def test_default_port_matches_config() -> None:
    from meshd.config import DEFAULT_PORT

    assert DEFAULT_PORT == DEFAULT_GOSSIP_PORT


def test_format_matrix() -> None:
    text = format_matrix({("h1", "h2"): True, ("h2", "h1"): False}, ["h1", "h2"])
    assert text.splitlines()[1].split() == ["h1", "-", "ok"]
    assert text.splitlines()[2].split() == ["h2", "FAIL", "-"]


# --------------------------------------------------------------------------- real namespaces


@pytest.mark.root
@needs_root
@needs_ping
def test_flat_host_gw_by_hand(flat3: Lab) -> None:
    lab = flat3
    assert all(netns_exists(n) for n in lab.namespaces)
    # Forwarding is per namespace and off in a new one: the lab must have switched it on.
    fwd = lab.exec(lab.hosts[0].ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
    assert fwd == "1"
    matrix = lab.ping_matrix()
    assert len(matrix) == 6
    assert all(matrix.values()), format_matrix(matrix, [h.name for h in lab.hosts])
    h1, h2, _ = lab.hosts
    before = lab.link_counters(h1.ns, "eth0")
    assert lab.tcp_transfer(h1.container_ns, h2.container_ns, h2.container_ip, 4 << 20)
    after = lab.link_counters(h1.ns, "eth0")
    assert after["tx_bytes"] - before["tx_bytes"] >= 4 << 20


@pytest.mark.root
@needs_root
def test_ping_matrix_of_a_bigger_lab_finds_the_one_broken_pair(prefix: str) -> None:
    # 10 hosts: the one-process-per-source path (nettool ping-many).
    with Lab(prefix, hosts=10) as lab:
        lab.add_host_gw_routes()
        h1, h10 = lab.hosts[0], lab.hosts[9]
        lab.exec(h1.ns, ["ip", "route", "del", h10.subnet])
        matrix = lab.ping_matrix(timeout=0.5)
        assert len(matrix) == 90
        broken = sorted(pair for pair, ok in matrix.items() if not ok)
        # c10 -> c1 fails too: the echo reply needs h1's route back.
        assert broken == [("h1", "h10"), ("h10", "h1")]


@pytest.mark.root
@needs_root
@needs_ping
def test_unrouted_lab_isolates_containers(prefix: str) -> None:
    with Lab(prefix, hosts=2) as lab:
        h1, h2 = lab.hosts
        assert lab.ping(h1.container_ns, h1.gateway)  # own host: yes
        assert lab.ping(h1.ns, h2.underlay_ip)  # underlay: yes
        assert not lab.ping(h1.container_ns, h2.container_ip, timeout=0.5)  # remote pod: no
        assert not lab.tcp_transfer(h1.container_ns, h2.container_ns, h2.container_ip, 1000,
                                    timeout=1.0)  # fmt: skip


@pytest.mark.root
@needs_root
@needs_ping
def test_routed_underlay_reaches_across_router(prefix: str) -> None:
    with Lab(prefix, hosts=3, routed=True) as lab:
        h1, h2, h3 = lab.hosts
        assert lab.router_ns is not None and netns_exists(lab.router_ns)
        assert lab.ping(h1.ns, h2.underlay_ip)  # segment 1 -> 2 through the router
        assert lab.ping(h2.ns, h3.underlay_ip)
        assert lab.ping(h1.ns, h3.underlay_ip)  # same segment
        # host-gw style routes cannot work across the router: the next hop is not on the link.
        lab.exec(h1.ns, ["ip", "route", "add", h2.subnet, "via", h2.underlay_ip, "dev", "eth0",
                         "onlink"])  # fmt: skip
        assert not lab.ping(h1.ns, h2.gateway, timeout=0.5)
    assert not netns_exists(f"{prefix}-rt")


@pytest.mark.root
@needs_root
def test_teardown_kills_spawned_processes(prefix: str) -> None:
    lab = Lab(prefix, hosts=1).build()
    try:
        proc = lab.spawn(lab.hosts[0].ns, ["sleep", "300"])
        # A grandchild nobody tracks, inside one of our namespaces.
        lab.exec(lab.hosts[0].container_ns, ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"])
        stray = [p for p in _pids_in(lab.hosts[0].container_ns)]
        assert stray
        workdir = lab.workdir
        assert workdir.is_dir()
    finally:
        problems = lab.teardown()
    assert problems == []
    assert proc.poll() is not None
    assert not any(_alive(p) for p in stray)
    assert not workdir.exists()
    assert leftover_namespaces(prefix) == []


@pytest.mark.root
@needs_root
def test_partial_build_failure_cleans_up(prefix: str) -> None:
    # An MTU the kernel refuses makes the underlay batch fail after the namespaces exist.
    with pytest.raises(LabError), Lab(prefix, hosts=3, mtu=10):
        pass
    assert leftover_namespaces(prefix) == []


@pytest.mark.root
@needs_root
def test_existing_namespace_is_not_taken_over(prefix: str) -> None:
    subprocess.run(["ip", "netns", "add", f"{prefix}-h2"], check=True)
    try:
        with pytest.raises(LabError, match="already exists"):
            Lab(prefix, hosts=2).build()
        # Not ours: a refused build must leave it alone.
        assert netns_exists(f"{prefix}-h2")
        assert leftover_namespaces(prefix) == [f"{prefix}-h2"]
    finally:
        subprocess.run(["ip", "netns", "del", f"{prefix}-h2"], check=True)


@pytest.mark.root
@needs_root
def test_namespace_taken_during_build_is_not_deleted(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone creates h2 between the "exists?" check and the batch: the batch fails on it, and
    # the cleanup must delete what the batch made before that line, not h2.
    import meshd.lab.topology as topo

    taken = f"{prefix}-h2"
    real = netns_exists
    monkeypatch.setattr(topo, "netns_exists", lambda n: False if n == taken else real(n))
    subprocess.run(["ip", "netns", "add", taken], check=True)
    try:
        with pytest.raises(LabError, match="cannot create"):
            Lab(prefix, hosts=2).build()
        assert leftover_namespaces(prefix) == [taken]
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=True)


@pytest.mark.root
@needs_root
def test_keep_then_down(prefix: str) -> None:
    with Lab(prefix, hosts=2, keep=True) as lab:
        proc = lab.spawn(lab.hosts[0].ns, ["sleep", "300"])
        workdir = lab.workdir
    assert leftover_namespaces(prefix) == sorted(lab.namespaces)
    assert proc.poll() is None
    removed = down(prefix)
    assert sorted(removed) == sorted(lab.namespaces)
    assert leftover_namespaces(prefix) == []
    proc.wait(5)
    assert not workdir.exists()


BIG = 40  # 1,640 underlay entries: past the default gc_thresh3 (1024)


@pytest.mark.root
@needs_root
def test_a_big_lab_raises_the_neighbour_thresholds_and_puts_them_back(prefix: str) -> None:
    before = neightable.read()
    assert before is not None
    if not neightable.short(neightable.lab_entries(BIG), before[2]):
        pytest.skip(f"this machine's gc_thresh3 ({before[2]}) already holds {BIG} hosts")
    with Lab(prefix, hosts=BIG) as lab:
        during = neightable.read()
        assert during is not None and during[2] > before[2]
        assert not neightable.short(neightable.lab_entries(BIG), during[2])
        # Every host reaches every other on the underlay: all N·(N−1) entries fit.
        ips = " ".join(h.underlay_ip for h in lab.hosts)
        script = f"for ip in {ips}; do ping -c1 -W2 -q $ip >/dev/null || echo $ip; done"
        failed = lab._parallel(lambda h: ns_exec(h.ns, ["sh", "-c", script]).stdout, lab.hosts)
        assert "".join(failed) == ""
    assert neightable.read() == before
    # Kept: the values it found travel in the state file, and `down` restores them.
    with Lab(prefix, hosts=BIG, keep=True):
        pass
    assert neightable.read() != before
    down(prefix)
    assert neightable.read() == before


@pytest.mark.root
@needs_root
def test_exception_inside_keep_lab_still_cleans(prefix: str) -> None:
    with pytest.raises(RuntimeError), Lab(prefix, hosts=1, keep=True):
        raise RuntimeError("boom")
    assert leftover_namespaces(prefix) == []


@pytest.mark.root
@needs_root
def test_rp_filter(flat3: Lab) -> None:
    flat3.set_rp_filter(1)
    h = flat3.hosts[0]
    for conf in ("all", "default", "eth0", "br"):
        value = flat3.exec(h.ns, ["cat", f"/proc/sys/net/ipv4/conf/{conf}/rp_filter"]).stdout
        assert value.strip() == "1"
    flat3.set_rp_filter(0)


@pytest.mark.root
@needs_root
def test_start_daemons_spawns_and_teardown_stops(prefix: str) -> None:
    # The daemon's own behaviour is tested elsewhere: here only the plumbing (argv, log, cleanup).
    with Lab(prefix, hosts=2) as lab:
        key = lab.workdir / "key"
        key.write_text("dummy\n")
        daemons = lab.start_daemons(key_file=key, backend="host-gw")
        assert [d.host.name for d in daemons] == ["h1", "h2"]
        assert daemons[1].argv[4] == f"{lab.hosts[0].underlay_ip}:{DEFAULT_GOSSIP_PORT}"
        # start_daemon opens the log before it spawns: no waiting needed.
        assert all(d.log_path.exists() for d in daemons)
        lab.stop_daemon("h2", signal.SIGKILL)
        assert lab.daemons["h2"].proc is None


@pytest.mark.root
@needs_root
@needs_ping
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_capture_sees_traffic_on_the_underlay(flat3: Lab) -> None:
    h1, h2, _ = flat3.hosts
    lines = flat3.capture(
        flat3.ul_ns,
        h2.port,
        f"icmp and src host {h1.container_ip}",
        lambda: flat3.ping(h1.container_ns, h2.container_ip, count=2),
        count=1,
    )
    assert len(lines) == 1 and f"{h1.container_ip} > {h2.container_ip}" in lines[0], lines
    # Nothing matches: returns empty after the timeout instead of hanging.
    assert flat3.capture(flat3.ul_ns, h2.port, "udp port 9", timeout=0.5) == []


@pytest.mark.root
@needs_root
@needs_ping
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_recording_keeps_every_packet_of_a_block(flat3: Lab) -> None:
    h1, h2, _ = flat3.hosts
    with flat3.recording(flat3.ul_ns, "any", "icmp") as lines:
        assert flat3.ping(h1.container_ns, h2.container_ip, count=3)
        assert lines == []  # filled when the block ends
    # 3 requests and 3 replies, each seen entering the switch at one port and leaving at another
    wanted = f"{h1.container_ip} > {h2.container_ip}: ICMP echo request"
    assert sum(wanted in line for line in lines) == 6, lines
    assert {line.split()[1] for line in lines} == {h1.port, h2.port}  # named in the namespace
    assert list(flat3.workdir.glob("rec-*.pcap")) == []


@pytest.mark.root
@needs_root
def test_sigterm_tears_the_lab_down(prefix: str) -> None:
    # A separate process, as `meshd lab` would be, killed politely mid-run.
    code = f"""
import sys, time
from meshd.lab import Lab, cleanup_on_signals
with cleanup_on_signals(), Lab({prefix!r}, hosts=2) as lab:
    lab.spawn(lab.hosts[0].ns, ["sleep", "300"])
    print("up", flush=True)
    time.sleep(60)  # parked: the test's SIGTERM ends this long before
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    assert len(leftover_namespaces(prefix)) == 5
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    assert leftover_namespaces(prefix) == []


# --------------------------------------------------------------------------- faults


@pytest.mark.root
@needs_root
@needs_nft
def test_loss_drops_a_share(flat3: Lab) -> None:
    h1, h2, _ = flat3.hosts
    port = DEFAULT_GOSSIP_PORT
    assert flat3.udp_count(h1.ns, h2.ns, h2.underlay_ip, port, 1000) == 1000
    faults.loss(h2.ns, 30, "udp", port)
    got = flat3.udp_count(h1.ns, h2.ns, h2.underlay_ip, port, 2000)
    assert 1200 <= got <= 1600  # expect 1400, sd ~20
    assert faults.dropped(h2.ns) == 2000 - got
    # Re-applying replaces (does not stack) and other ports pass untouched.
    faults.loss(h2.ns, 30, "udp", port)
    assert len(faults.tables(h2.ns)) == 1
    assert flat3.udp_count(h1.ns, h2.ns, h2.underlay_ip, port + 1, 500) == 500
    # Routed through h2 to its container: the forward hook applies too.
    routed = flat3.udp_count(h1.container_ns, h2.container_ns, h2.container_ip, port, 1000)
    assert 550 <= routed <= 850
    assert faults.heal(h2.ns, "loss") == [f"meshd_fault_loss_udp_{port}"]
    assert flat3.udp_count(h1.ns, h2.ns, h2.underlay_ip, port, 1000) == 1000


@pytest.mark.root
@needs_root
@needs_nft
@needs_ping
def test_partition_and_heal(flat3: Lab) -> None:
    h1, h2, h3 = flat3.hosts
    faults.split(flat3, [h1], [h2, h3])
    assert flat3.udp_count(h2.ns, h1.ns, h1.underlay_ip, 7000, 200) == 0
    assert flat3.udp_count(h1.ns, h3.ns, h3.underlay_ip, 7000, 200) == 0
    assert not flat3.ping(h1.container_ns, h2.container_ip, timeout=0.5)
    assert flat3.udp_count(h2.ns, h3.ns, h3.underlay_ip, 7000, 200) == 200  # same side
    assert "meshd_fault_part" in faults.show(h1.ns)
    faults.heal_all(flat3)
    assert flat3.udp_count(h2.ns, h1.ns, h1.underlay_ip, 7000, 200) == 200
    assert all(faults.tables(h.ns) == [] for h in flat3.hosts)


@pytest.mark.root
@needs_root
@needs_nft
@needs_ping
def test_l2_cut_on_underlay_switch(flat3: Lab) -> None:
    h1, h2, h3 = flat3.hosts
    faults.cut(flat3, h1, h2)
    assert flat3.udp_count(h1.ns, h2.ns, h2.underlay_ip, 7000, 200) == 0
    assert flat3.udp_count(h1.ns, h3.ns, h3.underlay_ip, 7000, 200) == 200
    assert faults.heal(flat3.ul_ns, "l2") == ["meshd_fault_l2_h1_h2"]
    # ARP for h2 failed during the cut and is retried only every second: wait for it first.
    assert flat3.ping(h1.ns, h2.underlay_ip, count=1, timeout=3)
    assert flat3.udp_count(h1.ns, h2.ns, h2.underlay_ip, 7000, 200) == 200


def _pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
