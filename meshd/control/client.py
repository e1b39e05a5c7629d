"""Control-socket client: synchronous, stdlib only, so the CLI needs neither root nor the
daemon's imports."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, cast

from meshd.control.protocol import (
    CRL_INSTALL,
    CrlReply,
    DoctorReply,
    KeyList,
    LeaveReply,
    PeerRow,
    StatusReply,
    UpdateReply,
)
from meshd.errors import ControlError


def request(path: Path, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    """Send one command; return its result or raise ControlError with a one-line message."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no meshd running: {path} does not exist") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path} (run as root)") from None
        except ConnectionRefusedError:
            raise ControlError(f"no meshd listening on {path}") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror}") from None
        try:
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except TimeoutError:
            raise ControlError(f"meshd did not answer on {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror}") from None
    finally:
        sock.close()
    try:
        resp = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"meshd sent an unreadable answer on {path}") from None
    if not isinstance(resp, dict):
        raise ControlError("meshd sent an unreadable answer")
    if not resp.get("ok"):
        raise ControlError(str(resp.get("error", "unknown error")))
    return resp.get("result")


# Typed wrappers: the reply types are the daemon's side of the contract (meshd/service.py).


def peers(path: Path, timeout: float = 30.0) -> list[PeerRow]:
    return cast(list[PeerRow], request(path, "peers", timeout))


def status(path: Path, timeout: float = 30.0) -> StatusReply:
    return cast(StatusReply, request(path, "status", timeout))


def leave(path: Path, timeout: float = 30.0) -> LeaveReply:
    return cast(LeaveReply, request(path, "leave", timeout))


def doctor(path: Path, timeout: float = 60.0) -> DoctorReply:
    return cast(DoctorReply, request(path, "doctor", timeout))


def update(path: Path, timeout: float = 30.0) -> UpdateReply:
    return cast(UpdateReply, request(path, "update", timeout))


def keys(path: Path, cmd: str = "list", timeout: float = 30.0, **args: str) -> KeyList:
    """``keys.<cmd>``: list, install (``key=``), use or remove (``key_id=``)."""
    return cast(KeyList, request(path, f"keys.{cmd}", timeout, **args))


def crl_install(path: Path, pem: str, timeout: float = 30.0) -> CrlReply:
    """``crl.install``: hand a CRL (PEM text) to the daemon, which spreads it over gossip."""
    return cast(CrlReply, request(path, CRL_INSTALL, timeout, crl=pem))
