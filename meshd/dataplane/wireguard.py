"""WireGuard groundwork: keys, the cross-platform userspace API (UAPI), the desired-vs-current
diff, and starting/finding a ``wireguard-go`` device. The backend itself is not wired yet.

The UAPI (https://www.wireguard.com/xplatform/) is line-based text on a unix stream socket:
``get=1`` answers the device's ``key=value`` lines, ``set=1`` takes them; both end with a blank
line, and every answer ends with ``errno=N``. Keys are hex on the socket (base64 is what ``wg``
prints). ``public_key=`` opens a peer section; everything after it, until the next one, is about
that peer.

Deciding is pure (``diff`` -> ``SetRequest`` -> ``encode_set``); applying is one ``uapi`` call.
One ``set`` carrying only what differs is what we measured against ``wg syncconf`` (see
docs/dataplane.md, "WireGuard (groundwork)").

The key *file* is in ``meshd.keyfile`` (the secure file helpers sit above this layer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from meshd.errors import DataplaneError

KEY_LEN = 32
WG_RUN_DIR = "/run/wireguard"
MAX_REPLY = 64 * 1024 * 1024  # a get=1 of 10,000 peers is ~2.5 MB; bound what we buffer
START_TIMEOUT = 10.0  # wireguard-go's parent exits once the device and socket are up


# --- keys -----------------------------------------------------------------------------------


def generate_private_key() -> bytes:
    """A fresh X25519 private key (32 raw bytes), as ``wg genkey`` makes (clamping is the
    curve's business: cryptography and WireGuard both clamp on use)."""
    # private_bytes_raw() is cryptography >= 40; the package depends on Debian 12's 38
    return X25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private`` (``wg pubkey``)."""
    _check_key(private)
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_to_base64(key: bytes) -> str:
    _check_key(key)
    return base64.b64encode(key).decode()


def key_from_base64(text: str) -> bytes:
    """A key as ``wg`` prints it; a one-line ``DataplaneError`` for anything else."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DataplaneError(f"not a base64 WireGuard key: {text.strip()[:60]!r}") from None
    if len(key) != KEY_LEN:
        raise DataplaneError(f"a WireGuard key is {KEY_LEN} bytes, not {len(key)}")
    return key


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise DataplaneError(f"a WireGuard key is {KEY_LEN} bytes, not {len(key)}")


def _hex_key(value: str, what: str) -> bytes:
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise DataplaneError(f"wireguard get: {what} is not hex: {value[:70]!r}") from None
    if len(key) != KEY_LEN:
        raise DataplaneError(f"wireguard get: {what} is {len(key)} bytes, not {KEY_LEN}")
    return key


# --- the UAPI: data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredPeer:
    """What a peer should be: ``endpoint`` as ``endpoint_of`` words it (None: none known),
    ``allowed_ips`` as networks (normalised by ``allowed_ips_of``)."""

    endpoint: str | None
    allowed_ips: frozenset[str]
    keepalive: int = 0  # persistent_keepalive_interval, seconds; 0 is off


@dataclass(frozen=True)
class PeerState:
    """A peer as ``get=1`` reports it."""

    public_key: bytes
    endpoint: str | None = None
    allowed_ips: frozenset[str] = frozenset()
    keepalive: int = 0
    last_handshake_sec: int = 0  # 0: never
    last_handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class DeviceState:
    """The device as ``get=1`` reports it; ``peers`` by public key."""

    private_key: bytes | None = None
    listen_port: int = 0
    peers: Mapping[bytes, PeerState] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerChange:
    """One peer section of a ``set=1`` request. ``allowed_ips`` are added to the peer's, or
    replace them with ``replace_allowed_ips``."""

    public_key: bytes
    remove: bool = False
    endpoint: str | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[str, ...] = ()
    keepalive: int | None = None


@dataclass(frozen=True)
class SetRequest:
    private_key: bytes | None = None
    listen_port: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerChange, ...] = ()

    @property
    def empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and not self.replace_peers
            and not self.peers
        )


def endpoint_of(host: str, port: int) -> str:
    """``ip:port`` as the UAPI reports it (``[v6]:port`` for IPv6)."""
    addr = ipaddress.ip_address(host)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def allowed_ips_of(*nets: str) -> frozenset[str]:
    """Networks normalised as the UAPI reports them (``10.244.1.0/24``, a bare address /32)."""
    try:
        return frozenset(str(ipaddress.ip_network(n, strict=False)) for n in nets)
    except ValueError as exc:
        raise DataplaneError(f"allowed IP: {exc}") from None


