"""TCP transport and emulated wide-area delay (real sleeps, order preserved)."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from prismn.transport import RttMatrix, TcpTransport, TransportError, parse_address


def test_parse_address():
    assert parse_address("127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("nohost", "h:0", "h:x", ":9"):
        with pytest.raises(TransportError, match="HOST:PORT"):
            parse_address(bad)


def test_rtt_matrix():
    m = RttMatrix({"client": {"a": 20}, "a": {"b": 30.5}})
    assert m.one_way_s("a", "client") == pytest.approx(0.010)
    assert m.rtt("b", "a") == 30.5 and m.rtt("a", "a") == 0
    with pytest.raises(TransportError, match="no entry between"):
        m.rtt("client", "b")
    for bad in ({"a": {"b": -1}}, {"a": {"b": "x"}}, {"a": 3}, {"a": {"b": float("nan")}}):
        with pytest.raises(TransportError):
            RttMatrix(bad)


async def _echo_pair(delay_s: float, n: int, payload: bytes):
    tr = TcpTransport()
    got: list = []
    done = asyncio.Event()

    async def handler(conn):
        while (f := await conn.recv()) is not None:
            got.append((time.perf_counter(), f.header["i"], f.payload))
            if len(got) == n:
                done.set()

    lst = await tr.listen("127.0.0.1", 0, handler)
    c = await tr.connect(lst.address)
    c.set_delay(delay_s)
    t0 = time.perf_counter()
    sent = []
    for i in range(n):
        sent.append(time.perf_counter())
        await c.send({"kind": "x", "i": i}, payload)
    t_after_send = time.perf_counter() - t0
    await asyncio.wait_for(done.wait(), 10)
    await c.close()
    await lst.close()
    return got, sent, t_after_send


def test_tcp_roundtrip_no_delay():
    got, _, _ = asyncio.run(_echo_pair(0.0, 5, b"abc" * 1000))
    assert [g[1] for g in got] == list(range(5)) and all(g[2] == b"abc" * 1000 for g in got)


def test_emulated_delay_is_real_and_ordered():
    got, sent, t_send = asyncio.run(_echo_pair(0.025, 10, b"x" * 2304))
    assert t_send < 0.02  # sending does not block on the emulated link
    assert [g[1] for g in got] == list(range(10))
    lat = [g[0] - s for g, s in zip(got, sent, strict=True)]
    assert min(lat) >= 0.025 and statistics.median(lat) < 0.025 + 0.005 and max(lat) < 0.025 + 0.030, lat


def test_connect_refused_is_one_line():
    async def go():
        await TcpTransport().connect("127.0.0.1:1", timeout=2)

    with pytest.raises(TransportError, match="cannot reach peer at 127.0.0.1:1.*prismn stage serve"):
        asyncio.run(go())


def test_factory_without_iroh_installed(monkeypatch):
    """TCP needs nothing extra; asking for Iroh where the package is missing is one line naming the fix."""
    import sys

    from prismn.transport import make_transport

    monkeypatch.setitem(sys.modules, "iroh", None)  # as if `iroh` were not installed
    monkeypatch.delitem(sys.modules, "prismn.iroh_transport", raising=False)
    assert isinstance(make_transport("tcp"), TcpTransport) and make_transport("tcp").kind == "tcp"
    with pytest.raises(TransportError, match=r"iroh package is not installed.*pip install 'prismn\[iroh\]'"):
        make_transport("iroh")
    with pytest.raises(TransportError, match="unknown transport 'quic'"):
        make_transport("quic")
