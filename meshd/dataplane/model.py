"""Desired data-plane state from the peer table, and the diff against what the kernel has.

Pure: no clock, no sockets, no pyroute2. Every function takes what it needs (``now``, the underlay,
the on-link prefixes) as arguments, so plans are reproducible from a printed input and unit tests
never touch the kernel. ``apply.py`` (through the reconciler) only executes a ``Plan``.

Decisions made here, in one place and for every backend alike:

* which peers are programmed, and why the others are not (``peer_flags``);
* the conflict rule (``resolve_claims``): every node evaluates it identically from the same table;
* removal gating: nothing is removed before the first full state exchange (``synced``);
* reaping: a dead peer keeps its entries until ``state_since + reap_after``;
* both families: a peer's subnets (one or two, ``rec.subnets``) each get their entries, and each
  is checked against this node's subnet, underlay and foreign routes of its own family; a peer
  one of whose subnets cannot be routed from here keeps the other and is flagged ``partial``.

What is backend-specific -- the device, the per-peer objects and their order, extra refusals,
the MTU overhead -- each backend object in ``backends/`` says; nothing here names a backend.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from meshd.dataplane import backends, prefix
from meshd.dataplane.backends.base import Backend, Site
from meshd.dataplane.backends.vxlan import device_name as vxlan_device
from meshd.dataplane.objects import (
    FLAG_CONFLICTED,
    FLAG_INCOMPATIBLE,
    FLAG_NOT_ON_LINK,
    FLAG_PARTIAL,
    FLAG_REAPED,
    FLAG_REFUSED,
    DeviceOp,
    DeviceSpec,
    Fdb,
    Neigh,
    ObservedDevice,
    Route,
    Underlay,
    WgPeer,
    canonical,
    span_any,
    spans_overlap,
)
from meshd.gossip.record import NodeRecord

__all__ = [
    "FLAG_CONFLICTED",
    "FLAG_INCOMPATIBLE",
    "FLAG_NOT_ON_LINK",
    "FLAG_PARTIAL",
    "FLAG_REAPED",
    "FLAG_REFUSED",
    "RTPROT_MESHD",
    "DeviceOp",
    "DeviceSpec",
    "Fdb",
    "Neigh",
    "ObservedDevice",
    "PeerView",
    "Plan",
    "Route",
    "Underlay",
    "WgPeer",
    "desired_state",
    "device_spec",
    "diff",
    "claimants",
    "contested",
    "network_of",
    "resolve_claims",
    "select_peers",
    "subnet_env",
    "subnet_problem",
    "vxlan_device",
]

RTPROT_MESHD = 109
"""rtnetlink protocol number on every route meshd installs ("m"). Free in /etc/iproute2/rt_protos
(which reserves 0-4, 8-18, 42, 99, 186-189, 192) and outside FRR's 190-198 and calico's 80.
Ownership of routes is exactly "proto 109 in the main table": meshd never touches other routes."""

MAIN_TABLE = 254
LIVE_STATES = ("alive", "suspect", "dead")
ALL_STEPS = (
    "route_del",
    "fdb_del",
    "neigh_del",
    "neigh_set",
    "fdb_set",
    "route_add",
    "route_replace",
)
"""Step order of a plan whose backend declared none (vxlan's: every kind)."""


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the daemon hands the reconciler, one per member except self."""

    record: NodeRecord
    state: str  # alive | suspect | dead | left
    state_since: float  # monotonic seconds, same clock as `now`


# --- desired / observed / plan -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Desired:
    backend: str
    device: DeviceSpec | None  # the mesh device; None for host-gw
    bridge: DeviceSpec | None
    routes: Mapping[str, Route]
    neighs: Mapping[str, Neigh]
    fdb: frozenset[Fdb]
    programmed: tuple[str, ...]  # peer names with entries
    flags: Mapping[str, str]  # peer name -> FLAG_*
    reasons: Mapping[str, str]  # peer name -> one-line reason, for status and the log
    local_conflict: str | None  # set when this node lost the claim on its own subnet
    allow_remove: bool  # False until the first full state exchange
    next_deadline: float | None  # earliest time a kept dead peer is reaped
    mtu: int  # MTU containers should use (FLANNEL_MTU)
    steps: tuple[str, ...] = ()  # the backend's step order (Backend.steps), handed to the Plan
    wgpeers: Mapping[str, WgPeer] = field(default_factory=dict)  # by public key (wireguard)


@dataclass(frozen=True, slots=True)
class Observed:
    devices: Mapping[str, ObservedDevice]  # by name; only the devices meshd asked about
    routes: Mapping[str, Route]  # routes with RTPROT_MESHD in the main table, by dst
    neighs: Mapping[str, Neigh]  # permanent neighbours on the mesh device, by dst
    fdb: frozenset[Fdb]  # unicast FDB entries with a dst on the mesh device
    wgpeers: Mapping[str, WgPeer] = field(default_factory=dict)  # the device's, by public key


EMPTY_OBSERVED = Observed(devices={}, routes={}, neighs={}, fdb=frozenset())


@dataclass(frozen=True, slots=True)
class Plan:
    """Minimal changes. ``apply.py`` runs the device steps first, then each kind in ``steps``:
    the backend's order (vxlan: removals route, FDB, neighbour; additions neighbour, FDB, route,
    since a route's onlink gateway must resolve before traffic uses it)."""

    devices: tuple[DeviceSpec, ...] = ()
    device: str | None = None  # the mesh device, which neighbours and FDB entries belong to
    steps: tuple[str, ...] = ALL_STEPS
    device_ops: tuple[DeviceOp, ...] = ()
    neigh_set: tuple[Neigh, ...] = ()
    fdb_set: tuple[Fdb, ...] = ()
    route_add: tuple[Route, ...] = ()  # dst not ours yet: plain add, never overwrite others
    route_replace: tuple[Route, ...] = ()  # dst already ours, but different
    route_del: tuple[Route, ...] = ()
    neigh_del: tuple[Neigh, ...] = ()
    fdb_del: tuple[Fdb, ...] = ()
    wgpeer_set: tuple[WgPeer, ...] = ()  # added, or changed in place
    wgpeer_del: tuple[WgPeer, ...] = ()
    problems: tuple[str, ...] = ()  # things the plan cannot fix (e.g. a non-bridge named br0)
    removals_held: int = 0  # removals suppressed because the peer table is not synced yet

    KINDS = (
        "device_ops",
        "neigh_set",
        "fdb_set",
        "route_add",
        "route_replace",
        "route_del",
        "neigh_del",
        "fdb_del",
        "wgpeer_set",
        "wgpeer_del",
    )

    @property
    def empty(self) -> bool:
        return not any(getattr(self, k) for k in self.KINDS)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in self.KINDS}

    def to_dict(self, limit: int = 50) -> dict[str, Any]:
        """JSON-able; each list is cut to ``limit`` entries (the counts stay exact)."""
        out: dict[str, Any] = {"counts": self.counts(), "removals_held": self.removals_held}
        for k in self.KINDS:
            items = getattr(self, k)
            if items:
                out[k] = [str(x) for x in items[:limit]]
        if self.problems:
            out["problems"] = list(self.problems)
        return out