# --- the UAPI: text ---------------------------------------------------------------------------


def encode_set(req: SetRequest) -> str:
    """The ``set=1`` request text, blank line included."""
    lines = ["set=1"]
    if req.private_key is not None:
        _check_key(req.private_key)
        lines.append(f"private_key={req.private_key.hex()}")
    if req.listen_port is not None:
        lines.append(f"listen_port={req.listen_port}")
    if req.replace_peers:
        lines.append("replace_peers=true")
    for p in req.peers:
        _check_key(p.public_key)
        lines.append(f"public_key={p.public_key.hex()}")
        if p.remove:
            lines.append("remove=true")
            continue
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        if p.keepalive is not None:
            lines.append(f"persistent_keepalive_interval={p.keepalive}")
        if p.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={ip}" for ip in p.allowed_ips]
    return "\n".join(lines) + "\n\n"


def check_errno(reply: str, what: str) -> None:
    """Raise a one-line ``DataplaneError`` unless the answer ends with ``errno=0``."""
    last = reply.rstrip("\n").rsplit("\n", 1)[-1]
    key, _, value = last.partition("=")
    if key != "errno":
        raise DataplaneError(f"wireguard {what}: no errno in the answer ({last[:60]!r})")
    try:
        n = int(value)
    except ValueError:
        raise DataplaneError(f"wireguard {what}: errno {value[:20]!r} is not a number") from None
    if n:
        # wireguard-go answers a negated errno (-EINVAL), the kernel's tools a positive one
        raise DataplaneError(f"wireguard {what}: {os.strerror(abs(n))} (errno={n})", abs(n))


def parse_get(reply: str) -> DeviceState:
    """The device described by a ``get=1`` answer (its ``errno`` checked first)."""
    check_errno(reply, "get")
    private: bytes | None = None
    port = 0
    peers: dict[bytes, PeerState] = {}
    cur: dict[str, object] | None = None

    ips: list[str] = []

    def close() -> None:
        if cur is not None:
            cur["allowed_ips"] = frozenset(ips)
            peers[cur["public_key"]] = PeerState(**cur)  # type: ignore[arg-type,index]

    for line in reply.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DataplaneError(f"wireguard get: not key=value: {line[:70]!r}")
        try:
            if key == "public_key":
                close()
                cur, ips = {"public_key": _hex_key(value, "public_key")}, []
            elif key == "private_key":
                private = _hex_key(value, "private_key")
            elif key == "listen_port":
                port = int(value)
            elif cur is None:
                continue  # fwmark, errno and device keys we do not use
            elif key == "endpoint":
                cur["endpoint"] = value
            elif key == "allowed_ip":
                # taken as written: the device prints networks canonically, and normalising
                # each through ipaddress was 90% of a 1,000-peer read; a spelling that still
                # differs costs one needless replace_allowed_ips, never a wrong state
                ips.append(value)
            elif key == "persistent_keepalive_interval":
                cur["keepalive"] = int(value)
            elif key in ("rx_bytes", "tx_bytes", "last_handshake_time_sec"):
                cur[key.replace("_time", "")] = int(value)
            elif key == "last_handshake_time_nsec":
                cur["last_handshake_nsec"] = int(value)
        except ValueError:
            raise DataplaneError(f"wireguard get: bad {key}: {value[:40]!r}") from None
    close()
    return DeviceState(private_key=private, listen_port=port, peers=peers)


# --- deciding ---------------------------------------------------------------------------------


def diff(
    desired: Mapping[bytes, DesiredPeer],
    current: DeviceState,
    private_key: bytes | None = None,
    listen_port: int | None = None,
) -> SetRequest:
    """The smallest ``set`` that turns ``current`` into ``desired``: peers not desired removed,
    new peers added whole, and of the others only the fields that differ (their allowed IPs
    replaced only when the set differs). An empty request when nothing does."""
    changes: list[PeerChange] = []
    for key in sorted(current.peers.keys() - desired.keys()):
        changes.append(PeerChange(key, remove=True))
    for key in sorted(desired):
        want = desired[key]
        have = current.peers.get(key)
        if have is None:
            changes.append(
                PeerChange(
                    key,
                    endpoint=want.endpoint,
                    replace_allowed_ips=True,
                    allowed_ips=tuple(sorted(want.allowed_ips)),
                    keepalive=want.keepalive or None,
                )
            )
            continue
        endpoint = want.endpoint if want.endpoint and want.endpoint != have.endpoint else None
        ips = want.allowed_ips != have.allowed_ips
        keepalive = want.keepalive if want.keepalive != have.keepalive else None
        if endpoint is not None or ips or keepalive is not None:
            changes.append(
                PeerChange(
                    key,
                    endpoint=endpoint,
                    replace_allowed_ips=ips,
                    allowed_ips=tuple(sorted(want.allowed_ips)) if ips else (),
                    keepalive=keepalive,
                )
            )
    return SetRequest(
        private_key=private_key if private_key != current.private_key else None,
        listen_port=listen_port if listen_port != current.listen_port else None,
        peers=tuple(changes),
    )


