from __future__ import annotations

import json

import pytest

from meshd import sim


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, dict[str, object]]:
    assert sim.main(list(argv)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {line["phase"]: line for line in lines}


def test_sim_cli_reports_every_metric(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--nodes", "20", "--seed", "3", "--duration", "40")
    assert set(out) == {"config", "steady", "dissemination", "failure", "summary"}
    assert out["dissemination"]["reached"] == 1.0
    assert isinstance(out["dissemination"]["t99"], float)
    assert isinstance(out["failure"]["dead_all"], float)
    assert out["summary"]["false_deaths"] == 0
    assert 0 < int(out["summary"]["largest_datagram"]) <= 1400 - 64  # type: ignore[call-overload]
    assert float(out["steady"]["datagrams_per_node_s"]) > 0  # type: ignore[arg-type]


def test_sim_converged_start_with_loss_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--nodes", "30", "--loss", "0.1", "--seed", "5", "--duration", "30", "--converged",
            "--set", "probe_interval=0.5", "--set", "probe_timeout=0.25")
    a = run(capsys, *argv)
    b = run(capsys, *argv)
    for phase in ("steady", "dissemination", "failure"):
        assert a[phase] == b[phase]
    assert a["summary"]["false_deaths"] == 0
    assert a["config"]["converged"] is True