# --- peer selection ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    programmed: tuple[NodeRecord, ...]
    flags: Mapping[str, str]
    reasons: Mapping[str, str]
    local_conflict: str | None
    next_deadline: float | None


Networks = str | Sequence[str] | None
"""The cluster network(s): none, one CIDR, or one per IP family (a dual-stack cluster). A
subnet is judged against the network of its own family, when there is one."""


def network_of(network: Networks, version: int) -> str | None:
    """The network of IP ``version`` among ``network`` (see `Networks`), or None."""
    if network is None:
        return None
    nets = [network] if isinstance(network, str) else network
    return next((n for n in nets if n and prefix.version(n) == version), None)


def claim_order(rec: NodeRecord, version: int = 4) -> tuple[int, int, float, bytes, str]:
    """Certified claims first, by their certificate's rank (``claim_rank``: a fixed-subnet grant
    before a pool grant, then the older claim), the certified name breaking ties; unverified
    claims (shared-key mode) after them, earliest ``since`` first, the node id breaking ties (two
    claims in the same second).

    Per IP family (``version``): each family is a claim space of its own, and the certificate's
    rank says per family whether its grant there is fixed or a pool (trust.py, ``RANK_POOL4``,
    ``RANK_POOL6``); ``since`` is one for the record.

    A fixed grant's claim is as old as its certificate. A pool claim is as old as the later of
    its certificate's ``not_before`` and its own ``since``: the self-asserted time can only make
    a claim younger than the certificate allows (an honest node that picks again after losing
    does, so it never displaces a holder it had not heard of), never older, so no member wins by
    lying beyond what the CA signed."""
    rank = rec.claim_rank
    if rank is not None:
        bits, issued = rank
        kind = (bits >> (0 if version == 4 else 1)) & 1
        age = issued if kind == 0 else max(issued, float(rec.since))
        return (0, kind, age, rec.name.encode(), "")
    return (1, rec.since or 2**40, 0.0, rec.node_id, rec.name)


