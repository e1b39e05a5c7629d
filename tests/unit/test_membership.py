"""meshd/membership.py: the masquerade follows this node's subnet and reports errors once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshd.errors import DataplaneError
from meshd.membership import Membership


@dataclass
class FakeNat:
    calls: list[tuple[str, bool]] = field(default_factory=list)
    fail: str | None = None

    async def apply(self, subnet: str, *, force: bool = False) -> bool:
        self.calls.append((subnet, force))
        if self.fail:
            raise DataplaneError(self.fail)
        return True


@dataclass
class FakeLocal:
    subnet: str


@dataclass
class FakeNode:
    local: FakeLocal
    crl_der: bytes | None = None


def membership(node: Any, nat: FakeNat | None) -> Membership:
    return Membership(node, None, None, None, 30.0, lambda: None, asyncio.Event(), masquerade=nat)  # type: ignore[arg-type]


def test_masquerade_follows_the_subnet(caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode(FakeLocal("10.244.1.0/24"))
    nat = FakeNat()
    m = membership(node, nat)
    asyncio.run(m.update_masquerade(force=True))
    node.local.subnet = "10.244.7.0/24"  # allocation moved us
    asyncio.run(m.update_masquerade())
    assert nat.calls == [("10.244.1.0/24", True), ("10.244.7.0/24", False)]

    nat.fail = "masquerade: nft: Could not process rule"
    with caplog.at_level(logging.ERROR, logger="meshd"):
        asyncio.run(m.update_masquerade(force=True))
        asyncio.run(m.update_masquerade(force=True))
    assert [r.getMessage() for r in caplog.records] == ["masquerade: nft: Could not process rule"]
    nat.fail = None
    asyncio.run(m.update_masquerade(force=True))
    assert len(nat.calls) == 5


def test_no_masquerade_is_a_no_op() -> None:
    m = membership(FakeNode(FakeLocal("10.244.1.0/24")), None)
    asyncio.run(m.update_masquerade(force=True))  # nothing to call, nothing raised
    assert m.masquerade is None
