"""A member gone bad, against real daemons in namespaces (certificate mode, vxlan, filter on).

The rogue is host h1 of a 4-host lab: it runs a real daemon, holds the mesh key and its own valid
certificate from the lab's CA, and sorts first by name (the seed, too). The test process speaks
for it with the project's own encoder: messages from ``meshd.gossip.messages``, records signed
with the rogue's key (``meshd.gossip.trust.Signer``) where the attack needs a signature, sealed
with the mesh key under the rogue's node id for each victim's node id, sent from the rogue's
namespace to each victim's gossip port.

After each attack, on every victim (h2, h3, h4): the peers table (node ids, states,
incarnations, subnets, addresses), meshd's routes (proto 109), permanent neighbours, FDB and
the nftables allow-set are what they were; container pings between victims pass; and the drop
is counted by its reason in ``status --json``, once per datagram sent.

Revocation (its own lab: it ends the rogue's membership) and start-time refusals (one host) come
last. docs/security.md's threat table points here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from meshd import pki
from meshd.gossip.certificate import Grant
from meshd.gossip.keyops import MAX_LTIME_JUMP
from meshd.gossip.messages import (
    MAX_INCARNATION,
    MAX_LTIME,
    Alive,
    Dead,
    DecodeError,
    KeyOp,
    Ping,
    PushPull,
    Suspect,
    SyncDigest,
    decode,
    encode,
    pack_datagram,
)
from meshd.gossip.record import NodeRecord
from meshd.gossip.security import Keyring, OpenError, Sealer, key_id
from meshd.gossip.trust import Signer
from meshd.lab import DEFAULT_GOSSIP_PORT, Host, Lab, ns_exec
from meshd.lab.topology import down

from .conftest import all_alive, cli, keygen, wait_until
from .wire import (
    STEADY_GOSSIP,
    counters,
    in_ns,
    opener,
    send_from,
    send_spoofed,
    snapshot,
    sniff,
    status,
    udp_payload,
    vxlan_view,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

# Steady timers (a false suspicion would change an incarnation and blur "unchanged"), and the
# data-plane filter on, so the allow-set is part of what must not change.
ROGUE_CONFIG = "filter = true\n" + STEADY_GOSSIP
PORT = DEFAULT_GOSSIP_PORT


# ------------------------------------------------------------------------------- the rogue


@dataclass
class Rogue:
    """h1 gone bad: its key, certificate and node id, and a sealer under the mesh key."""

    lab: Lab
    key_file: Path
    host: Host
    victims: list[Host]
    signer: Signer
    sealer: Sealer
    record: NodeRecord
    """Its own record as its daemon announces it (unsigned here; `own` signs a variant)."""

    def rec(self, name: str) -> NodeRecord:
        """``name``'s current record, as its own daemon announces it (cert and sig left out)."""
        return NodeRecord.from_dict(status(self.lab.daemons[name])["node"])

    def node_id(self, name: str) -> bytes:
        return self.rec(name).node_id

    def ids(self) -> list[bytes]:
        """Every member's node id (to open sniffed datagrams as their recipient would)."""
        return [self.node_id(h.name) for h in self.lab.hosts]

    def own(self, **changes: Any) -> NodeRecord:
        """The rogue's own record with ``changes``, at a higher incarnation, signed by it."""
        changes.setdefault("incarnation", self.rec(self.host.name).incarnation + 1)
        return self.signer.sign(replace(self.record, **changes))

    def send(self, to: Host, *msgs: bytes, sender: bytes | None = None) -> int:
        """One datagram of ``msgs`` for ``to``, sealed for its node id; returns its size."""
        data = self.sealer.seal(pack_datagram(list(msgs)), time.time(), self.node_id(to.name))
        if sender is not None:  # another sender id in the clear header (a fresh sealer)
            forged = Sealer(self.sealer.keyring, sender)
            data = forged.seal(pack_datagram(list(msgs)), time.time(), self.node_id(to.name))
        send_from(self.host.ns, data, (to.underlay_ip, PORT))
        return len(data)


