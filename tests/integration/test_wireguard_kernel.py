"""Two wireguard-go ``meshd.wg`` devices, each in its own network *and* mount namespace (the
lab's shape: one filesystem, so each needs a private /run/wireguard), configured only through
meshd's UAPI client: a ping crosses the tunnel, a second apply of the same state is an empty
diff, and a peer removed by hand (``wg``) is put back by the next apply.

Run under ``flock /tmp/meshd-e2e.lock``: it shares the kernel with the other root tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshd.dataplane import wireguard as wg
from meshd.errors import DataplaneError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go"),
]

DEV = "meshd.wg"
PORT = 51820


@dataclass
class Host:
    ns: str
    underlay: str  # its veth address
    overlay: str  # its meshd.wg address (/32), inside subnet
    subnet: str
    private: bytes
    dev: wg.UserspaceDevice | None = None

    @property
    def public(self) -> bytes:
        return wg.public_key(self.private)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def nsx(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, *args)


@pytest.fixture
def pair() -> Iterator[tuple[Host, Host]]:
    tag = f"mdwg{secrets.token_hex(3)}"
    a = Host(f"{tag}-a", "10.98.0.1", "10.244.1.1", "10.244.1.0/24", wg.generate_private_key())
    b = Host(f"{tag}-b", "10.98.0.2", "10.244.2.1", "10.244.2.0/24", wg.generate_private_key())
    made: list[Host] = []
    try:
        for h in (a, b):
            sh("ip", "netns", "add", h.ns)
            made.append(h)
        sh(
            "ip",
            "link",
            "add",
            "wgt0",
            "netns",
            a.ns,
            "type",
            "veth",
            "peer",
            "wgt0",
            "netns",
            b.ns,
        )
        for h in (a, b):
            nsx(h.ns, "ip", "addr", "add", f"{h.underlay}/24", "dev", "wgt0")
            nsx(h.ns, "ip", "link", "set", "wgt0", "up")
            nsx(h.ns, "ip", "link", "set", "lo", "up")
            h.dev = wg.start_device(DEV, h.ns, private_run=True)
            nsx(h.ns, "ip", "addr", "add", f"{h.overlay}/32", "dev", DEV)
            nsx(h.ns, "ip", "link", "set", DEV, "up")
        for h, other in ((a, b), (b, a)):
            nsx(h.ns, "ip", "route", "add", other.subnet, "dev", DEV, "src", h.overlay)
        yield a, b
    finally:
        for h in made:
            if h.dev is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.dev.pid, signal.SIGTERM)
            subprocess.run(["ip", "netns", "del", h.ns], check=False)
        for h in made:
            left = os.path.exists(f"/run/netns/{h.ns}") or (
                h.dev is not None and wg.find_device(DEV, h.ns) is not None
            )
            assert not left, f"left behind: {h.ns}"


def desired(h: Host, other: Host) -> dict[bytes, wg.DesiredPeer]:
    return {
        other.public: wg.DesiredPeer(
            wg.endpoint_of(other.underlay, PORT), wg.allowed_ips_of(other.subnet, other.overlay)
        )
    }


async def apply(h: Host, other: Host) -> wg.SetRequest:
    """One level-triggered pass: read, diff, set; the request it sent."""
    assert h.dev is not None
    cur = await wg.get_device(h.dev.sock_path)
    req = wg.diff(desired(h, other), cur, private_key=h.private, listen_port=PORT)
    await wg.set_device(h.dev.sock_path, req)
    return req


def ping(src: Host, dst: Host) -> subprocess.CompletedProcess[str]:
    # -w caps the wait for the first handshake; ping exits 0 as soon as replies came back
    return subprocess.run(
        ["ip", "netns", "exec", src.ns, "ping", "-c", "3", "-i", "0.2", "-w", "10", dst.overlay],
        capture_output=True,
        text=True,
        check=False,
    )


def test_tunnel_configured_through_uapi(pair: tuple[Host, Host]) -> None:
    a, b = pair
    assert a.dev is not None and b.dev is not None
    assert a.dev.sock_path != b.dev.sock_path  # two devices of one name, one socket each

    async def first() -> None:
        for h, o in ((a, b), (b, a)):
            req = await apply(h, o)
            assert req.private_key == h.private and len(req.peers) == 1

    asyncio.run(first())
    r = ping(a, b)
    assert r.returncode == 0, r.stdout + r.stderr

    async def again() -> None:
        for h, o in ((a, b), (b, a)):
            assert (await apply(h, o)).empty
        peer = (await wg.get_device(a.dev.sock_path)).peers[b.public]  # type: ignore[union-attr]
        assert peer.last_handshake_sec > 0 and peer.rx_bytes > 0

    asyncio.run(again())


def test_peer_removed_by_hand_comes_back(pair: tuple[Host, Host]) -> None:
    a, b = pair
    assert a.dev is not None

    async def both() -> None:
        for h, o in ((a, b), (b, a)):
            await apply(h, o)

    asyncio.run(both())
    # `wg` reaches the device only from inside its mount namespace
    sh(
        "nsenter",
        f"--target={a.dev.pid}",
        "--mount",
        "--net",
        "wg",
        "set",
        DEV,
        "peer",
        wg.key_to_base64(b.public),
        "remove",
    )
    assert not asyncio.run(wg.get_device(a.dev.sock_path)).peers
    req = asyncio.run(apply(a, b))
    assert [c.public_key for c in req.peers] == [b.public]
    r = ping(a, b)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_request_is_a_one_line_error(pair: tuple[Host, Host]) -> None:
    a, _ = pair
    assert a.dev is not None
    with pytest.raises(DataplaneError) as exc:
        asyncio.run(
            wg.set_device(
                a.dev.sock_path,
                wg.SetRequest(peers=(wg.PeerChange(a.public, endpoint="not-an-endpoint"),)),
            )
        )
    assert exc.value.errno == 22 and "\n" not in str(exc.value)
