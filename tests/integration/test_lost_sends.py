"""The transport sees sends the kernel refuses with ENOBUFS, on a real socket in a namespace.

A full neighbour table (the issue's case) is machine-wide and would break every other lab on the
machine, so the test makes the same error locally: a root qdisc that holds nothing (pfifo limit
0) on the host's underlay device and a permanent neighbour for the destination, so every send
reaches the device and is dropped there. Without IP_RECVERR that sendto() reports success and
only the kernel's ``Udp SndbufErrors`` grows; with it, ENOBUFS, as for a full neighbour table.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.lab import Lab

REPO = Path(__file__).resolve().parents[2]
DEST = "10.99.0.77"  # nobody: the permanent neighbour below is all the kernel needs
SENDS = 5

SCRIPT = f"""
import asyncio, json, sys
sys.path.insert(0, {str(REPO)!r})
from meshd.transport import Transport

class Node:
    def __init__(self):
        self.outbox = [(b"x" * 64, ({DEST!r}, 7950), None)] * {SENDS}
    def datagrams_to_send(self):
        out, self.outbox = self.outbox, []
        return out

class Plain:
    def seal(self, payload, wall, recipient):
        return payload

async def main():
    t = Transport(Node(), Plain(), ("0.0.0.0", 0))
    await t.start()
    await t._flush()
    t.close()
    return dict(t.counters)

snmp = lambda: open("/proc/net/snmp").read().split("Udp:")[2].split()
before = int(snmp()[5])  # SndbufErrors
counters = asyncio.run(main())
print(json.dumps({{"counters": counters, "sndbuf_errors": int(snmp()[5]) - before}}))
"""


@pytest.mark.root
@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2)")
def test_enobufs_from_the_kernel_is_counted_by_reason(lab: Callable[..., Lab]) -> None:
    t = lab(1)
    h = t.hosts[0]
    t.exec(
        h.ns,
        ["ip", "neigh", "replace", DEST, "dev", "eth0", "lladdr", "02:00:00:00:00:77"]
        + ["nud", "permanent"],
    )
    t.exec(h.ns, ["tc", "qdisc", "add", "dev", "eth0", "root", "pfifo", "limit", "0"])
    res = t.exec(h.ns, [sys.executable, "-"], input=SCRIPT)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    c = got["counters"]
    assert c.get("send_error.enobufs") == SENDS, c
    assert c.get("send_error") == SENDS and not c.get("out"), c
    assert got["sndbuf_errors"] == SENDS  # what the kernel counted, and meshd now sees too
