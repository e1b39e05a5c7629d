"""The meshd grant: which subnets a node certificate lets its holder claim, per IP family, and
the text it travels as (``key=value`` pairs joined by ``;``, inside the certificate's SAN URI
``meshd:...``: certificate.py). Pure: strings in, data out; no X.509 here.

Keys are only ever added: ``subnet=`` or ``pool=``+``len=`` for the first family (IPv4 when
there is one, else IPv6), ``subnet6=`` or ``pool6=``+``len6=`` for the IPv6 one beside an IPv4
one (dual-stack), and a CA's ``network=``/``network6=`` alike. Unknown keys are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
_GRANT_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def format_grant(pairs: Mapping[str, str | int]) -> str:
    """``{"pool": "10.244.0.0/16", "len": 24}`` -> ``"pool=10.244.0.0/16;len=24"``."""
    out = []
    for key, value in pairs.items():
        text = str(value)
        if not _GRANT_KEY_RE.match(key) or any(c in text for c in ";=") or not text:
            raise ValueError(f"grant: cannot encode {key}={text!r}")
        out.append(f"{key}={text}")
    return ";".join(out)


def parse_grant_text(text: str) -> dict[str, str]:
    """``"pool=10.244.0.0/16;len=24"`` -> ``{"pool": ..., "len": "24"}``; ValueError when a pair
    is not ``key=value`` or a key repeats. Unknown keys are kept (the caller ignores them)."""
    out: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if not sep or not _GRANT_KEY_RE.match(key) or not value:
            raise ValueError(f"grant: {item!r} is not key=value")
        if key in out:
            raise ValueError(f"grant: {key} given twice")
        out[key] = value
    return out


@dataclass(frozen=True)
class Grant:
    """What subnets a node certificate lets its holder claim, per IP family: for the first family
    (IPv4 when the grant has one, else IPv6) exactly one ``subnet`` (fixed), or a ``pool`` with
    ``pool_len`` (any /pool_len inside the pool); beside an IPv4 one, optionally the same for
    IPv6 (``subnet6``, or ``pool6`` with ``pool_len6``)."""

    subnet: str | None
    pool: str | None
    pool_len: int | None
    subnet6: str | None = None
    pool6: str | None = None
    pool_len6: int | None = None

    def part(self, version: int) -> Grant | None:
        """The single-family grant of IP version 4 or 6, if this grant has one."""
        first = Grant(self.subnet, self.pool, self.pool_len)
        if first.version == version:
            return first
        if version == 6 and (self.subnet6 is not None or self.pool6 is not None):
            return Grant(self.subnet6, self.pool6, self.pool_len6)
        return None

    @property
    def parts(self) -> tuple[Grant, ...]:
        """The single-family grants, IPv4 first."""
        return tuple(p for p in (self.part(4), self.part(6)) if p is not None)

    @property
    def version(self) -> int:
        """The IP version of the first family (4, or 6 for an IPv6-only grant)."""
        text = self.subnet if self.subnet is not None else self.pool
        return 6 if text is not None and ":" in text else 4

    def is_fixed(self, version: int) -> bool:
        """Whether the grant of that family is one fixed subnet (outranks a pool's claims)."""
        part = self.part(version)
        return part is not None and part.subnet is not None

    def allows(self, subnet: str) -> bool:
        """Whether the holder may claim ``subnet`` (a CIDR; anything unparsable: False), by the
        grant of ``subnet``'s family."""
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except ValueError:
            return False
        part = self.part(net.version)
        if part is None:
            return False
        if part.subnet is not None:
            return net == ipaddress.ip_network(part.subnet)
        if part.pool is None or part.pool_len is None:
            return False
        pool = ipaddress.ip_network(part.pool)
        return (
            net.version == pool.version and net.prefixlen == part.pool_len and net.subnet_of(pool)  # type: ignore[arg-type]
        )

    def text(self) -> str:
        """The extension text (``subnet=...`` or ``pool=...;len=N``, then ``subnet6=...`` or
        ``pool6=...;len6=N`` for a dual-stack grant)."""
        pairs: dict[str, str | int] = {}
        for suffix, (subnet, pool, length) in (
            ("", (self.subnet, self.pool, self.pool_len)),
            ("6", (self.subnet6, self.pool6, self.pool_len6)),
        ):
            if subnet is not None:
                pairs["subnet" + suffix] = subnet
            elif pool is not None and length is not None:
                pairs["pool" + suffix] = pool
                pairs["len" + suffix] = length
        return format_grant(pairs)

    def describe(self) -> str:
        """For people: ``10.244.1.0/24``, ``any /24 in 10.244.0.0/16``, or one of each family
        joined by `` and ``."""
        return " and ".join(
            p.subnet if p.subnet is not None else f"any /{p.pool_len} in {p.pool}"
            for p in self.parts
        )

    @classmethod
    def fixed(cls, subnet: str) -> Grant:
        """A grant of one subnet; ValueError (one line) when it is not a network address."""
        return cls(str(network(subnet, "subnet")), None, None)

    @classmethod
    def from_pool(cls, pool: str, length: int) -> Grant:
        """Any /length inside pool; ValueError (one line) when that cannot be."""
        net = network(pool, "pool")
        if not net.prefixlen <= length <= net.max_prefixlen:
            raise ValueError(
                f"len {length}: must be between the pool's /{net.prefixlen} and"
                f" /{net.max_prefixlen}"
            )
        return cls(None, str(net), length)

    @classmethod
    def combine(cls, parts: Sequence[Grant]) -> Grant:
        """One grant from single-family ones (one or two: at most one per family, IPv4 first in
        the result); ValueError (one line) otherwise."""
        by_version: dict[int, Grant] = {}
        for part in parts:
            if part.subnet6 is not None or part.pool6 is not None:
                raise ValueError("grant: combine single-family grants")
            if part.version in by_version:
                raise ValueError(f"grant: two IPv{part.version} grants; give one per family")
            by_version[part.version] = part
        if not by_version:
            raise ValueError("grant: needs a subnet or a pool")
        first = by_version.get(4) or by_version[6]
        second = by_version.get(6) if 4 in by_version else None
        if second is None:
            return first
        return cls(
            first.subnet, first.pool, first.pool_len, second.subnet, second.pool, second.pool_len
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Grant:
        """From parsed extension text; ValueError unless exactly one of subnet, pool+len, and at
        most one of subnet6, pool6+len6 beside an IPv4 first one."""
        first = _part_from_fields(fields, "")
        if first is None:
            raise ValueError("grant: needs exactly one of subnet= and pool=")
        second = _part_from_fields(fields, "6")
        if second is None:
            return first
        if first.version != 4 or second.version != 6:
            raise ValueError("grant: subnet6=/pool6= must be IPv6, beside an IPv4 subnet=/pool=")
        return cls.combine([first, second])

    def inside(self, network: str | Sequence[str]) -> bool:
        """Whether every subnet this grant allows lies in the cluster network of its family
        (``network``: one CIDR, or the CA's networks, one per family)."""
        nets = [network] if isinstance(network, str) else list(network)
        outers = [ipaddress.ip_network(n) for n in nets]
        for part in self.parts:
            inner = ipaddress.ip_network(part.subnet if part.subnet is not None else str(part.pool))
            if not any(
                inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
                for outer in outers
            ):
                return False
        return True


def _part_from_fields(fields: Mapping[str, str], suffix: str) -> Grant | None:
    sub_key, pool_key, len_key = "subnet" + suffix, "pool" + suffix, "len" + suffix
    has_subnet, has_pool = sub_key in fields, pool_key in fields
    if not has_subnet and not has_pool:
        if len_key in fields:
            raise ValueError(f"grant: {len_key}= belongs with {pool_key}=")
        return None
    if has_subnet and has_pool:
        raise ValueError(f"grant: needs exactly one of {sub_key}= and {pool_key}=")
    if has_subnet:
        if len_key in fields:
            raise ValueError(f"grant: {len_key}= belongs with {pool_key}=")
        return Grant.fixed(fields[sub_key])
    raw = fields.get(len_key, "")
    if not raw.isdigit() or len(raw) > 3:
        raise ValueError(f"grant: {len_key}={raw!r} is not a prefix length")
    return Grant.from_pool(fields[pool_key], int(raw))


def network(text: str, what: str) -> _IPNet:
    """``text`` as a strict network; ValueError (one line naming ``what``) otherwise."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{what} {text!r}: {exc}") from None


def version(text: str) -> int:
    """4 or 6: the family an address or CIDR is written in."""
    return 6 if ":" in text else 4


def first_and_second(items: Sequence[str], what: str) -> tuple[str, str | None]:
    """One or two addresses or CIDRs, at most one per family, as (first, IPv6 beside an IPv4
    first): the record's layout. ValueError (one line) otherwise."""
    if not 1 <= len(items) <= 2:
        raise ValueError(f"{what}: give one, or two of different families")
    ordered = sorted(items, key=version)
    if len(ordered) == 2 and version(ordered[0]) == version(ordered[1]):
        raise ValueError(f"{what}: two IPv{version(ordered[0])} values; give one per family")
    return ordered[0], (ordered[1] if len(ordered) == 2 else None)
