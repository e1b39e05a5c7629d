"""The `meshd` command line: parses, calls, formats and exits. It reaches the daemon only through
the control socket, so `meshd peers` needs neither root nor the daemon's imports."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meshd import __version__
from meshd.config import DEFAULT_CONFIG, Config, build, last_per_family, load_file
from meshd.control import client
from meshd.control import format as fmt
from meshd.dataplane import backends
from meshd.errors import ConfigError, KeyFileError, MeshdError

_BACKEND_HELP = f"One of {', '.join(backends.names())} (the backends registry)."

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="meshd: a gossip-driven container network mesh (host-gw, ipip, vxlan).",
)
F = TypeVar("F", bound=Callable[..., Any])
EX_CONFIG = 78
DEFAULT_SOCKET: Path = Config().socket
# readable=False: whether we may use the socket is the control client's (and daemon's) call,
# with a clearer message than click's "is not readable".
SocketOpt = Annotated[
    Path, typer.Option("--socket", help="Control socket of the daemon.", readable=False)
]


def fail(msg: str, code: int = 1) -> None:
    typer.echo(f"meshd: error: {msg}", err=True)
    raise typer.Exit(code)


def friendly(fn: F) -> F:
    """Turn every MeshdError into one line on stderr and a non-zero exit: 78 (EX_CONFIG) for a
    bad configuration or key file, so systemd can stop retrying (RestartPreventExitStatus=78),
    1 otherwise; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, KeyFileError) as exc:
            fail(str(exc), EX_CONFIG)
        except MeshdError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meshd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


def load_config(config: Path | None, flags: dict[str, Any]) -> Config:
    """The config file (explicit, or the default one when it exists) overlaid with the set flags."""
    values: dict[str, Any] = {}
    if config is not None:
        values.update(load_file(config))
    elif DEFAULT_CONFIG.exists():
        values.update(load_file(DEFAULT_CONFIG))
    values.update({k: v for k, v in flags.items() if v is not None and v != ()})
    return build(values)