# --- applying ---------------------------------------------------------------------------------


async def uapi(sock_path: Path, request: str, timeout: float = 10.0) -> str:
    """Send one request, return the answer up to its blank line (errno not judged: see
    ``check_errno``). Socket errors are one-line ``DataplaneError``s."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(sock_path), limit=MAX_REPLY)
            try:
                writer.write(request.encode())
                await writer.drain()
                data = await reader.readuntil(b"\n\n")
            finally:
                writer.close()
    except TimeoutError:
        raise DataplaneError(f"wireguard {sock_path}: no answer in {timeout:g} s") from None
    except asyncio.IncompleteReadError:
        raise DataplaneError(f"wireguard {sock_path}: connection closed mid-answer") from None
    except asyncio.LimitOverrunError:
        raise DataplaneError(f"wireguard {sock_path}: answer over {MAX_REPLY} bytes") from None
    except OSError as exc:
        raise DataplaneError(f"wireguard {sock_path}: {exc.strerror or exc}", exc.errno) from None
    return data.decode(errors="replace")


async def get_device(sock_path: Path) -> DeviceState:
    return parse_get(await uapi(sock_path, "get=1\n\n"))


async def set_device(sock_path: Path, req: SetRequest) -> None:
    """Apply ``req`` (nothing is sent for an empty one)."""
    if not req.empty:
        check_errno(await uapi(sock_path, encode_set(req)), "set")


# --- the wireguard-go device ------------------------------------------------------------------


@dataclass(frozen=True)
class UserspaceDevice:
    pid: int
    sock_path: Path  # reachable from any mount namespace: through /proc/<pid>/root


def find_device(name: str, netns: str | None = None) -> UserspaceDevice | None:
    """The running ``wireguard-go NAME`` whose network namespace is ``netns`` (a name under
    /run/netns or a path; None: this process's), with its UAPI socket, or None."""
    try:
        want = os.stat(_netns_path(netns) if netns else "/proc/self/ns/net").st_ino
    except OSError:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")[:-1]
            if (
                len(argv) < 2
                or os.path.basename(argv[0]) != b"wireguard-go"
                or argv[-1] != name.encode()
                or os.stat(f"/proc/{entry.name}/ns/net").st_ino != want
            ):
                continue
        except OSError:  # gone, or not ours to look at
            continue
        sock = Path(f"/proc/{entry.name}/root{WG_RUN_DIR}/{name}.sock")
        if sock.exists():
            return UserspaceDevice(int(entry.name), sock)
    return None


def start_device(name: str, netns: str | None = None, private_run: bool = False) -> UserspaceDevice:
    """Start ``wireguard-go NAME`` (it daemonizes once the device and its socket exist), inside
    the named network namespace ``netns`` when given, and with ``private_run`` in a mount
    namespace of its own with a fresh tmpfs on /run/wireguard: every host of a lab shares one
    filesystem, and a second ``meshd.wg`` socket there would fail with "unix socket in use"."""
    inner = f"exec wireguard-go {shlex.quote(name)}"
    if private_run:
        inner = (
            f"mkdir -p {WG_RUN_DIR} && mount -t tmpfs -o mode=0700 meshd-wg {WG_RUN_DIR} && {inner}"
        )
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
    else:
        cmd = ["sh", "-c", inner]
    if netns is not None:
        cmd = ["nsenter", f"--net={_netns_path(netns)}", *cmd]
    try:
        run = subprocess.run(
            cmd, capture_output=True, text=True, timeout=START_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataplaneError(f"wireguard-go {name}: {exc}") from None
    if run.returncode != 0:
        why = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        raise DataplaneError(f"wireguard-go {name}: {why}")
    dev = find_device(name, netns)
    if dev is None:
        raise DataplaneError(f"wireguard-go {name}: started, but no process with its socket")
    return dev


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else f"/run/netns/{netns}"
