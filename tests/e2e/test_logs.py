"""Real daemons with ``--log-format json``: every line is one JSON object, a join names the
peer; with JOURNAL_STREAM naming its stderr, every line starts with the journald priority."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.lab import Lab

from .conftest import all_alive, keygen, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]

PRIORITIES = {"<7>": "debug", "<6>": "info", "<4>": "warning", "<3>": "error", "<2>": "critical"}


def read(path: Path, journal: bool) -> list[dict[str, Any]]:
    """Every line of a stopped daemon's log as a JSON object; fails on any other line."""
    out = []
    for line in path.read_text().splitlines():
        if journal:
            prefix, line = line[:3], line[3:]
            obj = json.loads(line)
            assert PRIORITIES[prefix] == obj["level"] and "ts" not in obj, line
        else:
            obj = json.loads(line)
            assert obj["ts"].endswith("Z"), line
        assert isinstance(obj, dict) and {"level", "logger", "event", "msg"} <= set(obj), line
        out.append(obj)
    return out


def test_json_logs_name_the_peer_of_a_join(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    lab = make_lab("logs", 2)
    key = keygen(tmp_path / "key")
    extra = ["--config", str(fast_config), "--log-format", "json"]
    h1, h2 = lab.hosts
    lab.start_daemon(h1, key_file=key, backend="host-gw", extra_args=extra)
    # h2's stderr is its log file: JOURNAL_STREAM naming that file is what systemd does.
    journal = lab.workdir / "h2.log"
    journal.touch()
    st = journal.stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    lab.start_daemon(h2, key_file=key, backend="host-gw", extra_args=extra, env=env)
    wait_until(all_alive(lab, ["h1", "h2"]), 60, "h1 and h2 to see each other alive", lab)
    wait_until(
        lambda: '"plan_applied"' in lab.daemons["h1"].log_path.read_text(),
        30,
        "h1 to program h2",
        lab,
    )
    lab.stop_daemon("h1", signal.SIGTERM)
    lab.stop_daemon("h2", signal.SIGTERM)

    one = read(lab.daemons["h1"].log_path, journal=False)
    two = read(journal, journal=True)
    joins = [e for e in one if e["event"] == "peer_join"]
    assert [e["peer"] for e in joins] == ["h2"]
    assert joins[0]["reason"] and joins[0]["subnet"] == h2.subnet
    assert any(e["event"] == "plan_applied" and e["peers"] == ["h2"] for e in one)
    assert any(e["event"] == "peer_join" and e["peer"] == "h1" for e in two)
    assert any(e["event"] == "daemon_started" and e["peer"] == "h2" for e in two)
