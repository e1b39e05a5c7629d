"""Run a function inside a named network namespace without forking.

A socket keeps the namespace it was created in, and ``/proc/sys/net`` shows the namespace of the
thread that opens it; so a short-lived thread that joined the namespace can open either and hand
it back. The thread dies right after, so no pooled thread is left in a foreign namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
T = TypeVar("T")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def run_in_netns(ns_path: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a fresh thread that joined the namespace at ``ns_path``; its exception, if
    any, is re-raised here."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(ns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns {ns_path}: {os.strerror(e)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    t = threading.Thread(target=body, name="meshd-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
