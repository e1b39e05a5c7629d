"""subnet.env per family, as flanneld writes it (dataplane/model.py ``subnet_env``)."""

from __future__ import annotations

from meshd.dataplane import model


def test_dual_stack_writes_both_families_ipv4_first_like_flanneld() -> None:
    assert model.subnet_env(
        "10.244.0.0/16",
        "10.244.1.0/24",
        1450,
        True,
        subnet6="fd00:10:244:1::/64",
        network6="fd00:10:244::/48",
    ) == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/48\n"
        "FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )


def test_an_ipv6_only_node_writes_no_ipv4_lines() -> None:
    # The record's ``subnet`` is IPv6 when the node has no IPv4 one (flanneld, EnableIPv4
    # false, writes no FLANNEL_NETWORK either).
    assert model.subnet_env(None, "fd00:1:0:2::/64", 1430, False, network6="fd00:1::/48") == (
        "FLANNEL_IPV6_NETWORK=fd00:1::/48\n"
        "FLANNEL_IPV6_SUBNET=fd00:1:0:2::1/64\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_without_networks_each_subnet_stands_for_its_own() -> None:
    text = model.subnet_env(None, "10.244.1.0/24", 1500, False, subnet6="fd00::/64")
    assert "FLANNEL_NETWORK=10.244.1.0/24\n" in text
    assert "FLANNEL_IPV6_NETWORK=fd00::/64\nFLANNEL_IPV6_SUBNET=fd00::1/64\n" in text


def test_an_ipv6_network_without_an_ipv6_subnet_writes_nothing_of_it() -> None:
    # Until the node has a subnet of a family (an allocation not settled), CNI gets none.
    text = model.subnet_env("10.244.0.0/16", "10.244.1.0/24", 1450, False, network6="fd00::/48")
    assert "IPV6" not in text
