"""meshd/service.py: the control commands and the metrics read a node through typed replies."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from meshd.control.protocol import KeyRef
from meshd.errors import ControlError
from meshd.gossip import messages as m
from meshd.gossip.config import GossipConfig
from meshd.gossip.node import GossipNode
from meshd.gossip.record import NodeRecord
from meshd.gossip.security import Keyring, Sealer, decode_key, generate_key, key_id
from meshd.keyfile import load_keyring, save_keyring
from meshd.service import Service
from meshd.sim import make_record

ME, A = make_record(0), make_record(1)


class FakeTransport:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter(
            {"in": 3, "out": 4, "drop.auth": 1, "send_error": 2, "send_error.enobufs": 2}
        )
        self.kicks = 0

    def kick(self) -> None:
        self.kicks += 1


class FakeDataplane:
    def status(self) -> dict[str, Any]:
        return {"runs": 2}

    def peer_flags(self) -> dict[str, str]:
        return {A.name: "conflicted"}

    def handshakes(self) -> dict[str, int | None]:
        return {A.name: 1_700_000_000}


def service(tmp_path: Path, peer: NodeRecord = A) -> tuple[Service, FakeTransport, Path]:
    node = GossipNode(ME, GossipConfig(), random.Random(1), 0.0)
    node.join([], 0.0)
    node.receive_datagram(m.pack_datagram([m.encode(m.Alive(peer))]), peer.addr, 0.0)
    key_file = tmp_path / "key"
    ring = Keyring((decode_key(generate_key()),))
    save_keyring(key_file, ring)
    transport = FakeTransport()
    svc = Service(
        node,
        transport,
        Sealer(ring, ME.node_id),
        {"ifname": "eth0", "ip": ME.public_ip, "prefixlen": 16, "mtu": 1500},
        key_file,
        lambda: None,
        FakeDataplane(),
        None,
        0.0,
    )
    return svc, transport, key_file


def call(svc: Service, cmd: str, **args: Any) -> Any:
    async def go() -> Any:
        return await svc.commands()[cmd]({"cmd": cmd, **args})

    return asyncio.run(go())


def test_peers_rows(tmp_path: Path) -> None:
    svc, _, _ = service(tmp_path)
    rows = call(svc, "peers")
    assert [r["name"] for r in rows] == [ME.name, A.name]
    assert rows[0]["self"] and rows[0]["last_seen"] == 0.0 and rows[0]["flag"] is None
    assert not rows[1]["self"] and rows[1]["flag"] == "conflicted"
    assert rows[1]["vtep_mac"] == A.vtep_mac and rows[1]["node_id"] == A.node_id.hex()


def test_peers_rows_carry_both_families(tmp_path: Path) -> None:
    dual = replace(A, public_ip6="2001:db8::1", subnet6="fd00:10:244:1::/64")
    svc, _, _ = service(tmp_path, dual)
    rows = call(svc, "peers")
    assert (rows[1]["public_ip6"], rows[1]["subnet6"]) == ("2001:db8::1", "fd00:10:244:1::/64")
    assert (rows[0]["public_ip6"], rows[0]["subnet6"]) == (None, None)  # ME: IPv4 only


def test_status_merges_transport_and_core_counters(tmp_path: Path) -> None:
    svc, _, _ = service(tmp_path)
    st = call(svc, "status")
    assert st["members"] == {"alive": 2, "suspect": 0, "dead": 0, "left": 0}
    assert st["counters"]["in"] == 3  # the transport's datagrams
    assert st["counters"]["payload_in"] == 1  # the core's: the one Alive fed above
    assert st["dropped"] == {"auth": 1}
    assert st.get("lost_sends") == {"enobufs": 2} and st["counters"]["send_error"] == 2
    assert st["dataplane"] == {"runs": 2} and st["filter"] == {"enabled": False}
    assert st["node"]["name"] == ME.name


def test_key_rotation_through_commands_persists_the_ring(tmp_path: Path) -> None:
    svc, transport, key_file = service(tmp_path)
    old = svc.sealer.keyring.primary
    new = generate_key()
    new_id = key_id(decode_key(new)).hex()
    assert call(svc, "keys.install", key=new)["keys"] == [key_id(old).hex(), new_id]
    assert call(svc, "keys.use", key_id=new_id)["primary"] == new_id
    assert call(svc, "keys.remove", key_id=key_id(old).hex())["keys"] == [new_id]
    assert load_keyring(key_file).keys == (decode_key(new),)
    assert svc.sealer.keyring.keys == (decode_key(new),)
    assert transport.kicks == 3


def test_key_commands_refuse_bad_arguments(tmp_path: Path) -> None:
    svc, _, _ = service(tmp_path)
    primary = key_id(svc.sealer.keyring.primary).hex()
    with pytest.raises(ControlError, match="32 hex digits"):
        call(svc, "keys.use", key_id="xyz")
    with pytest.raises(ControlError, match="not in this node's keyring"):
        call(svc, "keys.use", key_id="00" * 16)
    with pytest.raises(ControlError, match="is the primary"):
        call(svc, "keys.remove", key_id=primary)
    with pytest.raises(ControlError, match="key:"):
        call(svc, "keys.install", key="not base64!")
    with pytest.raises(ControlError, match="base64 key"):
        call(svc, "keys.install")


def test_key_ref_parses_exactly_32_hex_digits() -> None:
    assert KeyRef.parse({"key_id": "0a0b0c0d" * 4}).key_id == bytes.fromhex("0a0b0c0d" * 4)
    for bad in ("0a0b0c0d", "0a0b0c0d" * 4 + "0e", 12345678, None):
        with pytest.raises(ControlError):
            KeyRef.parse({"key_id": bad})


def test_metric_families_come_from_the_node(tmp_path: Path) -> None:
    svc, _, _ = service(tmp_path)
    fams = {f.name: f for f in svc.metric_families()}
    members = {labels["state"]: v for _, labels, v in fams["meshd_members"].samples}
    assert members == {"alive": 2, "suspect": 0, "dead": 0, "left": 0}
    assert fams["meshd_reconcile_runs_total"].samples[0][2] == 2


def test_reload_key_file_swaps_the_ring_and_keeps_it_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc, _, key_file = service(tmp_path)
    old = svc.sealer.keyring
    new = Keyring((decode_key(generate_key()), old.primary))  # another primary, the old kept
    save_keyring(key_file, new)
    assert svc.reload_key_file()
    assert svc.sealer.keyring.ids() == new.ids() != old.ids()
    assert svc.sealer.keyring.primary == new.primary != old.primary

    caplog.clear()
    key_file.write_text("not a key file\n")
    assert not svc.reload_key_file()
    assert svc.sealer.keyring.ids() == new.ids()  # unchanged
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "keeping the current keyring" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()

    key_file.unlink()
    assert not svc.reload_key_file()
    assert svc.sealer.keyring.ids() == new.ids()


def test_install_into_a_full_keyring_is_refused_at_the_origin(tmp_path: Path) -> None:
    svc, _, _ = service(tmp_path)
    for _ in range(3):
        call(svc, "keys.install", key=generate_key())
    assert len(svc.sealer.keyring.keys) == 4
    with pytest.raises(ControlError, match=r"keyring is full \(4 keys\)"):
        call(svc, "keys.install", key=generate_key())
    assert len(svc.sealer.keyring.keys) == 4
