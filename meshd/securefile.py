"""Reading and writing files that hold secrets (the cluster key, the CA key, node keys), and the
public files written beside them (certificates, requests, CRLs).

A secret is opened without following a symlink and judged by the descriptor that was opened (its
type, owner and mode), so nothing can swap the file between the check and the read. Every file is
written through an unpredictable temporary file in the same directory (mkstemp: created 0600),
fsynced, given its mode, moved into place (renamed over the old file, or hard-linked when an
existing file must not be replaced), and the directory is fsynced so the rename survives a crash.
Errors are one line, of the class the caller names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from meshd.errors import MeshdError


def read_private(
    path: Path, what: str, limit: int, error: type[MeshdError], missing: str = ""
) -> bytes:
    """The bytes of a secret file; ``error`` when it is missing (``missing`` says how to create
    one), a symlink, not a regular file, owned by another user, readable by group/others, or
    larger than ``limit``."""
    return _read(path, what, limit, error, missing, private=True)


def read_public(path: Path, what: str, limit: int, error: type[MeshdError]) -> bytes:
    """The bytes of a file anyone may read (a certificate, a request, a CRL), at most ``limit``."""
    return _read(path, what, limit, error, "", private=False)


def _read(
    path: Path, what: str, limit: int, error: type[MeshdError], missing: str, private: bool
) -> bytes:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if private else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"no {what} at {path}" + (f": {missing}" if missing else "")) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and private:  # O_NOFOLLOW met a symlink
            raise error(f"{what} {path} is a symlink: name the file itself") from None
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if private and st.st_uid != os.geteuid():
            raise error(
                f"{what} {path} is owned by uid {st.st_uid}, not by this user ({os.geteuid()}):"
                f" run `chown {os.geteuid()} {path}`"
            )
        if private and st.st_mode & 0o077:
            raise error(
                f"{what} {path} is readable by group/others"
                f" (mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
            )
        if st.st_size > limit:
            raise error(f"{what} {path} is {st.st_size} bytes: too large to be one")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is over {limit} bytes: too large to be one")
    return data


def write_file(
    path: Path,
    data: bytes,
    what: str,
    error: type[MeshdError],
    mode: int = 0o600,
    replace: bool = True,
) -> None:
    """Write ``data`` atomically with ``mode``. With ``replace=False`` an existing file is an
    ``error`` and is left untouched (the new file is hard-linked into place, which fails rather
    than replaces)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp creates it 0600
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise error(f"{what} {path} exists: refusing to overwrite it") from None
            finally:
                os.unlink(tmp)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise error(f"cannot write {what} {path}: {exc.strerror}") from None


def fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