def resolve_claims(
    claimants: Iterable[NodeRecord], version: int | None = None
) -> tuple[set[bytes], dict[bytes, NodeRecord]]:
    """The conflict rule. Claimants are taken in `claim_order` (certified by rank, then the
    oldest ``since``; ``since`` 0, unknown, counts as newest), so an incumbent keeps its subnet and
    a newcomer claiming it is refused; each is granted its subnet unless it overlaps a subnet
    already granted. Returns the node_ids granted,
    and for each loser the holder that beat it. Inputs must be the cluster-wide facts only (record
    contents and membership), so every node reaches the same answer from the same table.

    Each IP family is its own claim space, resolved on its own: a dual-stack claimant that loses
    one family still holds the other there (so allocation moves only the subnet it lost). With
    ``version`` the result is that family's, among the claimants with a subnet of it; without,
    a claimant is granted when it holds every subnet it claims, and a loser maps to the holder
    that beat it in the first family it lost (IPv4 first)."""
    records = list(claimants)
    if version is not None:
        return _resolve_family(records, version)
    granted, losers = _resolve_family(records, 4)
    six = [r for r in records if r.subnet6 is not None or ":" in r.subnet]
    if not six:  # an IPv4-only mesh: exactly the rule as it was before dual-stack
        return granted, losers
    granted6, losers6 = _resolve_family(six, 6)
    for node_id, holder in losers6.items():
        losers.setdefault(node_id, holder)
    return (granted | granted6) - losers.keys(), losers


def contested(loser: NodeRecord, holder: NodeRecord) -> tuple[str, str]:
    """The two subnets, ``loser``'s and ``holder``'s, that the conflict rule weighed against each
    other (the first family, IPv4 first, in which they overlap): what a conflict message names."""
    for version in (4, 6):
        mine, theirs = loser.subnet_of(version), holder.subnet_of(version)
        if mine is None or theirs is None:
            continue
        a, b = prefix.family_span(mine), prefix.family_span(theirs)
        if a is not None and b is not None and prefix.overlaps(a[1], b[1]):
            return mine, theirs
    return loser.subnet, holder.subnet


_CLAIM_ORDER6 = functools.partial(claim_order, version=6)


def _resolve_family(
    records: Sequence[NodeRecord], version: int
) -> tuple[set[bytes], dict[bytes, NodeRecord]]:
    # Granted subnets are disjoint, so sorted by first address their last addresses are sorted
    # too: only the granted subnet starting at or just before a candidate's last address can
    # overlap it. O(N log N), which matters at thousands of members.
    starts: list[int] = []
    spans: list[tuple[int, int, NodeRecord]] = []  # (first, last, holder), sorted by first
    granted: set[bytes] = set()
    losers: dict[bytes, NodeRecord] = {}
    # The record's layout inlined (``subnet_of``): this runs over every member on every pass.
    if version == 4:
        mine = sorted((r for r in records if ":" not in r.subnet), key=claim_order)
    else:
        mine = sorted((r for r in records if r.subnet6 or ":" in r.subnet), key=_CLAIM_ORDER6)
    for rec in mine:
        subnet = rec.subnet if version == 4 else (rec.subnet6 or rec.subnet)
        s = prefix.span(subnet) if version == 4 else prefix.span6(subnet)
        if s is None:
            raise ValueError(f"{rec.name}: not an IPv{version} network: {subnet!r}")
        first, last = s
        i = bisect.bisect_right(starts, last) - 1
        if i >= 0 and spans[i][1] >= first:
            losers[rec.node_id] = spans[i][2]
            continue
        starts.insert(i + 1, first)
        spans.insert(i + 1, (first, last, rec))
        granted.add(rec.node_id)
    return granted, losers


def subnet_problem(subnet: str, network: Networks) -> str | None:
    """Why ``subnet`` may not be a container subnet (one line), or None. The policy every
    member applies to every claim, this node's own ``--subnet`` included: a strict IPv4 or IPv6
    prefix, clear of every special-purpose range of its family (``prefix.SPECIAL``,
    ``prefix.SPECIAL6``: any overlap, so ::/0 and 0.0.0.0/0 are refused), and, when the cluster
    network of its family is set (``network``: one CIDR, or one per family), inside it and
    smaller than it (a claim on the whole network would overlap every member)."""
    return _subnet_problem(subnet, _networks(network))


