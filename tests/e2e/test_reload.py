"""SIGHUP on a real daemon: the key file is read again and its ring used; a broken file keeps the
ring the daemon has, with one error line in its log."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.gossip.security import Keyring
from meshd.keyfile import load_keyring, save_keyring
from meshd.lab import Lab

from .conftest import all_alive, cli, keygen, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]


def keys(lab: Lab, name: str) -> list[str]:
    out = cli(lab.daemons[name], "keys", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_sighup_reloads_the_key_file(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    lab = make_lab("reload", 2)
    key = keygen(tmp_path / "key")
    h1, h2 = lab.hosts
    files = {}
    for h in lab.hosts:
        files[h.name] = tmp_path / f"key.{h.name}"
        files[h.name].write_bytes(key.read_bytes())
        files[h.name].chmod(0o600)
        lab.start_daemon(
            h, key_file=files[h.name], backend="vxlan", extra_args=["--config", str(fast_config)]
        )
    wait_until(all_alive(lab, ["h1", "h2"]), 60, "mesh up", lab)
    before = keys(lab, "h1")
    ring = load_keyring(files["h1"])

    # A second key added to h1's file by hand (as an operator would, then `systemctl reload`).
    extra = subprocess.run(
        [sys.executable, "-m", "meshd", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    grown = Keyring((*ring.keys, Keyring.parse(extra).primary))
    save_keyring(files["h1"], grown)
    d1 = lab.daemons["h1"]
    assert d1.proc is not None
    d1.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: keys(lab, "h1") == grown.ids(), 10, "reloaded ring", lab)
    assert keys(lab, "h1")[0] == before[0]  # the primary is unchanged: the mesh still talks
    assert d1.alive()

    # A broken file: the ring stays, one error line, the daemon runs on and stays in the mesh.
    files["h1"].write_text("garbage\n")
    d1.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current keyring" in d1.log_path.read_text(), 10, "log", lab)
    assert keys(lab, "h1") == grown.ids()
    assert d1.alive() and all_alive(lab, ["h1", "h2"])()
    errors = [ln for ln in d1.log_path.read_text().splitlines() if "keeping the current" in ln]
    assert len(errors) == 1
