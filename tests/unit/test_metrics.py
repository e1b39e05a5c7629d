from __future__ import annotations

import asyncio

import pytest

from meshd.errors import ConfigError
from meshd.metrics import Family, MetricsServer, parse_addr, render


def test_render_exposition_format() -> None:
    fams = [
        Family("meshd_members", "gauge", "Members.")
        .add(3, {"state": "alive"}).add(0, {"state": "dead"}),
        Family("meshd_rtt_seconds", "histogram", "RTT.")
        .add(1, {"le": "0.01"}, "_bucket").add(2, {"le": "+Inf"}, "_bucket")
        .add(0.015, None, "_sum").add(2, None, "_count"),
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
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"up 1\n")
    assert missing.startswith(b"HTTP/1.1 404")
