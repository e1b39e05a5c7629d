"""Bad input: one clear line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def meshd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["join", "--subnet", "0.0.0.0/0"], "0.0.0.0/0"),
        (["join", "--subnet", "10.1.2.3/24"], "host bits"),
        (["join", "--subnet", "10.1.0.0/24", "--public-ip", "1.2.3"], "public_ip"),
        (["join", "--subnet", "10.1.0.0/24", "--backend", "gre"], "backend"),
        (["join", "--subnet", "10.1.0.0/24", "--port", "0"], "port"),
        (["join", "--subnet", "10.1.0.0/24", "bad:seed:x"], "seed"),
        (["join", "--subnet", "10.1.0.0/24", "--key-file", "/nonexistent/key"], "meshd keygen"),
        (["join", "--config", "/nonexistent.toml"], "cannot read config"),
        (["join", "--subnet", "10.1.0.0/24", "--ipmasq"], "ipmasq: needs network"),
        (["join", "--subnet", "10.1.0.0/24", "--log-format", "xml"], "log_format: 'xml'"),
        (["peers", "--socket", "/nonexistent.sock"], "no meshd running"),
        (["status", "--socket", "/nonexistent.sock", "--json"], "no meshd running"),
        (["leave", "--socket", "/nonexistent.sock"], "no meshd running"),
    ],
)
def test_bad_input_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    r = meshd(*args, *(["--state-dir", str(tmp_path)] if args[0] == "join" else []))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]


def test_key_too_open(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(meshd("keygen").stdout)
    key.chmod(0o644)
    r = meshd(
        "join",
        "--subnet",
        "10.1.0.0/24",
        "--key-file",
        str(key),
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert r.returncode == 78 and "chmod 600" in r.stderr and "Traceback" not in r.stderr


def test_version_and_keygen() -> None:
    assert meshd("--version").stdout.startswith("meshd ")
    k1, k2 = meshd("keygen").stdout.strip(), meshd("keygen").stdout.strip()
    assert len(k1) == 44 and k1 != k2


def test_keys_install_never_takes_the_key_from_argv(tmp_path: Path) -> None:
    key = meshd("keygen").stdout.strip()
    sock = str(tmp_path / "none.sock")
    for args in (["keys", "install", key], ["keys", "install"]):
        r = meshd(*args, "--socket", sock)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert "meshd keygen | meshd keys install -" in lines[0] and "--file" in lines[0]
        assert key not in r.stderr
    # From stdin or a file, the key gets as far as the (absent) daemon.
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "keys", "install", "-", "--socket", sock],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "no meshd running" in r.stderr, r.stderr
    f = tmp_path / "new.key"
    f.write_text(key + "\n")
    r = meshd("keys", "install", "--file", str(f), "--socket", sock)
    assert r.returncode == 1 and "no meshd running" in r.stderr, r.stderr
    r = meshd("keys", "install", "--file", str(tmp_path / "missing"), "--socket", sock)
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr
