"""meshd/control/format.py: what the CLI prints, from typed control replies."""

from __future__ import annotations

import json

from meshd.control import format as fmt
from meshd.control.protocol import KeyList, PeerRow, StatusReply

H1: PeerRow = {
    "name": "h1",
    "public_ip": "10.0.0.1",
    "subnet": "10.244.1.0/24",
    "backend": "vxlan",
    "vtep_mac": "02:00:00:00:00:01",
    "state": "alive",
    "incarnation": 2,
    "last_seen": 0.0,
    "self": True,
    "node_id": "00" * 16,
    "flag": None,
    "handshake": None,
    "tunnel": None,
    "trust": "certificate",
}
H2: PeerRow = {
    "name": "h2",
    "public_ip": "10.0.0.2",
    "subnet": "10.244.2.0/24",
    "backend": "host-gw",
    "vtep_mac": None,
    "state": "suspect",
    "incarnation": 1,
    "last_seen": 2.54,
    "self": False,
    "node_id": "11" * 16,
    "flag": "conflicted",
    "handshake": None,
    "tunnel": None,
    "trust": "certificate",
}


def test_peers_table_columns_line_up() -> None:
    out = fmt.peers([H1, H2]).splitlines()
    assert len(out) == 3
    assert out[0].startswith("NAME  PUBLIC IP")
    # every column starts at the same offset in every row
    col = out[0].index("STATE")
    assert out[1][col:].split()[0] == "alive" and out[2][col:].split()[0] == "suspect"
    assert out[1].split()[-2:] == ["-", "self"]  # no "seen" for ourselves
    assert out[2].split()[-2:] == ["2.5s", "conflicted"]
    assert out[2].split()[4] == "-"  # host-gw has no VTEP MAC
    assert all(line == line.rstrip() for line in out)


def test_peers_table_shows_wireguard_handshakes() -> None:
    me = {**H1, "backend": "wireguard", "vtep_mac": None}
    seen = {**H2, "backend": "wireguard", "flag": None, "handshake": 1000}
    never = {**H2, "name": "h3", "backend": "wireguard", "flag": None}
    out = fmt.peers([me, seen, never], now=1042.4).splitlines()  # type: ignore[list-item]
    col = out[0].index("HANDSHAKE")
    assert [ln[col:].split()[0] for ln in out[1:]] == ["-", "42s", "never"]
    assert "HANDSHAKE" not in fmt.peers([H1, H2])  # other backends: no such column


def test_status_names_the_wireguard_implementation() -> None:
    dp = {
        "backend": "wireguard",
        "wireguard": {
            "implementation": "wireguard-go",
            "why": "started wireguard-go (pid 7): the kernel has no wireguard module",
            "pid": 7,
            "public_key": "k=",
            "listen_port": 51820,
            "peers": 2,
            "handshakes": 1,
        },
    }
    lines = fmt.dataplane(dp, {})
    assert any(
        "wireguard wireguard-go: started wireguard-go (pid 7)" in ln and "2 peer(s)" in ln
        for ln in lines
    ), lines


def test_peers_table_empty_is_only_the_header() -> None:
    assert fmt.peers([]).split() == [
        "NAME",
        "PUBLIC",
        "IP",
        "SUBNET",
        "BACKEND",
        "VTEP",
        "MAC",
        "STATE",
        "INC",
        "SEEN",
        "NOTE",
    ]


def test_json_is_the_reply_unchanged() -> None:
    assert json.loads(fmt.to_json([H1, H2])) == [H1, H2]


def status_reply(**over: object) -> StatusReply:
    st: StatusReply = {
        "version": "0.1.0",
        "node": {
            "name": "h1",
            "public_ip": "10.0.0.1",
            "subnet": "10.244.1.0/24",
            "backend": "vxlan",
            "incarnation": 3,
        },
        "underlay": {"ifname": "eth0", "ip": "10.0.0.1", "prefixlen": 24, "mtu": 1500},
        "uptime": 12.5,
        "synced": True,
        "members": {"alive": 2, "suspect": 0, "dead": 1, "left": 0},
        "counters": {"in": 40, "out": 41},
        "dropped": {},
        "keys": ["aabbccdd"],
        "trust": {"mode": "shared-key", "authenticated": False},
        "dataplane": {},
        "tunnel": None,
        "filter": {"enabled": False},
        "allocation": {},
    }
    st.update(over)  # type: ignore[typeddict-item]
    return st