def cert_der(lab: Lab, name: str) -> bytes:
    """``name``'s certificate as issued by the lab's CA (what any member sees in gossip)."""
    return pki.load_certificate(lab.ca.directory / f"{name}.crt").der


def allow_set(h: Host) -> set[str]:
    """The nftables allow-set (members' public IPs) in ``h``."""
    res = ns_exec(h.ns, ["nft", "-j", "list", "set", "inet", "meshd", "members"], check=False)
    if res.returncode != 0:
        return set()
    out: set[str] = set()
    for item in json.loads(res.stdout).get("nftables", []):
        for e in item.get("set", {}).get("elem", []):
            out.add(e if isinstance(e, str) else str(e.get("elem", {}).get("val", e)))
    return out


def view(h: Host) -> tuple[Any, ...]:
    """Everything of ``h``'s kernel that a member's records decide."""
    return (*vxlan_view(h), allow_set(h))


def start_mesh(lab: Lab, key: Path, cfg: Path) -> None:
    lab.start_daemons(key_file=key, backend="vxlan", extra_args=["--config", str(cfg)])
    wait_until(all_alive(lab, [h.name for h in lab.hosts]), 60, "members alive", lab)
    wait_until(
        lambda: all(lab.ping_matrix(count=1, timeout=1).values()), 30, "container pings", lab
    )
    # The filter's set and the FDB follow the table a moment later.
    ips = {h.underlay_ip for h in lab.hosts}
    wait_until(
        lambda: all(allow_set(h) >= ips - {h.underlay_ip} for h in lab.hosts),
        20,
        "allow-sets",
        lab,
    )


def make_rogue(lab: Lab, key: Path) -> Rogue:
    h1 = lab.hosts[0]
    cdir = lab.ca.directory
    signer = Signer(pki.load_private_key(cdir / "h1.key"), cert_der(lab, "h1"))
    record = NodeRecord.from_dict(status(lab.daemons["h1"])["node"])
    sealer = Sealer(Keyring.parse(key.read_text()), record.node_id)
    return Rogue(lab, key, h1, lab.hosts[1:], signer, sealer, record)


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rogue]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    tmp = tmp_path_factory.mktemp("rogue")
    cfg = tmp / "rogue.toml"
    cfg.write_text(ROGUE_CONFIG)
    key = keygen(tmp / "key")
    down("rogue")  # left behind by a run killed mid-test
    lab = Lab("rogue", hosts=4, workdir=tmp / "lab")
    try:
        lab.build()
        start_mesh(lab, key, cfg)
        yield make_rogue(lab, key)
    finally:
        lab.teardown()


Send = Callable[[Rogue, Host], int]
"""Sends the attack's datagrams to one victim; returns how many."""


def attack(
    r: Rogue, send: Send, reasons: dict[str, int] | Callable[[Host], dict[str, int]]
) -> None:
    """Run ``send`` against every victim; each must count exactly ``reasons`` (``drop.<reason>``
    -> datagrams) and keep its table, kernel entries and pings as they were."""
    lab = r.lab
    want = reasons if callable(reasons) else (lambda _h: reasons)
    before = {h.name: (snapshot(lab.daemons[h.name]), view(h)) for h in r.victims}
    c0 = {h.name: counters(lab.daemons[h.name]) for h in r.victims}
    for h in r.victims:
        send(r, h)

    def delta(h: Host, reason: str) -> int:
        c = counters(lab.daemons[h.name])
        return c.get(f"drop.{reason}", 0) - c0[h.name].get(f"drop.{reason}", 0)

    # Datagrams are handled whole, in arrival order: once the last drop is counted, whatever
    # they could have changed in the core has changed.
    wait_until(
        lambda: all(delta(h, k) >= n for h in r.victims for k, n in want(h).items()),
        15,
        f"drops counted ({reasons})",
        lab,
    )
    for h in r.victims:
        for k, n in want(h).items():
            assert delta(h, k) == n, (h.name, k, counters(lab.daemons[h.name]))
    for h in r.victims:
        table, kernel = before[h.name]
        assert snapshot(lab.daemons[h.name]) == table, f"{h.name}'s peers table changed"
        assert view(h) == kernel, f"{h.name}'s routes, neighbours, FDB or allow-set changed"
    assert all(lab.ping_matrix(count=1, timeout=1, hosts=r.victims).values()), "victim pings"


