"""prefix.py accepts and computes exactly what ipaddress does (its fast path included)."""

from __future__ import annotations

import ipaddress

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
