"""meshd/systemd.py: stderr is the journal only when JOURNAL_STREAM names stderr itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from logparse import parse_logfmt  # tests/unit is on sys.path (pytest prepend import mode)

from meshd.systemd import journal_stream

ROOT = Path(__file__).resolve().parents[2]


def identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_is_the_stream_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other = tmp_path / "stderr", tmp_path / "other"
    other.touch()
    with open(mine, "w") as stream:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not journal_stream(stream)
        monkeypatch.setenv("JOURNAL_STREAM", identity(mine))
        assert journal_stream(stream)
        monkeypatch.setenv("JOURNAL_STREAM", identity(other))  # inherited, stderr redirected
        assert not journal_stream(stream)
        for junk in ("", "1", "a:b", "1:2:3", ":"):
            monkeypatch.setenv("JOURNAL_STREAM", junk)
            assert not journal_stream(stream)


LOG_ONE = """
import logging
from meshd.systemd import setup_logging
setup_logging("info", {fmt!r})
logging.getLogger("meshd").warning(
    "member %s: %s", "b", "dead", extra={{"event": "peer_dead", "peer": "b", "reason": "r"}}
)
"""


@pytest.mark.parametrize("journal", [True, False])
@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_a_daemon_logging_to_the_journal_prefixes_the_priority(
    tmp_path: Path, fmt: str, journal: bool
) -> None:
    """A real process with stderr on a file: JOURNAL_STREAM naming that file makes each line
    ``<4>...`` without ``ts``; naming anything else changes nothing."""
    err = tmp_path / "stderr"
    err.touch()
    other = tmp_path / "other"
    other.touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["JOURNAL_STREAM"] = identity(err if journal else other)
    with open(err, "w") as stderr:
        subprocess.run(
            [sys.executable, "-c", LOG_ONE.format(fmt=fmt)],
            stderr=stderr,
            env=env,
            check=True,
            timeout=60,
        )
    (line,) = err.read_text().splitlines()
    if journal:
        assert line.startswith("<4>")
        line = line[3:]
    else:
        assert not line.startswith("<")
    fields = parse_logfmt(line) if fmt == "logfmt" else json.loads(line)
    assert ("ts" in fields) is not journal
    assert (fields["level"], fields["event"], fields["peer"]) == ("warning", "peer_dead", "b")
