"""SIGHUP on a real daemon: the key file and the certificates are read again and used; a broken
file keeps what the daemon has, with one error line in its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd import pki
from meshd.gossip.certificate import Grant
from meshd.gossip.security import Keyring
from meshd.keyfile import load_keyring, save_keyring
from meshd.lab import Lab

from .conftest import all_alive, cli, keygen, peers, wait_until

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


def status(lab: Lab, name: str) -> dict[str, Any]:
    return cli(lab.daemons[name], "status", "--json")  # type: ignore[no-any-return]


def test_sighup_renews_the_certificate(
    make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path
) -> None:
    """A renewed certificate (new serial, same grant) replaces the old one in place: the node
    announces its record under it at a higher incarnation, and every member takes it. A
    certificate for another name is refused: the current one stays, one error line."""
    lab = make_lab("renew", 2)
    key = keygen(tmp_path / "key")
    lab.start_daemons(key_file=key, backend="vxlan", extra_args=["--config", str(fast_config)])
    wait_until(all_alive(lab, ["h1", "h2"]), 60, "mesh up", lab)
    h1 = lab.hosts[0]
    old = status(lab, "h1")["trust"]["cert"]
    inc = peers(lab.daemons["h2"])["h1"]["incarnation"]

    # Renew: the CA signs a fresh key and certificate for h1; the files are replaced in place.
    crt = lab.ca.directory / "h1.crt"
    fresh = tmp_path / "renewed"
    pki.sign(lab.ca.directory, "h1", h1.underlay_ip, Grant.fixed(h1.subnet), fresh, days=30)
    os.replace(fresh.with_suffix(".crt"), crt)
    os.replace(fresh.with_suffix(".key"), crt.with_suffix(".key"))
    d1 = lab.daemons["h1"]
    assert d1.proc is not None
    d1.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: status(lab, "h1")["trust"]["cert"]["serial"] != old["serial"], 10, "renewed", lab
    )
    wait_until(lambda: peers(lab.daemons["h2"])["h1"]["incarnation"] > inc, 10, "h2 took it", lab)
    assert all_alive(lab, ["h1", "h2"])()
    assert not status(lab, "h2")["dropped"].get("bad_signature")

    # A certificate for another name in h1's place: refused, the renewed one stays.
    wrong = tmp_path / "wrong"
    pki.sign(lab.ca.directory, "h9", h1.underlay_ip, Grant.fixed(h1.subnet), wrong, days=30)
    renewed = status(lab, "h1")["trust"]["cert"]["serial"]
    os.replace(wrong.with_suffix(".crt"), crt)
    os.replace(wrong.with_suffix(".key"), crt.with_suffix(".key"))
    d1.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current ones" in d1.log_path.read_text(), 10, "log", lab)
    errors = [ln for ln in d1.log_path.read_text().splitlines() if "keeping the current ones" in ln]
    assert len(errors) == 1 and "h9" in errors[0]
    assert status(lab, "h1")["trust"]["cert"]["serial"] == renewed
    assert d1.alive() and all_alive(lab, ["h1", "h2"])()
