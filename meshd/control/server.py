"""Control-socket server: identifies each caller by its peer credentials, decides what that
caller may run, and dispatches commands.

Roles (decided per connection from SO_PEERCRED and SO_PEERGROUPS, what the kernel recorded at
``connect()``, so nothing the caller sends can change them):

* **admin**: uid 0, or the daemon's own uid: every command;
* **reader**: a member of ``control_group`` (its primary or a supplementary group): only the
  commands in ``protocol.READ_ONLY`` (peers, status, keys.list). Anything else, including any
  command added later and not listed there, is refused with one line;
* anyone else: refused.

The socket file is 0600 without ``control_group``. With one it is 0666 (D-Bus's system bus
does the same): the unit that ships meshd grants no CAP_CHOWN, so the daemon cannot give the
file to the group, and the file mode is not what protects the daemon anyway -- every request is
authorised by the caller's credentials. Connections are capped (``max_connections``); a caller
past the cap is answered "busy" and closed, so local users cannot tie the server up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.control import MAX_REQUEST
from meshd.control.protocol import READ_ONLY
from meshd.errors import ConfigError, MeshdError

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
_UCRED = struct.Struct("3i")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13; 59 on every common arch
MAX_CONNECTIONS = 32
"""Control connections served at once; a CLI call takes milliseconds, so more is an abuse."""
BUSY_GRACE = 0.1
"""Seconds a refused (busy) connection is read from so the refusal reaches the client."""
REQUEST_TIMEOUT = 5.0
"""Seconds a caller has to send its one request line."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the other end, as the kernel recorded it at connect()."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer(sock: socket.socket) -> Caller:
    """The credentials of the process that connected ``sock`` (SO_PEERCRED, SO_PEERGROUPS)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return Caller(pid, uid, gid, _peer_groups(sock, uid, gid))


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> frozenset[int]:
    size = 4 * 64
    for _ in range(2):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
        except OSError as exc:
            if exc.errno != errno.ERANGE:
                break  # a kernel before 4.13: ask the group database instead
            size = 4 * 65536  # NGROUPS_MAX
    try:
        import pwd

        return frozenset(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except (KeyError, OSError):
        return frozenset()


class ControlServer:
    def __init__(
        self,
        path: Path,
        handlers: dict[str, Handler],
        group: int | None = None,
        *,
        read_only: Collection[str] = READ_ONLY,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.group = group
        self.read_only = frozenset(read_only)
        self.max_connections = max_connections
        self.refused: dict[str, int] = {"busy": 0, "outsider": 0, "not_root": 0}
        self._active = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            parent = self.path.parent
            if not parent.is_dir():
                parent.mkdir(parents=True, exist_ok=True)
                # Traversable by everyone whatever the umask (the unit runs with 0077): the
                # socket's own mode and the per-request check decide who gets in.
                os.chmod(parent, 0o755)
            if self.path.exists() or self.path.is_symlink():
                self._refuse_if_live()
                self.path.unlink()
            old = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o666 if self.group is not None else 0o600)
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

    def role(self, caller: Caller) -> str | None:
        """``admin``, ``reader`` or None (see the module docstring)."""
        if caller.uid in (0, os.geteuid()):
            return "admin"
        if self.group is not None and (caller.gid == self.group or self.group in caller.groups):
            return "reader"
        return None

    def _refusal(self, cmd: str, caller: Caller | None) -> str | None:
        """Why ``caller`` may not run ``cmd`` (one line), or None when it may."""
        role = self.role(caller) if caller is not None else None
        if role == "admin":
            return None
        if role is None:
            self.refused["outsider"] += 1
            uid = "unknown" if caller is None else str(caller.uid)
            return (
                f"permission denied: uid {uid} is neither root nor in the control group "
                "(control_group)"
            )
        if cmd in self.read_only:
            return None
        self.refused["not_root"] += 1
        allowed = ", ".join(sorted(self.read_only))
        return f"permission denied: {cmd} needs root (the control group may run {allowed})"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > self.max_connections:
                self.refused["busy"] += 1
                await self._reply(writer, {"ok": False, "error": "control socket busy; try again"})
                # Take what the client already sent (a CLI sends at once): closing with it
                # unread would reset the connection before the answer is read. Briefly only.
                with contextlib.suppress(TimeoutError, ValueError):
                    await asyncio.wait_for(reader.read(MAX_REQUEST), BUSY_GRACE)
                return
            sock = writer.get_extra_info("socket")
            caller = peer(sock) if sock is not None else None
            # Read the request before judging the caller: closing with unread data makes the
            # kernel reset the connection, and the refusal would never reach the client.
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=REQUEST_TIMEOUT)
            except (TimeoutError, ValueError):
                return
            if len(line) > MAX_REQUEST:
                await self._reply(writer, {"ok": False, "error": "request too large"})
                return
            await self._reply(writer, await self._dispatch(line, caller))
        except (ConnectionError, OSError):
            pass
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, caller: Caller | None) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError:
            req = None
        cmd = req.get("cmd") if isinstance(req, dict) else None
        if caller is None or self.role(caller) is None:
            return {"ok": False, "error": self._refusal("", caller) or "permission denied"}
        if not isinstance(req, dict) or not isinstance(cmd, str):
            return {"ok": False, "error": "request must be a JSON object with a 'cmd' string"}
        denied = self._refusal(cmd, caller)
        if denied is not None:
            return {"ok": False, "error": denied}
        handler = self.handlers.get(cmd)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            return {"ok": True, "result": await handler(req)}
        except MeshdError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not kill the daemon; report it in one line
            log.exception(
                "control command %s failed",
                cmd,
                extra={"event": "control_internal_error", "command": cmd, "reason": str(exc)},
            )
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
