"""meshd/neightable.py: the neighbour-table arithmetic, and the lab raising and restoring the
thresholds (against a fake /proc/sys)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from meshd import neightable
from meshd.lab.topology import (
    raise_neighbour_table,
    raised_neighbour_table,
    restore_neighbour_table,
)
from meshd.membership import Membership

DEFAULTS = (128, 512, 1024)


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(neightable, "PROC_SYS", tmp_path)
    d = tmp_path / "net" / "ipv4" / "neigh" / "default"
    d.mkdir(parents=True)
    for i, v in enumerate(DEFAULTS, 1):
        (d / f"gc_thresh{i}").write_text(f"{v}\n")
    return d


def test_a_lab_needs_n_times_n_minus_one_underlay_entries() -> None:
    assert neightable.lab_entries(45) == 45 * 44 + 90
    assert neightable.lab_entries(1) == 2


def test_the_defaults_hold_a_small_lab_and_not_a_big_one() -> None:
    assert neightable.raised(DEFAULTS, neightable.lab_entries(27)) is None  # 756 entries
    assert neightable.raised(DEFAULTS, neightable.lab_entries(28)) == (1024, 2048, 4096)
    # The N = 45 (1,980 peer entries) and N = 100.
    assert neightable.raised(DEFAULTS, neightable.lab_entries(45)) == (2048, 4096, 8192)
    assert neightable.raised(DEFAULTS, neightable.lab_entries(100)) == (8192, 16384, 32768)


def test_recommended_thresholds_hold_the_entries_below_the_soft_limit() -> None:
    for entries in (0, 500, 767, 768, 1000, 5000, 10_100, 100_000):
        t1, t2, t3 = neightable.recommended(entries)
        assert t1 < t2 < t3 and t3 == 2 * t2
        assert neightable.wanted(entries) <= t2  # nothing in use is garbage-collected
        assert not neightable.short(entries, t3)


def test_raising_never_lowers_a_threshold() -> None:
    assert neightable.raised((6000, 6000, 4096), 3500) == (6000, 8192, 16384)
    assert neightable.raised((128, 512, 1_000_000), 2000) is None


def test_a_host_is_warned_at_the_first_shortfall_then_as_the_mesh_grows() -> None:
    t3 = 1024
    assert not neightable.warn_due(760, t3, 0)
    assert neightable.warn_due(800, t3, 0)
    assert not neightable.warn_due(900, t3, 800)  # grown by less than a quarter
    assert neightable.warn_due(1000, t3, 800)
    assert not neightable.warn_due(5000, 32768, 0)
    assert "net.ipv4.neigh.default.gc_thresh3=4096" in neightable.sysctl_command((1, 2, 4096))


def test_the_lab_raises_then_restores_what_it_found(proc: Path) -> None:
    assert raise_neighbour_table(10) is None  # the defaults hold 10 hosts
    assert neightable.read() == DEFAULTS
    record = raise_neighbour_table(45)
    assert record == {"saved": list(DEFAULTS), "set": [2048, 4096, 8192]}
    assert neightable.read() == (2048, 4096, 8192)
    assert restore_neighbour_table(record) == []
    assert neightable.read() == DEFAULTS
    with raised_neighbour_table(100) as record:  # the benchmark's form
        assert record is not None and neightable.read() == (8192, 16384, 32768)
    assert neightable.read() == DEFAULTS


def test_an_ipv6_underlay_lab_raises_and_restores_both_tables(proc: Path) -> None:
    d6 = proc.parents[2] / "ipv6" / "neigh" / "default"
    d6.mkdir(parents=True)
    for i, v in enumerate(DEFAULTS, 1):
        (d6 / f"gc_thresh{i}").write_text(f"{v}\n")
    record = raise_neighbour_table(45, (4, 6))
    assert record is not None and record["set6"] == [2048, 4096, 8192]
    assert neightable.read(neightable.SYSCTLS6) == (2048, 4096, 8192)
    assert neightable.read() == (2048, 4096, 8192)
    assert restore_neighbour_table(record) == []
    assert neightable.read(neightable.SYSCTLS6) == DEFAULTS
    assert neightable.read() == DEFAULTS


def test_the_lab_leaves_values_someone_changed_since(proc: Path) -> None:
    record = raise_neighbour_table(45)
    assert record is not None
    neightable.write((4096, 8192, 16384))  # an operator, or another lab
    assert restore_neighbour_table(record) == []
    assert neightable.read() == (4096, 8192, 16384)
    mangled = cast(dict[str, list[int]], {"saved": ["x"]})  # a hand-edited state file
    assert restore_neighbour_table(mangled) != []  # said, no crash


def test_the_daemon_warns_once_per_growth_naming_the_sysctl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = cast(
        Membership,
        SimpleNamespace(
            read_thresholds=lambda: DEFAULTS,
            _neigh_warned_for=0,
            neigh_sysctls=neightable.SYSCTLS,
        ),
    )
    with caplog.at_level(logging.WARNING, logger="meshd"):
        for peers in (500, 800, 850, 1000):
            Membership.check_neighbours(m, peers)
    said = [r for r in caplog.records if getattr(r, "event", None) == "neighbour_table_small"]
    assert [r.__dict__["peers"] for r in said] == [800, 1000]
    assert "sysctl -w net.ipv4.neigh.default.gc_thresh1=1024" in said[0].getMessage()
    assert "(ARP)" in said[0].getMessage()


def test_on_an_ipv6_underlay_the_daemon_names_the_ipv6_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = cast(
        Membership,
        SimpleNamespace(
            read_thresholds=lambda: DEFAULTS,
            _neigh_warned_for=0,
            neigh_sysctls=neightable.SYSCTLS6,
        ),
    )
    with caplog.at_level(logging.WARNING, logger="meshd"):
        Membership.check_neighbours(m, 900)
    [said] = [r.getMessage() for r in caplog.records if getattr(r, "event", "") != ""]
    assert "(NDP)" in said and "net.ipv6.neigh.default.gc_thresh3 = 1024" in said
    assert "sysctl -w net.ipv6.neigh.default.gc_thresh1=" in said and "ipv4" not in said