def _networks(network: Networks) -> tuple[str, ...]:
    if network is None:
        return ()
    return (network,) if isinstance(network, str) else tuple(network)


@lru_cache(maxsize=prefix.CACHE)
def _subnet_problem(subnet: str, networks: tuple[str, ...]) -> str | None:
    # Every member weighs every peer's claims on every pass, and the same strings come back:
    # the verdict is cached per (subnet, networks), the prefixes parsed once (prefix.py). At
    # thousands of peers ipaddress objects made this the slowest part of a converged pass.
    got = prefix.family_span(subnet)
    if got is None:
        return f"subnet {subnet} is not a valid container subnet"
    version, net = got
    if version == 6 and net == (0, (1 << 128) - 1):
        return f"subnet {subnet} is the whole IPv6 address space"
    special = prefix.special_range_of(version, net)
    if special is not None:
        return f"subnet {subnet} overlaps {special}"
    cluster_text = network_of(networks, version)
    if cluster_text:
        found = prefix.family_span(cluster_text)
        cluster = found[1] if found is not None else None
        if cluster is not None and net == cluster:
            return f"subnet {subnet} is the whole cluster network"
        if cluster is not None and not prefix.within(net, cluster):
            return f"subnet {subnet} is outside network {cluster_text}"
    return None


@lru_cache(maxsize=prefix.CACHE)
def _ip_problem(ip: str) -> str | None:
    problem = prefix.underlay_problem(ip)
    return None if problem is None else f"public IP {problem}"


@lru_cache(maxsize=1 << 16)
def unicast6_problem(ip: str) -> str | None:
    """Why ``ip`` cannot be a peer's IPv6 underlay address (one line), or None: not the
    unspecified address, loopback or multicast (link-local is unicast, as for IPv4)."""
    try:
        a = ipaddress.IPv6Address(ip)
    except ValueError:
        return f"{ip!r} is not an IPv6 address"
    if a.is_unspecified:
        return f"{ip} is the unspecified address"
    if a.is_loopback:
        return f"{ip} is the loopback address"
    if a.is_multicast:
        return f"{ip} is in multicast ff00::/8"
    return None


@lru_cache(maxsize=4)
def foreign_routes(foreign: tuple[str, ...], network: str | None) -> prefix.Spans:
    """The routes a peer's subnet must not overlap: every destination in ``foreign`` but the
    default route and, when the cluster network is set, routes covering all of it (say a
    blackhole for 10.244.0.0/16 so unrouted container traffic never leaks upstream, or a VPN's
    10.0.0.0/8): both are less specific than every subnet meshd routes, which only refines them
    inside the network the operator gave to the mesh."""
    cluster = prefix.span(network) if network else None
    items = []
    for dst in foreign:
        s = prefix.span(dst, strict=False)
        if s is None or s == (0, prefix.ALL) or (cluster is not None and prefix.within(cluster, s)):
            continue
        items.append((s, dst))
    return prefix.Spans(items)


@lru_cache(maxsize=4)
def foreign_routes6(foreign: tuple[str, ...], network6: str | None) -> prefix.Spans:
    """``foreign_routes`` for IPv6: spans of the IPv6 destinations in ``foreign`` but the
    default route and routes covering all of ``network6``."""
    cluster = span_any(network6) if network6 else None
    items = []
    for dst in foreign:
        if ":" not in dst:
            continue
        s = span_any(dst, strict=False)
        if s is None or dst.endswith("/0"):
            continue
        if cluster is not None and s[1] <= cluster[1] and cluster[2] <= s[2]:
            continue
        items.append(((s[1], s[2]), dst))
    return prefix.Spans(items)


def touches_peers(dst: str, peers: Sequence[PeerView]) -> bool:
    """Does a route to ``dst`` overlap any peer's subnet (so the model may decide otherwise)?"""
    if ":" not in dst:
        net = prefix.span(dst, strict=False)
        if net is None:
            return False
        for pv in peers:
            s = prefix.span(pv.record.subnet)
            if s is not None and prefix.overlaps(s, net):
                return True
        return False
    net6 = span_any(dst, strict=False)
    if net6 is None:
        return False
    for pv in peers:
        sub = pv.record.subnet_of(6)
        s6 = span_any(sub) if sub else None
        if s6 is not None and spans_overlap(s6, net6):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Claimants:
    records: list[NodeRecord]  # the peers whose claims the conflict rule weighs, by name
    refused: dict[str, tuple[str, str]]  # peer name -> (FLAG_*, reason)
    next_deadline: float | None  # earliest time a dead claimant stops counting


