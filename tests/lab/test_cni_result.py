"""Reading the flannel CNI plugin's answers (meshd.lab.cni), without running it."""

from __future__ import annotations

from pathlib import Path

from meshd.lab.cni import netconf, result_addresses


def test_result_addresses_per_family() -> None:
    # The bridge plugin's answer for a dual-stack pod (host-local: one range per family).
    result = {
        "cniVersion": "0.3.1",
        "ips": [
            {"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1"},
            {"version": "6", "address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1"},
            {"version": "6", "address": "fd00:10:244:1::3/64"},  # only the first of a family
            {"version": "4", "address": "not an address"},
        ],
    }
    assert result_addresses(result) == {4: "10.244.1.2", 6: "fd00:10:244:1::2"}
    assert result_addresses({"ips": [{"address": "10.244.2.2/24"}]}) == {4: "10.244.2.2"}
    assert result_addresses({}) == {}


def test_netconf_keeps_each_hosts_state_apart(tmp_path: Path) -> None:
    conf = netconf(tmp_path / "h1" / "subnet.env", tmp_path / "h1" / "cni")
    assert conf["type"] == "flannel" and conf["subnetFile"].endswith("h1/subnet.env")
    assert conf["ipam"] == {"type": "host-local", "dataDir": str(tmp_path / "h1/cni/ipam")}
    # No ranges or routes of our own: the plugin derives both from the subnet file.
    assert "ranges" not in conf["ipam"] and "routes" not in conf["ipam"]
