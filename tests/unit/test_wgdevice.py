"""meshd/dataplane/wgdevice.py without a device: wg(8)'s dump parsed, requests turned into
``wg set`` arguments (the private key only on stdin), and the device's state as model objects.
The same client against a real wireguard-go device: tests/integration/test_dataplane_kernel.py."""

from __future__ import annotations

import pytest

from meshd.dataplane import wireguard as wg
from meshd.dataplane.objects import WgPeer
from meshd.dataplane.wgdevice import params_of, parse_dump, peers_of, set_argv
from meshd.errors import DataplaneError

PRIV = bytes(range(32))
PEER = wg.public_key(bytes(range(1, 33)))


def b64(k: bytes) -> str:
    return wg.key_to_base64(k)


def test_dump_parsed() -> None:
    text = (
        f"{b64(PRIV)}\t{b64(wg.public_key(PRIV))}\t51820\toff\n"
        f"{b64(PEER)}\t(none)\t10.99.0.2:51820\t10.244.2.0/24,10.244.9.0/24\t1700000000\t10\t20\toff\n"
        f"{b64(bytes(32))}\t(none)\t(none)\t(none)\t0\t0\t0\t25\n"
    )
    st = parse_dump(text)
    assert st.private_key == PRIV and st.listen_port == 51820
    p = st.peers[PEER]
    assert p.endpoint == "10.99.0.2:51820" and p.last_handshake_sec == 1700000000
    assert p.allowed_ips == {"10.244.2.0/24", "10.244.9.0/24"} and (p.rx_bytes, p.tx_bytes) == (
        10,
        20,
    )
    empty = st.peers[bytes(32)]
    assert empty.endpoint is None and not empty.allowed_ips and empty.keepalive == 25
    assert peers_of(st)[b64(PEER)] == WgPeer(
        b64(PEER), "10.99.0.2:51820", ("10.244.2.0/24", "10.244.9.0/24")
    )
    assert params_of(st) == {"listen_port": 51820, "public_key": b64(wg.public_key(PRIV))}
    assert params_of(parse_dump("(none)\t(none)\t0\toff\n")) == {
        "listen_port": 0,
        "public_key": "",
    }


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just one field\n",
        "(none)\t(none)\tport\toff\n",
        "(none)\t(none)\t1\toff\nshort\tline\n",
    ],
)
def test_bad_dump_is_one_line(text: str) -> None:
    with pytest.raises(DataplaneError) as exc:
        parse_dump(text)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("wg show dump")


def test_set_argv_keeps_the_key_off_the_command_line() -> None:
    req = wg.SetRequest(
        private_key=PRIV,
        listen_port=51820,
        peers=(
            wg.PeerChange(PEER, endpoint="10.99.0.2:51820", replace_allowed_ips=True,
                          allowed_ips=("10.244.2.0/24",)),
            wg.PeerChange(bytes(32), remove=True),
        ),
    )  # fmt: skip
    args, stdin = set_argv("meshd.wg", req)
    assert args == [
        "set", "meshd.wg", "listen-port", "51820", "private-key", "/dev/stdin",
        "peer", b64(PEER), "endpoint", "10.99.0.2:51820", "allowed-ips", "10.244.2.0/24",
        "peer", b64(bytes(32)), "remove",
    ]  # fmt: skip
    assert stdin == b64(PRIV) + "\n"
    assert b64(PRIV) not in " ".join(args)
    # A peer whose allowed IPs are to be emptied gets an empty list, which wg reads as none.
    args, stdin = set_argv(
        "x", wg.SetRequest(peers=(wg.PeerChange(PEER, replace_allowed_ips=True),))
    )
    assert args[-2:] == ["allowed-ips", ""] and stdin is None