def claimants(
    backend: str,
    network: Networks,
    grace: float,
    local: NodeRecord,
    peers: Sequence[PeerView],
    now: float,
) -> Claimants:
    """The peers that claim a subnet, from cluster-wide facts only (record contents and
    membership), so every node weighs the same claims: not left, not dead for ``grace`` seconds
    or more (the data plane's reap_after; allocation's subnet_lease), announcing this mesh's
    backend and subnets and addresses the policy allows, every one of them (``subnet_problem``
    per family, ``prefix.underlay_problem``). ``local`` is never one of them."""
    nets = _networks(network)
    records: list[NodeRecord] = []
    refused: dict[str, tuple[str, str]] = {}
    next_deadline: float | None = None
    for pv in sorted(peers, key=lambda v: v.record.name):
        p = pv.record
        if p.node_id == local.node_id or p.name == local.name:
            continue
        if pv.state == "left" or pv.state not in LIVE_STATES:
            continue  # gone: its entries are removed at once (once synced)
        if pv.state == "dead":
            deadline = pv.state_since + grace
            if deadline <= now:
                refused[p.name] = (FLAG_REAPED, f"dead since {pv.state_since:.1f}, reaped")
                continue
            next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
        if p.backend != backend:
            refused[p.name] = (
                FLAG_INCOMPATIBLE,
                f"announces backend {p.backend}, this mesh uses {backend}",
            )
            continue
        problem = _claim_problem(p, nets)
        if problem is not None:
            refused[p.name] = (FLAG_REFUSED, problem)
            continue
        records.append(p)
    return Claimants(records, refused, next_deadline)


def _claim_problem(p: NodeRecord, networks: tuple[str, ...]) -> str | None:
    problem = _subnet_problem(p.subnet, networks)
    if problem is None and p.subnet6 is not None:
        problem = _subnet_problem(p.subnet6, networks)
    if problem is None:
        problem = _ip_problem(p.public_ip)
    if problem is None and p.public_ip6 is not None:
        problem = _ip_problem(p.public_ip6)
    return problem


def select_peers(  # noqa: C901 - one rule per branch reads best as a list
    backend: str,
    network: str | None,
    reap_after: float,
    local: NodeRecord,
    underlay: Underlay,
    peers: Sequence[PeerView],
    now: float,
    onlink: Sequence[str] = (),
    foreign: Sequence[str] = (),
    network6: str | None = None,
) -> Selection:
    """Which peers get entries. ``onlink``: CIDRs reachable directly on the underlay (host-gw).
    ``foreign``: destinations of the main table's routes meshd does not own (any protocol but
    ``RTPROT_MESHD``). A peer announcing another backend, or one this build does not know, is
    ``incompatible``; one breaking the prefix and address policy (``subnet_problem``,
    ``prefix.unicast_problem``, a foreign route) is ``refused``. ``network6``: the IPv6 cluster
    network, if set (routes covering it are not foreign to the mesh)."""
    be = backends.get(backend)
    flags: dict[str, str] = {}
    reasons: dict[str, str] = {}
    next_deadline: float | None = None

    def refuse(p: NodeRecord, flag: str, why: str) -> None:
        flags[p.name] = flag
        reasons[p.name] = why

    # 1. Cluster-wide facts only: these decide who may claim a subnet.
    nets = tuple(n for n in (network, network6) if n)  # each subnet against its family's
    found = claimants(backend, nets, reap_after, local, peers, now)
    for name, (flag, why) in found.refused.items():
        flags[name], reasons[name] = flag, why
    next_deadline = found.next_deadline
    claimants_ = found.records

    local_ok = all(span_any(s) is not None for s in local.subnets)
    granted, losers = resolve_claims([*claimants_, *([local] if local_ok else [])])
    local_conflict: str | None = None
    if local.node_id in losers:
        holder = losers[local.node_id]
        local_conflict = (
            f"this node's subnet {local.subnet} overlaps {holder.subnet} of {holder.name}, "
            "which holds it"
        )

    # 2. Node-local checks, after the rule, so they cannot change who holds what elsewhere.
    onlink_nets = tuple(n for n in (span_any(c, strict=False) for c in onlink) if n is not None)
    local_problem = _local_checks(
        local,
        underlay,
        foreign_routes(tuple(foreign), network),
        foreign_routes6(tuple(foreign), network6),
    )
    candidates: list[NodeRecord] = []
    for p in claimants_:
        if p.node_id not in granted:
            h = losers[p.node_id]
            lost, held = contested(p, h)
            refuse(p, FLAG_CONFLICTED, f"subnet {lost} overlaps {held} held by {h.name}")
            continue
        problem = local_problem(p)
        if problem is not None:
            refuse(p, *problem)
            continue
        candidates.append(p)

    # 3. The backend's own rules (vxlan: a VTEP MAC; host-gw: on-link).
    refused = be.refuse(candidates, Site(local, underlay, onlink_nets))
    for name, (flag, why) in refused.items():
        flags[name], reasons[name] = flag, why
    programmed = tuple(p for p in candidates if p.name not in refused)
    return Selection(programmed, flags, reasons, local_conflict, next_deadline)


