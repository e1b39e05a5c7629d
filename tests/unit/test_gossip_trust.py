"""Certificate mode: records only their owner can write, checked against real signatures.

The attacker throughout holds the mesh key (it can put any datagram on the wire) and its own
valid certificate (node n2's), and tries to lie about n1 or about us (n0)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.gossip import messages as m
from meshd.gossip.certificate import Grant, build_authority, build_crl
from meshd.gossip.config import GossipConfig
from meshd.gossip.events import MemberState
from meshd.gossip.node import EXPIRY_CHECK, GossipNode
from meshd.gossip.record import SIGNING_PREFIX, NodeRecord, RecordError, validate
from meshd.gossip.state import MAX_INCARNATION_JUMP
from meshd.gossip.trust import RANK_POOL4, RANK_POOL6, Signer, TrustError
from meshd.sim import DAY, SIM_WALL, Network, SimPKI, make_record

ME, A, B, C = make_record(0), make_record(1), make_record(2), make_record(3)
SRC = B.addr
TOP = m.MAX_INCARNATION


@pytest.fixture(scope="module")
def pki() -> SimPKI:
    return SimPKI(seed=7)


def signed_node(
    pki: SimPKI, members: Iterable[NodeRecord] = (A, B), cfg: GossipConfig | None = None
) -> GossipNode:
    n = GossipNode(
        ME,
        cfg or GossipConfig(),
        random.Random(1),
        0.0,
        trust=pki.trust.fork(),
        signer=pki.signer(ME),
        wall=SIM_WALL,
    )
    n.join([], 0.0)
    feed(n, *(m.Alive(pki.signed(r)) for r in members), now=0.5)
    n.pop_events()
    n.datagrams_to_send()
    return n


def plain_node(members: Iterable[NodeRecord] = (A, B)) -> GossipNode:
    n = GossipNode(ME, GossipConfig(), random.Random(1), 0.0)
    n.join([], 0.0)
    feed(n, *(m.Alive(r) for r in members), now=0.5)
    n.pop_events()
    return n


def feed(n: GossipNode, *msgs: m.Message, now: float = 1.0) -> None:
    n.receive_datagram(m.pack_datagram([m.encode(x) for x in msgs]), SRC, now)


def view(n: GossipNode) -> dict[str, tuple[MemberState, NodeRecord]]:
    return {x.record.name: (x.state, x.record) for x in n.members()}


def sent_messages(n: GossipNode) -> list[m.Message]:
    return [msg for data, _, _ in n.datagrams_to_send() for msg in m.decode(data)]


def run_timers(n: GossipNode, until: float) -> None:
    t = n.get_timer()
    while t is not None and t <= until:
        n.handle_timer(t)
        t = n.get_timer()


# --- the record ----------------------------------------------------------------------------------


def test_signed_record_round_trips_and_verifies(pki: SimPKI) -> None:
    rec = pki.signed(replace(A, public_ip6="2001:db8::1", subnet6="2001:db8:1::/64"))
    wire = rec.to_wire()
    assert len(wire) == 16 and wire[14] == rec.cert and len(wire[15]) == 64  # no wg_key: 16
    assert rec.signing_bytes().startswith(SIGNING_PREFIX)
    back = m.decode(m.pack_datagram([m.encode(m.Alive(rec))]))[0]
    assert isinstance(back, m.Alive) and back.record == rec
    got, reason = pki.trust.fork().verify(back.record, SIM_WALL)
    assert reason == "" and got is not None
    assert got.claim_rank == (0, SIM_WALL - DAY)  # a fixed-subnet grant, its not_before


def test_the_wireguard_key_travels_signed_and_changes_nothing_without_it(pki: SimPKI) -> None:
    key = bytes(range(32))
    plain = pki.signed(A)
    rec = pki.signed(replace(A, wg_key=key))
    # Without a key, what is signed is fields 0..13 exactly as before field 16 existed.
    assert plain.signing_bytes() == SIGNING_PREFIX + msgpack.packb(
        plain.to_wire()[:14], use_bin_type=True
    )
    assert rec.signing_bytes() != replace(rec, wg_key=b"").signing_bytes()
    wire = rec.to_wire()
    assert len(wire) == 17 and wire[16] == key
    back = m.decode(m.pack_datagram([m.encode(m.Alive(rec))]))[0]
    assert isinstance(back, m.Alive) and back.record == rec
    assert NodeRecord.from_dict(rec.to_dict()) == rec
    trust = pki.trust.fork()
    assert trust.verify(rec, SIM_WALL)[1] == ""
    # Another key under the same signature is a forgery.
    forged = replace(rec, wg_key=bytes(32))
    assert trust.verify(forged, SIM_WALL) == (None, "bad_signature")
    # A shared-key record with a key keeps empty certificate and signature slots before it.
    shared = replace(A, wg_key=key).to_wire()
    assert len(shared) == 17 and shared[14:16] == [b"", b""]
    assert NodeRecord.from_wire(shared).wg_key == key


def test_shared_key_record_is_what_older_members_send() -> None:
    # 11 fields, exactly as before the signed layout: older members read it unchanged.
    assert len(A.to_wire()) == 11
    old = [A.to_wire()[i] for i in range(11)]
    assert msgpack.packb(A.to_wire()) == msgpack.packb(old)
    assert NodeRecord.from_wire(old[:10]) == replace(A, since=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("public_ip", "127.0.0.1"),
        ("public_ip", "0.1.2.3"),
        ("public_ip", "224.0.0.1"),
        ("public_ip", "240.0.0.1"),
        ("public_ip", "255.255.255.255"),
        ("vtep_mac", "00:00:00:00:00:00"),
        ("vtep_mac", "ff:ff:ff:ff:ff:ff"),
        ("vtep_mac", "01:00:5e:00:00:01"),
        ("public_ip6", "ff02::1"),
        ("subnet6", "2001:db8::1/64"),
        ("sig", b"x" * 63),
        ("cert", b"x" * 2000),
        ("wg_key", b"x" * 31),
    ],
)
def test_non_unicast_addresses_and_bad_shapes_are_refused(field: str, value: object) -> None:
    rec = replace(A, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(RecordError, match=field):
        validate(rec)
    try:
        data = m.pack_datagram([m.encode(m.Alive(rec))])
    except ValueError:
        return  # not even encodable
    n = plain_node(())
    n.receive_datagram(data, SRC, 1.0)
    assert "n1" not in view(n)
    assert n.counters["drop.record"] + n.counters["drop.size"] == 1


# --- forged records ------------------------------------------------------------------------------


def test_forged_alive_for_another_node_at_the_top_incarnation_is_dropped(pki: SimPKI) -> None:
    n = signed_node(pki)
    before = view(n)["n1"]
    evil = replace(A, public_ip="172.16.66.66", incarnation=TOP)
    hijack = replace(A, mtu=1280, incarnation=TOP)  # n1's IP and subnet
    attacker = pki.signer(B)
    a_cert = pki.signer(A).cert
    forgeries = [
        ("unsigned", evil),
        # the attacker's own certificate and key: the certificate names n2.
        ("cert_name", attacker.sign(evil)),
        # n1's certificate: it binds n1's address, not the new one.
        ("cert_ip", replace(evil, cert=a_cert, sig=attacker.sign(evil).sig)),
        # n1's certificate, the attacker's signature: its key is not n1's.
        ("bad_signature", replace(hijack, cert=a_cert, sig=attacker.sign(hijack).sig)),
        # n1's certificate and a signature n1 made earlier, over other fields.
        ("bad_signature", replace(hijack, cert=a_cert, sig=pki.signed(A).sig)),
        # the attacker's own record, validly signed, with n1's VTEP MAC (would take n1's FDB
        # entry): the MAC derives from the certified name.
        ("cert_mac", attacker.sign(replace(B, vtep_mac=A.vtep_mac, incarnation=TOP))),
    ]
    for reason, rec in forgeries:
        drops = n.counters[f"drop.{reason}"]
        feed(n, m.Alive(rec))
        assert n.counters[f"drop.{reason}"] == drops + 1, reason
        assert view(n)["n1"] == before
        assert n.pop_events() == []


def test_certificate_contradicting_the_record_is_dropped(pki: SimPKI) -> None:
    n = signed_node(pki, members=())
    cases = {
        "cert_ip": pki.issue(C, public_ip="172.16.9.9").sign(C),
        "cert_grant": pki.issue(C, grant=Grant.fixed("10.0.99.0/24")).sign(C),
        "cert_name": pki.issue(C, name="n33").sign(C),
        "cert_expired": pki.issue(C, not_after=SIM_WALL - 1).sign(C),
        "cert_not_yet_valid": pki.issue(C, not_before=SIM_WALL + DAY).sign(C),
    }
    for reason, rec in cases.items():
        feed(n, m.Alive(rec))
        assert n.counters[f"drop.{reason}"] == 1, reason
    # Another CA entirely, whatever key the node holds.
    other = SimPKI(seed=99)
    feed(n, m.Alive(other.signed(C)))
    assert n.counters["drop.cert_issuer"] == 1
    assert "n3" not in view(n)
    # A pool grant lets the holder take any /24 of the pool, and nothing else.
    pool = pki.issue(C, grant=Grant.from_pool("10.0.0.0/16", 24))
    feed(n, m.Alive(pool.sign(replace(C, subnet="10.0.200.0/25"))))
    assert n.counters["drop.cert_grant"] == 2
    feed(n, m.Alive(pool.sign(replace(C, subnet="10.0.200.0/24"))))
    state, rec = view(n)["n3"]
    assert state == MemberState.ALIVE and rec.claim_rank == (1, SIM_WALL - DAY)


def test_stolen_certificate_without_its_key(pki: SimPKI) -> None:
    thief = Ed25519PrivateKey.generate()
    with pytest.raises(TrustError, match="does not match"):
        Signer(thief, pki.signer(A).cert)
    n = signed_node(pki, members=())
    stolen = replace(A, cert=pki.signer(A).cert, incarnation=5)
    feed(n, m.Alive(stolen.sign(thief)))
    assert n.counters["drop.bad_signature"] == 1 and "n1" not in view(n)


def test_own_certificate_contradicting_the_configuration_is_one_line(pki: SimPKI) -> None:
    def start(rec: NodeRecord, signer: Signer) -> None:
        GossipNode(
            rec,
            GossipConfig(),
            random.Random(1),
            0.0,
            trust=pki.trust.fork(),
            signer=signer,
            wall=SIM_WALL,
        )

    me = pki.signer(ME)
    for rec, what in (
        (replace(ME, subnet="10.9.9.0/24"), "subnet 10.9.9.0/24 contradicts"),
        (replace(ME, public_ip="172.16.9.9"), "public IP 172.16.9.9 contradicts"),
        (replace(ME, name="other"), "name 'other' contradicts"),
    ):
        with pytest.raises(TrustError, match=what) as exc:
            start(rec, me)
        assert "\n" not in str(exc.value)
    with pytest.raises(TrustError, match="expired"):
        start(ME, pki.issue(ME, not_after=SIM_WALL - 1))
    with pytest.raises(TrustError, match="not signed by a trusted CA"):
        start(ME, SimPKI(seed=99).signer(ME))
    with pytest.raises(ValueError, match="together"):
        GossipNode(ME, GossipConfig(), random.Random(1), 0.0, trust=pki.trust.fork())


# --- left, suspect, dead -------------------------------------------------------------------------


def test_forged_left_is_ignored_and_only_a_self_signed_leave_counts(pki: SimPKI) -> None:
    n = signed_node(pki)
    feed(n, m.Dead(5, "n1", "n1"))
    assert view(n)["n1"][0] == MemberState.ALIVE
    assert n.counters["drop.unsigned_leave"] == 1
    # The same claim in a push-pull entry: at most a verdict of death, taken as suspicion.
    pp = m.PushPull(
        pki.signed(B), 1, True, 0, 1, (m.PushPullEntry(pki.signed(A), MemberState.LEFT, 3),)
    )
    feed(n, pp)
    assert view(n)["n1"][0] == MemberState.SUSPECT
    assert n.counters["drop.unsigned_leave"] == 2
    # n1's own signed record with left set, at a higher incarnation: it left.
    feed(n, m.Alive(pki.signed(replace(A, incarnation=4, left=True))))
    assert view(n)["n1"][0] == MemberState.LEFT
    assert [(e.kind, e.member.record.name) for e in n.pop_events()][-1] == ("left", "n1")


def test_shared_key_leave_by_dead_message_still_works() -> None:
    n = plain_node()
    feed(n, m.Dead(1, "n1", "n1"))
    assert view(n)["n1"][0] == MemberState.LEFT


def test_leave_broadcasts_our_signed_left_record(pki: SimPKI) -> None:
    n = signed_node(pki)
    n.leave(2.0)
    alive = [x for x in sent_messages(n) if isinstance(x, m.Alive)]
    assert alive and alive[0].record.left and alive[0].record.incarnation == 1
    assert pki.trust.fork().verify(alive[0].record, SIM_WALL)[0] is not None
    assert not any(isinstance(x, m.Dead) for x in sent_messages(n))


def test_a_signed_mesh_converges_and_sees_a_leave() -> None:
    net = Network(seed=3, signed=True)
    recs = [make_record(i) for i in range(8)]
    for i, rec in enumerate(recs):
        net.add_node(rec, seeds=[recs[0].addr] if i else [])
    assert net.run_until_true(net.fully_converged, 30)
    net.leave(5)
    assert net.run_until_true(lambda: net.all_see("n5", MemberState.LEFT, range(5)), 10)
    assert not any(k.startswith("drop.") for n in net.nodes for k in n.counters)


@pytest.mark.parametrize("signed", [True, False])
def test_suspect_near_the_maximum_is_bounded(pki: SimPKI, signed: bool) -> None:
    n = signed_node(pki) if signed else plain_node()
    feed(n, m.Suspect(TOP - 1, "n0", "n2"), m.Dead(TOP - 1, "n0", "n2"))
    assert n.local.incarnation == 0  # no refutation to the maximum
    feed(n, m.Suspect(TOP - 1, "n1", "n2"), m.Dead(TOP - 1, "n1", "n2"))
    assert view(n)["n1"][0] == MemberState.ALIVE
    assert n.counters["drop.incarnation_jump"] == 4
    # Within the bound, SWIM works as ever: we refute, and n1 is suspected.
    feed(n, m.Suspect(MAX_INCARNATION_JUMP, "n0", "n2"), m.Suspect(7, "n1", "n2"))
    assert n.local.incarnation == MAX_INCARNATION_JUMP + 1
    assert view(n)["n1"][0] == MemberState.SUSPECT
    if signed:  # the refutation is signed
        assert pki.trust.fork().verify(n.local, SIM_WALL)[0] is not None


def test_shared_key_alive_jump_is_bounded_for_up_members_only() -> None:
    n = plain_node()
    feed(n, m.Alive(replace(A, public_ip="172.16.66.66", incarnation=TOP)))
    assert view(n)["n1"][1] == A and n.counters["drop.incarnation_jump"] == 1
    feed(n, m.Dead(3, "n1", "n2"))
    feed(n, m.Alive(replace(A, incarnation=5000)))  # back after a long partition
    assert view(n)["n1"] == (MemberState.ALIVE, replace(A, incarnation=5000))


# --- push-pull ----------------------------------------------------------------------------------


def test_a_bad_push_pull_entry_skips_that_entry_only(pki: SimPKI) -> None:
    n = signed_node(pki, members=())
    forged = replace(pki.signed(C), public_ip="172.16.66.66")
    # A chunk holds the sender and about one signed entry (docs/performance.md).
    for entries in (
        (
            m.PushPullEntry(make_record(4), MemberState.ALIVE, 0),
            m.PushPullEntry(pki.signed(A), MemberState.ALIVE, 0),
        ),
        (m.PushPullEntry(forged, MemberState.ALIVE, 0),),
    ):
        feed(n, m.PushPull(pki.signed(B), 9, False, 0, 1, entries))
    assert set(view(n)) == {"n0", "n1", "n2"}
    assert n.counters["drop.cert_ip"] == 1 and n.counters["drop.unsigned"] == 1
    assert any(isinstance(x, m.PushPull) for x in sent_messages(n))  # answered


def test_an_unsigned_push_pull_sender_is_not_merged_nor_answered(pki: SimPKI) -> None:
    n = signed_node(pki, members=())
    feed(n, m.PushPull(B, 9, False, 0, 1, (m.PushPullEntry(pki.signed(A), MemberState.ALIVE, 0),)))
    assert set(view(n)) == {"n0"} and n.counters["drop.unsigned"] == 1
    assert not any(isinstance(x, m.PushPull) for x in sent_messages(n))


def test_max_members_refuses_newcomers() -> None:
    n = GossipNode(ME, GossipConfig(max_members=2), random.Random(1), 0.0)
    feed(n, m.Alive(A), m.Alive(B), m.Alive(C))
    assert set(view(n)) == {"n0", "n1", "n2"} and n.counters["drop.max_members"] == 1
    feed(n, m.Alive(replace(A, incarnation=1)))  # known members still update
    assert view(n)["n1"][1].incarnation == 1


# --- revocation and expiry -----------------------------------------------------------------------


def test_revocation_evicts_at_once_and_drops_later_records(pki: SimPKI) -> None:
    n = signed_node(pki)
    assert n.crl_der is None
    crl = pki.crl([pki.signer(A).info.serial], number=5)
    assert n.install_crl(crl, 2.0)
    assert n.crl_der == crl and "n1" not in view(n) and "n2" in view(n)
    assert [(e.kind, e.member.record.name) for e in n.pop_events()] == [("evicted", "n1")]
    assert any(isinstance(x, m.Crl) and x.der == crl for x in sent_messages(n))  # spread
    feed(n, m.Alive(pki.signed(replace(A, incarnation=9))))
    assert n.counters["drop.revoked"] == 1 and "n1" not in view(n)
    # Its datagrams are dropped unread (the envelope names the sender): not even a ping is acked.
    ping = m.pack_datagram([m.encode(m.Ping(7, ME.name, A.name, A.addr))])
    n.receive_datagram(ping, SRC, 2.5, sender=A.node_id)
    assert n.counters["drop.evicted"] == 1 and not n.datagrams_to_send()
    # Not newer, or not our CA's: ignored and counted.
    assert not n.install_crl(pki.crl([], number=5), 3.0)
    assert not n.install_crl(SimPKI(seed=99).crl([], number=9), 3.0)
    assert not n.install_crl(b"junk", 3.0)
    assert n.counters["crl.stale"] == 1 and n.counters["drop.crl_issuer"] == 1
    assert n.counters["drop.crl_malformed"] == 1 and n.crl_der == crl
    # A newer list that no longer names n1 (say, a reissued certificate) replaces it.
    assert n.install_crl(pki.crl([], number=6), 4.0)
    feed(n, m.Alive(pki.signed(replace(A, incarnation=10))))
    assert view(n)["n1"][0] == MemberState.ALIVE
    n.receive_datagram(ping, SRC, 4.5, sender=A.node_id)
    assert n.counters["drop.evicted"] == 1 and n.counters["msg.ping"] == 1


def test_our_own_revocation_is_exposed(pki: SimPKI) -> None:
    n = signed_node(pki)
    assert n.local_revoked == ""
    feed(n, m.Crl(pki.crl([pki.signer(ME).info.serial], number=7)))
    assert n.local_revoked == "revoked"


def test_shared_key_mode_ignores_crls(pki: SimPKI) -> None:
    n = plain_node()
    assert not n.install_crl(pki.crl([pki.signer(A).info.serial], 1), 1.0)
    assert "n1" in view(n) and n.counters["drop.crl_unauthenticated"] == 1


def test_expiry_evicts_within_the_check_interval(pki: SimPKI) -> None:
    d = make_record(4)
    short = pki.issue(d, not_after=SIM_WALL + 100)
    n = signed_node(pki)
    feed(n, m.Alive(short.sign(d)))
    n.pop_events()
    n.advance_wall(SIM_WALL + 99)
    run_timers(n, 2 * EXPIRY_CHECK)
    assert "n4" in view(n)
    n.advance_wall(SIM_WALL + 101)
    run_timers(n, 4 * EXPIRY_CHECK)
    assert "n4" not in view(n) and {"n1", "n2"} <= set(view(n))
    assert [e.kind for e in n.pop_events() if e.member.record.name == "n4"][-1] == "evicted"
    feed(n, m.Alive(short.sign(replace(d, incarnation=3))), now=30.0)
    assert n.counters["drop.cert_expired"] == 1 and "n4" not in view(n)


def test_a_crl_reaches_every_member_and_joiners(pki: SimPKI) -> None:
    net = Network(seed=4, signed=True)
    recs = [make_record(i) for i in range(10)]
    for i, rec in enumerate(recs[:9]):
        net.add_node(rec, seeds=[recs[0].addr] if i else [])
    assert net.run_until_true(net.fully_converged, 30)
    assert net.pki is not None
    crl = net.pki.crl([net.pki.signer(recs[8]).info.serial], number=1)
    net.nodes[3].install_crl(crl, net.now)
    net._after(3)
    gone = range(8)
    assert net.run_until_true(lambda: all("n8" not in net.view(i) for i in gone), 5)
    # A joiner learns it beside the seed's full state.
    late = net.add_node(recs[9], seeds=[recs[1].addr])
    assert net.run_until_true(lambda: net.nodes[late].crl_der == crl, 5)
    assert "n8" not in net.view(late)


def test_verification_is_paid_once_per_record_version(
    pki: SimPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = NodeRecord.signing_bytes

    def counting(self: NodeRecord) -> bytes:
        nonlocal calls
        calls += 1
        return real(self)

    n = signed_node(pki, members=())
    rec = pki.signed(replace(C, incarnation=4))
    monkeypatch.setattr(NodeRecord, "signing_bytes", counting)
    for i in range(5):
        feed(n, m.Alive(rec), now=1.0 + i)
    assert calls == 1 and view(n)["n3"][0] == MemberState.ALIVE


def test_a_ca_that_expired_expires_its_certificates() -> None:
    key = Ed25519PrivateKey.generate()
    ca = build_authority(key, "short CA", "10.0.0.0/8", SIM_WALL - DAY, SIM_WALL + 50, 1)
    assert build_crl(key, ca, 1, {}, SIM_WALL, SIM_WALL + DAY)  # the fixture builds, too


# --- dual-stack: both families of a record against the certificate ------------------------------

DUAL_C = replace(C, public_ip6="2001:db8::3", subnet6="2001:db8:3::/64")
DUAL_GRANT = Grant.combine([Grant.fixed(C.subnet), Grant.from_pool("2001:db8::/32", 64)])


def verdict(pki: SimPKI, rec: NodeRecord) -> str:
    got, reason = pki.trust.fork().verify(rec, SIM_WALL)
    assert (got is None) == bool(reason)
    return reason


def test_both_families_of_a_record_are_checked(pki: SimPKI) -> None:
    ips = ["172.16.0.3", "2001:db8::3"]
    signer = pki.issue(DUAL_C, grant=DUAL_GRANT, public_ip=ips)
    assert verdict(pki, signer.sign(DUAL_C)) == ""
    # Fewer than the certificate binds is fine: an IPv4-only record, or no IPv6 underlay.
    assert verdict(pki, signer.sign(C)) == ""
    assert verdict(pki, signer.sign(replace(DUAL_C, public_ip6=None))) == ""
    # Any family the certificate does not bind, or binds otherwise, is refused.
    for rec, reason in [
        (replace(DUAL_C, public_ip6="2001:db8::99"), "cert_ip"),
        (replace(DUAL_C, subnet6="2001:db8:3::/63"), "cert_grant"),  # not the pool's length
        (replace(DUAL_C, subnet6="fd00:3::/64"), "cert_grant"),  # outside the pool
        (replace(DUAL_C, subnet="10.0.99.0/24"), "cert_grant"),
    ]:
        assert verdict(pki, signer.sign(rec)) == reason, rec
    # A certificate of one family binds no address or subnet of the other.
    v4only = pki.issue(C)
    assert verdict(pki, v4only.sign(replace(C, public_ip6="2001:db8::3"))) == "cert_ip"
    assert verdict(pki, v4only.sign(replace(C, subnet6="2001:db8:3::/64"))) == "cert_grant"


def test_an_ipv6_only_record_and_its_certificate(pki: SimPKI) -> None:
    rec = replace(C, public_ip="2001:db8::3", subnet="2001:db8:3::/64")
    assert verdict(pki, pki.issue(rec).sign(rec)) == ""
    # Its certificate binds no IPv4 address: an IPv4 underlay is refused.
    other = replace(C, public_ip="172.16.0.3", subnet="2001:db8:3::/64")
    assert verdict(pki, pki.issue(rec).sign(other)) == "cert_ip"


def test_the_claim_rank_says_per_family_whether_the_grant_is_a_pool(pki: SimPKI) -> None:
    signer = pki.issue(DUAL_C, grant=DUAL_GRANT, public_ip=["172.16.0.3", "2001:db8::3"])
    assert signer.rank == (RANK_POOL6, SIM_WALL - DAY)
    pools = Grant.combine([Grant.from_pool("10.0.0.0/16", 24), Grant.fixed(DUAL_C.subnet6 or "")])
    assert pki.issue(DUAL_C, grant=pools).rank == (RANK_POOL4, SIM_WALL - DAY)


def test_own_record_contradicting_an_ipv6_binding_is_one_line(pki: SimPKI) -> None:
    signer = pki.issue(DUAL_C, grant=DUAL_GRANT, public_ip=["172.16.0.3", "2001:db8::3"])
    trust = pki.trust.fork()
    assert trust.check_own(DUAL_C, signer, SIM_WALL).subnet6 == DUAL_C.subnet6
    with pytest.raises(
        TrustError, match=r"public IP 2001:db8::9 contradicts the certificate \(2001:db8::3\)"
    ) as exc:
        trust.check_own(replace(DUAL_C, public_ip6="2001:db8::9"), signer, SIM_WALL)
    assert exc.value.reason == "cert_ip"
    with pytest.raises(TrustError, match="subnet fd00::/64 contradicts the certificate") as exc:
        trust.check_own(replace(DUAL_C, subnet6="fd00::/64"), signer, SIM_WALL)
    assert exc.value.reason == "cert_grant" and "\n" not in str(exc.value)
    v4only = pki.issue(C)
    with pytest.raises(TrustError, match=r"\(no IPv6 address\)"):
        trust.check_own(replace(C, public_ip6="2001:db8::3"), v4only, SIM_WALL)


def test_an_ipv6_address_is_compared_as_an_address_not_as_text(pki: SimPKI) -> None:
    signer = pki.issue(DUAL_C, grant=DUAL_GRANT, public_ip=["172.16.0.3", "2001:db8::3"])
    assert verdict(pki, signer.sign(replace(DUAL_C, public_ip6="2001:DB8:0::3"))) == ""
    assert verdict(pki, signer.sign(replace(DUAL_C, public_ip6="2001:db8::3%eth0"))) == "cert_ip"
