"""`meshd ca`, `meshd cert`, `meshd crl` as a user runs them (subprocesses), what openssl reads in
their files, and the one-line errors."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meshd import cli
from meshd.control import format as fmt
from meshd.control.protocol import CRL_INSTALL, CrlInstall, CrlReply
from meshd.errors import ControlError

NET = "10.244.0.0/16"


def meshd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in this process (a subprocess per call would cost ~0.4 s of imports); an
    exception that escaped the CLI shows up as a traceback in stderr, as it would for a user."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback: " + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def test_a_real_process() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "cert", "show", "/nonexistent.crt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(r, "no certificate at /nonexistent.crt")


def ok(*args: str | Path) -> str:
    r = meshd(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("meshd: error: ") and needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def pkidir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, n1 (fresh key, fixed subnet), n2 (request flow, pool), n1 revoked."""
    d = tmp_path_factory.mktemp("pki")
    ok("ca", "init", d / "ca", "--network", NET, "--name", "test CA")
    ok("ca", "sign", d / "ca", "--name", "n1", "--public-ip", "192.0.2.1",
       "--subnet", "10.244.1.0/24", "--out", d / "n1")  # fmt: skip
    ok("cert", "request", "--name", "n2", "--public-ip", "192.0.2.2", "--out", d / "n2")
    ok("ca", "sign", d / "ca", "--csr", d / "n2.csr", "--network", NET, "--subnet-len", "26",
       "--out", d / "n2")  # fmt: skip
    return d


def test_files_and_modes(pkidir: Path) -> None:
    mode = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in [*pkidir.iterdir(), *(pkidir / "ca").iterdir()]
    }
    assert mode["ca.key"] == mode["n1.key"] == mode["n2.key"] == 0o600
    assert mode["ca.crt"] == mode["n1.crt"] == mode["n2.crt"] == 0o644
    assert len(list((pkidir / "ca" / "issued").glob("*.crt"))) == 2


def test_cert_show(pkidir: Path) -> None:
    out = ok("cert", "show", pkidir / "n1.crt")
    assert "name:" in out and "n1" in out and "192.0.2.1" in out and "10.244.1.0/24" in out
    assert "SHA256:" in out and "expired:       no" in out
    shown = json.loads(ok("cert", "show", pkidir / "n2.crt", "--json"))
    assert shown["name"] == "n2" and shown["public_ip"] == "192.0.2.2"
    assert shown["grant"] == "pool=10.244.0.0/16;len=26" and shown["issuer"] == "test CA"
    assert shown["expired"] is False and shown["kind"] == "node"
    ca = json.loads(ok("cert", "show", pkidir / "ca" / "ca.crt", "--json"))
    assert (ca["kind"], ca["name"], ca["network"]) == ("ca", "test CA", NET)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_reads_them(pkidir: Path, tmp_path: Path) -> None:
    def openssl(*args: str | Path) -> str:
        r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    text = openssl("x509", "-text", "-noout", "-in", pkidir / "n1.crt")
    assert "CN = n1" in text and "IP Address:192.0.2.1" in text
    assert "URI:meshd:subnet=10.244.1.0/24" in text and "ED25519" in text
    ca_text = openssl("x509", "-text", "-noout", "-in", pkidir / "ca" / "ca.crt")
    assert "CA:TRUE" in ca_text and "URI:meshd:network=10.244.0.0/16" in ca_text
    assert "Certificate Sign, CRL Sign" in ca_text
    assert (
        openssl("verify", "-CAfile", pkidir / "ca" / "ca.crt", pkidir / "n2.crt")
        .strip()
        .endswith("OK")
    )
    assert "Certificate Request" in openssl(
        "req", "-text", "-noout", "-verify", "-in", pkidir / "n2.csr"
    )

    d = tmp_path / "ca"
    shutil.copytree(pkidir / "ca", d)
    serial = json.loads(ok("cert", "show", pkidir / "n1.crt", "--json"))["serial"]
    out = ok("ca", "revoke", d, "n1")
    assert f"revoked n1: serial {serial}" in out and "CRL number 1" in out
    crl = openssl("crl", "-text", "-noout", "-in", d / "crl", "-CAfile", d / "ca.crt")
    assert "CN = test CA" in crl and serial.upper() in crl.replace(":", "")
    assert "X509v3 CRL Number" in crl


