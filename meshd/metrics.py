"""Prometheus text exposition over a minimal HTTP endpoint (``GET /metrics``).

Bound to localhost by default; enabled with the ``metrics`` config key. The daemon passes a
``collect`` callable that returns families; this module only formats and serves them, so the
metric names live in one place (``Daemon.metrics``) next to the state they describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

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
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {f.help}")
        out.append(f"# TYPE {f.name} {f.kind}")
        for suffix, labels, value in f.samples:
            out.append(f"{f.name}{suffix}{_labels(labels)} {value:g}")
    return "\n".join(out) + "\n"


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics: {addr!r} is not host:port")
    return host, int(port)


class MetricsServer:
    def __init__(self, addr: str, collect: Callable[[], list[Family]]) -> None:
        self.host, self.port = parse_addr(addr)
        self.collect = collect
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror}") from None

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
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
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