def msgs_to(send: Callable[[Rogue, Host], list[bytes]]) -> Send:
    """One datagram per message ``send`` builds for a victim."""

    def run(r: Rogue, h: Host) -> int:
        out = send(r, h)
        for m in out:
            r.send(h, m)
        return len(out)

    return run


# ------------------------------------------------------------------------------- 1. forged alive


def test_forged_alive_signed_by_the_rogue(rogue: Rogue) -> None:
    """h2's record moved to the rogue's address at the maximum incarnation, signed by the rogue
    (with its own certificate, which names h1): refused as ``cert_name``."""

    def forged(r: Rogue, h: Host) -> list[bytes]:
        v = replace(r.rec("h2"), public_ip=r.host.underlay_ip, incarnation=MAX_INCARNATION)
        return [encode(Alive(r.signer.sign(v)))]

    attack(rogue, msgs_to(forged), {"cert_name": 1})


def test_forged_alive_unsigned(rogue: Rogue) -> None:
    def forged(r: Rogue, h: Host) -> list[bytes]:
        v = replace(r.rec("h2"), public_ip=r.host.underlay_ip, incarnation=MAX_INCARNATION)
        return [encode(Alive(v))]

    attack(rogue, msgs_to(forged), {"unsigned": 1})


# ------------------------------------------------------------------------------- 2. forged left


def test_forged_leave_as_dead_from_the_member_itself(rogue: Rogue) -> None:
    """The old leave, a dead message whose sender is the node: not a signed record, refused by
    the other members. (To h2 itself it is a verdict about itself, which it refutes: SWIM.)"""

    def forged(r: Rogue, h: Host) -> list[bytes]:
        if h.name == "h2":
            return []
        inc = r.rec("h2").incarnation
        return [encode(Dead(inc, "h2", "h2")), encode(Dead(inc + 1, "h2", "h2"))]

    attack(rogue, msgs_to(forged), lambda h: {"unsigned_leave": 0 if h.name == "h2" else 2})


def test_forged_leave_as_left_record_signed_by_the_rogue(rogue: Rogue) -> None:
    def forged(r: Rogue, h: Host) -> list[bytes]:
        v = r.rec("h2")
        return [encode(Alive(r.signer.sign(replace(v, left=True, incarnation=v.incarnation + 1))))]

    attack(rogue, msgs_to(forged), {"cert_name": 1})


# ------------------------------------------------------------------------------- 3. suspect/dead


def test_suspect_and_dead_at_huge_incarnations_dropped(rogue: Rogue) -> None:
    """About h2 and about the victim itself, at 2^63 - 2: the jump bound drops all four, so no
    incarnation moves (the victim does not refute, h2 is not suspected)."""

    def forged(r: Rogue, h: Host) -> list[bytes]:
        inc = MAX_INCARNATION - 1
        about = ["h2", h.name] if h.name != "h2" else ["h2", "h3"]
        return [encode(m(inc, n, "h1")) for n in about for m in (Suspect, Dead)]

    attack(rogue, msgs_to(forged), {"incarnation_jump": 4})


# ------------------------------------------------------------------------------- 4. since games

CLAIMS = [
    "10.244.2.0/24",  # h2's subnet
    "10.244.0.0/16",  # the whole cluster network
    "169.254.169.252/30",  # the cloud metadata service
    "127.0.0.0/8",
    "224.0.0.0/4",
]