def test_status_summary() -> None:
    lines = fmt.status(status_reply())
    assert lines[0] == ("node      h1 (10.0.0.1) subnet 10.244.1.0/24 backend vxlan incarnation 3")
    assert lines[1].startswith("trust     UNAUTHENTICATED (shared-key mode)")
    assert lines[3] == "members   alive 2, suspect 0, dead 1, left 0"
    assert lines[4] == "datagrams in 40, out 41"
    assert "dataplane not started" in lines
    assert not any(line.startswith("dropped") for line in lines)
    dropped = fmt.status(status_reply(dropped={"auth": 3, "version": 1}))
    assert "dropped   auth 3, version 1" in dropped
    assert not any(line.startswith("lost sends") for line in lines)
    lost = fmt.status(status_reply(lost_sends={"enobufs": 7, "ehostunreach": 2}))
    assert any(line.startswith("lost sends enobufs 7, ehostunreach 2 (") for line in lost)


def test_trust_line_in_certificate_mode() -> None:
    t = {
        "mode": "certificates",
        "authenticated": True,
        "ca": [{"name": "meshd CA", "network": "10.244.0.0/16", "fingerprint": "ab" * 32}],
        "cert": {"name": "h1", "not_after": 1_800_000_000.0},
        "crl": {"number": 4, "revoked": 2, "issuer": "meshd CA"},
        "local": "",
    }
    assert fmt.trust(t) == (
        "trust     certificates, CA meshd CA (10.244.0.0/16); this node's certificate expires "
        "2027-01-15 08:00 UTC; CRL #4 (2 revoked)"
    )
    assert fmt.trust({**t, "crl": None, "local": "revoked"}).endswith(
        "; no CRL; THIS NODE'S CERTIFICATE IS REVOKED"
    )


def test_peers_table_says_when_the_mesh_is_unauthenticated() -> None:
    plain: list[PeerRow] = [H1.copy(), H2.copy()]
    for row in plain:
        row["trust"] = "shared-key"
    out = fmt.peers(plain).splitlines()
    assert len(out) == 4 and out[-1].startswith("mesh: UNAUTHENTICATED (shared-key mode)")
    assert "UNAUTHENTICATED" not in fmt.peers([H1, H2])


def test_dataplane_lines() -> None:
    dp = {
        "backend": "vxlan",
        "device": "meshd.1",
        "underlay": {"ifname": "eth0"},
        "protocol": 109,
        "programmed": ["h2", "h3"],
        "runs": 7,
        "applied_total": 12,
        "last_run": {"duration_ms": 3.2, "reason": "peers"},
        "last_change": {"plan": {"counts": {"route_add": 2, "route_del": 0}}},
        "conflicts": {"h4": "subnet overlaps h2"},
        "skipped": {},
        "last_error": "EPERM",
    }
    fw = {"active": True, "table": "inet meshd", "members": ["10.0.0.2"], "last_error": None}
    lines = fmt.dataplane(dp, fw)
    assert lines[0] == (
        "dataplane vxlan device meshd.1 on eth0, routes proto 109, 2 peer(s) programmed"
    )
    assert "7 passes, last 3.2 ms (peers), 12 changes applied in all" in lines[1]
    assert lines[2].strip() == "last change: route_add 2"  # zero counts are left out
    assert lines[3].strip() == "conflicted h4: subnet overlaps h2"
    assert lines[4].strip() == "error: EPERM"
    assert lines[5] == "filter    inet meshd: 1 member IPs"


def test_masquerade_line() -> None:
    assert fmt.masquerade({"enabled": False}) == []
    mq = {"enabled": True, "table": "ip meshd-nat", "network": "10.244.0.0/16",
          "subnet": "10.244.1.0/24", "repairs": 2, "last_error": None}  # fmt: skip
    assert fmt.masquerade(mq) == [
        "masquerade ip meshd-nat: traffic leaving 10.244.0.0/16 (node 10.244.1.0/24), 2 repair(s)"
    ]
    lines = fmt.status(status_reply(masquerade={**mq, "last_error": "masquerade: nft: boom"}))
    assert any(ln.endswith("2 repair(s), error: masquerade: nft: boom") for ln in lines)
    # An older daemon's reply has no masquerade at all.
    assert not any(ln.startswith("masquerade") for ln in fmt.status(status_reply()))


def test_keys_marks_the_primary() -> None:
    ring: KeyList = {"primary": "bbbbbbbb", "keys": ["bbbbbbbb", "aaaaaaaa"]}
    assert fmt.keys(ring) == "bbbbbbbb  (primary)\naaaaaaaa"


def test_leave() -> None:
    assert fmt.leave({"left": True, "spread": True}) == "left the mesh"
    assert fmt.leave({"left": True, "spread": False}).endswith("(not confirmed by all peers)")


