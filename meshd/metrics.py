"""Prometheus metrics: every family meshd exports, their text exposition, and ``GET /metrics``.

Enabled with the ``metrics`` config key (bound to localhost by default). The names live here, in
one place: `families` is a pure function from a `Snapshot` (what the service reads from the
gossip core, the transport and the reconciler at scrape time) to metric families, and `render`
turns families into the exposition format; both are unit-tested without a daemon. The server
only calls its ``collect`` callable and serves the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshd.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_ADDR = "127.0.0.1:9950"
Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric family: ``samples`` are (suffix, labels, value); suffix is "" or "_sum" etc."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, suffix: str = "") -> Family:
        self.samples.append((suffix, labels or {}, value))
        return self


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


def render(families: Iterable[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {f.help}")
        out.append(f"# TYPE {f.name} {f.kind}")
        for suffix, labels, value in f.samples:
            out.append(f"{f.name}{suffix}{_labels(labels)} {value:g}")
    return "\n".join(out) + "\n"


MEMBER_STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What `GET /metrics` shows, read from the running daemon at scrape time."""

    counters: Mapping[str, int]
    """Transport and core counters merged (`Service.counters`): ``in``, ``msg.*``, ``drop.*``..."""
    members: Mapping[str, int]
    """Members by state, this node included."""
    rtt_buckets: Sequence[tuple[float, int]]
    """Cumulative probe round-trip histogram, ending with ``(inf, count)``."""
    rtt_sum: float
    rtt_count: int
    health: int
    """Lifeguard local health score."""
    dataplane: Mapping[str, Any]
    """The reconciler's status (``{}`` before it started)."""
    version: str
    name: str
    backend: str


def _by_prefix(fam: Family, counters: Mapping[str, int], prefix: str, label: str) -> Family:
    for k, v in sorted(counters.items()):
        if k.startswith(prefix):
            fam.add(v, {label: k[len(prefix) :]})
    return fam


def families(s: Snapshot) -> list[Family]:
    """Every metric family meshd exports; names follow Prometheus conventions."""
    c = s.counters
    fams = [
        Family("meshd_members", "gauge", "Members by state, this node included."),
        Family("meshd_datagrams_total", "counter", "UDP datagrams on the wire.")
        .add(c.get("in", 0), {"direction": "in"})
        .add(c.get("out", 0), {"direction": "out"}),
        Family("meshd_bytes_total", "counter", "UDP payload bytes on the wire (sealed).")
        .add(c.get("in_bytes", 0), {"direction": "in"})
        .add(c.get("out_bytes", 0), {"direction": "out"}),
        _by_prefix(
            Family("meshd_messages_received_total", "counter", "Gossip messages by type."),
            c,
            "msg.",
            "type",
        ),
        _by_prefix(
            Family("meshd_dropped_total", "counter", "Datagrams dropped, by reason."),
            c,
            "drop.",
            "reason",
        ),
        _by_prefix(
            Family("meshd_probes_total", "counter", "Failure-detection probes by result."),
            c,
            "probe.",
            "result",
        ),
    ]
    for st in MEMBER_STATES:
        fams[0].add(s.members.get(st, 0), {"state": st})
    fam = Family(
        "meshd_anti_entropy_total",
        "counter",
        "Anti-entropy digests: sent, and received ones whose view was the same, "
        "differed (a full push-pull followed) or changed before the answer (late).",
    )
    for result in ("sent", "same", "differ", "late"):
        fam.add(c.get(f"push_pull.digest_{result}", 0), {"result": result})
    fams.append(fam)
    fams.append(
        Family("meshd_suspicions_total", "counter", "Members this node started suspecting.").add(
            c.get("suspect.raised", 0)
        )
    )
    fam = Family("meshd_probe_rtt_seconds", "histogram", "Probe round-trip time.")
    for le, n in s.rtt_buckets:
        fam.add(n, {"le": "+Inf" if le == float("inf") else f"{le:g}"}, "_bucket")
    fams.append(fam.add(s.rtt_sum, None, "_sum").add(s.rtt_count, None, "_count"))
    fams.append(
        Family("meshd_local_health", "gauge", "Lifeguard local health score (0 is healthy).").add(
            s.health
        )
    )
    dp = s.dataplane
    fams.append(
        Family("meshd_reconcile_runs_total", "counter", "Data-plane reconcile passes.").add(
            dp.get("runs", 0)
        )
    )
    last = dp.get("last_run") or {}
    fams.append(
        Family(
            "meshd_reconcile_duration_seconds", "gauge", "Duration of the last reconcile pass."
        ).add(last.get("duration_ms", 0) / 1000)
    )
    fam = Family("meshd_reconcile_changes_total", "counter", "Kernel changes applied, by kind.")
    for kind, n in sorted((dp.get("applied") or {}).items()):
        fam.add(n, {"kind": kind})
    fams.append(fam)
    fams.append(
        Family(
            "meshd_reconcile_errors",
            "gauge",
            "Recent data-plane errors (bounded list in `meshd status`).",
        ).add(len(dp.get("errors") or []))
    )
    fams.append(
        Family("meshd_info", "gauge", "Build and node information.").add(
            1, {"version": s.version, "name": s.name, "backend": s.backend}
        )
    )
    return fams


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics: {addr!r} is not host:port")
    return host, int(port)


class MetricsServer:
    """Serves ``render(collect())`` on ``GET /metrics``; anything else is a 404."""

    def __init__(self, addr: str, collect: Callable[[], list[Family]]) -> None:
        self.host, self.port = parse_addr(addr)
        self.collect = collect
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            # Drain the headers; we need none of them.
            while await asyncio.wait_for(reader.readline(), timeout=5) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.split()
            if len(parts) < 2 or parts[0] != b"GET" or parts[1].split(b"?")[0] != b"/metrics":
                body, status = b"not found: try /metrics\n", "404 Not Found"
            else:
                body, status = render(self.collect()).encode(), "200 OK"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        except Exception:  # never let a scrape kill the daemon
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