def _local_checks(
    local: NodeRecord,
    underlay: Underlay,
    routes: prefix.Spans,
    routes6: prefix.Spans,
) -> Callable[[NodeRecord], tuple[str, str] | None]:
    """The node-local rule for one pass: (flag, reason) when one of a peer's subnets clashes
    with this node's subnets, underlay or a foreign route of the same family, or the peer
    announces this node's own underlay address; None when it does not."""
    mine = [(s, n) for s in local.subnets if (n := span_any(s)) is not None]
    ul_cidrs = underlay.cidrs()
    ul_nets = [(c, n) for c in ul_cidrs if (n := span_any(c, strict=False)) is not None]
    own_ips = {canonical(a) for a in (underlay.ip, underlay.ip6) if a}

    def check(p: NodeRecord) -> tuple[str, str] | None:
        for sub in p.subnets:
            net = span_any(sub)
            if net is None:
                return FLAG_REFUSED, f"subnet {sub} is not a valid container subnet"
            for own, n in mine:
                if spans_overlap(net, n):
                    return FLAG_CONFLICTED, f"subnet {sub} overlaps this node's {own}"
            for cidr, n in ul_nets:
                if spans_overlap(net, n):
                    shown = underlay.network if cidr == ul_cidrs[0] else cidr
                    return FLAG_REFUSED, f"subnet {sub} overlaps the underlay {shown}"
            route = (routes6 if net[0] == 6 else routes).overlapping((net[1], net[2]))
            if route is not None:
                return FLAG_REFUSED, f"subnet {sub} overlaps route {route}, not meshd's"
        for ip in (p.public_ip, p.public_ip6):
            if ip and canonical(ip) in own_ips:
                return FLAG_REFUSED, f"announces this node's own address {ip}"
        return None

    return check


# --- desired state -------------------------------------------------------------------------------


def first_address(subnet: str) -> str:
    """``10.244.1.0/24`` -> ``10.244.1.1/24``, ``fd00:1::/64`` -> ``fd00:1::1/64`` (flannel's
    FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, the bridge's addresses)."""
    net = ipaddress.ip_network(subnet)
    return f"{net.network_address + 1}/{net.prefixlen}"


def device_spec(
    backend: str, local: NodeRecord, underlay: Underlay, vni: int, port: int
) -> DeviceSpec | None:
    """The mesh device ``backend`` needs on this node (None for host-gw)."""
    return backends.get(backend).device(Site(local, underlay, vni=vni, port=port))


