"""Control-socket server: authenticates callers by peer credentials and dispatches commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshd.control import MAX_REQUEST
from meshd.errors import ConfigError, MeshdError

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
_UCRED = struct.Struct("3i")


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler], group: int | None = None) -> None:
        self.path = path
        self.handlers = handlers
        self.group = group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            if self.path.exists() or self.path.is_symlink():
                self._refuse_if_live()
                self.path.unlink()
            old = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            finally:
                os.umask(old)
            mode = 0o660 if self.group is not None else 0o600
            if self.group is not None:
                os.chown(self.path, -1, self.group)
            os.chmod(self.path, mode)
        except OSError as exc:
            raise ConfigError(f"socket: cannot listen on {self.path}: {exc.strerror}") from None

    def _refuse_if_live(self) -> None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            return  # stale socket from a killed daemon
        finally:
            probe.close()
        raise ConfigError(f"socket: another meshd is already listening on {self.path}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        _pid, uid, gid = _UCRED.unpack(raw)
        if uid in (0, os.geteuid()):
            return True
        if self.group is None:
            return False
        if gid == self.group:
            return True
        try:
            import pwd

            name = pwd.getpwuid(uid).pw_name
            return self.group in os.getgrouplist(name, gid)
        except KeyError:
            return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Read the request before judging the caller: closing with unread data makes the
            # kernel reset the connection, and the refusal would never reach the client.
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5)
            except (TimeoutError, ValueError):
                return
            if not self._allowed(writer):
                await self._reply(writer, {"ok": False, "error": "permission denied"})
                return
            if len(line) > MAX_REQUEST:
                await self._reply(writer, {"ok": False, "error": "request too large"})
                return
            await self._reply(writer, await self._dispatch(line))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": "request must be an object with a 'cmd' string"}
        handler = self.handlers.get(req["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {req['cmd']!r}"}
        try:
            return {"ok": True, "result": await handler(req)}
        except MeshdError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not kill the daemon; report it in one line
            log.exception("control command %s failed", req["cmd"])
            return {"ok": False, "error": f"internal error: {exc.__class__.__name__}: {exc}"}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()


def group_id(name: str | None) -> int | None:
    """The gid of the ``control_group`` setting (None: root only)."""
    if name is None:
        return None
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"control_group: no group named {name!r}") from None