@pytest.mark.parametrize("subnet", CLAIMS)
def test_claim_outside_the_certificate_refused(rogue: Rogue, subnet: str) -> None:
    """The rogue's own record, signed by it, claiming a subnet its certificate does not grant,
    dated since = 1: refused by the certificate check before any data plane sees it."""
    assert rogue.lab.hosts[1].subnet == CLAIMS[0]

    def forged(r: Rogue, h: Host) -> list[bytes]:
        return [encode(Alive(r.own(subnet=subnet, since=1)))]

    attack(rogue, msgs_to(forged), {"cert_grant": 1})


# ------------------------------------------------------------------------------- 5. stolen cert


def test_stolen_certificate_without_its_key(rogue: Rogue) -> None:
    """h2's certificate (public: it travels in gossip) on h2's record, signed with the rogue's
    key: moved gossip port, a leave, the maximum incarnation -- each ``bad_signature``; moved to
    the rogue's address, ``cert_ip``."""

    def forged(r: Rogue, h: Host) -> list[bytes]:
        v = replace(r.rec("h2"), cert=cert_der(r.lab, "h2"), sig=b"")
        variants = [
            replace(v, port=PORT + 1, incarnation=v.incarnation + 1),
            replace(v, left=True, incarnation=v.incarnation + 1),
            replace(v, incarnation=MAX_INCARNATION),
        ]
        out = [encode(Alive(x.sign(r.signer.key))) for x in variants]
        moved = replace(v, public_ip=r.host.underlay_ip, incarnation=v.incarnation + 1)
        return [*out, encode(Alive(moved.sign(r.signer.key)))]

    attack(rogue, msgs_to(forged), {"bad_signature": 3, "cert_ip": 1})


# ------------------------------------------------------------------------------- 6. replay


def any_from(
    key: Path, want: Callable[[list[Any]], bool], ids: list[bytes]
) -> Callable[[bytes], bool]:
    """Whether a sealed datagram opens with ``key`` and its messages satisfy ``want``."""

    def check(datagram: bytes) -> bool:
        try:
            return want(decode(opener(key, datagram, ids).open(datagram, time.time()).payload))
        except (OpenError, DecodeError):
            return False

    return check


def test_cross_member_replay_misaddressed(rogue: Rogue) -> None:
    """A datagram h2 sent h3 (sniffed on h3's wire), re-sent by the rogue to h4: ``misaddressed``
    at h4, before any decryption. (h2 and h3 are not sent anything.)"""
    h2, h3, h4 = rogue.victims
    frame = sniff(h3.ns, "eth0", h2.underlay_ip, PORT, any_from(rogue.key_file, bool, rogue.ids()))
    payload = udp_payload(frame)

    def replay(r: Rogue, h: Host) -> int:
        if h is h4:
            send_from(r.host.ns, payload, (h4.underlay_ip, PORT))
            return 1
        return 0

    attack(rogue, replay, lambda h: {"misaddressed": 1 if h is h4 else 0})


# ------------------------------------------------------------------------------- 7. amplification


def is_digest(msgs: list[Any]) -> bool:
    return any(isinstance(m, SyncDigest) and not m.reply for m in msgs)


