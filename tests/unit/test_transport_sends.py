"""meshd/transport.py sees its own lost sends: counted by reason, logged once with what to do.

A real UDP socket on loopback: a datagram to a port nobody listens on comes back as an ICMP port
unreachable, which IP_RECVERR puts on the socket's error queue. ENOBUFS (a full neighbour table)
needs a full kernel table, so that case is a fake datagram transport raising it as asyncio does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, cast

import pytest

from meshd.errors import ConfigError
from meshd.gossip.node import GossipNode
from meshd.gossip.security import Sealer
from meshd.transport import Transport, reason_of


class StubNode:
    """The three things `Transport._flush` asks of the core."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, tuple[str, int], None]] = []

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int], None]]:
        out, self.outbox = self.outbox, []
        return out


class PlainSealer:
    def seal(self, payload: bytes, wall: float, recipient: object) -> bytes:
        return payload


def transport(node: StubNode, host: str = "127.0.0.1") -> Transport:
    return Transport(
        cast(GossipNode, node), cast(Sealer, PlainSealer()), (host, 0), wall=lambda: 0.0
    )


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def closed_port(host: str = "127.0.0.1") -> int:
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_for(cond: Any, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_reasons_are_errno_names() -> None:
    assert reason_of(errno.ENOBUFS) == "enobufs"
    assert reason_of(errno.EHOSTUNREACH) == "ehostunreach"
    assert reason_of(None) == "errno0"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_icmp_error_is_counted_once_and_does_not_eat_the_next_send(host: str) -> None:
    """The same for IPv4 (IP_RECVERR, ICMP) and IPv6 (IPV6_RECVERR, ICMPv6)."""

    async def main() -> None:
        node = StubNode()
        t = transport(node, host)
        await t.start()
        assert t._sock is not None and t._sock.family == family(host)
        sink = socket.socket(family(host), socket.SOCK_DGRAM)
        sink.bind((host, 0))
        sink.settimeout(5)
        try:
            dead = (host, closed_port(host))
            # The ICMP error of the first datagram is pending on the socket when the second is
            # sent: the kernel fails that sendto with it, and the transport must send it again.
            node.outbox = [(b"to-nobody", dead, None), (b"to-sink", sink.getsockname()[:2], None)]
            await t._flush()
            assert sink.recv(100) == b"to-sink"
            await wait_for(lambda: t.counters["send_error"] >= 1, "the refused send")
            # Another round: the loop stays quiet and each error is counted once.
            node.outbox = [(b"again", dead, None)]
            await t._flush()
            await wait_for(lambda: t.counters["send_error"] >= 2, "the second refused send")
            await asyncio.sleep(0.05)
            assert t.counters["send_error.econnrefused"] == 2
            assert t.counters["send_error"] == 2
            assert t.counters["out"] == 3  # the kernel took all three
            assert t.lost_sends() == {"econnrefused": 2}
            assert t._sock is not None
            with pytest.raises(BlockingIOError):  # the error queue was drained
                t._sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
        finally:
            t.close()
            sink.close()

    asyncio.run(main())


class FullNeighbourTable:
    """A datagram transport whose sendto fails as the kernel's does when the neighbour table
    is full and the socket set IP_RECVERR (asyncio hands the error to the protocol)."""

    def __init__(self, protocol: asyncio.DatagramProtocol) -> None:
        self.protocol = protocol
        self.sent = 0

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent += 1
        self.protocol.error_received(OSError(errno.ENOBUFS, "No buffer space available"))

    def close(self) -> None:
        pass


def test_enobufs_is_counted_and_logged_once_naming_the_sysctls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> Transport:
        node = StubNode()
        t = transport(node)
        await t.start()
        real = t._transport
        assert t._protocol is not None and real is not None
        fake = FullNeighbourTable(t._protocol)
        t._transport = cast(asyncio.DatagramTransport, fake)
        try:
            node.outbox = [(b"x", ("127.0.0.1", 9), None)] * 3
            await t._flush()
        finally:
            real.close()
        assert fake.sent == 3  # no retry: the queue held nothing to blame
        return t

    with caplog.at_level(logging.WARNING, logger="meshd.transport"):
        t = asyncio.run(main())
    assert t.counters["send_error.enobufs"] == 3 and t.counters["send_error"] == 3
    assert t.counters["out"] == 0
    said = [r for r in caplog.records if getattr(r, "event", None) == "send_failed"]
    assert len(said) == 1
    assert said[0].__dict__["reason"] == "enobufs"
    assert "net.ipv4.neigh.default.gc_thresh3" in said[0].getMessage()


def test_a_member_of_the_other_family_is_a_lost_send_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An IPv6 socket cannot carry a datagram to an IPv4 address (nor the reverse): counted as
    ``family`` and logged once, and the datagrams to members it can reach still go out."""

    async def main() -> tuple[Transport, bytes]:
        node = StubNode()
        t = transport(node, "::1")
        await t.start()
        sink = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sink.bind(("::1", 0))
        sink.settimeout(5)
        try:
            node.outbox = [
                (b"v4", ("127.0.0.1", 9), None),
                (b"v4 again", ("192.0.2.1", 9), None),
                (b"v6", sink.getsockname()[:2], None),
            ]
            await t._flush()
            return t, sink.recv(100)
        finally:
            t.close()
            sink.close()

    with caplog.at_level(logging.WARNING, logger="meshd.transport"):
        t, got = asyncio.run(main())
    assert got == b"v6"
    assert t.lost_sends() == {"family": 2} and t.counters["out"] == 1
    said = [r for r in caplog.records if getattr(r, "event", None) == "send_failed"]
    assert [r.__dict__["reason"] for r in said] == ["family"]
    assert "IPv6-only host" in said[0].getMessage()


def test_binding_an_address_this_host_lacks_is_one_line_with_brackets() -> None:
    async def main() -> None:
        t = transport(StubNode(), "2001:db8::99")
        with pytest.raises(ConfigError, match=r"^port: cannot bind UDP \[2001:db8::99\]:0: "):
            await t.start()

    asyncio.run(main())


def test_enobufs_on_an_ipv6_socket_names_the_ipv6_table(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        t = transport(StubNode(), "::1")
        await t.start()
        try:
            t.lost("enobufs")
        finally:
            t.close()

    with caplog.at_level(logging.WARNING, logger="meshd.transport"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "send_failed"]
    assert len(said) == 1
    assert "net.ipv6.neigh.default.gc_thresh3" in said[0] and "(NDP)" in said[0]
    assert "net.ipv4" not in said[0]
