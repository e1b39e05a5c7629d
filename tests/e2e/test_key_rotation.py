"""Key rotation without downtime on a live 4-node mesh: install, use, remove through the control
socket of different nodes; every member follows over gossip and persists its key file; no member
is lost and no container ping is lost."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.gossip.security import Keyring
from meshd.lab import Lab

from .conftest import all_alive, cli, keygen, states, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]


def keys(lab: Lab, name: str) -> list[str]:
    out = cli(lab.daemons[name], "keys", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_rotate_live_mesh(make_lab: Callable[..., Lab], tmp_path: Path, fast_config: Path) -> None:
    lab = make_lab("keyrot", 4)
    key = keygen(tmp_path / "key")
    names = [h.name for h in lab.hosts]
    files = {}
    for h in lab.hosts:  # each host its own key file, like real hosts
        files[h.name] = shutil.copy(key, tmp_path / f"key.{h.name}")
        lab.start_daemon(
            h, key_file=files[h.name], backend="vxlan", extra_args=["--config", str(fast_config)]
        )
    wait_until(all_alive(lab, names), 60, "mesh up", lab)
    wait_until(lambda: all(lab.ping_matrix(count=1, timeout=1).values()), 30, "pings", lab)
    old = keys(lab, "h1")[0]
    seen_states: list[dict[str, str]] = []

    h1, h4 = lab.hosts[0], lab.hosts[3]
    pinger = lab.spawn(
        h1.container_ns,
        ["ping", "-n", "-q", "-i", "0.1", "-w", "20", "-W", "1", h4.container_ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def everywhere(pred: Callable[[list[str]], bool]) -> Callable[[], bool]:
        def check() -> bool:
            seen_states.append(states(lab.daemons["h2"]))
            return all(pred(keys(lab, n)) for n in names)

        return check

    # `meshd keygen | meshd keys install -`: the key never appears on a command line.
    new_key = subprocess.run(
        [sys.executable, "-m", "meshd", "keygen"], capture_output=True, text=True, check=True
    ).stdout
    out = cli(lab.daemons["h1"], "keys", "install", "-", input=new_key).stdout
    new = next(k for k in re.findall(r"^([0-9a-f]{32})", out, re.M) if k != old)
    assert len(new) == 32  # 16-byte key ids
    wait_until(everywhere(lambda ks: ks == [old, new]), 30, "new key installed everywhere", lab)
    cli(lab.daemons["h2"], "keys", "use", new)
    wait_until(everywhere(lambda ks: ks == [new, old]), 30, "new key primary everywhere", lab)
    r = cli(lab.daemons["h3"], "keys", "remove", new, check=False)
    assert r.returncode != 0 and "primary" in r.stderr  # the primary cannot be removed
    cli(lab.daemons["h3"], "keys", "remove", old)
    wait_until(everywhere(lambda ks: ks == [new]), 30, "old key removed everywhere", lab)

    # persisted: every host's key file now holds only the new key
    for n in names:
        assert Keyring.parse(Path(files[n]).read_text()).ids() == [new]
    # nobody was ever lost, and the mesh still works under the new key only
    assert all(set(s.values()) == {"alive"} for s in seen_states if s)
    assert all_alive(lab, names)()
    out_b, _ = pinger.communicate(timeout=40)
    m = re.search(rb"(\d+) packets transmitted, (\d+) received", out_b)
    assert m is not None and m.group(1) == m.group(2), out_b.decode()
    # a node still holding only the old key is now shut out
    st = cli(lab.daemons["h1"], "status", "--json")
    assert st["keys"] == [new]