class Capture:
    """Datagrams arriving at ``ns``'s gossip port from members, collected on a thread."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.frames: list[tuple[str, bytes]] = []
        self._stop = False

    def run(self, seconds: float) -> list[tuple[str, bytes]]:
        def collect() -> None:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)) as s:
                s.bind(("eth0", 0x0800))
                s.settimeout(0.2)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    try:
                        frame, meta = s.recvfrom(65535)
                    except TimeoutError:
                        continue
                    if meta[2] == socket.PACKET_OUTGOING:
                        continue
                    ip = frame[14:]
                    ihl = (ip[0] & 0x0F) * 4
                    if ip[9] == 17 and int.from_bytes(ip[ihl + 2 : ihl + 4], "big") == PORT:
                        self.frames.append((socket.inet_ntoa(ip[12:16]), udp_payload(frame)))

        in_ns(self.ns, collect)
        return self.frames


def push_pull_bytes(
    key: Path, frames: list[tuple[str, bytes]], sources: set[str], ids: list[bytes]
) -> int:
    """Bytes of the datagrams from ``sources`` that carry a push-pull (a full state)."""
    pp = any_from(key, lambda ms: any(isinstance(m, PushPull) for m in ms), ids)
    return sum(len(d) for src, d in frames if src in sources and pp(d))


def test_spoofed_source_digest_replay_amplifies_nothing(rogue: Rogue) -> None:
    """A genuine anti-entropy opening (a sync_digest from A to B, sniffed), replayed to every
    other victim with A's address as the source, and to B again: dropped by the envelope
    (``misaddressed``, ``replay``), so nothing answers it; a capture at A's wire, where any
    answer would go, sees no full state from the victims: amplification 0 (<= 1)."""
    r = rogue
    victim_ips = {h.underlay_ip for h in r.victims}
    frame: bytes | None = None
    src = dst = ""
    for h in r.victims:  # a digest from a victim to a victim, where one comes soonest
        try:
            digest = any_from(r.key_file, is_digest, r.ids())
            frame = sniff(h.ns, "eth0", None, PORT, digest, timeout=25)
        except AssertionError:
            continue
        ip = frame[14:]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        if src in victim_ips:
            break
        frame = None
    assert frame is not None, "no digest between victims within 25 s"
    payload = udp_payload(frame)
    sport = int.from_bytes(frame[14 + (frame[14] & 0x0F) * 4 :][:2], "big")
    a = next(h for h in r.victims if h.underlay_ip == src)
    b = next(h for h in r.victims if h.underlay_ip == dst)
    sent = {"n": 0, "bytes": 0}
    cap = Capture(a.ns)

    def replay(r: Rogue, h: Host) -> int:
        if h is a:
            return 0
        send_spoofed(r.host.ns, (src, sport), (h.underlay_ip, PORT), payload)
        sent["n"] += 1
        sent["bytes"] += len(payload)
        return 1

    t = threading.Thread(target=cap.run, args=(4.0,))
    t.start()
    try:
        attack(
            r,
            replay,
            lambda h: {} if h is a else ({"replay": 1} if h is b else {"misaddressed": 1}),
        )
    finally:
        t.join()
    out = push_pull_bytes(r.key_file, cap.frames, victim_ips - {src}, r.ids())
    assert sent["n"] == len(r.victims) - 1
    assert out / sent["bytes"] <= 1, (out, sent)
    assert out == 0, f"{out} bytes of full state answered {sent['bytes']} bytes of replay"


# ------------------------------------------------------------------------------- 8. keyring


def key_ids(lab: Lab, name: str) -> list[str]:
    return list(status(lab.daemons[name])["keys"])


def use_at_max(r: Rogue, origin: str = "zzzz") -> KeyOp:
    """``use`` of the current primary at the maximum Lamport time, from a name that sorts after
    every member's: had it counted, every later ``use`` would be stale (the primary pinned)."""
    primary = Keyring.parse(r.key_file.read_text()).primary
    return KeyOp(os.urandom(16), "use", key_id(primary), origin, MAX_LTIME)


def test_key_op_at_maximum_lamport_time_dropped(rogue: Rogue) -> None:
    """A KEY_OP broadcast and the same op in a push-pull's key-op log (the rogue's own, signed
    record as the sender): both ``key_op_ltime`` on every victim; the keyring unchanged."""
    before = {h.name: key_ids(rogue.lab, h.name) for h in rogue.victims}

    def forged(r: Rogue, h: Host) -> int:
        r.send(h, encode(use_at_max(r)))
        own = r.signer.sign(r.rec("h1"))  # its current record, as its daemon signs it
        pp = PushPull(own, 77, True, 0, 1, (), (use_at_max(r),))
        r.send(h, encode(pp))
        return 2

    attack(rogue, forged, {"key_op_ltime": 2})
    assert {h.name: key_ids(rogue.lab, h.name) for h in rogue.victims} == before


