"""netlink.py's reading of device and address messages (pyroute2's parser, meshd's reduction):
kernel-shaped messages packed here by hand, no kernel, no root."""

from __future__ import annotations

import socket
import struct

from meshd.dataplane import netlink, rtnl_wire
from meshd.dataplane.netlink import Event, LinkInfo


def rta(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def message(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def link_message(kind: int, index: int, name: str, address: bytes, mtu: int, up: bool) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, 1 if up else 0, 0)
    body += rta(3, name.encode() + b"\0") + rta(1, address) + rta(4, struct.pack("=I", mtu))
    body += rta(
        18,
        rta(1, b"vxlan\0")
        + rta(2, rta(1, struct.pack("=I", 42)) + rta(15, struct.pack(">H", 4789))),
    )
    return message(kind, body)


def events(data: bytes) -> list[Event | None]:
    return [
        netlink._event(k, data, off, end) for k, _, off, end in rtnl_wire.messages(data, len(data))
    ]


def test_link_messages_read_as_link_info_and_events() -> None:
    data = link_message(16, 7, "meshd.1", bytes.fromhex("02aabbccddee"), 1450, True)
    info = netlink._link_info(netlink._parse(netlink._pyroute2().ifinfmsg, data, 16))
    assert info == LinkInfo(
        7, "meshd.1", "vxlan", 1450, "02:aa:bb:cc:dd:ee", True, {"vxlan_id": 42, "vxlan_port": 4789}
    )
    data += link_message(17, 8, "gone", bytes.fromhex("02aabbccddef"), 1500, False)
    assert events(data) == [
        Event("link", True, index=7, name="meshd.1", up=True, mtu=1450, lladdr="02:aa:bb:cc:dd:ee"),
        Event("link", False, index=8, name="gone", up=False, mtu=1500, lladdr="02:aa:bb:cc:dd:ef"),
    ]


def test_a_tunnels_four_byte_address_is_not_read_as_six() -> None:
    # pyroute2 reads IFLA_ADDRESS as 6 bytes; here 2 of them would be IFLA_MTU's header.
    data = link_message(16, 9, "tunl0", socket.inet_aton("10.0.0.1"), 1480, False)
    info = netlink._link_info(netlink._parse(netlink._pyroute2().ifinfmsg, data, 16))
    assert (info.mac, info.mtu) == ("0a:00:00:01", 1480)


def test_an_external_ip6tnl_reads_as_its_backend_asked_for_it() -> None:
    # An `ip6tnl external mode any` device as the kernel reports it (6.x): IFLA_IP6TNL_FLAGS
    # with its own IP6_TNL_F_CAP_PER_PACKET bit (0x40000) beside the flag set (0x1), and
    # IFLA_IP6TNL_COLLECT_METADATA as a flag. Only the bits meshd can set are compared.
    data_attrs = (
        rta(1, struct.pack("=I", 2))  # LINK
        + rta(2, socket.inet_pton(socket.AF_INET6, "fd00:99::1"))  # LOCAL
        + rta(8, struct.pack("=I", 0x40001))  # FLAGS
        + rta(9, b"\0")  # PROTO: any
        + rta(19, b"")  # COLLECT_METADATA
    )
    body = struct.pack("=BxHiII", 0, 769, 9, 1, 0)  # ARPHRD_TUNNEL6
    body += rta(3, b"meshd.ip6tnl\0") + rta(4, struct.pack("=I", 1460))
    body += rta(18, rta(1, b"ip6tnl\0") + rta(2, data_attrs))
    info = netlink._link_info(netlink._parse(netlink._pyroute2().ifinfmsg, message(16, body), 16))
    assert (info.kind, info.mtu) == ("ip6tnl", 1460)
    assert info.params == {
        "ip6tnl_link": 2,
        "ip6tnl_local": "fd00:99::1",
        "ip6tnl_flags": 1,
        "ip6tnl_proto": 0,
        "ip6tnl_collect_metadata": True,
    }


def test_address_messages_read_as_events() -> None:
    def addr(kind: int, index: int, ip: str, plen: int, flags: int) -> bytes:
        body = struct.pack("=BBBBI", socket.AF_INET, plen, flags, 0, index)
        return message(kind, body + rta(2, socket.inet_aton(ip)) + rta(1, socket.inet_aton(ip)))

    data = addr(20, 3, "10.244.1.0", 32, 0) + addr(21, 3, "10.244.1.1", 24, 1)
    assert events(data) == [
        Event("addr", True, index=3, dst="10.244.1.0"),
        Event("addr", False, index=3, dst="10.244.1.1"),
    ]
    msg = netlink._parse(
        netlink._pyroute2().ifaddrmsg, data, len(addr(20, 3, "1.1.1.1", 1, 0)) + 16
    )
    assert netlink._addr(msg) == (3, "10.244.1.1", 24, True)
