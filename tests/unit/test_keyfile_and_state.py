from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshd.errors import KeyFileError
from meshd.gossip.record import NodeRecord
from meshd.gossip.security import Keyring, generate_key
from meshd.keyfile import load_keyring, save_keyring
from meshd.statestore import State, StateStore


def test_keyfile_modes(tmp_path: Path) -> None:
    p = tmp_path / "key"
    with pytest.raises(KeyFileError, match="umask 077"):
        load_keyring(p)
    p.write_text(generate_key() + "\n")
    p.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keyring(p)
    p.chmod(0o600)
    kr = load_keyring(p)
    save_keyring(p, Keyring((os.urandom(32), *kr.keys)))
    assert (p.stat().st_mode & 0o777) == 0o600
    assert load_keyring(p).keys[1] == kr.primary
    p.write_text("garbage\n")
    with pytest.raises(KeyFileError, match="line 1"):
        load_keyring(p)


def test_keyfile_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text(generate_key() + "\n")
    real.chmod(0o600)
    link = tmp_path / "key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="symlink"):
        load_keyring(link)
    assert load_keyring(real).primary  # the file itself is fine


@pytest.mark.root
def test_keyfile_foreign_owner_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to give the file another owner (deselect with -m 'not root')")
    p = tmp_path / "key"
    p.write_text(generate_key() + "\n")
    p.chmod(0o600)
    os.chown(p, 4242, -1)
    with pytest.raises(KeyFileError, match="owned by uid 4242"):
        load_keyring(p)


def test_keyfile_save_leaves_no_temporary_and_is_private(tmp_path: Path) -> None:
    p = tmp_path / "key"
    p.write_text(generate_key() + "\n")
    p.chmod(0o600)
    kr = load_keyring(p)
    umask = os.umask(0o022)  # a permissive umask must not leak into the file's mode
    try:
        save_keyring(p, Keyring((os.urandom(32), *kr.keys)))
    finally:
        os.umask(umask)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["key"]
    assert (p.stat().st_mode & 0o777) == 0o600
    assert len(load_keyring(p).keys) == 2


def test_state_roundtrip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    fresh = store.load()
    assert len(fresh.node_id) == 16 and fresh.incarnation == 0
    rec = NodeRecord(
        "h2",
        os.urandom(16),
        "10.0.0.2",
        7950,
        "10.244.2.0/24",
        "vxlan",
        "02:00:00:00:00:02",
        1500,
        3,
    )
    store.save(State(fresh.node_id, 7, [rec]))
    again = StateStore(tmp_path / "s").load()
    assert again.node_id == fresh.node_id and again.incarnation == 7 and again.members == [rec]
    (tmp_path / "s" / "state.json").write_text("{broken")
    assert StateStore(tmp_path / "s").load().node_id != fresh.node_id


def test_state_keeps_both_families_subnets_and_ipv6_members(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    node_id = store.load().node_id
    v6peer = NodeRecord(
        "h6", os.urandom(16), "2001:db8::6", 7950, "fd00:6::/64", "vxlan", None, 1500, 2
    )
    dual = State(node_id, 3, [v6peer], subnet="10.244.1.0/24", subnet_since=100)
    dual.subnet6 = "fd00:1::/64"
    store.save(dual)
    got = StateStore(tmp_path / "s").load()
    assert (got.subnet, got.subnet6, got.subnet_since) == ("10.244.1.0/24", "fd00:1::/64", 100)
    assert got.subnet_of(4) == "10.244.1.0/24" and got.subnet_of(6) == "fd00:1::/64"
    assert got.members == [v6peer]
    # An IPv6-only node: its one subnet is `subnet`, as in its record.
    store.save(State(node_id, 4, [], subnet="fd00:2::/64", subnet_since=5))
    got = StateStore(tmp_path / "s").load()
    assert (got.subnet, got.subnet6, got.subnet_of(4), got.subnet_of(6)) == (
        "fd00:2::/64",
        None,
        None,
        "fd00:2::/64",
    )
    assert "subnet6" not in (tmp_path / "s" / "state.json").read_text()  # as before dual-stack


def test_state_forgets_saved_subnets_that_are_not_subnets(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    node_id = store.load().node_id
    path = tmp_path / "s" / "state.json"
    path.write_text(
        json.dumps(
            {"node_id": node_id.hex(), "subnet": "10.244.1.0/24", "subnet6": "10.244.2.0/24"}
        )
    )
    got = store.load()
    assert (got.subnet, got.subnet6) == ("10.244.1.0/24", None)  # subnet6 must be IPv6
    path.write_text(json.dumps({"node_id": node_id.hex(), "subnet": "nope", "subnet6": 7}))
    got = store.load()
    assert (got.node_id, got.subnet, got.subnet6) == (node_id, None, None)
