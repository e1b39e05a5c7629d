"""meshd's WireGuard device: which implementation runs it, and how it is read and configured.

Two implementations, chosen when the device is created and recognised when it is adopted:

* **kernel**: ``ip link add meshd.wg type wireguard`` through netlink; where the module is
  missing the kernel answers EOPNOTSUPP. It is read and configured with ``wg`` (wireguard-tools):
  ``wg show meshd.wg dump`` and ``wg set``, run in the device's network namespace.
* **wireguard-go**: the userspace implementation, started in the device's network namespace as
  ``wireguard-go meshd.wg``. It daemonizes and outlives meshd, so a restart finds the process
  (``wireguard.find_device``) and adopts the device without a gap. It is read and configured
  over its UAPI socket directly: one ``get=1`` and at most one ``set=1`` per pass.

``wg`` speaks both (netlink to the kernel, the UAPI socket to wireguard-go), which is how the
kernel path is tested on kernels without the module: the tests drive ``WgTool`` against a
wireguard-go device and compare it with the UAPI path.

Why UAPI/``wg set`` with only the differences rather than ``wg syncconf``: measured at 1,000 peers
(benchmarks/bench_wireguard.py, docs/performance.md) one ``set`` of the differences costs what
``wg syncconf`` costs (140 vs 137 ms to add all, 30 vs 25 ms when nothing changed) while needing
no configuration file, and the diff is computed by the same model as every other backend's.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshd.dataplane import wireguard as wg
from meshd.dataplane.objects import DeviceSpec, WgPeer
from meshd.errors import DataplaneError, MissingKernelFeature

KERNEL = "kernel"
USERSPACE = "wireguard-go"
TOOL_TIMEOUT = 20.0


class LinkOps(Protocol):
    """The netlink calls creating the device needs (``netlink.Netlink`` has them)."""

    async def create_link(
        self, name: str, kind: str, mtu: int | None, mac: str | None, params: Sequence[Any]
    ) -> int: ...


@dataclass(frozen=True)
class Snapshot:
    """The device as last read: its implementation and WireGuard state."""

    implementation: str
    state: wg.DeviceState
    pid: int | None = None


def peers_of(state: wg.DeviceState) -> dict[str, WgPeer]:
    """The device's peers as the model's objects, by base64 public key."""
    out: dict[str, WgPeer] = {}
    for key, p in state.peers.items():
        k = wg.key_to_base64(key)
        out[k] = WgPeer(k, p.endpoint or "", tuple(sorted(p.allowed_ips)))
    return out


def params_of(state: wg.DeviceState) -> dict[str, Any]:
    """What the model compares with the device spec's params."""
    pub = wg.key_to_base64(wg.public_key(state.private_key)) if state.private_key else ""
    return {"listen_port": state.listen_port, "public_key": pub}


def _changes(peers: Sequence[WgPeer]) -> tuple[wg.PeerChange, ...]:
    return tuple(
        wg.PeerChange(
            wg.key_from_base64(p.public_key),
            endpoint=p.endpoint or None,
            replace_allowed_ips=True,
            allowed_ips=p.allowed_ips,
        )
        for p in peers
    )


def _removals(peers: Sequence[WgPeer]) -> tuple[wg.PeerChange, ...]:
    return tuple(wg.PeerChange(wg.key_from_base64(p.public_key), remove=True) for p in peers)


# --- the kernel's device, through wg(8) -------------------------------------------------------