def test_allocation_line() -> None:
    a = {
        "network": "10.244.0.0/16",
        "subnet_len": 24,
        "size": 256,
        "lease": 86400.0,
        "origin": "picked",
        "settled": False,
        "moves": 0,
        "last_move": None,
    }
    lines = fmt.status(status_reply(allocation=a))
    assert lines[2] == (
        "subnet    allocated from 10.244.0.0/16 (/24, 256 subnets; lease 86400 s), picked, "
        "NOT SETTLED (waiting for the mesh's state)"
    )
    moved = {**a, "settled": True, "moves": 1, "last_move": "10.244.3.0/24 held by h2, took x"}
    assert fmt.allocation(moved) == [
        "subnet    allocated from 10.244.0.0/16 (/24, 256 subnets; lease 86400 s), picked, "
        "settled; moved 1x, last: 10.244.3.0/24 held by h2, took x"
    ]
    assert fmt.allocation({}) == []


def test_status_shows_the_tunnel_probes() -> None:
    t = {"local": "10.244.1.0", "port": 7950, "targets": 2, "unreachable": ["h2"],
         "counters": {"probes": 9, "replies": 5, "timeouts": 4}}  # fmt: skip
    (line,) = fmt.tunnel(t)
    assert "9 sent, 5 answered, 4 lost" in line and line.endswith("UNREACHABLE: h2")
    assert fmt.tunnel(None) == []


# --- dual-stack ----------------------------------------------------------------------------------


def test_peers_table_shows_both_families_in_one_cell_each() -> None:
    dual: PeerRow = {
        **H2,
        "public_ip6": "2001:db8::2",
        "subnet6": "fd00:10:244:2::/64",
        "flag": None,
    }
    v6only: PeerRow = {**H2, "name": "h3", "public_ip": "2001:db8::3", "subnet": "fd00:3::/64"}
    out = fmt.peers([H1, dual, v6only]).splitlines()
    assert out[2].split()[:3] == ["h2", "10.0.0.2,2001:db8::2", "10.244.2.0/24,fd00:10:244:2::/64"]
    assert out[3].split()[:3] == ["h3", "2001:db8::3", "fd00:3::/64"]
    # A row from a daemon before dual-stack (no such keys) and one with None read alike.
    assert out[1].split()[:3] == ["h1", "10.0.0.1", "10.244.1.0/24"]
    col = out[0].index("BACKEND")
    assert {line[col:].split()[0] for line in out[1:]} == {"vxlan", "host-gw"}


def test_status_node_line_shows_both_families() -> None:
    st = status_reply()
    st["node"] = {**st["node"], "public_ip6": "2001:db8::1", "subnet6": "fd00:1::/64"}
    assert fmt.status(st)[0] == (
        "node      h1 (10.0.0.1,2001:db8::1) subnet 10.244.1.0/24,fd00:1::/64 backend vxlan "
        "incarnation 3"
    )


def test_dataplane_line_names_the_underlay_addresses() -> None:
    dp: dict[str, object] = {
        "backend": "host-gw",
        "device": None,
        "protocol": 109,
        "programmed": [],
    }
    one = fmt.dataplane({**dp, "underlay": {"ifname": "eth0", "ip": "2001:db8::1"}}, {})
    assert one[0].startswith("dataplane host-gw device - on eth0 (2001:db8::1), routes")
    two = {"ifname": "eth0", "ip": "10.0.0.1", "ip6": "2001:db8::1"}
    assert fmt.dataplane({**dp, "underlay": two}, {})[0].startswith(
        "dataplane host-gw device - on eth0 (10.0.0.1,2001:db8::1), routes"
    )


def test_status_shows_each_familys_allocation_and_masquerade() -> None:
    alloc = {"network": "fd00:10:244::/48", "subnet_len": 64, "size": 65536, "lease": 600,
             "origin": "picked", "settled": True}  # fmt: skip
    mq = {"enabled": True, "table": "ip6 meshd-nat", "network": "fd00:10:244::/48",
          "subnet": "fd00:10:244:1::/64", "repairs": 0, "last_error": None}  # fmt: skip
    lines = fmt.status(status_reply(allocation6=alloc, masquerade6=mq))
    assert (
        "subnet    allocated from fd00:10:244::/48 (/64, 65536 subnets; lease 600 s), "
        "picked, settled" in lines
    )
    assert any(
        x.startswith("masquerade ip6 meshd-nat: traffic leaving fd00:10:244::/48") for x in lines
    )
