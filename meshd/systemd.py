"""What running under systemd asks of the daemon: readiness notification (``Type=notify``) and
log lines journald can read the priority of (when stderr is the journal). Both are no-ops
outside systemd."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import TextIO

from meshd.logfmt import EventFormatter


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


def journal_stream(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is connected to the journal: systemd sets
    JOURNAL_STREAM to the ``device:inode`` of the stream it connected (systemd.exec(5)), so a
    process whose stderr was redirected elsewhere (a child, a pipe) does not mistake the
    inherited variable for the journal."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (sep and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a real file (io.StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: str, log_format: str = "text") -> None:
    """One handler on stderr in ``log_format`` (`meshd.logfmt`); under journald, with the
    priority prefix and without the timestamp."""
    handler = logging.StreamHandler()
    handler.setFormatter(EventFormatter(log_format, journal=journal_stream()))
    logging.basicConfig(level=level.upper(), handlers=[handler])