def test_operator_rotation_still_works_after_the_rogue(rogue: Rogue, tmp_path: Path) -> None:
    """After the attempts above, the operator's rotation is not pinned: install and use a new
    key through two victims, every member follows; then back to the first key."""
    lab = rogue.lab
    names = [h.name for h in lab.hosts]
    old = key_ids(lab, "h2")[0]
    new_key = keygen(tmp_path / "k2").read_text()
    cli(lab.daemons["h2"], "keys", "install", "-", input=new_key)
    new = key_id(Keyring.parse(new_key).primary).hex()
    cli(lab.daemons["h3"], "keys", "use", new)
    wait_until(
        lambda: all(key_ids(lab, n)[0] == new for n in names), 30, "new primary everywhere", lab
    )
    cli(lab.daemons["h4"], "keys", "use", old)
    wait_until(lambda: all(key_ids(lab, n)[0] == old for n in names), 30, "old key back", lab)
    cli(lab.daemons["h4"], "keys", "remove", new)
    wait_until(lambda: all(key_ids(lab, n) == [old] for n in names), 30, "ring as before", lab)
    assert MAX_LTIME_JUMP < MAX_LTIME  # (the bound the drops above rest on)


# ------------------------------------------------------------------------------- VTEP MAC


def test_rogue_announcing_a_victims_vtep_mac(rogue: Rogue) -> None:
    """The rogue's own record, validly signed by its own certificate, carrying h2's VTEP MAC
    (taken, it would move h2's FDB entry). In certificate mode the MAC derives from the
    certified name (record.certified_vtep_seed): refused as ``cert_mac``, h2 keeps its entries."""

    def forged(r: Rogue, h: Host) -> list[bytes]:
        return [encode(Alive(r.own(vtep_mac=r.rec("h2").vtep_mac)))]

    attack(rogue, msgs_to(forged), {"cert_mac": 1})


# ------------------------------------------------------------------------------- 9. revocation


