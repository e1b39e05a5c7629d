#!/usr/bin/env python3
"""Configuring N WireGuard peers on a wireguard-go device: one UAPI ``set`` from meshd's diff
against ``wg syncconf`` with the equivalent config file (docs/dataplane.md, "WireGuard
(groundwork)"). Needs root and wireguard-go + wireguard-tools.

Two fresh devices (one per method, each in a network namespace of its own, removed at the end),
and ``--reps`` times (the median is printed):

* ``add``  -- from no peers to N: meshd reads the device (``get=1``), diffs, sends one ``set=1``;
  ``wg syncconf`` is given the file (rendered beforehand, untimed) and does its own read and diff;
* ``noop`` -- the same desired state again: meshd's read + diff (an empty diff sends nothing);
  ``wg syncconf`` with the same file.

Between reps each device is emptied (``replace_peers``, untimed); after every step, untimed, both
devices must report the N peers with the right allowed IPs and endpoints, else the run stops.
Prints one JSON line per op (``ratio`` = meshd / wg)::

    {"bench": "wireguard", "n": 1000, "op": "add", "meshd_s": 0.05, "wg_s": 0.2, "ratio": 0.25}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from meshd.dataplane import wireguard as wg

PORT = 51820


def peers(n: int) -> dict[bytes, wg.DesiredPeer]:
    out = {}
    for i in range(n):
        subnet = f"10.{64 + i // 256}.{i % 256}.0"
        endpoint = wg.endpoint_of(f"10.97.{i // 250}.{1 + i % 250}", PORT)
        out[wg.public_key(wg.generate_private_key())] = wg.DesiredPeer(
            endpoint, wg.allowed_ips_of(f"{subnet}/24", subnet)
        )
    return out


def config_file(private: bytes, want: Mapping[bytes, wg.DesiredPeer]) -> str:
    lines = ["[Interface]", f"PrivateKey = {wg.key_to_base64(private)}", f"ListenPort = {PORT}"]
    for key, p in want.items():
        lines += ["", "[Peer]", f"PublicKey = {wg.key_to_base64(key)}"]
        lines += [f"Endpoint = {p.endpoint}", f"AllowedIPs = {', '.join(sorted(p.allowed_ips))}"]
    return "\n".join(lines) + "\n"


def check(dev: wg.UserspaceDevice, want: Mapping[bytes, wg.DesiredPeer]) -> None:
    got = asyncio.run(wg.get_device(dev.sock_path))
    have = {k: wg.DesiredPeer(p.endpoint, p.allowed_ips) for k, p in got.peers.items()}
    if have != want:
        raise SystemExit(f"bench_wireguard: {dev} holds {len(have)} peers, not the {len(want)}")


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    tag = secrets.token_hex(3)
    private = wg.generate_private_key()
    want = peers(args.n)
    devs: dict[str, wg.UserspaceDevice] = {}
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "wg.conf"
        conf.write_text(config_file(private, want))
        try:
            for who in ("meshd", "wg"):
                ns = f"mdwgb{tag}-{who}"
                subprocess.run(["ip", "netns", "add", ns], check=True)
                # a unique name: the socket is in the shared /run/wireguard, where wg finds it
                devs[who] = wg.start_device(f"wgb{tag}{who[0]}", ns)
            m, w = devs["meshd"], devs["wg"]
            wg_name = f"wgb{tag}w"

            def meshd_pass() -> None:
                async def run() -> None:
                    cur = await wg.get_device(m.sock_path)
                    await wg.set_device(m.sock_path, wg.diff(want, cur, private, PORT))

                asyncio.run(run())

            def wg_pass() -> None:
                subprocess.run(["wg", "syncconf", wg_name, str(conf)], check=True)

            results: dict[str, dict[str, list[float]]] = {"add": {}, "noop": {}}
            for _ in range(args.reps):
                for who, dev, fn in (("meshd", m, meshd_pass), ("wg", w, wg_pass)):
                    empty = wg.SetRequest(replace_peers=True)
                    asyncio.run(wg.set_device(dev.sock_path, empty))
                    check(dev, {})
                    results["add"].setdefault(who, []).append(timed(fn))
                    check(dev, want)
                    results["noop"].setdefault(who, []).append(timed(fn))
                    check(dev, want)
            for op, r in results.items():
                ms, ws = statistics.median(r["meshd"]), statistics.median(r["wg"])
                print(
                    json.dumps(
                        {
                            "bench": "wireguard",
                            "n": args.n,
                            "op": op,
                            "meshd_s": round(ms, 4),
                            "wg_s": round(ws, 4),
                            "ratio": round(ms / ws, 3),
                            "reps": args.reps,
                        }
                    )
                )
        finally:
            for dev in devs.values():
                os.kill(dev.pid, signal.SIGTERM)
            for who in ("meshd", "wg"):
                subprocess.run(
                    ["ip", "netns", "del", f"mdwgb{tag}-{who}"],
                    check=False,
                    stderr=subprocess.DEVNULL,
                )


if __name__ == "__main__":
    main()
