from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from meshd.control import client
from meshd.control.client import request
from meshd.control.protocol import KeyList, KeyRef
from meshd.control.server import ControlServer
from meshd.errors import ConfigError, ControlError, MeshdError


async def _ok(req: dict[str, Any]) -> Any:
    return {"echo": req.get("x")}


async def _boom(req: dict[str, Any]) -> Any:
    raise MeshdError("nope")


def test_roundtrip_mode_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "run" / "c.sock"

    async def main() -> None:
        srv = ControlServer(path, {"echo": _ok, "boom": _boom})
        await srv.start()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, lambda: request(path, "echo", x=5)) == {"echo": 5}
        with pytest.raises(ControlError, match="nope"):
            await loop.run_in_executor(None, lambda: request(path, "boom"))
        with pytest.raises(ControlError, match="unknown command"):
            await loop.run_in_executor(None, lambda: request(path, "zzz"))
        # a second daemon on the same socket is refused
        with pytest.raises(ConfigError, match="already listening"):
            await ControlServer(path, {}).start()
        await srv.close()
        assert not path.exists()

    asyncio.run(main())
    with pytest.raises(ControlError, match="no meshd running"):
        request(path, "echo")


def test_typed_client_calls_through_service_commands(tmp_path: Path) -> None:
    """The typed client wrappers against a server whose handlers parse typed requests, the way
    Service.commands() does: a bad argument is a one-line ControlError on the client."""
    path = tmp_path / "c.sock"

    async def keys_use(req: dict[str, Any]) -> KeyList:
        ref = KeyRef.parse(req)
        return {"primary": ref.key_id.hex(), "keys": [ref.key_id.hex()]}

    async def main() -> None:
        srv = ControlServer(path, {"keys.use": keys_use})
        await srv.start()
        loop = asyncio.get_running_loop()
        ring = await loop.run_in_executor(
            None, lambda: client.keys(path, "use", key_id="0a0b0c0d" * 4)
        )
        assert ring == {"primary": "0a0b0c0d" * 4, "keys": ["0a0b0c0d" * 4]}
        with pytest.raises(ControlError, match="expected 32 hex digits"):
            await loop.run_in_executor(None, lambda: client.keys(path, "use", key_id="0a"))
        await srv.close()

    asyncio.run(main())