class WgTool:
    """``wg show NAME dump`` and ``wg set NAME ...``, in network namespace ``netns``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _argv(self, *args: str) -> list[str]:
        argv = ["wg", *args]
        if self.netns is not None:
            path = self.netns if "/" in self.netns else f"/run/netns/{self.netns}"
            argv = ["nsenter", f"--net={path}", *argv]
        return argv

    async def _run(self, args: Sequence[str], stdin: str | None = None) -> str:
        argv = self._argv(*args)
        try:
            run = await asyncio.to_thread(
                subprocess.run,
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise DataplaneError("wg: not installed (apt install wireguard-tools)") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneError(f"wg {args[0]}: {exc}") from None
        if run.returncode != 0:
            why = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
            raise DataplaneError(f"wg {' '.join(args[:2])}: {why}")
        return run.stdout

    async def get(self, name: str) -> wg.DeviceState:
        return parse_dump(await self._run(["show", name, "dump"]))

    async def set(self, name: str, req: wg.SetRequest) -> None:
        if req.empty:
            return
        args, stdin = set_argv(name, req)
        await self._run(args, stdin)


def parse_dump(text: str) -> wg.DeviceState:
    """``wg show NAME dump``: the interface line, then one tab-separated line per peer."""
    lines = [ln for ln in text.split("\n") if ln]
    if not lines:
        raise DataplaneError("wg show dump: empty answer")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise DataplaneError(f"wg show dump: not an interface line: {lines[0][:70]!r}")
    private = None if head[0] == "(none)" else wg.key_from_base64(head[0])
    peers: dict[bytes, wg.PeerState] = {}
    for ln in lines[1:]:
        f = ln.split("\t")
        if len(f) != 8:
            raise DataplaneError(f"wg show dump: not a peer line: {ln[:70]!r}")
        try:
            key = wg.key_from_base64(f[0])
            peers[key] = wg.PeerState(
                public_key=key,
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=frozenset() if f[3] == "(none)" else frozenset(f[3].split(",")),
                last_handshake_sec=int(f[4]),
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                keepalive=0 if f[7] == "off" else int(f[7]),
            )
        except ValueError:
            raise DataplaneError(f"wg show dump: bad peer line: {ln[:70]!r}") from None
    try:
        port = int(head[2])
    except ValueError:
        raise DataplaneError(f"wg show dump: bad listen port {head[2][:20]!r}") from None
    return wg.DeviceState(private_key=private, listen_port=port, peers=peers)


def set_argv(name: str, req: wg.SetRequest) -> tuple[list[str], str | None]:
    """``wg set`` arguments for ``req``, and the private key for its stdin (never in argv)."""
    args = ["set", name]
    stdin = None
    if req.listen_port is not None:
        args += ["listen-port", str(req.listen_port)]
    if req.private_key is not None:
        args += ["private-key", "/dev/stdin"]
        stdin = wg.key_to_base64(req.private_key) + "\n"
    for p in req.peers:
        args += ["peer", wg.key_to_base64(p.public_key)]
        if p.remove:
            args.append("remove")
            continue
        if p.endpoint is not None:
            args += ["endpoint", p.endpoint]
        if p.keepalive is not None:
            args += ["persistent-keepalive", str(p.keepalive) if p.keepalive else "off"]
        if p.replace_allowed_ips or p.allowed_ips:
            # wg set replaces a peer's allowed IPs with the list given
            args += ["allowed-ips", ",".join(p.allowed_ips)]
    return args, stdin


# --- the device, whichever implementation -----------------------------------------------------


class WireGuardDevices:
    """Creates, recognises, reads and configures meshd's WireGuard device in ``netns``.

    ``private_key``: this node's (``keyfile.load_or_create_wireguard_key``). ``implementation``
    and ``why`` say what runs the device, for ``status``. ``private_run``: start wireguard-go
    with a /run/wireguard of its own (tests driving several hosts from one process)."""

    def __init__(
        self, private_key: bytes, netns: str | None = None, private_run: bool = False
    ) -> None:
        wg.public_key(private_key)  # checks the length
        self._private = private_key
        self.public_key = wg.public_key(private_key)
        self.netns = netns
        self.private_run = private_run
        self.implementation: str | None = None
        self.why = "no device yet"
        self.pid: int | None = None
        self.last: Snapshot | None = None
        self._tool = WgTool(netns)

    async def create(self, nl: LinkOps, spec: DeviceSpec) -> None:
        """Kernel WireGuard if the module is there, else start wireguard-go."""
        try:
            await nl.create_link(spec.name, "wireguard", spec.mtu, None, ())
        except MissingKernelFeature as exc:
            if shutil.which("wireguard-go") is None:
                raise MissingKernelFeature(
                    f"{exc}; and wireguard-go is not installed (apt install wireguard-go)",
                    exc.errno,
                ) from None
            dev = await asyncio.to_thread(wg.start_device, spec.name, self.netns, self.private_run)
            self.implementation, self.pid = USERSPACE, dev.pid
            self.why = f"started wireguard-go (pid {dev.pid}): the kernel has no wireguard module"
            return
        self.implementation, self.pid = KERNEL, None
        self.why = "the kernel's wireguard module"

    async def read(self, name: str, kind: str) -> Snapshot | None:
        """The device ``name`` whose link kind is ``kind``, read; None when it is not one
        meshd can talk to (a tun device no wireguard-go process holds)."""
        if kind == "wireguard":
            snap = Snapshot(KERNEL, await self._tool.get(name))
            if self.implementation != KERNEL:
                self.implementation, self.pid = KERNEL, None
                self.why = "the kernel's wireguard module (device found at start)"
        elif kind == "tun":
            dev = await asyncio.to_thread(wg.find_device, name, self.netns)
            if dev is None:
                self.last = None
                return None
            snap = Snapshot(USERSPACE, await wg.get_device(dev.sock_path), dev.pid)
            if self.implementation != USERSPACE or self.pid != dev.pid:
                if self.implementation is None:
                    self.why = f"adopted the running wireguard-go (pid {dev.pid})"
                self.implementation, self.pid = USERSPACE, dev.pid
        else:
            self.last = None
            return None
        self.last = snap
        return snap

    async def _set(self, name: str, req: wg.SetRequest) -> None:
        if self.implementation == USERSPACE:
            dev = await asyncio.to_thread(wg.find_device, name, self.netns)
            if dev is None:
                raise DataplaneError(f"wireguard-go {name}: no process holds the device")
            await wg.set_device(dev.sock_path, req)
        else:
            await self._tool.set(name, req)

    async def configure(self, name: str, listen_port: int) -> None:
        """This node's private key and the listen port."""
        await self._set(name, wg.SetRequest(private_key=self._private, listen_port=listen_port))

    async def set_peers(self, name: str, peers: Sequence[WgPeer]) -> None:
        """Add ``peers``, or set their endpoint and allowed IPs (replaced) in place."""
        await self._set(name, wg.SetRequest(peers=_changes(peers)))

    async def remove_peers(self, name: str, peers: Sequence[WgPeer]) -> None:
        await self._set(name, wg.SetRequest(peers=_removals(peers)))

    def status(self) -> dict[str, Any]:
        snap = self.last
        out: dict[str, Any] = {
            "implementation": self.implementation,
            "why": self.why,
            "pid": self.pid,
            "public_key": wg.key_to_base64(self.public_key),
            "listen_port": snap.state.listen_port if snap else None,
            "peers": len(snap.state.peers) if snap else 0,
        }
        if snap is not None:
            out["handshakes"] = sum(1 for p in snap.state.peers.values() if p.last_handshake_sec)
        return out

    def handshakes(self) -> dict[str, int]:
        """Base64 public key -> unix seconds of the peer's latest handshake (0: never)."""
        snap = self.last
        if snap is None:
            return {}
        return {wg.key_to_base64(k): p.last_handshake_sec for k, p in snap.state.peers.items()}
