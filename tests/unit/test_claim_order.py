"""The conflict rule orders claims by age: an incumbent is never displaced by a newcomer, whatever
their node ids; the age survives restarts through the state dir."""

from __future__ import annotations

from pathlib import Path

from meshd.dataplane.model import resolve_claims
from meshd.gossip.record import NodeRecord
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
