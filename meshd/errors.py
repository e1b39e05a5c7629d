"""The meshd exception tree. Imports nothing of meshd; every layer may import it.

    MeshdError                  raised on purpose; str() is one line for users, and the CLI
    │                           prints it as ``meshd: error: ...`` (exit 78 for the first two)
    ├── ConfigError             bad flag, TOML key or value (names the key, and the line when
    │   │                       known); also a port or socket the daemon cannot listen on
    │   └── CertificateError    a CA, certificate, request, CRL or certificate key file is
    │                           missing, malformed, too open or refused; an issuance refused
    ├── KeyFileError            missing, unreadable, malformed or too-open key file
    ├── ControlError            the control socket is unreachable, a request is malformed, or
    │                           the daemon answered with an error
    ├── DataplaneError          the kernel refused something (netlink, nft); third-party and
    │   │                       OS errors become this where the data plane calls out
    │   └── MissingKernelFeature   the running kernel lacks a module a backend needs (ipip)
    ├── AllocationError         no free subnet in the network this node allocates from
    └── LabError                the lab could not be built, or the mesh did not converge in it

Outside the tree, on purpose: the gossip core's exceptions are caught where they arise and never
reach a user as such. ``DecodeError`` and ``OpenError`` (a datagram that is malformed or fails
authentication) become ``drop.<reason>`` counters; ``RecordError`` (a node record) and
``KeyFormatError`` (a key) are turned into ConfigError, KeyFileError or ControlError by whoever
took the value from a user. ``CertError`` (gossip/certificate.py) carries a ``reason``: a
``drop.<reason>`` counter in the core, a CertificateError where a user gave the file.
"""

from __future__ import annotations


class MeshdError(Exception):
    """Base of every error meshd raises on purpose."""


class ConfigError(MeshdError):
    """A flag, a TOML key or a value is invalid."""


class CertificateError(ConfigError):
    """A certificate, CA, request, CRL or certificate key file is missing, unreadable, malformed,
    too open or not trusted, or the CA refuses to issue what was asked (``meshd ca``)."""


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


class AllocationError(MeshdError):
    """Every subnet of the network this node allocates from is held by a member."""


class LabError(MeshdError):
    """The built-in lab could not be built, or the mesh did not converge in it."""
