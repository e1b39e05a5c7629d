"""A throwaway cluster CA for a lab: one certificate per simulated host, as an operator would
issue them with ``meshd ca init`` and ``meshd ca sign``.

The CA lives in the lab's work directory and goes with it. Each host's certificate binds its
name, underlay address and subnet, so a lab runs in certificate mode exactly like a fleet.
"""

from __future__ import annotations

from pathlib import Path

from meshd import pki
from meshd.gossip.certificate import Grant
from meshd.lab.topology import Host

LAB_CA_NAME = "meshd lab CA"


class LabCA:
    """A CA in ``directory`` (created on first use) for the cluster ``network``."""

    def __init__(self, directory: Path, network: str) -> None:
        self.directory = directory
        self.network = network
        if not (directory / pki.CA_CERT).exists():
            pki.init_ca(directory, network, name=LAB_CA_NAME)

    @property
    def ca_cert(self) -> Path:
        return self.directory / pki.CA_CERT

    def issue(self, host: Host, days: int = 30, pool_len: int | None = None) -> Path:
        """``host``'s certificate (and its key beside it, ``.key``); made once, then reused.
        It grants the host's planned subnet, or with ``pool_len`` any /pool_len of the network
        (the host allocates one)."""
        prefix = self.directory / host.name
        crt = prefix.with_name(prefix.name + ".crt")
        if not crt.exists():
            grant = (
                Grant.fixed(host.subnet)
                if pool_len is None
                else Grant.from_pool(self.network, pool_len)
            )
            pki.sign(self.directory, host.name, host.underlay_ip, grant, prefix, days)
        return crt

    def args(self, host: Host, pool_len: int | None = None) -> list[str]:
        """The ``meshd join`` flags that put ``host`` in certificate mode."""
        return ["--ca", str(self.ca_cert), "--cert", str(self.issue(host, pool_len=pool_len))]
