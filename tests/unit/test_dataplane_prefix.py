"""prefix.py accepts and computes exactly what ipaddress does (its fast path included)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshd.dataplane import prefix

octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["00", "01", "256", "-1", "", "a"]))
quad = st.lists(octet, min_size=3, max_size=5).map(".".join)
plen = st.one_of(st.integers(0, 33).map(str), st.sampled_from(["", "08", "024", "x", "-1"]))
cidr = st.one_of(
    st.tuples(quad, plen).map(lambda t: f"{t[0]}/{t[1]}"),
    quad,
    st.text(max_size=20),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: f"{ipaddress.IPv4Address(t[0])}/{t[1]}"
    ),
)


def reference(c: str, strict: bool) -> tuple[int, int] | None:
    try:
        net = ipaddress.IPv4Network(c, strict=strict)
    except ValueError:
        return None
    return int(net.network_address), int(net.broadcast_address)


@given(cidr, st.booleans())
@example("10.244.1.0/24", True)
@example("10.244.1.1/24", True)
@example("10.244.1.1/24", False)
@example("10.244.01.0/24", True)
@example("0.0.0.0/0", True)
@example("10.0.0.0/08", True)
@example("10.0.0.0/255.0.0.0", True)
@example("10.0.0.0", True)
def test_span_is_ipaddress(c: str, strict: bool) -> None:
    assert prefix.span(c, strict) == reference(c, strict)


@given(st.one_of(quad, st.text(max_size=16)))
@example("1.2.3.4")
@example("01.2.3.4")
def test_address_is_ipaddress(a: str) -> None:
    try:
        want: int | None = int(ipaddress.IPv4Address(a))
    except ValueError:
        want = None
    assert prefix.address(a) == want


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_network_address_and_overlaps(ip: int, plen: int) -> None:
    net = ipaddress.IPv4Network((ip, plen), strict=False)
    c = str(net)
    assert prefix.network_address(c) == str(net.network_address)
    other = ipaddress.IPv4Network((ip ^ 0x00010000, 24), strict=False)
    a, b = prefix.span(c), prefix.span(str(other))
    assert a is not None and b is not None
    assert prefix.overlaps(a, b) == net.overlaps(other)
    assert prefix.within(b, a) == other.subnet_of(net)


# --- the address policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "name"),
    [
        ("0.0.0.0/8", "this-network"),
        ("0.255.255.255/32", "this-network"),
        ("127.0.0.0/8", "loopback"),
        ("127.255.0.0/16", "loopback"),
        ("169.254.169.254/32", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("239.255.255.255/32", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "reserved"),
        ("0.0.0.0/0", "this-network"),
        ("160.0.0.0/3", "link-local"),  # contains 169.254/16
        ("1.0.0.0/24", None),
        ("126.255.255.255/32", None),
        ("128.0.0.0/8", None),
        ("169.255.0.0/16", None),
        ("223.255.255.255/32", None),
    ],
)
def test_special_range(cidr: str, name: str | None) -> None:
    s = prefix.span(cidr)
    assert s is not None
    got = prefix.special_range(s)
    assert (got is None) if name is None else (got is not None and got.startswith(name))


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_special_range_agrees_with_ipaddress(addr: int, plen: int) -> None:
    net = ipaddress.IPv4Network((addr, plen), strict=False)
    ranges = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"]
    expected = any(net.overlaps(ipaddress.IPv4Network(r)) for r in ranges)
    s = (int(net.network_address), int(net.broadcast_address))
    assert (prefix.special_range(s) is not None) == expected


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("10.1.2.3", None),
        ("1.1.1.1", None),
        ("169.254.1.1", None),  # link-local is unicast
        ("223.255.255.254", None),
        ("0.0.0.0", "unspecified"),
        ("0.0.0.1", "this-network"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.251", "multicast"),
        ("239.0.0.1", "multicast"),
        ("240.1.1.1", "reserved"),
        ("255.255.255.254", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("10.0.0.256", "not an IPv4 address"),
        ("", "not an IPv4 address"),
        ("::1", "not an IPv4 address"),
    ],
)
def test_unicast_problem(ip: str, why: str | None) -> None:
    got = prefix.unicast_problem(ip)
    assert got is None if why is None else (got is not None and why in got)


@given(st.integers(0, 2**32 - 1))
def test_unicast_agrees_with_ipaddress(value: int) -> None:
    a = ipaddress.IPv4Address(value)
    bad = a.is_unspecified or a.is_loopback or a.is_multicast or a.is_reserved
    bad = bad or a in ipaddress.IPv4Network("0.0.0.0/8")  # ipaddress: "this network"
    assert (prefix.unicast_problem(str(a)) is not None) == bad


@pytest.mark.parametrize(
    ("mac", "why"),
    [
        ("02:00:00:00:00:01", None),
        ("00:00:00:00:00:01", None),
        ("fe:ff:ff:ff:ff:ff", None),
        ("00:00:00:00:00:00", "all zero"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("01:00:5e:7f:ff:fa", "multicast"),
        ("33:33:00:00:00:fb", "multicast"),
        ("ff:00:00:00:00:00", "multicast"),
        ("00:00:00:00:00", "not a MAC"),
        ("00:00:00:00:00:00:00", "not a MAC"),
        ("0000.0000.0001", "not a MAC"),
        ("g0:00:00:00:00:01", "not a MAC"),
        ("", "no VTEP MAC"),
        (None, "no VTEP MAC"),
    ],
)
def test_mac_problem(mac: str | None, why: str | None) -> None:
    got = prefix.mac_problem(mac)
    assert got is None if why is None else (got is not None and why in got)


def test_spans_nested_and_disjoint() -> None:
    items = ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "192.168.0.128/25", "172.16.0.0/30"]
    spans = prefix.Spans((prefix.span(c) or (1, 0), c) for c in items)
    assert len(spans) == 5

    def hit(c: str) -> str | None:
        return spans.overlapping(prefix.span(c) or (1, 0))

    assert hit("10.200.0.0/24") == "10.0.0.0/8"  # inside the /8 only, after the /16 ended
    assert hit("10.1.2.0/24") in ("10.0.0.0/8", "10.1.0.0/16")
    assert hit("192.168.0.0/23") in ("192.168.0.0/24", "192.168.0.128/25")
    assert hit("172.16.0.4/30") is None
    assert hit("11.0.0.0/8") is None
    assert hit("0.0.0.0/0") is not None
    assert prefix.Spans([]).overlapping((0, prefix.ALL)) is None


# -- IPv6 (dual-stack) ----------------------------------------------------------------------------

cidr6 = st.one_of(
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: f"{ipaddress.IPv6Address(t[0])}/{t[1]}"
    ),
    st.text(max_size=30),
)


@given(cidr6, st.booleans())
@example("fd00::/64", True)
@example("fd00::1/64", True)
@example("fd00::1/64", False)
@example("::/0", True)
@example("10.0.0.0/8", True)
def test_span6_is_ipaddress(c: str, strict: bool) -> None:
    try:
        net = ipaddress.IPv6Network(c, strict=strict)
        expected: tuple[int, int] | None = (int(net.network_address), int(net.broadcast_address))
    except ValueError:
        expected = None
    assert prefix.span6(c, strict) == expected


def test_family_span_keeps_the_families_apart() -> None:
    assert prefix.family_span("10.0.0.0/8") == (4, (10 << 24, (11 << 24) - 1))
    assert prefix.family_span("::/127") == (6, (0, 1))
    assert prefix.family_span("junk") is None
    assert prefix.family_span("fd00::1/64") is None  # strict, like span
    assert (prefix.version("fd00::1"), prefix.version("10.0.0.1")) == (6, 4)


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("fd00::1", None),
        ("2001:db8::1", None),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
        ("10.0.0.1", "not an IPv6 address"),
        ("fd00::1%eth0", "has a zone"),
    ],
)
def test_unicast6_problem(ip: str, why: str | None) -> None:
    got = prefix.unicast6_problem(ip)
    assert got is None if why is None else (got is not None and why in got)


def test_underlay_problem_takes_either_family() -> None:
    assert prefix.underlay_problem("fd00::1") is None
    assert prefix.underlay_problem("10.99.0.1") is None
    assert "loopback" in (prefix.underlay_problem("::1") or "")
    assert "loopback" in (prefix.underlay_problem("127.0.0.1") or "")


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_special_range6_agrees_with_ipaddress(addr: int, plen: int) -> None:
    net = ipaddress.IPv6Network((addr, plen), strict=False)
    ranges = ["::/128", "::1/128", "::ffff:0:0/96", "fe80::/10", "ff00::/8"]
    expected = any(net.overlaps(ipaddress.IPv6Network(r)) for r in ranges)
    s = (int(net.network_address), int(net.broadcast_address))
    assert (prefix.special_range_of(6, s) is not None) == expected