def test_revoked_rogue_evicted_everywhere(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    """``meshd ca revoke`` the rogue, ``meshd crl install`` on one victim: within seconds every
    victim has forgotten it -- peers row, route, neighbour, FDB entry, allow-set address -- and
    drops its datagrams (``evicted`` by node id; its signed record under any other sender id,
    ``revoked``)."""
    cfg = tmp_path / "rogue.toml"
    cfg.write_text(ROGUE_CONFIG)
    key = keygen(tmp_path / "key")
    lab = make_lab("rrevoke", 4)
    start_mesh(lab, key, cfg)
    r = make_rogue(lab, key)
    rogue_ip, rogue_subnet, mac = r.host.underlay_ip, r.host.subnet, r.record.vtep_mac
    s0 = rogue_subnet.rsplit(".", 1)[0] + ".0"
    others = {h.name: (h.subnet, h.underlay_ip) for h in r.victims}

    def holds_rogue(h: Host) -> tuple[bool, ...]:
        routes, neigh, fdb = vxlan_view(h)
        return (
            "h1" in {p["name"] for p in cli(lab.daemons[h.name], "peers", "--json")},
            rogue_subnet in routes,
            neigh.get(s0) == mac,
            fdb.get(str(mac)) == rogue_ip,
            rogue_ip in allow_set(h),
        )

    for h in r.victims:  # it is a full member first: every entry there to be removed
        assert holds_rogue(h) == (True,) * 5, (h.name, holds_rogue(h))
    c0 = {h.name: counters(lab.daemons[h.name]) for h in r.victims}

    out = subprocess.run(
        [sys.executable, "-m", "meshd", "ca", "revoke", str(lab.ca.directory), "h1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "revoked h1" in out.stdout, out.stdout
    cli(lab.daemons["h2"], "crl", "install", str(lab.ca.directory / pki.CRL_FILE))
    t0 = time.monotonic()
    wait_until(
        lambda: all(holds_rogue(h) == (False,) * 5 for h in r.victims),
        15,
        "the rogue evicted from every victim's table and kernel",
        lab,
    )
    evicted_after = time.monotonic() - t0
    for h in r.victims:
        st = status(lab.daemons[h.name])
        assert st["trust"]["crl"]["revoked"] == 1, st["trust"]
        assert st["counters"].get("evicted", 0) - c0[h.name].get("evicted", 0) == 1
        routes, _, fdb = vxlan_view(h)
        for name, (subnet, ip) in others.items():
            if name != h.name:
                assert subnet in routes and ip in fdb.values() and ip in allow_set(h), name
    assert all(lab.ping_matrix(count=1, timeout=1, hosts=r.victims).values())

    # Its datagrams now: anything under its node id is dropped unread; its record (a higher
    # incarnation, validly signed by its revoked certificate) under a fresh id, refused.
    c1 = {h.name: counters(lab.daemons[h.name]) for h in r.victims}
    rec = r.own(incarnation=r.record.incarnation + 5)
    for h in r.victims:
        r.send(h, encode(Ping(1, h.name, "h1", (rogue_ip, PORT))))
        r.send(h, encode(Alive(rec)), sender=os.urandom(16))

    def counted(h: Host) -> bool:
        c = counters(lab.daemons[h.name])
        return all(
            c.get(f"drop.{k}", 0) > c1[h.name].get(f"drop.{k}", 0) for k in ("evicted", "revoked")
        )

    wait_until(lambda: all(counted(h) for h in r.victims), 10, "evicted and revoked drops", lab)
    for h in r.victims:
        assert holds_rogue(h) == (False,) * 5
    print(f"rogue evicted everywhere {evicted_after:.1f} s after crl install")


# ------------------------------------------------------------------------------- start refusals


def test_join_refused_at_start(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    """``meshd join`` with a flag or file that contradicts the certificate exits non-zero with
    one clear line on stderr (no traceback): subnet, public IP, a key that is not the
    certificate's, an expired certificate, one from another CA."""
    lab = make_lab("rstart", 1)
    h = lab.hosts[0]
    key = keygen(tmp_path / "key")
    cdir = lab.workdir / "ca"  # (lab.ca would make it now)
    # The lab's CA, made 60 days ago, so that it can have issued a certificate now expired.
    day = 86400.0
    pki.init_ca(cdir, lab.pod_network, "old lab CA", wall=time.time() - 60 * day)
    crt = lab.ca.issue(h)
    ca = lab.ca.ca_cert
    # Another node's key, an expired certificate of h1, and h1 certified by another CA.
    pki.sign(cdir, "other", "10.99.0.9", Grant.fixed("10.244.9.0/24"), tmp_path / "other")
    pki.sign(
        cdir, h.name, h.underlay_ip, Grant.fixed(h.subnet), tmp_path / "old", days=1,
        wall=time.time() - 30 * day,
    )  # fmt: skip
    pki.init_ca(tmp_path / "ca2", lab.pod_network)
    pki.sign(tmp_path / "ca2", h.name, h.underlay_ip, Grant.fixed(h.subnet), tmp_path / "foreign")
    ns_exec(h.ns, ["ip", "addr", "add", "10.99.0.50/24", "dev", "eth0"])

    cases = {
        "subnet": ["--ca", str(ca), "--cert", str(crt), "--subnet", "10.244.9.0/24"],
        "public_ip": ["--ca", str(ca), "--cert", str(crt), "--public-ip", "10.99.0.50"],
        "cert_key": [
            "--ca", str(ca), "--cert", str(crt), "--cert-key", str(tmp_path / "other.key"),
        ],
        "expired": ["--ca", str(ca), "--cert", str(tmp_path / "old.crt")],
        "issuer": ["--ca", str(ca), "--cert", str(tmp_path / "foreign.crt")],
    }  # fmt: skip
    for what, extra in cases.items():
        argv = lab.daemon_argv(h, key_file=key, backend="vxlan", extra_args=extra)
        res = ns_exec(h.ns, argv, check=False, timeout=30)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 78, (what, res.returncode, res.stdout, res.stderr)  # EX_CONFIG
        assert "Traceback" not in res.stderr, (what, res.stderr)
        assert len(lines) == 1, (what, res.stderr)
        print(f"{what}: {lines[0]}")