def test_revoke_and_crl_show(pkidir: Path, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    shutil.copytree(pkidir / "ca", d)
    ok("ca", "revoke", d, "n1", "--days", "7")
    out = ok("ca", "revoke", d, "n2")
    assert "CRL number 2, 2 serial(s)" in out
    shown = json.loads(ok("crl", "show", d / "crl", "--ca", d / "ca.crt", "--json"))
    assert shown["number"] == 2 and shown["verified"] is True and len(shown["revoked"]) == 2
    text = ok("crl", "show", d / "crl")
    assert "number:" in text and "verified:    no" in text


class FakeDaemon:
    """A control socket answering one crl.install, remembering the request."""

    def __init__(self, path: Path, reply: dict[str, Any]) -> None:
        self.path, self.reply = path, reply
        self.request: dict[str, Any] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(65536)
            self.request = json.loads(data)
            conn.sendall(json.dumps(self.reply).encode())
        self.sock.close()


def test_crl_install_sends_the_pem(pkidir: Path, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    shutil.copytree(pkidir / "ca", d)
    ok("ca", "revoke", d, "n1")
    reply: CrlReply = {"number": 1, "issuer": "test CA", "revoked": ["ab"], "installed": True}
    daemon = FakeDaemon(tmp_path / "ctl.sock", {"ok": True, "result": reply})
    out = ok("crl", "install", d / "crl", "--socket", tmp_path / "ctl.sock")
    daemon.thread.join(timeout=30)
    assert daemon.request == {"cmd": CRL_INSTALL, "crl": (d / "crl").read_text()}
    assert CrlInstall.parse(daemon.request).crl == (d / "crl").read_text()
    assert out.strip() == fmt.crl_install(reply)
    assert "CRL 1 from 'test CA' installed; revoked serials: ab" in out


def test_crl_install_daemon_refuses(pkidir: Path, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    shutil.copytree(pkidir / "ca", d)
    ok("ca", "revoke", d, "n1")
    FakeDaemon(tmp_path / "ctl.sock", {"ok": False, "error": "crl: not signed by a trusted CA"})
    r = meshd("crl", "install", d / "crl", "--socket", tmp_path / "ctl.sock")
    one_line_error(r, "not signed by a trusted CA")


def test_crl_install_protocol_parse() -> None:
    with pytest.raises(ControlError, match="PEM CRL"):
        CrlInstall.parse({"crl": 5})
    with pytest.raises(ControlError, match="PEM CRL"):
        CrlInstall.parse({"crl": "-----BEGIN CERTIFICATE-----"})
    with pytest.raises(ControlError, match="more than"):
        CrlInstall.parse({"crl": "-----BEGIN X509 CRL-----" + "A" * 40000})
    assert "already in force" in fmt.crl_install(
        {"number": 3, "issuer": "x", "revoked": [], "installed": False}
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ca", "init", "{d}/new", "--network", "10.244.0.1/16"], "host bits"),
        (["ca", "init", "{d}/new", "--network", "127.0.0.0/8"], "special-purpose"),
        (["ca", "init", "{d}/ca", "--network", NET], "refusing to overwrite a CA"),
        (["ca", "sign", "{d}/nowhere", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "10.244.9.0/24", "--out", "{d}/x"], "meshd ca init"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "10.245.9.0/24", "--out", "{d}/x"], "outside the CA's network"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "bad", "--out", "{d}/x"], "subnet 'bad'"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "255.255.255.255",
          "--subnet", "10.244.9.0/24", "--out", "{d}/x"], "not a unicast"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--out", "{d}/x"], "exactly one of --subnet"),
        (["ca", "sign", "{d}/ca", "--subnet", "10.244.9.0/24", "--out", "{d}/x"],
         "--name and --public-ip"),
        (["ca", "sign", "{d}/ca", "--name", "n1", "--public-ip", "192.0.2.1",
          "--subnet", "10.244.1.0/24", "--out", "{d}/n1"], "exists"),
        (["ca", "sign", "{d}/ca", "--csr", "{d}/missing.csr", "--subnet", "10.244.9.0/24",
          "--out", "{d}/x"], "no signing request"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "10.244.9.0/24", "--days", "0", "--out", "{d}/x"], "--days 0"),
        (["ca", "revoke", "{d}/ca", "ghost"], "no certificate to 'ghost'"),
        (["cert", "request", "--name", "x", "--public-ip", "::", "--out", "{d}/r"], "unicast"),
        (["cert", "show", "{d}/missing.crt"], "no certificate at"),
        (["cert", "show", "{d}/n1.key"], "no CERTIFICATE block"),
        (["crl", "show", "{d}/n1.crt"], "no X509 CRL block"),
        (["crl", "install", "{d}/missing", "--socket", "{d}/nosock"], "no CRL at"),
        (["ca", "init", "{d}/new", "--network", NET, "--network", "10.245.0.0/16"],
         "two IPv4 values"),
        (["ca", "init", "{d}/new", "--network", "fe80::/10"], "special-purpose"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "10.244.9.0/24", "--subnet", "fd00::/64", "--out", "{d}/x"],
         "outside the CA's network"),  # this CA has no IPv6 network
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--public-ip", "192.0.2.10", "--subnet", "10.244.9.0/24", "--out", "{d}/x"],
         "two IPv4 values"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "10.244.9.0/24", "--network", NET, "--out", "{d}/x"],
         "exactly one of --subnet CIDR and --network CIDR per IP family"),
        (["ca", "sign", "{d}/ca", "--name", "x", "--public-ip", "192.0.2.9",
          "--subnet", "10.244.9.0/24", "--subnet-len6", "64", "--out", "{d}/x"],
         "--subnet-len6 goes with --network"),
    ],
)  # fmt: skip
def test_bad_input_one_line(pkidir: Path, args: list[str], needle: str) -> None:
    one_line_error(meshd(*[a.format(d=pkidir) for a in args]), needle)


