"""meshd/daemon.py: a setup that fails half way closes what it opened."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

import meshd.daemon
from meshd.config import build
from meshd.control.server import ControlServer
from meshd.daemon import Daemon
from meshd.dataplane.model import Underlay
from meshd.errors import ConfigError
from meshd.gossip.security import generate_key
from meshd.transport import Transport


class FakeReconciler:
    closed = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        FakeReconciler.closed += 1


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_setup_closes_the_udp_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def underlay(iface: str | None, public_ip: str | None, **kw: Any) -> Underlay:
        # Not 127.0.0.1: a loopback public IP is refused (record.unicast_ip4).
        return Underlay("lo", 1, "192.0.2.1", 24, 1500)

    class LoopbackTransport(Transport):
        def __init__(self, node: Any, sealer: Any, bind: tuple[str, int], **kw: Any) -> None:
            # The daemon binds the underlay IP; 192.0.2.1 is not on this machine.
            assert bind == ("192.0.2.1", port)
            super().__init__(node, sealer, ("127.0.0.1", bind[1]), **kw)

    monkeypatch.setattr(meshd.daemon, "discover_underlay", underlay)
    monkeypatch.setattr(meshd.daemon, "Transport", LoopbackTransport)
    monkeypatch.setattr(meshd.daemon, "Reconciler", FakeReconciler)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no nft cleanup
    key = tmp_path / "key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    port = free_udp_port()
    sock = tmp_path / "meshd.sock"
    cfg = build(
        {
            "name": "h1",
            "subnet": "10.244.1.0/24",
            "port": port,
            "key_file": key,
            "state_dir": tmp_path / "state",
            "socket": sock,
        }
    )

    async def main() -> None:
        # Another daemon holds the control socket: setup fails after the UDP socket is bound.
        other = ControlServer(sock, {})
        await other.start()
        try:
            with pytest.raises(ConfigError, match="already listening"):
                await Daemon(cfg).setup()
            assert sock.exists()  # the other daemon's socket is left alone
        finally:
            await other.close()

    asyncio.run(main())
    assert FakeReconciler.closed == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))  # EADDRINUSE if the daemon leaked its socket


def test_unusable_record_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def underlay(iface: str | None, public_ip: str | None, **kw: Any) -> Underlay:
        return Underlay("lo", 1, "192.0.2.1", 24, 65536)  # loopback's MTU: no record carries it

    monkeypatch.setattr(meshd.daemon, "discover_underlay", underlay)
    key = tmp_path / "key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    cfg = build(
        {
            "name": "h1",
            "subnet": "10.244.1.0/24",
            "key_file": key,
            "state_dir": tmp_path / "state",
            "socket": tmp_path / "sock",
        }
    )
    with pytest.raises(ConfigError, match="mtu"):
        asyncio.run(Daemon(cfg).setup())