def desired_state(
    *,
    backend: str,
    local: NodeRecord,
    underlay: Underlay,
    peers: Sequence[PeerView],
    now: float,
    synced: bool,
    reap_after: float,
    network: str | None = None,
    vni: int = 1,
    vxlan_port: int = 8472,
    wireguard_port: int = 51820,
    bridge: str | None = None,
    onlink: Sequence[str] = (),
    foreign: Sequence[str] = (),
    network6: str | None = None,
) -> Desired:
    """Everything this node should have in its kernel for ``peers`` at time ``now``."""
    be: Backend = backends.get(backend)
    sel = select_peers(
        backend, network, reap_after, local, underlay, peers, now, onlink, foreign, network6
    )
    onlink_nets = tuple(n for n in (span_any(c, strict=False) for c in onlink) if n is not None)
    site = Site(local, underlay, onlink_nets, vni=vni, port=vxlan_port, wg_port=wireguard_port)
    dev = be.device(site)
    routes: dict[str, Route] = {}
    neighs: dict[str, Neigh] = {}
    fdb: set[Fdb] = set()
    wgpeers: dict[str, WgPeer] = {}
    flags, reasons = dict(sel.flags), dict(sel.reasons)
    programmed: list[str] = []
    for p in sel.programmed:
        p_routes, p_neighs, fdb_entry, wgpeer, missing = be.entries(p, site, dev)
        if missing is not None:
            flags[p.name] = FLAG_PARTIAL if p_routes else FLAG_REFUSED
            reasons[p.name] = missing
        if not p_routes:
            continue
        programmed.append(p.name)
        for route in p_routes:
            routes[route.dst] = route
        for neigh in p_neighs:
            neighs[neigh.dst] = neigh
        if fdb_entry is not None:
            fdb.add(fdb_entry)
        if wgpeer is not None:
            wgpeers[wgpeer.public_key] = wgpeer
    br = None
    if bridge:
        br = DeviceSpec(
            name=bridge,
            kind="bridge",
            mtu=None,
            mac=None,
            addresses=tuple(first_address(s) for s in local.subnets),
            owned=False,
        )
    return Desired(
        backend=backend,
        device=dev,
        bridge=br,
        routes=routes,
        neighs=neighs,
        fdb=frozenset(fdb),
        programmed=tuple(programmed),
        flags=flags,
        reasons=reasons,
        local_conflict=sel.local_conflict,
        allow_remove=synced,
        next_deadline=sel.next_deadline,
        mtu=dev.mtu if dev is not None and dev.mtu else underlay.mtu,
        steps=be.steps(),
        wgpeers=wgpeers,
    )


# --- diff ----------------------------------------------------------------------------------------


def diff_device(spec: DeviceSpec, obs: ObservedDevice | None) -> tuple[list[DeviceOp], list[str]]:
    """Steps that make ``obs`` match ``spec``; plus problems the steps cannot fix."""
    ops: list[DeviceOp] = []
    create = [DeviceOp("create", spec.name)]
    if spec.settable:
        create.append(DeviceOp("set-params", spec.name, _params(spec.params)))
    create += [DeviceOp("addr-add", spec.name, a) for a in spec.addresses]
    create.append(DeviceOp("set-up", spec.name))
    if obs is None:
        return create, []
    if obs.kind != spec.kind:
        if not spec.owned:
            return [], [f"{spec.name} exists as a {obs.kind or 'plain'} device, not a {spec.kind}"]
        return [DeviceOp("delete", spec.name, f"kind {obs.kind} != {spec.kind}"), *create], []
    wrong = [
        f"{k} {obs.params.get(k)!r} != {v!r}" for k, v in spec.params if obs.params.get(k) != v
    ]
    if wrong and spec.settable:
        ops.append(DeviceOp("set-params", spec.name, _params(spec.params)))
    elif wrong and spec.owned:
        # These are fixed at creation; the kernel cannot change them in place.
        return [DeviceOp("delete", spec.name, "; ".join(wrong)), *create], []
    if spec.mtu is not None and obs.mtu != spec.mtu:
        ops.append(DeviceOp("set-mtu", spec.name, str(spec.mtu)))
    if spec.mac is not None and (obs.mac or "").lower() != spec.mac:
        ops.append(DeviceOp("set-mac", spec.name, spec.mac))
    have = set(obs.addresses)
    ops += [DeviceOp("addr-add", spec.name, a) for a in spec.addresses if a not in have]
    if spec.owned:
        extra = [a for a in obs.addresses if a not in spec.addresses]
    else:
        extra = [a for a in obs.addresses if a in spec.retired and a not in spec.addresses]
    ops += [DeviceOp("addr-del", spec.name, a) for a in extra]
    if not obs.up:
        ops.append(DeviceOp("set-up", spec.name))
    return ops, []


def _params(params: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params)


