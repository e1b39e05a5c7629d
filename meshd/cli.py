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
from meshd.config import DEFAULT_CONFIG, Config, build, load_file
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
    seeds: Annotated[list[str] | None, typer.Argument(help="host[:port] of members.")] = None,
    name: Annotated[str | None, typer.Option(help="Node name (default hostname).")] = None,
    public_ip: Annotated[str | None, typer.Option(help="Underlay IP (default: iface's).")] = None,
    iface: Annotated[str | None, typer.Option(help="Underlay device (default route's).")] = None,
    subnet: Annotated[str | None, typer.Option(help="This node's container subnet.")] = None,
    backend: Annotated[str | None, typer.Option(help=_BACKEND_HELP)] = None,
    port: Annotated[int | None, typer.Option(help="Gossip UDP port (7950).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Keyring file (/etc/meshd/key).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State dir (/var/lib/meshd).")] = None,
    socket: Annotated[Path | None, typer.Option(help="Control socket path.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    subnet_env: Annotated[
        Path | None, typer.Option(help="flannel-style subnet.env (/run/meshd/subnet.env).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run the daemon in the foreground and join the mesh (logs to stderr)."""
    cfg = load_config(
        config,
        {
            "seeds": tuple(seeds or ()),
            "name": name,
            "public_ip": public_ip,
            "iface": iface,
            "subnet": subnet,
            "backend": backend,
            "port": port,
            "key_file": key_file,
            "state_dir": state_dir,
            "socket": socket,
            "subnet_env": subnet_env,
            "log_level": log_level,
        },
    )
    import asyncio

    # Imported here: the daemon pulls in asyncio, cryptography and the data plane, which the
    # other commands never need.
    from meshd.daemon import serve
    from meshd.systemd import setup_logging

    setup_logging(cfg.log_level)
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
def leave(socket: SocketOpt = DEFAULT_SOCKET) -> None:
    """Announce that this node leaves the mesh, wait until that has spread, stop the daemon."""
    typer.echo(fmt.leave(client.leave(socket)))


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
) -> None:
    """Build the article's topology, run one meshd per host, show peers and a ping matrix."""
    if ctx.invoked_subcommand is not None:
        return
    from meshd.lab.runner import run_in_guest, run_lab

    if backend not in backends.names():
        fail(f"backend: {backend!r} is not one of {', '.join(backends.names())}")
    if not 2 <= hosts <= 200:
        fail("--hosts: must be between 2 and 200")
    if uml:
        if keep:
            fail("--keep and --uml: the guest powers off at the end; run without --keep")
        argv = ["--hosts", str(hosts), "--backend", backend, *(["--routed"] if routed else [])]
        raise typer.Exit(run_in_guest(argv, say=typer.echo))
    raise typer.Exit(run_lab(hosts, backend, routed, keep, say=typer.echo))


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
