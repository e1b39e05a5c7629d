"""Control-socket roles with real credentials: forked clients drop to another uid and groups
(root is needed to do that, nothing else: no namespaces, no kernel state), and connect to a
server socket made the way the shipped unit makes it (umask 0077, no chown)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.control.client import request
from meshd.control.protocol import READ_ONLY
from meshd.control.server import ControlServer
from meshd.errors import ControlError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid and groups")

GROUP = 4242  # the control group: a gid, which need not be in /etc/group for SO_PEERGROUPS
NOBODY = 65534
CMDS = (
    "peers", "status", "keys.list", "doctor", "leave", "update", "keys.install", "keys.use",
    "crl.x",
)  # fmt: skip


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="meshd-roles-"))
    os.chmod(d, 0o755)  # the clients must reach the socket's directory
    try:
        yield d
    finally:
        shutil.rmtree(d)


def as_user(path: Path, uid: int, gid: int, groups: list[int]) -> dict[str, str]:
    """Run every command of CMDS from a forked child with these credentials; ``{cmd: "ok" |
    error line}``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, ask, report, exit without cleanup
        out: dict[str, str] = {}
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            for cmd in CMDS:
                try:
                    request(path, cmd, timeout=10)
                    out[cmd] = "ok"
                except ControlError as exc:
                    out[cmd] = str(exc)
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            out["child"] = repr(exc)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    got: dict[str, str] = json.loads(data)
    return got


def serve(path: Path, group: int | None, body: Any) -> None:
    async def handler(req: dict[str, Any]) -> str:
        return str(req["cmd"])

    async def main() -> None:
        old = os.umask(0o077)  # as under the unit's UMask=0077
        try:
            srv = ControlServer(path, {c: handler for c in CMDS}, group=group)
            await srv.start()
        finally:
            os.umask(old)
        try:
            await asyncio.get_running_loop().run_in_executor(None, body, srv)
        finally:
            await srv.close()

    asyncio.run(main())


def test_group_members_read_root_changes_outsiders_get_nothing(sockdir: Path) -> None:
    path = sockdir / "run" / "control.sock"

    def body(srv: ControlServer) -> None:
        # No chown anywhere (the unit has no CAP_CHOWN): the file is root's, 0666, in a
        # directory everyone may traverse whatever the umask.
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o666)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755

        root = as_user(path, 0, 0, [])
        assert root == {c: "ok" for c in CMDS}

        for groups, gid in (([GROUP], NOBODY), ([], GROUP), ([7, GROUP, 9], NOBODY)):
            member = as_user(path, NOBODY, gid, groups)
            assert {c for c, v in member.items() if v == "ok"} == set(READ_ONLY), member
            for cmd in set(CMDS) - READ_ONLY:
                assert member[cmd].startswith(f"permission denied: {cmd} needs root"), member
                assert "\n" not in member[cmd]

        outsider = as_user(path, NOBODY, NOBODY, [GROUP + 1])
        assert set(outsider.values()) == {
            f"permission denied: uid {NOBODY} is neither root nor in the control group "
            "(control_group)"
        }, outsider
        assert srv.refused["outsider"] == len(CMDS)
        assert srv.refused["not_root"] == 3 * len(set(CMDS) - READ_ONLY)

    serve(path, GROUP, body)


def test_without_a_group_the_socket_is_root_only(sockdir: Path) -> None:
    path = sockdir / "control.sock"

    def body(srv: ControlServer) -> None:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert as_user(path, 0, 0, [])["leave"] == "ok"
        # The file mode stops others before the server sees them; a member of a group the
        # daemon was not told about is nobody special.
        got = as_user(path, NOBODY, GROUP, [GROUP])
        assert set(got.values()) == {f"permission denied on {path} (run as root)"}, got
        assert srv.refused["outsider"] == 0

    serve(path, None, body)


def test_connections_past_the_cap_are_told_busy(sockdir: Path) -> None:
    path = sockdir / "control.sock"

    async def main() -> None:
        async def handler(req: dict[str, Any]) -> str:
            return "ok"

        srv = ControlServer(path, {"peers": handler}, max_connections=2)
        await srv.start()
        held = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
        try:
            await asyncio.sleep(0)  # let the server accept both
            loop = asyncio.get_running_loop()
            with pytest.raises(ControlError, match="^control socket busy; try again$"):
                await loop.run_in_executor(None, lambda: request(path, "peers", timeout=10))
            assert srv.refused["busy"] == 1
        finally:
            for _, w in held:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
        # Freed: served again.
        loop = asyncio.get_running_loop()
        for _ in range(100):
            try:
                assert await loop.run_in_executor(None, lambda: request(path, "peers")) == "ok"
                break
            except ControlError:
                await asyncio.sleep(0.01)  # the held connections are still being closed
        else:
            raise AssertionError("never served after the held connections closed")
        await srv.close()

    asyncio.run(main())