def diff(desired: Desired, observed: Observed) -> Plan:
    """The minimal Plan that takes ``observed`` to ``desired``.

    Removals (entries meshd owns that no programmed peer wants) are held back, and only counted,
    until ``desired.allow_remove``. A device that is (re)created loses its neighbours, FDB and
    routes in the kernel, so they are planned afresh rather than trusted from ``observed``."""
    devices: list[DeviceSpec] = []
    dev_ops: list[DeviceOp] = []
    problems: list[str] = []
    fresh: set[str] = set()
    for spec in (desired.device, desired.bridge):
        if spec is None:
            continue
        devices.append(spec)
        ops, probs = diff_device(spec, observed.devices.get(spec.name))
        dev_ops += ops
        problems += probs
        if any(o.action == "create" for o in ops):
            fresh.add(spec.name)

    mesh = desired.device.name if desired.device else None
    obs_routes = {k: r for k, r in observed.routes.items() if r.dev not in fresh}
    obs_neighs = {} if mesh in fresh else dict(observed.neighs)
    obs_fdb = frozenset() if mesh in fresh else observed.fdb
    obs_wg: Mapping[str, WgPeer] = {} if mesh in fresh else observed.wgpeers

    # Only the (usually few) differences are sorted, not the thousands of entries that match:
    # plans stay ordered by key (each kind's entries sort by their key first).
    neigh_set = tuple(sorted(n for k, n in desired.neighs.items() if obs_neighs.get(k) != n))
    fdb_set = tuple(sorted(desired.fdb - obs_fdb))
    route_add: list[Route] = []
    route_replace: list[Route] = []
    for k, r in desired.routes.items():
        have = obs_routes.get(k)
        if have is None:
            route_add.append(r)
        elif have != r:
            route_replace.append(r)
    route_add.sort()
    route_replace.sort()

    route_del = tuple(sorted(r for k, r in obs_routes.items() if k not in desired.routes))
    neigh_del = tuple(sorted(n for k, n in obs_neighs.items() if k not in desired.neighs))
    # An FDB MAC that stays wanted but moves to another dst is rewritten by the replace in
    # fdb_set; only MACs nobody wants any more, or a second dst, are deleted.
    wanted_macs = {f.lladdr for f in desired.fdb}
    dsts_per_mac = Counter(f.lladdr for f in obs_fdb)
    fdb_del = tuple(
        sorted(
            f
            for f in obs_fdb - desired.fdb
            if f.lladdr not in wanted_macs or dsts_per_mac[f.lladdr] > 1
        )
    )
    wgpeer_set = tuple(sorted(w for k, w in desired.wgpeers.items() if obs_wg.get(k) != w))
    wgpeer_del = tuple(sorted(w for k, w in obs_wg.items() if k not in desired.wgpeers))
    held = 0
    if not desired.allow_remove:
        held = len(route_del) + len(neigh_del) + len(fdb_del) + len(wgpeer_del)
        route_del, neigh_del, fdb_del, wgpeer_del = (), (), (), ()
    return Plan(
        devices=tuple(devices),
        device=mesh,
        steps=desired.steps or ALL_STEPS,
        device_ops=tuple(dev_ops),
        neigh_set=neigh_set,
        fdb_set=fdb_set,
        route_add=tuple(route_add),
        route_replace=tuple(route_replace),
        route_del=route_del,
        neigh_del=neigh_del,
        fdb_del=fdb_del,
        wgpeer_set=wgpeer_set,
        wgpeer_del=wgpeer_del,
        problems=tuple(problems),
        removals_held=held,
    )


def subnet_env(
    network: str | None,
    subnet: str,
    mtu: int,
    ipmasq: bool,
    *,
    subnet6: str | None = None,
    network6: str | None = None,
) -> str:
    """flannel's /run/flannel/subnet.env format, which CNI's flannel plugin reads.

    ``subnet`` and ``subnet6`` are a record's (``subnet`` IPv4 or, with no IPv4 subnet, IPv6),
    ``network`` and ``network6`` the IPv4 and IPv6 cluster networks. Like flanneld, each family
    the node has a subnet of gets its two lines (``FLANNEL_NETWORK``/``FLANNEL_SUBNET``, then
    ``FLANNEL_IPV6_NETWORK``/``FLANNEL_IPV6_SUBNET``: the first address of the subnet with its
    length), IPv4 first; without a network, the subnet stands for it."""
    by_family: dict[int, str] = {
        ipaddress.ip_network(s).version: s for s in (subnet, subnet6) if s is not None
    }
    out = ""
    for version, key in ((4, "FLANNEL_"), (6, "FLANNEL_IPV6_")):
        own = by_family.get(version)
        if own is None:
            continue
        net = network if version == 4 else network6
        out += f"{key}NETWORK={net or own}\n{key}SUBNET={first_address(own)}\n"
    return out + f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
