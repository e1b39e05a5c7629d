"""The UML runner: module closure (pure), and real boots that use the guest's ipip.

The boots need root and either a built cache (.ci/install-system-deps.sh builds it) or apt-get to
build one (~40 MB download, a few seconds). Each boot takes ~3 s plus the command.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from meshd.errors import LabError
from meshd.lab import uml

DEP = """\
kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko
kernel/net/ipv4/ip_tunnel.ko:
kernel/net/ipv4/tunnel4.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko kernel/lib/crc-ccitt.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/lib/crc-ccitt.ko:
kernel/drivers/net/veth.ko:
"""


def test_module_closure_puts_dependencies_first() -> None:
    deps = uml.parse_modules_dep(DEP)
    order = uml.module_closure(deps, ["ipip", "bridge", "veth", "tunnel4"])
    assert set(order) == set(deps)
    assert len(order) == len(set(order))
    for ko, needs in deps.items():
        assert all(order.index(d) < order.index(ko) for d in needs), ko
    assert order.index("kernel/net/llc/llc.ko") < order.index("kernel/net/802/stp.ko")


def test_module_names() -> None:
    assert uml.module_name("kernel/lib/crc-ccitt.ko") == "crc_ccitt"
    assert uml.module_name("kernel/net/ipv4/ipip.ko.xz") == "ipip"
    deps = uml.parse_modules_dep(DEP)
    assert uml.module_closure(deps, ["crc-ccitt"]) == ["kernel/lib/crc-ccitt.ko"]
    with pytest.raises(LabError, match="nf_tables"):
        uml.module_closure(deps, ["nf_tables"])


def test_hidden_paths() -> None:
    assert uml.hidden_in_guest("/tmp/x")
    assert uml.hidden_in_guest("/run")
    assert not uml.hidden_in_guest("/var/cache/meshd/uml")
    assert not uml.hidden_in_guest("/tmpfoo")


# --------------------------------------------------------------------------- real boots

_why = uml.available()
needs_uml = pytest.mark.skipif(_why is not None, reason=f"UML runner unavailable: {_why}")
PROJECT = Path(__file__).resolve().parents[2]


def _uml_processes(kernel: Path) -> list[int]:
    """UML processes booted by this test process (others may run guests at the same time):
    UML forks its helpers, so they all carry our umid on their command line."""
    mine = f"umid=meshd-{os.getpid()}-".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "exe") == str(kernel) and mine in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
@pytest.mark.root
@needs_uml
def test_guest_has_ipip_and_reports_status(tmp_path: Path) -> None:
    # Both under /tmp, which the guest's tmpfs hides unless the runner shares them again.
    rw_dir, ro_dir = tmp_path / "rw", tmp_path / "ro"
    rw_dir.mkdir()
    ro_dir.mkdir()
    (ro_dir / "input").write_text("from the host\n")
    res = uml.run(
        f"""
        set -e
        test -d /sys/module/ipip
        ip link add x type ipip local 192.0.2.1   # NBMA device, as the ipip backend makes
        ip -d link show x | grep -q 'ipip.*local 192.0.2.1'
        echo written > {rw_dir}/proof
        cat {ro_dir}/input
        ! touch {ro_dir}/nope 2>/dev/null
        uname -r
        exit 7
        """,
        rw_dirs=[rw_dir],
        ro_dirs=[ro_dir],
        timeout=120,
    )
    assert res.rc == 7, res.console
    kern = uml.find_kernel()
    assert kern is not None
    assert res.output.strip().splitlines() == ["from the host", kern.release]
    assert (rw_dir / "proof").read_text() == "written\n"
    assert res.boot_seconds < 30
    assert _uml_processes(kern.kernel) == []


@pytest.mark.slow
@pytest.mark.root
@needs_uml
def test_two_host_ipip_lab_inside_guest() -> None:
    # The project's own topology module, run by this very interpreter inside the guest.
    code = textwrap.dedent(
        """
        from meshd.lab import Lab, format_matrix
        with Lab("uip", hosts=2) as lab:
            for h in lab.hosts:
                net = h.subnet.split("/")[0]
                batch = [
                    f"link add name tun0 type ipip local {h.underlay_ip} dev eth0",
                    f"addr add {net}/32 dev tun0",
                    "link set dev tun0 mtu 1480 up",
                ] + [
                    f"route add {p.subnet} via {p.underlay_ip} dev tun0 onlink"
                    for p in lab.hosts if p is not h
                ]
                lab.exec(h.ns, ["ip", "-batch", "-"], input="\\n".join(batch) + "\\n")
            m = lab.ping_matrix(count=2)
            print(format_matrix(m, [h.name for h in lab.hosts]))
            h1, h2 = lab.hosts
            assert all(m.values()), "ping"
            assert lab.tcp_transfer(h1.container_ns, h2.container_ns, h2.container_ip, 1 << 20)
            tun = lab.link_counters(h1.ns, "tun0")
            assert tun["tx_bytes"] >= 1 << 20, tun
            # MTU 1480: a DF packet of 1480 bytes (1452 + 28) crosses, one of 1481 cannot.
            df = ["ping", "-c1", "-W2", "-M", "do", "-s"]
            ok = lab.exec(h1.container_ns, [*df, "1452", h2.container_ip], check=False)
            big = lab.exec(h1.container_ns, [*df, "1453", h2.container_ip], check=False)
            assert ok.returncode == 0 and big.returncode != 0, (ok.stdout, big.stdout)
            print("IPIP-OK")
        """
    )
    rc, out = uml.run_in_uml([sys.executable, "-c", code], timeout=180, cwd=PROJECT)
    assert rc == 0, out
    assert "IPIP-OK" in out


@pytest.mark.slow
@pytest.mark.root
@needs_uml
def test_timeout_kills_the_guest() -> None:
    with pytest.raises(LabError, match="timed out"):
        uml.run("sleep 600", timeout=6)
    kern = uml.find_kernel()
    assert kern is not None
    assert _uml_processes(kern.kernel) == []


@pytest.mark.slow
@pytest.mark.root
@needs_uml
def test_two_host_ip6tnl_lab_inside_guest() -> None:
    # ipip over an IPv6-only underlay: one ip6tnl per host, for every peer. The kernel refuses
    # an "onlink" IPv6 next hop on the tunnel while the underlay's connected route covers it
    # ("Nexthop has invalid gateway or device mismatch"), so the NBMA device is flow-based
    # ("external") and each route names its outer destination: "encap ip6 dst <peer>".
    code = textwrap.dedent(
        """
        from meshd.lab import Lab, format_matrix
        with Lab("uip6", hosts=2, ipv6=True, underlay_family="ipv6") as lab:
            for h in lab.hosts:
                batch = [
                    "link add name tun0 type ip6tnl external",
                    f"addr add {h.subnet.split('/')[0]}/32 dev tun0",
                    f"addr add {h.subnet6.split('/')[0]}/128 dev tun0 nodad",
                    "link set dev tun0 mtu 1460 up",
                ]
                for p in lab.hosts:
                    if p is not h:
                        batch += [
                            f"route add {s} encap ip6 dst {p.underlay_ip} dev tun0"
                            for s in p.subnets
                        ]
                lab.exec(h.ns, ["ip", "-batch", "-"], input="\\n".join(batch) + "\\n")
            names = [h.name for h in lab.hosts]
            h1, h2 = lab.hosts
            for family in (4, 6):
                m = lab.ping_matrix(count=2, family=family)
                print(format_matrix(m, names))
                assert all(m.values()), f"ping IPv{family}"
            assert lab.tcp_transfer(h1.container_ns, h2.container_ns, h2.container_ip6, 1 << 20)
            assert lab.tcp_transfer(h2.container_ns, h1.container_ns, h1.container_ip, 1 << 20)
            tun = lab.link_counters(h1.ns, "tun0")
            assert tun["tx_bytes"] >= 1 << 20, tun
            print("IP6TNL-OK")
        """
    )
    rc, out = uml.run_in_uml([sys.executable, "-c", code], timeout=180, cwd=PROJECT)
    assert rc == 0, out
    assert "IP6TNL-OK" in out
