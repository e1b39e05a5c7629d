"""The backend registry: the one list of backends the CLI, config validation, the firewall and
the data plane read (the gossip record only checks a backend name's shape).

Each module of this package is one backend and opens with notes on the kernel objects it creates;
``base.py`` is the interface. To add one: write its module with a ``Backend`` subclass and
``BACKEND = ...()``, and add it to ``_ALL`` below. Nothing else
lists backends.
"""

from __future__ import annotations

from meshd.dataplane.backends import hostgw, ipip, vxlan, wireguard
from meshd.dataplane.backends.base import Backend, Encapsulation, PeerEntries, Refusal, Site

_ALL: tuple[Backend, ...] = (hostgw.BACKEND, ipip.BACKEND, vxlan.BACKEND, wireguard.BACKEND)
_BY_NAME = {b.name: b for b in _ALL}

__all__ = ["Backend", "Encapsulation", "PeerEntries", "Refusal", "Site", "get", "names"]


def names() -> tuple[str, ...]:
    """Every backend's name, in the registry's order."""
    return tuple(_BY_NAME)


def get(name: str) -> Backend:
    """The backend called ``name``; ValueError (one line, naming the choices) if there is none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"{name!r} is not one of {', '.join(_BY_NAME)}") from None
