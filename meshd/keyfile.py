"""Reading and writing the keyring file: the only file access around the cluster key.

The file is opened without following a symlink and judged by the descriptor that was opened (its
type, owner and mode), so nothing can swap the file between the check and the read. It is
written through an unpredictable temporary file in the same directory, fsynced, renamed over the
old one, and the directory is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from meshd.errors import KeyFileError
from meshd.gossip.security import KeyFormatError, Keyring

MAX_KEY_FILE = 64 * 1024  # a ring of a few keys is well under 1 KiB; refuse to slurp anything big


def load_keyring(path: Path) -> Keyring:
    """Load the keyring; refuse a missing, malformed, symlinked, foreign-owned or group/other-
    readable file (one line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(
            f"no key file at {path}: create one with `(umask 077; meshd keygen > {path})`"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise KeyFileError(
                f"key file {path} is a symlink: point the config at the file"
            ) from None
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise KeyFileError(
                f"key file {path} is owned by uid {st.st_uid}, not by this user ({os.geteuid()}):"
                f" run `chown {os.geteuid()} {path}`"
            )
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is readable by group/others"
                f" (mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
            )
        if st.st_size > MAX_KEY_FILE:
            raise KeyFileError(f"key file {path} is {st.st_size} bytes: not a key file")
        try:
            text = fh.read(MAX_KEY_FILE + 1).decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    try:
        return Keyring.parse(text)
    except KeyFormatError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None


def save_keyring(path: Path, keyring: Keyring) -> None:
    """Write atomically with mode 0600: a fresh temporary file (mkstemp), fsync, rename over the
    old file, fsync the directory."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates it 0600
            fh.write(keyring.dump())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
