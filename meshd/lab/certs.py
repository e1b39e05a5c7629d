"""A throwaway cluster CA for a lab: one certificate per simulated host, as an operator would
issue them with ``meshd ca init`` and ``meshd ca sign``.

The CA lives in the lab's work directory and goes with it. Each host's certificate binds its
name, underlay address(es) and subnet(s), so a lab runs in certificate mode exactly like a
fleet; a dual-stack lab's CA grants both pod networks, and its certificates one subnet (or pool)
of each family and, on a dual-stack underlay, both underlay addresses.
"""

from __future__ import annotations

from pathlib import Path

from meshd import pki
from meshd.gossip.certificate import Grant
from meshd.lab.topology import Host

LAB_CA_NAME = "meshd lab CA"


class LabCA:
    """A CA in ``directory`` (created on first use) for the cluster ``network`` (and, for a
    dual-stack lab, ``network6``)."""

    def __init__(self, directory: Path, network: str, network6: str | None = None) -> None:
        self.directory = directory
        self.network = network
        self.network6 = network6
        if not (directory / pki.CA_CERT).exists():
            nets = network if network6 is None else [network, network6]
            pki.init_ca(directory, nets, name=LAB_CA_NAME)

    @property
    def ca_cert(self) -> Path:
        return self.directory / pki.CA_CERT

    def issue(
        self,
        host: Host,
        days: int = 30,
        pool_len: int | None = None,
        pool_len6: int | None = None,
    ) -> Path:
        """``host``'s certificate (and its key beside it, ``.key``); made once, then reused.
        It grants the host's planned subnet(s), or with ``pool_len`` (``pool_len6``) any
        /pool_len of the network (of the IPv6 network): the host allocates one."""
        prefix = self.directory / host.name
        crt = prefix.with_name(prefix.name + ".crt")
        if not crt.exists():
            parts = [
                Grant.fixed(host.subnet)
                if pool_len is None
                else Grant.from_pool(self.network, pool_len)
            ]
            if host.subnet6 is not None:
                parts.append(
                    Grant.fixed(host.subnet6)
                    if pool_len6 is None or self.network6 is None
                    else Grant.from_pool(self.network6, pool_len6)
                )
            grant = parts[0] if len(parts) == 1 else Grant.combine(parts)
            ips = [host.underlay_ip] + ([host.underlay_ip6] if host.underlay_ip6 else [])
            pki.sign(self.directory, host.name, ips[0] if len(ips) == 1 else ips, grant,
                     prefix, days)  # fmt: skip
        return crt

    def args(
        self, host: Host, pool_len: int | None = None, pool_len6: int | None = None
    ) -> list[str]:
        """The ``meshd join`` flags that put ``host`` in certificate mode."""
        crt = self.issue(host, pool_len=pool_len, pool_len6=pool_len6)
        return ["--ca", str(self.ca_cert), "--cert", str(crt)]
