"""Reading and writing the keyring file: the only file access around the cluster key.

The file is opened without following a symlink and judged by the descriptor that was opened (its
type, owner and mode), and written atomically with mode 0600 (``meshd.securefile`` does both, for
every secret meshd keeps).
"""

from __future__ import annotations

from pathlib import Path

from meshd.dataplane.wireguard import generate_private_key, key_from_base64, key_to_base64
from meshd.errors import DataplaneError, KeyFileError
from meshd.gossip.security import KeyFormatError, Keyring
from meshd.securefile import read_private, write_file

MAX_KEY_FILE = 64 * 1024  # a ring of a few keys is well under 1 KiB; refuse to slurp anything big


def load_keyring(path: Path) -> Keyring:
    """Load the keyring; refuse a missing, malformed, symlinked, foreign-owned or group/other-
    readable file (one line)."""
    data = read_private(
        path,
        "key file",
        MAX_KEY_FILE,
        KeyFileError,
        missing=f"create one with `(umask 077; meshd keygen > {path})`",
    )
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    try:
        return Keyring.parse(text)
    except KeyFormatError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None


def save_keyring(path: Path, keyring: Keyring) -> None:
    """Write atomically with mode 0600: a fresh temporary file (mkstemp), fsync, rename over the
    old file, fsync the directory."""
    write_file(path, keyring.dump().encode(), "key file", KeyFileError)


WIREGUARD_KEY = "wireguard.key"


def load_or_create_wireguard_key(state_dir: Path) -> bytes:
    """This node's WireGuard private key, kept in ``state_dir/wireguard.key`` as ``wg genkey``
    writes it (base64, mode 0600): created on first use, the same key on every later load; a
    too-open, foreign or malformed file is refused (one line)."""
    path = state_dir / WIREGUARD_KEY
    if not path.exists():
        key = generate_private_key()
        try:  # replace=False: a racing first start keeps whichever key landed first
            write_file(
                path,
                (key_to_base64(key) + "\n").encode(),
                "WireGuard key",
                KeyFileError,
                replace=False,
            )
        except KeyFileError:
            if not path.exists():
                raise
    data = read_private(path, "WireGuard key", 1024, KeyFileError)
    try:
        return key_from_base64(data.decode(errors="replace"))
    except DataplaneError as exc:
        raise KeyFileError(f"WireGuard key {path}: {exc}") from None
