"""The `meshd` command line: parses, calls, formats and exits. It reaches the daemon only through
the control socket, so `meshd peers` needs neither root nor the daemon's imports."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meshd import __version__
from meshd.config import DEFAULT_CONFIG, Config, build, load_file
from meshd.control.client import request
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
    cfg = load_config(config, {
        "seeds": tuple(seeds or ()), "name": name, "public_ip": public_ip, "iface": iface,
        "subnet": subnet, "backend": backend, "port": port, "key_file": key_file,
        "state_dir": state_dir, "socket": socket, "subnet_env": subnet_env,
        "log_level": log_level,
    })
    import asyncio

    # Imported here: the daemon pulls in asyncio, cryptography and the data plane, which the
    # other commands never need.
    from meshd.daemon import serve, setup_logging

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
        result = request(socket, "peers")
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            if watch:
                typer.echo("\x1b[H\x1b[2J", nl=False)
            typer.echo(format_peers(result))
        if not watch:
            return
        time.sleep(1)


def format_peers(rows: list[dict[str, Any]]) -> str:
    head = ["NAME", "PUBLIC IP", "SUBNET", "BACKEND", "VTEP MAC", "STATE", "INC", "SEEN", "NOTE"]
    table = [head]
    for r in rows:
        note = "self" if r.get("self") else (r.get("flag") or "")
        table.append([
            r["name"], r["public_ip"], r["subnet"], r["backend"], r.get("vtep_mac") or "-",
            r["state"], str(r["incarnation"]),
            "-" if r.get("self") else f"{r['last_seen']:.1f}s", note,
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


@app.command()
@friendly
def status(
    socket: SocketOpt = DEFAULT_SOCKET,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show this node, member counts, counters and the data plane."""
    st = request(socket, "status")
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    n = st["node"]
    typer.echo(f"node      {n['name']} ({n['public_ip']}) subnet {n['subnet']} "
               f"backend {n['backend']} incarnation {n['incarnation']}")
    typer.echo(f"version   {st['version']}, up {st['uptime']}s, synced {st['synced']}")
    typer.echo("members   " + ", ".join(f"{k} {v}" for k, v in st["members"].items()))
    c = st["counters"]
    typer.echo(f"datagrams in {c.get('in', 0)}, out {c.get('out', 0)}")
    if st["dropped"]:
        typer.echo("dropped   " + ", ".join(f"{k} {v}" for k, v in st["dropped"].items()))
    for line in format_dataplane(st.get("dataplane") or {}, st.get("filter") or {}):
        typer.echo(line)
    typer.echo("(meshd status --json shows everything, including the last plan)")


def format_dataplane(dp: dict[str, Any], fw: dict[str, Any]) -> list[str]:
    """A few readable lines out of the data-plane status (the JSON has the full plan)."""
    if not dp:
        return ["dataplane not started"]
    out = [f"dataplane {dp.get('backend')} device {dp.get('device') or '-'} on "
           f"{(dp.get('underlay') or {}).get('ifname')}, routes proto {dp.get('protocol')}, "
           f"{len(dp.get('programmed') or [])} peer(s) programmed"]
    last = dp.get("last_run") or {}
    if last:
        out.append(f"          {dp.get('runs', 0)} passes, last {last.get('duration_ms')} ms "
                   f"({last.get('reason')}), {dp.get('applied_total', 0)} changes applied in all")
    change = (dp.get("last_change") or {}).get("plan") or {}
    counts = {k: v for k, v in (change.get("counts") or {}).items() if v}
    if counts:
        out.append("          last change: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for label, key in (("conflicted", "conflicts"), ("skipped", "skipped")):
        for name, why in sorted((dp.get(key) or {}).items()):
            out.append(f"          {label} {name}: {why}")
    if dp.get("last_error"):
        out.append(f"          error: {dp['last_error']}")
    if fw.get("active"):
        out.append(f"filter    {fw.get('table')}: {len(fw.get('members') or [])} member IPs"
                   + (f", error: {fw['last_error']}" if fw.get("last_error") else ""))
    return out


@app.command()
@friendly
def leave(socket: SocketOpt = DEFAULT_SOCKET) -> None:
    """Announce that this node leaves the mesh, wait until that has spread, stop the daemon."""
    res = request(socket, "leave")
    typer.echo("left the mesh" + ("" if res.get("spread") else " (not confirmed by all peers)"))


@app.command()
def keygen() -> None:
    """Print a new random cluster key (base64) for the key file."""
    from meshd.gossip.security import generate_key

    typer.echo(generate_key())


keys_app = typer.Typer(help="The cluster keyring: changes spread to every member over gossip.")
app.add_typer(keys_app, name="keys")


def _print_keys(res: dict[str, Any]) -> None:
    for kid in res["keys"]:
        typer.echo(f"{kid}{'  (primary)' if kid == res['primary'] else ''}")


@keys_app.command("list")
@friendly
def keys_list(socket: SocketOpt = DEFAULT_SOCKET) -> None:
    """Key ids of this node's keyring, the primary (used to seal) first."""
    _print_keys(request(socket, "keys.list"))


@keys_app.command("install")
@friendly
def keys_install(
    key: Annotated[str, typer.Argument(help="A key from `meshd keygen` (base64).")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Add a key to every member's ring (accepted on receipt, not yet used to seal)."""
    _print_keys(request(socket, "keys.install", key=key))


@keys_app.command("use")
@friendly
def keys_use(
    key_id: Annotated[str, typer.Argument(help="Key id from `meshd keys list`.")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Make a key the primary on every member (install it everywhere first)."""
    _print_keys(request(socket, "keys.use", key_id=key_id))


@keys_app.command("remove")
@friendly
def keys_remove(
    key_id: Annotated[str, typer.Argument(help="Key id from `meshd keys list`.")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Remove a (non-primary) key from every member's ring."""
    _print_keys(request(socket, "keys.remove", key_id=key_id))


lab_app = typer.Typer(help="The built-in lab: N simulated hosts in network namespaces.")
app.add_typer(lab_app, name="lab")


@lab_app.callback(invoke_without_command=True)
@friendly
def lab(
    ctx: typer.Context,
    hosts: Annotated[int, typer.Option(help="Number of simulated hosts.")] = 3,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "vxlan",
    routed: Annotated[bool, typer.Option(help="Two L2 segments joined by a router.")] = False,
    keep: Annotated[bool, typer.Option(help="Leave the lab running (remove: meshd lab down).")]
    = False,
    uml: Annotated[bool, typer.Option(help="Run inside a user-mode-linux guest kernel.")]
    = False,
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
