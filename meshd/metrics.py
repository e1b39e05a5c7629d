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
    tunnel: Mapping[str, Any] = field(default_factory=dict)
    """The tunnel prober's status (``{}`` for host-gw: no tunnel to probe)."""


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
            Family(
                "meshd_send_errors_total",
                "counter",
                "Gossip datagrams the kernel refused to send, by reason (enobufs, ...).",
            ),
            c,
            "send_error.",
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
    if s.tunnel:
        tc = s.tunnel.get("counters") or {}
        fams.append(
            Family(
                "meshd_tunnel_unreachable_peers",
                "gauge",
                "Peers whose tunnel does not answer probes, though gossip may say alive.",
            ).add(len(s.tunnel.get("unreachable") or []))
        )
        fam = Family("meshd_tunnel_probes_total", "counter", "Probes through the tunnel.")
        for result, key in (("sent", "probes"), ("answered", "replies"), ("lost", "timeouts")):
            fam.add(tc.get(key, 0), {"result": result})
        fams.append(fam)
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


HEADER_TIMEOUT = 5.0
"""Seconds a client has to send its whole request (line and headers): one trickling header lines
is cut off at this deadline, however steadily it sends."""
MAX_CONNECTIONS = 16
"""Scrapes served at once. Prometheus scrapes one at a time; past this, connections are closed
at once, unread, so idle or slow clients cannot exhaust the daemon's descriptors."""
MAX_HEADER_BYTES = 16 * 1024
"""Request line plus headers; a scrape sends a few hundred bytes."""
RESULTS = ("ok", "not_found", "timeout", "too_large", "busy", "error")


class MetricsServer:
    """Serves ``render(collect())`` on ``GET /metrics``; anything else is a 404. Each request
    must arrive whole within ``header_timeout``; at most ``max_connections`` are served at once.
    What became of each connection is counted (``results``) and exported as
    ``meshd_metrics_requests_total``."""

    def __init__(
        self,
        addr: str,
        collect: Callable[[], list[Family]],
        *,
        header_timeout: float = HEADER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host, self.port = parse_addr(addr)
        self.collect = collect
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.results: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self._active = 0
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

    def own_families(self) -> list[Family]:
        fam = Family(
            "meshd_metrics_requests_total",
            "counter",
            "Connections to this endpoint by outcome (timeout: request not whole within the "
            "deadline; busy: over the connection cap, closed at once).",
        )
        for result in RESULTS:
            fam.add(self.results[result], {"result": result})
        return [fam]

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The request line; the headers are read (and ignored) up to the blank line."""
        request = await reader.readline()
        size = len(request)
        while True:
            line = await reader.readline()
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise _TooLarge
            if line in (b"\r\n", b"\n", b""):
                return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        result = "error"
        try:
            if self._active > self.max_connections:
                result = "busy"
                return
            try:
                # One deadline for the whole request, not one per line.
                request = await asyncio.wait_for(self._read_request(reader), self.header_timeout)
            except TimeoutError:
                result = "timeout"
                return
            except (_TooLarge, ValueError):  # ValueError: a line past the reader's limit
                result = "too_large"
                body, status = b"request too large\n", "431 Request Header Fields Too Large"
            else:
                parts = request.split()
                if len(parts) < 2 or parts[0] != b"GET" or parts[1].split(b"?")[0] != b"/metrics":
                    result = "not_found"
                    body, status = b"not found: try /metrics\n", "404 Not Found"
                else:
                    result = "ok"
                    families = [*self.collect(), *self.own_families()]
                    body, status = render(families).encode(), "200 OK"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:  # never let a scrape kill the daemon
            log.exception("metrics request failed", extra={"event": "metrics_internal_error"})
        finally:
            self._active -= 1
            self.results[result] += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _TooLarge(Exception):
    pass