@app.command()
@friendly
def join(
    seeds: Annotated[
        list[str] | None, typer.Argument(help="host[:port], [ipv6]:port or ipv6 of members.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Node name (default hostname).")] = None,
    public_ip: Annotated[
        list[str] | None,
        typer.Option(help="Underlay IP, IPv4 or IPv6; twice: one of each (default: iface's)."),
    ] = None,
    iface: Annotated[str | None, typer.Option(help="Underlay device (default route's).")] = None,
    subnet: Annotated[
        list[str] | None,
        typer.Option(help="Container subnet; twice: one IPv4, one IPv6 (unset: allocated)."),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(help="Cluster network (twice: one per family); allocate from it."),
    ] = None,
    subnet_len: Annotated[
        int | None, typer.Option(help="Length of an allocated IPv4 subnet (24).")
    ] = None,
    subnet_len6: Annotated[
        int | None, typer.Option(help="Length of an allocated IPv6 subnet (64).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help=_BACKEND_HELP)] = None,
    port: Annotated[int | None, typer.Option(help="Gossip UDP port (7950).")] = None,
    wireguard_port: Annotated[
        int | None, typer.Option(help="WireGuard UDP port, the same on every member (51820).")
    ] = None,
    key_file: Annotated[Path | None, typer.Option(help="Keyring file (/etc/meshd/key).")] = None,
    ca: Annotated[Path | None, typer.Option(help="Cluster CA certificate (PEM).")] = None,
    cert: Annotated[Path | None, typer.Option(help="This node's certificate (PEM).")] = None,
    cert_key: Annotated[
        Path | None, typer.Option(help="This node's private key (default: cert's .key).")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State dir (/var/lib/meshd).")] = None,
    socket: Annotated[Path | None, typer.Option(help="Control socket path.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    subnet_env: Annotated[
        Path | None, typer.Option(help="flannel-style subnet.env (/run/meshd/subnet.env).")
    ] = None,
    ipmasq: Annotated[
        bool | None,
        typer.Option(
            "--ipmasq/--no-ipmasq", help="Masquerade what leaves --network (FLANNEL_IPMASQ)."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text, logfmt or json (one event per line).")
    ] = None,
) -> None:
    """Run the daemon in the foreground and join the mesh (logs to stderr)."""
    cfg = load_config(
        config,
        {
            "seeds": tuple(seeds or ()),
            "name": name,
            "public_ip": last_per_family(public_ip or ()),
            "iface": iface,
            "subnet": last_per_family(subnet or ()),
            "network": last_per_family(network or ()),
            "subnet_len": subnet_len,
            "subnet_len6": subnet_len6,
            "backend": backend,
            "port": port,
            "wireguard_port": wireguard_port,
            "key_file": key_file,
            "ca": ca,
            "cert": cert,
            "cert_key": cert_key,
            "state_dir": state_dir,
            "socket": socket,
            "subnet_env": subnet_env,
            "ipmasq": ipmasq,
            "log_level": log_level,
            "log_format": log_format,
        },
    )
    import asyncio

    # Imported here: the daemon pulls in asyncio, cryptography and the data plane, which the
    # other commands never need.
    from meshd.daemon import serve
    from meshd.systemd import setup_logging

    setup_logging(cfg.log_level, cfg.log_format)
    rc = asyncio.run(serve(cfg))
    raise typer.Exit(rc)


@app.command()
@friendly
def peers(
    socket: SocketOpt = DEFAULT_SOCKET,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
) -> None:
    """List the members of the mesh, this node included."""
    while True:
        rows = client.peers(socket)
        if as_json:
            typer.echo(fmt.to_json(rows))
        else:
            if watch:
                typer.echo("\x1b[H\x1b[2J", nl=False)
            typer.echo(fmt.peers(rows))
        if not watch:
            return
        time.sleep(1)


@app.command()
@friendly
def status(
    socket: SocketOpt = DEFAULT_SOCKET,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show this node, member counts, counters and the data plane."""
    st = client.status(socket)
    typer.echo(fmt.to_json(st) if as_json else "\n".join(fmt.status(st)))


@app.command()
@friendly
def doctor(
    socket: SocketOpt = DEFAULT_SOCKET,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check this host and the tunnel to every peer; exit 1 if anything is broken."""
    reply = client.doctor(socket)
    typer.echo(fmt.to_json(reply) if as_json else fmt.doctor(reply))
    if not reply["ok"]:
        raise typer.Exit(1)


@app.command()
@friendly
def leave(
    socket: SocketOpt = DEFAULT_SOCKET,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Then remove everything meshd made on this host: devices, routes, nftables "
            "tables, subnet.env, the WireGuard key (docs/operations.md).",
        ),
    ] = False,
    config: Annotated[Path | None, typer.Option(help="TOML config file (with --purge).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State dir (with --purge).")] = None,
    subnet_env: Annotated[Path | None, typer.Option(help="subnet.env (with --purge).")] = None,
) -> None:
    """Announce that this node leaves the mesh, wait until that has spread, stop the daemon;
    with --purge, then remove meshd's kernel state and files from this host."""
    if not purge:
        typer.echo(fmt.leave(client.leave(socket)))
        return
    import os

    if os.geteuid() != 0:
        fail("leave --purge: needs root (it removes devices, routes and nftables tables)")
    cfg = load_config(config, {"state_dir": state_dir, "subnet_env": subnet_env})
    try:
        typer.echo(fmt.leave(client.leave(socket)))
    except MeshdError as exc:  # not running: nothing to leave, purge what it left behind
        typer.echo(f"daemon not reachable ({exc}); purging what it left")
    else:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                client.status(socket, timeout=2)
            except MeshdError:
                break  # gone
            time.sleep(0.2)
        else:
            fail("leave --purge: the daemon is still running 15 s after leaving; not purging")
    from meshd.purge import purge_host

    for line in purge_host(cfg):
        typer.echo(f"removed {line}")
    typer.echo("purged")


@app.command()
def keygen() -> None:
    """Print a new random cluster key (base64) for the key file."""
    from meshd.gossip.security import generate_key

    typer.echo(generate_key())


keys_app = typer.Typer(help="The cluster keyring: changes spread to every member over gossip.")
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
@friendly
def keys_list(socket: SocketOpt = DEFAULT_SOCKET) -> None:
    """Key ids of this node's keyring, the primary (used to seal) first."""
    typer.echo(fmt.keys(client.keys(socket)))


@keys_app.command("install")
@friendly
def keys_install(
    source: Annotated[
        str | None, typer.Argument(help="`-`: read the key from stdin (`meshd keygen | ...`).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the key from this file.")
    ] = None,
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Add a key to every member's ring (accepted on receipt, not yet used to seal).

    The key is read from stdin (`meshd keygen | meshd keys install -`) or from a file (`--file`),
    never from the command line, where shell history and `ps` would keep it."""
    if (source is None) == (file is None) or source not in (None, "-"):
        fail(
            "keys install reads the key from stdin or a file, never from the command line: "
            "`meshd keygen | meshd keys install -` or `meshd keys install --file FILE`"
        )
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
    else:
        text = sys.stdin.read()
    key = text.strip()
    if not key or "\n" in key:
        fail("keys install: expected one base64 key (from `meshd keygen`)")
    typer.echo(fmt.keys(client.keys(socket, "install", key=key)))


@keys_app.command("use")
@friendly
def keys_use(
    key_id: Annotated[str, typer.Argument(help="Key id from `meshd keys list`.")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Make a key the primary on every member (install it everywhere first)."""
    typer.echo(fmt.keys(client.keys(socket, "use", key_id=key_id)))


@keys_app.command("remove")
@friendly
def keys_remove(
    key_id: Annotated[str, typer.Argument(help="Key id from `meshd keys list`.")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Remove a (non-primary) key from every member's ring."""
    typer.echo(fmt.keys(client.keys(socket, "remove", key_id=key_id)))


# -- certificates: `meshd ca`, `meshd cert`, `meshd crl` (meshd/pki.py does the work) -------------
# pki (and with it cryptography) is imported inside each command: `meshd peers` never needs it.

ca_app = typer.Typer(help="The cluster CA: create it, sign node certificates, revoke them.")
app.add_typer(ca_app, name="ca")
cert_app = typer.Typer(help="Node certificates: request one, show what one binds.")
app.add_typer(cert_app, name="cert")
crl_app = typer.Typer(help="Revocation lists: show one, spread one over the mesh.")
app.add_typer(crl_app, name="crl")

CaDirArg = Annotated[Path, typer.Argument(help="The CA directory (ca.crt, ca.key, issued/, crl).")]
DaysOpt = Annotated[int | None, typer.Option(help="Validity in days.", show_default=False)]


@ca_app.command("init")
@friendly
def ca_init(
    directory: CaDirArg,
    network: Annotated[
        list[str],
        typer.Option(
            help="The cluster network every subnet lies in; once per IP family (dual-stack)."
        ),
    ],
    name: Annotated[str, typer.Option(help="The CA's common name.")] = "meshd CA",
    days: Annotated[int, typer.Option(help="Validity in days.")] = 3650,
) -> None:
    """Create DIR/ca.crt and DIR/ca.key (0600); refuses to overwrite an existing CA."""
    from meshd import pki

    auth = pki.init_ca(directory, network, name, days)
    typer.echo(f"CA {auth.name!r} for {' and '.join(auth.networks)}: {directory / pki.CA_CERT}")
    typer.echo(f"key (keep it here, 0600): {directory / pki.CA_KEY}")
    typer.echo(f"fingerprint SHA256:{auth.fingerprint.hex()}")


@ca_app.command("sign")
@friendly
def ca_sign(
    directory: CaDirArg,
    out: Annotated[Path, typer.Option(help="Write PREFIX.crt (and PREFIX.key without --csr).")],
    name: Annotated[str | None, typer.Option(help="Node name (default: the request's).")] = None,
    public_ip: Annotated[
        list[str] | None,
        typer.Option(
            help="Node's underlay IP (default: the request's); once per IP family (dual-stack)."
        ),
    ] = None,
    subnet: Annotated[
        list[str] | None,
        typer.Option(help="Grant this one subnet; once per IP family (dual-stack)."),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(
            help="Grant any /--subnet-len (IPv6: /--subnet-len6) inside this pool; once per IP"
            " family."
        ),
    ] = None,
    subnet_len: Annotated[
        int | None, typer.Option(help="With an IPv4 --network: the node's prefix length (24).")
    ] = None,
    subnet_len6: Annotated[
        int | None, typer.Option(help="With an IPv6 --network: the node's prefix length (64).")
    ] = None,
    csr: Annotated[
        Path | None, typer.Option(help="Sign this request (`meshd cert request`) instead.")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """Sign a node certificate: a fresh key and certificate, or a node's request (--csr)."""
    from meshd import pki

    grant = pki.grant_from_flags(subnet, network, subnet_len, subnet_len6)
    if csr is not None:
        issued = pki.sign_request(directory, csr, grant, out, days, name, public_ip or None)
    else:
        if name is None or not public_ip:
            fail("--name and --public-ip are needed (or --csr FILE from `meshd cert request`)")
        assert name is not None and public_ip is not None
        issued = pki.sign(directory, name, public_ip, grant, out, days)
    info = issued.info
    typer.echo(
        f"{info.name}: {' and '.join(info.public_ips)}, subnet {info.grant.describe()},"
        f" serial {info.serial:x},"
        f" valid until {pki.describe_certificate(issued.crt)['not_after']}"
    )
    typer.echo(f"certificate: {issued.crt}")
    if issued.key is not None:
        typer.echo(f"key (0600; move it to the node, then delete it here): {issued.key}")


@ca_app.command("revoke")
@friendly
def ca_revoke(
    directory: CaDirArg,
    name: Annotated[str, typer.Argument(help="The node whose certificates to revoke.")],
    days: Annotated[int, typer.Option(help="The CRL's validity (next update) in days.")] = 365,
) -> None:
    """Revoke every unexpired certificate issued to NAME: writes DIR/crl."""
    from meshd import pki

    done = pki.revoke(directory, name, days)
    for info in done.certificates:
        typer.echo(f"revoked {info.name}: serial {info.serial:x} ({info.public_ip})")
    typer.echo(
        f"{done.crl}: CRL number {done.revocations.number},"
        f" {len(done.revocations.serials)} serial(s) revoked in all"
    )
    typer.echo(f"spread it: meshd crl install {done.crl}  (on any one member)")


@cert_app.command("request")
@friendly
def cert_request(
    name: Annotated[str, typer.Option(help="This node's name.")],
    public_ip: Annotated[
        list[str],
        typer.Option(help="This node's underlay IP; once per IP family (a dual-stack underlay)."),
    ],
    out: Annotated[Path, typer.Option(help="Write PREFIX.key (0600) and PREFIX.csr.")],
) -> None:
    """Make a key (it stays on this node) and a request for the CA: `meshd ca sign --csr`."""
    from meshd import pki

    key, csr = pki.make_request(name, public_ip, out)
    typer.echo(f"key (0600, stays here): {key}")
    typer.echo(f"request for the CA: {csr}")


def _show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(fmt.to_json(data))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = (
                ", ".join(
                    " ".join(str(v) for v in item.values()) if isinstance(item, dict) else str(item)
                    for item in value
                )
                or "none"
            )
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        typer.echo(f"{key.replace('_', ' ') + ':':<{width + 2}}{value}")


@cert_app.command("show")
@friendly
def cert_show(
    file: Annotated[Path, typer.Argument(help="A node or CA certificate (PEM or DER).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a certificate binds (name, IP, subnet or network), its validity, its fingerprint."""
    from meshd import pki

    _show(pki.describe_certificate(file), as_json)


@crl_app.command("show")
@friendly
def crl_show(
    file: Annotated[Path, typer.Argument(help="A CRL (DIR/crl from `meshd ca revoke`).")],
    ca: Annotated[Path | None, typer.Option(help="Check its signature against this CA.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A CRL's number, revoked serials and validity."""
    from meshd import pki

    _show(pki.describe_crl(file, ca), as_json)


@crl_app.command("install")
@friendly
def crl_install(
    file: Annotated[Path, typer.Argument(help="A CRL (DIR/crl from `meshd ca revoke`).")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Hand a CRL to the local daemon, which spreads it to every member over gossip."""
    from meshd import pki

    typer.echo(fmt.crl_install(client.crl_install(socket, pki.read_crl_pem(file))))


lab_app = typer.Typer(help="The built-in lab: N simulated hosts in network namespaces.")
app.add_typer(lab_app, name="lab")


@lab_app.callback(invoke_without_command=True)
@friendly
def lab(
    ctx: typer.Context,
    hosts: Annotated[int, typer.Option(help="Number of simulated hosts.")] = 3,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "vxlan",
    routed: Annotated[bool, typer.Option(help="Two L2 segments joined by a router.")] = False,
    keep: Annotated[
        bool, typer.Option(help="Leave the lab running (remove: meshd lab down).")
    ] = False,
    uml: Annotated[bool, typer.Option(help="Run inside a user-mode-linux guest kernel.")] = False,
    shared_key: Annotated[
        bool, typer.Option(help="No CA: the mesh key alone (default: a throwaway CA).")
    ] = False,
    allocate: Annotated[
        bool, typer.Option(help="Start every daemon at once with --network, no --subnet.")
    ] = False,
    cni: Annotated[
        bool,
        typer.Option(help="Pods attached by the flannel CNI plugin (bridge + host-local)."),
    ] = False,
    ipv6: Annotated[
        bool,
        typer.Option(
            help="Dual-stack pods: an IPv4 and an IPv6 subnet per host, pinged over both."
        ),
    ] = False,
    underlay: Annotated[
        str | None,
        typer.Option(
            help="Underlay addresses: ipv4, ipv6 (no IPv4 at all) or dual. Default: ipv4 "
            "(dual for --ipv6 with host-gw)."
        ),
    ] = None,
) -> None:
    """Build the article's topology, run one meshd per host, show peers and a ping matrix."""
    if ctx.invoked_subcommand is not None:
        return
    from meshd.lab.runner import run_in_guest, run_lab

    if backend not in backends.names():
        fail(f"backend: {backend!r} is not one of {', '.join(backends.names())}")
    if not 2 <= hosts <= 200:
        fail("--hosts: must be between 2 and 200")
    if underlay is not None and underlay not in ("ipv4", "ipv6", "dual"):
        fail(f"--underlay: {underlay!r} is not one of ipv4, ipv6, dual")
    if uml:
        if keep:
            fail("--keep and --uml: the guest powers off at the end; run without --keep")
        argv = ["--hosts", str(hosts), "--backend", backend, *(["--routed"] if routed else [])]
        argv += ["--shared-key"] if shared_key else []
        argv += ["--allocate"] if allocate else []
        argv += ["--cni"] if cni else []
        argv += ["--ipv6"] if ipv6 else []
        argv += ["--underlay", underlay] if underlay else []
        raise typer.Exit(run_in_guest(argv, say=typer.echo))
    raise typer.Exit(
        run_lab(
            hosts,
            backend,
            routed,
            keep,
            say=typer.echo,
            shared_key=shared_key,
            allocate=allocate,
            cni=cni,
            ipv6=ipv6,
            underlay=underlay,
        )
    )


@lab_app.command("down")
@friendly
def lab_down() -> None:
    """Remove a lab left running by --keep (namespaces, daemons, files)."""
    from meshd.lab.runner import lab_down as down

    raise typer.Exit(down(say=typer.echo))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
