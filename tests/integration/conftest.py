"""Real-kernel fixtures for the integration tests: hosts come from ``meshd.lab.Lab``,
the project's one way to build a lab, and are torn down even when a test fails.

``lab(n)`` builds Lab's flat topology (see its docstring: ``<p>-ul`` with bridge ``ulbr``; host
``<p>-h<i>`` with ``eth0`` 10.99.0.<i>/24 and bridge ``br`` holding 10.244.<i>.1/24; container
``<p>-c<i>`` at 10.244.<i>.2) with a unique prefix ``mdt<random>``, then adds what these tests
want on top of it:

* strict reverse-path filtering on every host, as hardened hosts run it (the mesh must not rely
  on it being off);
* a default route via 10.99.0.254 (an upstream router that is never there), as real hosts have,
  so that ``discover_underlay`` can find the underlay through it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshd.lab import Lab, leftover_namespaces

UPSTREAM = "10.99.0.254"


@pytest.fixture(autouse=True)
def _need_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture
def lab() -> Iterator[Callable[..., Lab]]:
    """``build(n, **topology options) -> Lab``: n hosts on one underlay switch, each with a
    container."""
    labs: list[Lab] = []

    def build(n: int, **kw: Any) -> Lab:
        lab = Lab(f"mdt{secrets.token_hex(3)}-{len(labs)}", hosts=n, **kw)
        labs.append(lab)
        lab.build()
        lab.set_rp_filter(1)
        for h in lab.hosts:
            lab.exec(h.ns, ["ip", "route", "add", "default", "via", UPSTREAM, "dev", "eth0"])
        return lab

    try:
        yield build
    finally:
        left: list[str] = []
        for lab in reversed(labs):
            problems = lab.teardown()
            left += problems + leftover_namespaces(lab.prefix)
        assert not left, f"left behind: {left}"
