"""Reading and writing the keyring file: the only file access around the cluster key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshd.errors import KeyFileError
from meshd.gossip.security import KeyFormatError, Keyring


def load_keyring(path: Path) -> Keyring:
    """Load the keyring; refuse a missing, malformed or group/other-readable file (one line)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"no key file at {path}: create one with `meshd keygen > {path}; chmod 600 {path}`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} is readable by group/others (mode {stat.S_IMODE(st.st_mode):04o}):"
            f" run `chmod 600 {path}`"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    try:
        return Keyring.parse(text)
    except KeyFormatError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None


def save_keyring(path: Path, keyring: Keyring) -> None:
    """Write atomically with mode 0600 (rename over the old file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(keyring.dump())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
