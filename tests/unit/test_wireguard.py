"""meshd.dataplane.wireguard, the pure parts: keys, the UAPI text both ways, the minimal diff;
and the WireGuard key file (meshd.keyfile)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshd.dataplane import wireguard as wg
from meshd.errors import DataplaneError, KeyFileError
from meshd.keyfile import WIREGUARD_KEY, load_or_create_wireguard_key

# The RFC 7748 section 6.1 test vector (Alice's key pair)
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))

# What wireguard-go 0.0.20220316 answers to get=1 (captured, keys replaced)
GET_REPLY = f"""private_key={ALICE_PRIV.hex()}
listen_port=51820
fwmark=0
public_key={K1.hex()}
preshared_key={"0" * 64}
protocol_version=1
endpoint=10.99.0.2:51820
last_handshake_time_sec=1764691200
last_handshake_time_nsec=123456789
tx_bytes=1480
rx_bytes=2960
persistent_keepalive_interval=25
allowed_ip=10.244.2.0/24
allowed_ip=10.244.2.0/32
public_key={K2.hex()}
preshared_key={"0" * 64}
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

"""


def test_public_key_matches_rfc7748() -> None:
    assert wg.public_key(ALICE_PRIV) == ALICE_PUB


def test_generated_keys_are_distinct_and_agree_with_cryptography() -> None:
    a, b = wg.generate_private_key(), wg.generate_private_key()
    assert len(a) == 32 and a != b
    ref = X25519PrivateKey.from_private_bytes(a).public_key().public_bytes_raw()
    assert wg.public_key(a) == ref


def test_base64_as_wg_prints_it() -> None:
    text = wg.key_to_base64(ALICE_PUB)
    assert text == base64.b64encode(ALICE_PUB).decode() and len(text) == 44
    assert wg.key_from_base64(text + "\n") == ALICE_PUB


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode(), ""])
def test_bad_base64_key_is_one_line(bad: str) -> None:
    with pytest.raises(DataplaneError) as exc:
        wg.key_from_base64(bad)
    assert "\n" not in str(exc.value)


def test_parse_get() -> None:
    dev = wg.parse_get(GET_REPLY)
    assert dev.private_key == ALICE_PRIV and dev.listen_port == 51820
    assert set(dev.peers) == {K1, K2}
    p1 = dev.peers[K1]
    assert p1.endpoint == "10.99.0.2:51820"
    assert p1.allowed_ips == {"10.244.2.0/24", "10.244.2.0/32"}
    assert (p1.last_handshake_sec, p1.last_handshake_nsec) == (1764691200, 123456789)
    assert (p1.rx_bytes, p1.tx_bytes, p1.keepalive) == (2960, 1480, 25)
    p2 = dev.peers[K2]
    assert p2.endpoint is None and p2.allowed_ips == frozenset() and p2.last_handshake_sec == 0


def test_encode_then_parse_round_trip() -> None:
    """What a set installs reads back the same (the answer text built as wireguard-go would)."""
    req = wg.SetRequest(
        private_key=ALICE_PRIV,
        listen_port=51820,
        replace_peers=True,
        peers=(
            wg.PeerChange(
                K1,
                endpoint="[fd00::2]:51820",
                replace_allowed_ips=True,
                allowed_ips=("10.244.2.0/24", "10.244.2.0/32"),
                keepalive=25,
            ),
        ),
    )
    text = wg.encode_set(req)
    assert text.startswith("set=1\n") and text.endswith("\n\n") and "\n\n" not in text[:-2]
    assert text.splitlines()[1:4] == [
        f"private_key={ALICE_PRIV.hex()}",
        "listen_port=51820",
        "replace_peers=true",
    ]
    reply = text.replace("set=1\n", "").replace("replace_peers=true\n", "")
    reply = reply.replace("replace_allowed_ips=true\n", "").rstrip("\n") + "\nerrno=0\n\n"
    dev = wg.parse_get(reply)
    assert dev.private_key == ALICE_PRIV and dev.listen_port == 51820
    assert dev.peers[K1] == wg.PeerState(
        K1, "[fd00::2]:51820", frozenset({"10.244.2.0/24", "10.244.2.0/32"}), keepalive=25
    )


def test_remove_carries_nothing_else() -> None:
    text = wg.encode_set(wg.SetRequest(peers=(wg.PeerChange(K1, remove=True, endpoint="x"),)))
    assert text == f"set=1\npublic_key={K1.hex()}\nremove=true\n\n"


@pytest.mark.parametrize(
    ("reply", "errno"),
    [("errno=-22\n\n", 22), ("errno=5\n\n", 5), ("errno=x\n\n", None), ("garbage\n\n", None)],
)
def test_errno_answers_are_one_line_errors(reply: str, errno: int | None) -> None:
    with pytest.raises(DataplaneError) as exc:
        wg.parse_get(reply)
    assert "\n" not in str(exc.value) and exc.value.errno == errno


def test_errno_zero_passes() -> None:
    wg.check_errno("errno=0\n\n", "set")


@pytest.mark.parametrize(
    "line", ["public_key=zz", f"public_key={K1.hex()}\nrx_bytes=lots", "no equals sign"]
)
def test_malformed_get_is_one_line(line: str) -> None:
    with pytest.raises(DataplaneError) as exc:
        wg.parse_get(line + "\nerrno=0\n\n")
    assert "\n" not in str(exc.value)


def desired_of(dev: wg.DeviceState) -> dict[bytes, wg.DesiredPeer]:
    return {k: wg.DesiredPeer(p.endpoint, p.allowed_ips, p.keepalive) for k, p in dev.peers.items()}


def test_diff_of_the_same_state_is_empty() -> None:
    dev = wg.parse_get(GET_REPLY)
    req = wg.diff(desired_of(dev), dev, private_key=ALICE_PRIV, listen_port=51820)
    assert req.empty and wg.encode_set(req) == "set=1\n\n"


def test_diff_changes_only_what_differs() -> None:
    dev = wg.parse_get(GET_REPLY)
    want = desired_of(dev)
    del want[K2]  # removed
    want[K1] = wg.DesiredPeer("10.99.0.9:51820", want[K1].allowed_ips, 25)  # endpoint moved
    want[K3] = wg.DesiredPeer("10.99.0.3:51820", wg.allowed_ips_of("10.244.3.0/24", "10.244.3.0"))
    req = wg.diff(want, dev, private_key=ALICE_PRIV, listen_port=51821)
    assert req.private_key is None and req.listen_port == 51821 and not req.replace_peers
    assert req.peers == (
        wg.PeerChange(K2, remove=True),
        wg.PeerChange(K1, endpoint="10.99.0.9:51820"),  # allowed IPs untouched
        wg.PeerChange(
            K3,
            endpoint="10.99.0.3:51820",
            replace_allowed_ips=True,
            allowed_ips=("10.244.3.0/24", "10.244.3.0/32"),
        ),
    )


def test_diff_replaces_allowed_ips_only_when_the_set_differs() -> None:
    dev = wg.parse_get(GET_REPLY)
    want = desired_of(dev)
    want[K1] = wg.DesiredPeer(want[K1].endpoint, wg.allowed_ips_of("10.244.7.0/24"), 25)
    req = wg.diff(want, dev)
    assert req.peers == (
        wg.PeerChange(K1, replace_allowed_ips=True, allowed_ips=("10.244.7.0/24",)),
    )
    # the same networks written differently are the same set
    assert wg.allowed_ips_of("10.244.2.5/24", "10.244.2.0") == dev.peers[K1].allowed_ips


def test_diff_applied_to_the_state_reaches_the_desired_state() -> None:
    """Replaying the request on the parsed state by hand gives the desired peers."""
    dev = wg.parse_get(GET_REPLY)
    want = {K3: wg.DesiredPeer("1.2.3.4:1", wg.allowed_ips_of("10.0.0.0/8"))}
    req = wg.diff(want, dev)
    peers = {
        k: wg.DesiredPeer(p.endpoint, p.allowed_ips, p.keepalive) for k, p in dev.peers.items()
    }
    for c in req.peers:
        if c.remove:
            del peers[c.public_key]
        else:
            assert c.replace_allowed_ips
            peers[c.public_key] = wg.DesiredPeer(c.endpoint, frozenset(c.allowed_ips))
    assert peers == want


def test_endpoint_of() -> None:
    assert wg.endpoint_of("10.0.0.1", 51820) == "10.0.0.1:51820"
    assert wg.endpoint_of("fd00::1", 51820) == "[fd00::1]:51820"


def test_key_file_created_0600_and_stable(tmp_path: Path) -> None:
    key = load_or_create_wireguard_key(tmp_path)
    path = tmp_path / WIREGUARD_KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == wg.key_to_base64(key) + "\n"
    assert load_or_create_wireguard_key(tmp_path) == key


def test_key_file_too_open_is_refused(tmp_path: Path) -> None:
    load_or_create_wireguard_key(tmp_path)
    os.chmod(tmp_path / WIREGUARD_KEY, 0o644)
    with pytest.raises(KeyFileError, match="readable by group/others") as exc:
        load_or_create_wireguard_key(tmp_path)
    assert "\n" not in str(exc.value)


def test_key_file_malformed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / WIREGUARD_KEY
    path.write_text("hello\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a base64") as exc:
        load_or_create_wireguard_key(tmp_path)
    assert "\n" not in str(exc.value)
