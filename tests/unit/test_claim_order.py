"""The conflict rule orders claims by age: an incumbent is never displaced by a newcomer, whatever
their node ids; the age survives restarts through the state dir."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from meshd.dataplane.model import resolve_claims
from meshd.gossip.certificate import Grant
from meshd.gossip.record import NodeRecord
from meshd.gossip.trust import Signer
from meshd.sim import DAY, SIM_WALL, SimPKI, make_record
from meshd.statestore import State, StateStore


def rec(name: str, node_id: int, subnet: str, since: int) -> NodeRecord:
    return NodeRecord(
        name,
        node_id.to_bytes(16, "big"),
        f"10.0.0.{node_id % 250 + 1}",
        7950,
        subnet,
        "vxlan",
        "02:00:00:00:00:01",
        1500,
        since=since,
    )


def test_incumbent_beats_lower_node_id_newcomer() -> None:
    old = rec("h2", 9, "10.244.2.0/24", since=1_700_000_000)
    new = rec("evil", 1, "10.244.2.0/24", since=1_700_000_500)
    granted, losers = resolve_claims([new, old])
    assert granted == {old.node_id}
    assert losers[new.node_id] == old


def test_unknown_age_counts_as_newest_and_ties_fall_back_to_node_id() -> None:
    known = rec("a", 9, "10.244.0.0/16", since=1_700_000_000)
    unknown = rec("b", 1, "10.244.3.0/24", since=0)
    assert resolve_claims([unknown, known])[0] == {known.node_id}
    x, y = rec("x", 5, "10.1.0.0/24", 100), rec("y", 4, "10.1.0.0/24", 100)
    assert resolve_claims([x, y])[0] == {y.node_id}


def test_claim_age_persists(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    st = store.load()
    store.save(State(st.node_id, 3, [], subnet="10.244.1.0/24", subnet_since=1_700_000_000))
    again = StateStore(tmp_path).load()
    assert (again.subnet, again.subnet_since) == ("10.244.1.0/24", 1_700_000_000)


def test_certified_claims_are_ranked_by_certificate_not_by_since() -> None:
    pki = SimPKI(seed=5)
    trust = pki.trust.fork()
    pool = Grant.from_pool("10.0.0.0/16", 24)
    a, b, c = make_record(1), make_record(2), make_record(3)

    def verified(r: NodeRecord, signer: Signer) -> NodeRecord:
        got = trust.verify(signer.sign(r), SIM_WALL)[0]
        assert got is not None
        return got

    incumbent = verified(replace(a, since=1_700_000_000), pki.signer(a))
    # The holder of a pool certificate claims n1's (fixed, certified) subnet with since = 1.
    thief = verified(replace(c, subnet=a.subnet, since=1), pki.issue(c, grant=pool))
    assert resolve_claims([thief, incumbent])[0] == {incumbent.node_id}
    # Between two pool certificates the older one wins, whatever since says.
    old = verified(
        replace(b, subnet="10.0.7.0/24", since=1_700_000_000),
        pki.issue(b, grant=pool, not_before=SIM_WALL - 9 * DAY),
    )
    new = verified(
        replace(c, subnet="10.0.7.0/24", since=1),
        pki.issue(c, grant=pool, not_before=SIM_WALL - 2 * DAY),
    )
    assert resolve_claims([new, old])[0] == {old.node_id}
    # A certified claim beats an unverified one (a record from the state dir), since = 1 or not.
    assert resolve_claims([replace(a, subnet="10.0.7.0/24", since=1), new])[0] == {new.node_id}


def test_a_pool_claim_is_as_old_as_its_certificate_or_younger_never_older() -> None:
    pki = SimPKI(seed=6)
    trust = pki.trust.fork()
    pool = Grant.from_pool("10.0.0.0/16", 24)
    issued = SIM_WALL - 5 * DAY
    a, b = make_record(1), make_record(2)  # a's certified name sorts first

    def verified(r: NodeRecord, when: float = issued) -> NodeRecord:
        got = trust.verify(pki.issue(r, grant=pool, not_before=when).sign(r), SIM_WALL)[0]
        assert got is not None
        return got

    # Certificates of the same instant: the holder keeps its subnet against one that picked it
    # again later (an honest re-pick carries a later since), whichever name sorts first.
    holder = verified(replace(b, subnet="10.0.9.0/24", since=int(SIM_WALL) - 100))
    repick = verified(replace(a, subnet="10.0.9.0/24", since=int(SIM_WALL)))
    assert resolve_claims([repick, holder])[0] == {holder.node_id}
    # since = 1 makes a claim no older than its certificate: against a holder that claimed
    # before that certificate was issued, the liar loses.
    early = verified(replace(b, subnet="10.0.9.0/24", since=int(issued) - 10), issued - DAY)
    liar = verified(replace(a, subnet="10.0.9.0/24", since=1))
    assert resolve_claims([liar, early])[0] == {early.node_id}
    # A fixed grant's claim is its certificate's age whatever since says.
    fixed = trust.verify(
        pki.issue(a, grant=Grant.fixed("10.0.9.0/24"), not_before=issued).sign(
            replace(a, subnet="10.0.9.0/24", since=int(SIM_WALL))
        ),
        SIM_WALL,
    )[0]
    assert fixed is not None and fixed.claim_rank == (0, issued)
    assert resolve_claims([fixed, holder])[0] == {fixed.node_id}