def test_crl_install_without_daemon(pkidir: Path, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    shutil.copytree(pkidir / "ca", d)
    ok("ca", "revoke", d, "n1")
    one_line_error(meshd("crl", "install", d / "crl", "--socket", tmp_path / "none"), "no meshd")


def test_too_open_ca_key(pkidir: Path, tmp_path: Path) -> None:
    d = tmp_path / "ca"
    shutil.copytree(pkidir / "ca", d)
    (d / "ca.key").chmod(0o644)
    r = meshd("ca", "sign", d, "--name", "x", "--public-ip", "192.0.2.9", "--subnet",
              "10.244.9.0/24", "--out", tmp_path / "x")  # fmt: skip
    one_line_error(r, "chmod 600")
    assert r.returncode == 78


def test_a_dual_stack_ca_and_certificate(tmp_path: Path) -> None:
    net6 = "fd00:10:244::/48"
    ok("ca", "init", tmp_path / "ca", "--network", net6, "--network", NET)
    out = ok("ca", "sign", tmp_path / "ca", "--name", "n1", "--public-ip", "fd00:99::1",
             "--public-ip", "192.0.2.1", "--subnet", "10.244.1.0/24", "--network", net6,
             "--out", tmp_path / "n1")  # fmt: skip
    assert f"n1: 192.0.2.1 and fd00:99::1, subnet 10.244.1.0/24 and any /64 in {net6}" in out
    shown = json.loads(ok("cert", "show", tmp_path / "n1.crt", "--json"))
    assert (shown["public_ip"], shown["public_ip6"]) == ("192.0.2.1", "fd00:99::1")
    assert shown["grant"] == f"subnet=10.244.1.0/24;pool6={net6};len6=64"
    ca = json.loads(ok("cert", "show", tmp_path / "ca" / "ca.crt", "--json"))
    assert (ca["network"], ca["network6"]) == (NET, net6)
    assert ca["grant"] == f"network={NET};network6={net6}"
    # The request flow carries both addresses; the CA operator grants per family.
    ok("cert", "request", "--name", "n2", "--public-ip", "192.0.2.2", "--public-ip",
       "fd00:99::2", "--out", tmp_path / "n2")  # fmt: skip
    ok("ca", "sign", tmp_path / "ca", "--csr", tmp_path / "n2.csr", "--network", NET,
       "--network", net6, "--subnet-len6", "80", "--out", tmp_path / "n2")  # fmt: skip
    n2 = json.loads(ok("cert", "show", tmp_path / "n2.crt", "--json"))
    assert (n2["public_ip"], n2["public_ip6"]) == ("192.0.2.2", "fd00:99::2")
    assert n2["grant"] == f"pool={NET};len=24;pool6={net6};len6=80"
