"""The meshd exception tree. Imports nothing of meshd.

    MeshdError                  every error meshd raises on purpose; str() is one line for users
    ├── ConfigError             bad flag, TOML key or value (names the key, and the line when known)
    ├── KeyFileError            missing, unreadable, malformed or too-open key file
    ├── ControlError            the control socket is unreachable or answered with an error
    ├── DataplaneError          netlink refused something; third-party errors are translated once,
    │   └── MissingKernelFeature   in dataplane/netlink.py; e.g. no ipip module
    └── LabError                the lab could not be built or did not converge
"""

from __future__ import annotations


class MeshdError(Exception):
    """Base of every error meshd raises on purpose."""


class ConfigError(MeshdError):
    """A flag, a TOML key or a value is invalid."""


class KeyFileError(MeshdError):
    """The cluster key file is missing, unreadable, malformed or readable by group/others."""


class ControlError(MeshdError):
    """The control socket could not be reached or answered with an error."""


class DataplaneError(MeshdError):
    """A kernel (netlink) operation failed. ``errno`` is the kernel's error number when there is
    one (``errno.EEXIST`` for a route someone else holds), else None (input that could not be
    packed, a device gone right after creation)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class MissingKernelFeature(DataplaneError):
    """The running kernel lacks a module meshd needs (e.g. ipip)."""


class LabError(MeshdError):
    """The built-in lab could not be built, or the mesh did not converge in it."""
