from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

import pytest

from meshd.errors import ConfigError
from meshd.metrics import Family, MetricsServer, Snapshot, families, parse_addr, render


def test_render_exposition_format() -> None:
    fams = [
        Family("meshd_members", "gauge", "Members.")
        .add(3, {"state": "alive"})
        .add(0, {"state": "dead"}),
        Family("meshd_rtt_seconds", "histogram", "RTT.")
        .add(1, {"le": "0.01"}, "_bucket")
        .add(2, {"le": "+Inf"}, "_bucket")
        .add(0.015, None, "_sum")
        .add(2, None, "_count"),
        Family("x", "gauge", "Escaping.").add(1, {"v": 'a"b\\c'}),
    ]
    text = render(fams)
    assert "# TYPE meshd_members gauge\n" in text
    assert 'meshd_members{state="alive"} 3\n' in text
    assert 'meshd_rtt_seconds_bucket{le="+Inf"} 2\n' in text
    assert "meshd_rtt_seconds_sum 0.015\n" in text
    assert 'x{v="a\\"b\\\\c"} 1' in text


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:9950") == ("127.0.0.1", 9950)
    for bad in ("9950", "host:", "h:99999"):
        with pytest.raises(ConfigError):
            parse_addr(bad)


def test_serves_metrics_over_http() -> None:
    async def main() -> tuple[bytes, bytes]:
        srv = MetricsServer("127.0.0.1:0", lambda: [Family("up", "gauge", "Up.").add(1)])
        await srv.start()
        assert srv._server is not None
        assert isinstance(srv._server, asyncio.Server)
        port = srv._server.sockets[0].getsockname()[1]

        async def get(path: str) -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = await r.read()
            w.close()
            return data

        ok, missing = await get("/metrics"), await get("/nope")
        await srv.close()
        return ok, missing

    ok, missing = asyncio.run(main())
    assert ok.startswith(b"HTTP/1.1 200") and b"\nup 1\n" in ok
    assert b'meshd_metrics_requests_total{result="ok"} 0\n' in ok  # counted after it is served
    assert missing.startswith(b"HTTP/1.1 404")


async def _server(**kw: Any) -> tuple[MetricsServer, int]:
    srv = MetricsServer("127.0.0.1:0", lambda: [Family("up", "gauge", "Up.").add(1)], **kw)
    await srv.start()
    assert isinstance(srv._server, asyncio.Server)
    return srv, srv._server.sockets[0].getsockname()[1]


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


async def _closed(r: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(r.read(), 30)
    except ConnectionResetError:
        return b""


def test_a_client_trickling_header_lines_is_cut_at_the_request_deadline() -> None:
    async def main() -> None:
        srv, port = await _server(header_timeout=0.3)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\n")
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionError):
                while True:  # a header line well inside any per-line timeout, forever
                    w.write(f"X-Slow-{sent}: 1\r\n".encode())
                    await w.drain()
                    sent += 1
                    await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        got = await _closed(r)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        w.close()
        assert got == b""  # cut without an answer
        assert sent >= 2  # it did keep sending: only the total deadline stopped it
        await _until(lambda: srv.results["timeout"] == 1)
        assert srv.results["ok"] == 0
        await srv.close()

    asyncio.run(main())


def test_oversized_headers_are_refused() -> None:
    async def main() -> None:
        srv, port = await _server()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 1000 + b"\r\n")
        for _ in range(20):
            w.write(b"X-More: " + b"b" * 1000 + b"\r\n")
        await w.drain()
        got = await _closed(r)
        w.close()
        assert got.startswith(b"HTTP/1.1 431")
        assert srv.results["too_large"] == 1
        await srv.close()

    asyncio.run(main())


def test_connections_past_the_cap_are_closed_at_once_and_counted() -> None:
    async def main() -> None:
        srv, port = await _server(max_connections=2, header_timeout=60)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await _until(lambda: srv._active == 2)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert await _closed(r) == b""  # long before the 60 s deadline of the held ones
        w.close()
        assert srv.results["busy"] == 1
        for _, hw in held:
            hw.close()
        await _until(lambda: srv._active == 0)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        got = await _closed(r)
        w.close()
        assert got.startswith(b"HTTP/1.1 200")
        assert b'meshd_metrics_requests_total{result="busy"} 1\n' in got
        await srv.close()

    asyncio.run(main())


def snapshot(**over: object) -> Snapshot:
    base: dict[str, object] = dict(
        counters={
            "in": 10,
            "out": 12,
            "in_bytes": 1000,
            "out_bytes": 1200,
            "msg.ping": 4,
            "msg.alive": 2,
            "drop.auth": 3,
            "send_error": 9,
            "send_error.enobufs": 7,
            "send_error.ehostunreach": 2,
            "probe.ok": 5,
            "probe.failed": 1,
            "push_pull.digest_sent": 7,
            "suspect.raised": 1,
        },
        members={"alive": 3, "dead": 1},
        rtt_buckets=[(0.001, 2), (0.01, 4), (math.inf, 5)],
        rtt_sum=0.02,
        rtt_count=5,
        health=2,
        dataplane={
            "runs": 4,
            "last_run": {"duration_ms": 2.5},
            "applied": {"route": 3},
            "errors": ["x"],
        },
        version="0.1.0",
        name="h1",
        backend="vxlan",
    )
    base.update(over)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_families_from_a_snapshot() -> None:
    text = render(families(snapshot()))
    for line in (
        'meshd_members{state="alive"} 3',
        'meshd_members{state="suspect"} 0',
        'meshd_members{state="dead"} 1',
        'meshd_members{state="left"} 0',
        'meshd_datagrams_total{direction="in"} 10',
        'meshd_bytes_total{direction="out"} 1200',
        'meshd_messages_received_total{type="alive"} 2',
        'meshd_messages_received_total{type="ping"} 4',
        'meshd_dropped_total{reason="auth"} 3',
        'meshd_send_errors_total{reason="enobufs"} 7',
        'meshd_send_errors_total{reason="ehostunreach"} 2',
        'meshd_probes_total{result="failed"} 1',
        'meshd_anti_entropy_total{result="sent"} 7',
        'meshd_anti_entropy_total{result="late"} 0',
        "meshd_suspicions_total 1",
        'meshd_probe_rtt_seconds_bucket{le="0.001"} 2',
        'meshd_probe_rtt_seconds_bucket{le="+Inf"} 5',
        "meshd_probe_rtt_seconds_count 5",
        "meshd_local_health 2",
        "meshd_reconcile_runs_total 4",
        "meshd_reconcile_duration_seconds 0.0025",
        'meshd_reconcile_changes_total{kind="route"} 3',
        "meshd_reconcile_errors 1",
        'meshd_info{backend="vxlan",name="h1",version="0.1.0"} 1',
    ):
        assert line + "\n" in text, line
    # every family is declared once, and every sample belongs to a declared family
    names = [f.name for f in families(snapshot())]
    assert len(names) == len(set(names))
    for sample in (x for x in text.splitlines() if not x.startswith("#")):
        assert any(sample.startswith(n) for n in names), sample


def test_families_before_the_data_plane_started() -> None:
    text = render(families(snapshot(dataplane={}, counters={})))
    assert "meshd_reconcile_runs_total 0\n" in text
    assert "meshd_reconcile_duration_seconds 0\n" in text
    assert 'meshd_datagrams_total{direction="in"} 0\n' in text
    assert "meshd_dropped_total{" not in text  # no reasons yet: a family without samples
