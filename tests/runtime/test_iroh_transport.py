"""The Iroh transport on loopback with relays disabled: frames byte-exact, validation as on TCP, the
address book (unknown ids, a peer restarted on a new port), authenticated remote keys, emulated delay,
and the binding's byte-path fix (checked shape, byte-exact against the original)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import types

import pytest

iroh = pytest.importorskip("iroh")

from prismn.identity import Identity  # noqa: E402
from prismn.iroh_transport import (  # noqa: E402
    EndpointInfo,
    IrohBindingError,
    IrohTransport,
    _built,
    _fast_write,
    check_binding,
    original_write,
    parse_iroh_address,
)
from prismn.transport import TcpTransport, TransportError, make_transport  # noqa: E402
from prismn.wire import Limits, WireError  # noqa: E402

SIZES = [0, 1, 2, 3, 7, 255, 256, 257, 4095, 4097, 65535, 65536, 65537, 262145, (1 << 20) + 3, (3 << 20) + 1]


# ------------------------------------------------------------------------------------ byte path
@pytest.mark.slow
def test_fast_byte_path_is_byte_exact_against_the_original():
    """The patched builder and the binding's own per-byte loop build the same Rust buffer, for
    bytes, bytearray and memoryview inputs of many sizes (incl. empty, odd and several MiB)."""
    from iroh import iroh_ffi as ffi

    IrohTransport(relay=False)  # installs the fix
    assert getattr(ffi._UniffiRustBufferBuilder.write, "_prismn_fast", False)
    orig = original_write()
    assert orig is not _fast_write and not getattr(orig, "_prismn_fast", False)
    builder = ffi._UniffiRustBufferBuilder
    for n in SIZES:
        data = os.urandom(n)
        want = _built(builder, orig, data)
        assert len(want) == n
        for value in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
            assert _built(builder, _fast_write, value) == want, (n, type(value))
        # the whole lowering (i32 length + bytes) round-trips through the converter
        conv = ffi._UniffiFfiConverterBytes
        assert conv.lift(conv.lower(data)) == data


def test_fast_write_refuses_non_byte_buffers():
    import array

    from iroh import iroh_ffi as ffi

    with pytest.raises(TypeError, match="flat byte buffers"):
        _built(ffi._UniffiRustBufferBuilder, _fast_write, array.array("i", [1, 2, 3]))


def test_binding_check_names_the_version_when_it_does_not_match():
    with pytest.raises(IrohBindingError, match=r"iroh 1\.3\.0 is installed .* supports iroh 1\.2\.x"):
        check_binding(version="1.3.0")

    from iroh import iroh_ffi as ffi

    class OtherBuilder(ffi._UniffiRustBufferBuilder):
        def write(self, value, offset=0):  # a different signature
            return super().write(value)

    fake = types.SimpleNamespace(_UniffiRustBufferBuilder=OtherBuilder,
                                 _UniffiFfiConverterBytes=ffi._UniffiFfiConverterBytes)
    with pytest.raises(IrohBindingError, match=r"iroh 1\.2\.9 does not have the shape.*write\("):
        check_binding(fake, version="1.2.9")

    class Reversing(ffi._UniffiRustBufferBuilder):
        def write(self, value):  # same shape, different bytes: must be caught by the probe
            orig = original_write()
            return orig(self, bytes(value)[::-1])

    fake = types.SimpleNamespace(_UniffiRustBufferBuilder=Reversing,
                                 _UniffiFfiConverterBytes=ffi._UniffiFfiConverterBytes)
    with pytest.raises(IrohBindingError, match="different bytes"):
        check_binding(fake, version="1.2.0")

    fake = types.SimpleNamespace(_UniffiRustBufferBuilder=ffi._UniffiRustBufferBuilder)
    with pytest.raises(IrohBindingError, match="_UniffiFfiConverterBytes"):
        check_binding(fake, version="1.2.0")


# ------------------------------------------------------------------------------------ addresses, factory
def test_addresses_and_factory():
    eid = "ab" * 32
    assert parse_iroh_address(f"iroh:{eid}") == (eid, [], None)
    assert parse_iroh_address(f"iroh:{eid.upper()}@127.0.0.1:7001,[::1]:7001,https://relay.example.org") == (
        eid, ["127.0.0.1:7001", "[::1]:7001"], "https://relay.example.org")
    for bad, msg in (("127.0.0.1:9001", "write it as iroh:"), ("iroh:xyz", "64 hex"),
                     (f"iroh:{eid}@nohost", "HOST:PORT")):
        with pytest.raises(TransportError, match=msg):
            parse_iroh_address(bad)
    info = EndpointInfo(eid, ("10.0.0.2:7001",), "https://relay.example.org")
    assert info.address == f"iroh:{eid}"
    assert parse_iroh_address(info.ticket) == (eid, ["10.0.0.2:7001"], "https://relay.example.org")

    assert isinstance(make_transport("tcp"), TcpTransport) and isinstance(make_transport(" TCP "), TcpTransport)
    ident = Identity.generate()
    tr = make_transport("iroh", identity=ident, relay=False, limits=Limits(max_payload=99))
    assert isinstance(tr, IrohTransport) and tr.kind == "iroh"
    assert tr.endpoint_id == ident.public and tr.limits.max_payload == 99 and not tr.relay
    assert make_transport("iroh", relay_url="https://relay.example.org").relay_url == "https://relay.example.org"
    with pytest.raises(TransportError, match="relay URL"):
        make_transport("iroh", relay_url="relay.example.org")
    with pytest.raises(TransportError, match="unknown transport 'udp'.*tcp, iroh"):
        make_transport("udp")
    with pytest.raises(TransportError, match="not open yet"):
        tr.endpoint_info()
    # the address book validates what it is told
    with pytest.raises(TransportError, match="64 hex"):
        tr.learn("peer-1", ["127.0.0.1:1"])
    with pytest.raises(TransportError, match="nothing to learn"):
        tr.learn(eid, [])
    tr.learn(eid, ["127.0.0.1:1"])
    tr.learn(eid, ["127.0.0.1:2"], replace=False)
    assert tr.known(eid).direct_addresses == ("127.0.0.1:2", "127.0.0.1:1")
    tr.learn(eid, "127.0.0.1:3")
    assert tr.known(eid).direct_addresses == ("127.0.0.1:3",)
    tr.forget(eid)
    assert tr.known(eid) is None


# ------------------------------------------------------------------------------------ loopback
@contextlib.asynccontextmanager
async def _pair(server_limits: Limits = Limits(), handler=None):
    """A listening and a dialling endpoint that know each other, closed on the way out."""
    sid, cid = Identity.generate(), Identity.generate()
    srv = IrohTransport(sid, relay=False, limits=server_limits)
    cli = IrohTransport(cid, relay=False)
    seen: dict = {"keys": [], "frames": [], "errors": []}

    async def echo(conn):
        seen["keys"].append(conn.remote_key)
        try:
            while (f := await conn.recv()) is not None:
                seen["frames"].append(f)
                await conn.send({"kind": "echo", "n": len(f.payload)}, f.payload)
        except WireError as e:
            seen["errors"].append(str(e))

    lst = await srv.listen("127.0.0.1", 0, handler or echo)
    try:
        cli.learn_info(srv.endpoint_info())
        yield srv, cli, lst, sid, cid, seen
    finally:
        await lst.close()
        await cli.close()
        await srv.close()


def test_frames_of_many_sizes_arrive_byte_exact_and_keys_are_authenticated():
    async def go():
        async with _pair() as (srv, cli, lst, sid, cid, seen):
            c = await cli.connect(lst.address)  # by id alone: the book knows the address
            assert c.remote_key == sid.public  # the dialled endpoint proved its key
            for n in SIZES:
                p = os.urandom(n)
                await c.send({"kind": "step", "n": n, "shape": [n]}, p)
                f = await asyncio.wait_for(c.recv(), 10)
                assert f.header == {"kind": "echo", "n": n} and f.payload == p, n
            # payloads that are views (a tensor's bytes) go out unchanged too
            buf = bytearray(os.urandom(70_001))
            await c.send({"kind": "view"}, memoryview(buf)[1:])
            assert (await c.recv()).payload == bytes(buf[1:])
            assert seen["keys"] == [cid.public]  # the listener saw the dialler's identity key
            assert [f.header["n"] for f in seen["frames"][: len(SIZES)]] == SIZES
            info = c.path_info()
            assert info["direct"] is True and info["relayed"] is False and info["remote_addr"].startswith("127.0.0.1:")
            assert info["rtt_ms"] is not None and info["rtt_ms"] >= 0
            await c.close()
            assert c.closed

    asyncio.run(go())


def test_tcp_connections_have_no_remote_key():
    async def go():
        tr = TcpTransport()
        lst = await tr.listen("127.0.0.1", 0, lambda conn: conn.recv())
        c = await tr.connect(lst.address)
        assert c.remote_key is None
        await c.close()
        await lst.close()

    asyncio.run(go())


def test_unknown_id_and_unreachable_peer_are_clear_errors():
    async def go():
        cli = IrohTransport(relay=False)
        try:
            with pytest.raises(TransportError, match=r"unknown Iroh endpoint .*address book has no address.*learn"):
                await cli.connect("iroh:" + Identity.generate().public)
            with pytest.raises(TransportError, match="write it as iroh:"):
                await cli.connect("127.0.0.1:9001")
            # a resolver that knows nothing, or answers for another id, does not make an id known
            other = Identity.generate().public

            async def resolver(eid):
                return None if eid != other else {"endpoint_id": Identity.generate().public,
                                                  "direct_addresses": ["127.0.0.1:9"]}

            cli.resolver = resolver
            for eid in (Identity.generate().public, other):
                with pytest.raises(TransportError, match="unknown Iroh endpoint"):
                    await cli.connect("iroh:" + eid)
            assert cli.book == {}
        finally:
            await cli.close()

    asyncio.run(go())


def test_oversized_and_garbage_frames_are_refused_before_allocation():
    async def go():
        async with _pair(Limits(max_payload=1024)) as (srv, cli, lst, _, _, seen):
            c = await cli.connect(lst.address)
            await c.send({"kind": "ok"}, b"x" * 1024)
            assert (await c.recv()).payload == b"x" * 1024
            await c.send({"kind": "big"}, b"x" * 4096)
            assert await asyncio.wait_for(c.recv(), 10) is None  # the listener closed the connection
            assert seen["errors"] == ["payload of 4096 bytes exceeds the limit of 1024"]
            c2 = await cli.connect(lst.address)
            await c2._send.write_all(b"GET / HTTP/1.1\r\n\r\n")  # not a Prismn frame
            assert await asyncio.wait_for(c2.recv(), 10) is None
            assert "bad magic" in seen["errors"][1]

    asyncio.run(go())


def test_emulated_delay_is_real_and_ordered_over_iroh():
    async def go():
        got: list = []
        done = asyncio.Event()

        async def sink(conn):
            while (f := await conn.recv()) is not None:
                got.append((time.perf_counter(), f.header["i"]))
                if len(got) == 10:
                    done.set()

        async with _pair(handler=sink) as (srv, cli, lst, *_):
            c = await cli.connect(lst.address)
            c.set_delay(0.025)
            t0 = time.perf_counter()
            sent = []
            for i in range(10):
                sent.append(time.perf_counter())
                await c.send({"kind": "x", "i": i}, b"y" * 2304)
            # sending does not block on the emulated link (blocking: 10 x 25 ms); the bounds leave room for a
            # loaded machine (a full suite's load once stretched a 33 ms median to 39 ms)
            assert time.perf_counter() - t0 < 0.1
            await asyncio.wait_for(done.wait(), 10)
            assert [g[1] for g in got] == list(range(10))
            lat = [g[0] - s for g, s in zip(got, sent, strict=True)]
            # the delay is real (never under 25 ms), and each frame's own: serialised delays would put the
            # median at 5-6 x 25 ms
            assert min(lat) >= 0.025 and statistics.median(lat) < 2 * 0.025, lat
            await c.close()

    asyncio.run(go())


@pytest.mark.slow
def test_a_listener_restarted_on_a_new_port_is_redialled_once_the_book_learns_it():
    async def go():
        sid = Identity.generate()
        cli = IrohTransport(relay=False)

        async def echo(conn):
            while (f := await conn.recv()) is not None:
                await conn.send({"kind": "echo"}, f.payload)

        srv = IrohTransport(sid, relay=False)
        lst = await srv.listen("127.0.0.1", 0, echo)
        old = srv.endpoint_info()
        cli.learn_info(old)
        address = f"iroh:{sid.public}"  # what an assignment names: the id, never a port
        try:
            c = await cli.connect(address)
            await c.send({"kind": "x"}, b"before")
            assert (await c.recv()).payload == b"before"
            # the peer restarts (same key, new process, new port)
            await lst.close()
            await srv.close()
            assert await asyncio.wait_for(c.recv(), 10) is None or c.closed
            srv = IrohTransport(sid, relay=False)
            lst = await srv.listen("127.0.0.1", 0, echo)
            new = srv.endpoint_info()
            assert new.endpoint_id == old.endpoint_id and new.direct_addresses != old.direct_addresses
            with pytest.raises(TransportError, match="cannot reach Iroh peer"):
                await cli.connect(address, timeout=2)  # the book still has the old port
            cli.learn_info(new.to_json())  # the coordinator tells us the new one
            c = await cli.connect(address)
            assert c.remote_key == sid.public
            await c.send({"kind": "x"}, b"after")
            assert (await c.recv()).payload == b"after"
            await c.close()

            # with a resolver (the coordinator's address book), a stale entry is refreshed by itself
            asked = []

            async def coordinator(eid):
                asked.append(eid)
                return srv.endpoint_info().to_json()

            cli.resolver = coordinator
            await lst.close()
            await srv.close()
            srv = IrohTransport(sid, relay=False)
            lst = await srv.listen("127.0.0.1", 0, echo)
            assert srv.endpoint_info().direct_addresses != new.direct_addresses
            c = await cli.connect(address, timeout=2)  # the old port fails, the resolver knows the new one
            assert asked == [sid.public] and c.remote_key == sid.public
            await c.send({"kind": "x"}, b"again")
            assert (await c.recv()).payload == b"again"
            await c.close()
        finally:
            await lst.close()
            await srv.close()
            await cli.close()

    asyncio.run(go())


def test_an_unknown_id_is_resolved_through_the_resolver():
    async def go():
        async with _pair() as (srv, cli, lst, sid, _, _):
            cli.forget(sid.public)

            async def coordinator(eid):
                return srv.endpoint_info() if eid == sid.public else None

            cli.resolver = coordinator
            c = await cli.connect(f"iroh:{sid.public}")
            assert c.remote_key == sid.public and cli.known(sid.public) is not None
            await c.send({"kind": "x"}, b"hi")
            assert (await c.recv()).payload == b"hi"
            await c.close()

    asyncio.run(go())


@pytest.mark.parametrize("relay", [{"relay": True}, {"relay_url": "https://relay.example.org"}])
def test_relay_modes_bind_offline_and_still_connect_directly(relay):
    """With n0's relays or a self-hosted one configured but unreachable (no internet here), an endpoint
    still binds, and peers that know each other's direct address connect directly."""
    async def go():
        srv, cli = IrohTransport(**relay), IrohTransport(**relay)

        async def echo(conn):
            while (f := await conn.recv()) is not None:
                await conn.send({"kind": "echo"}, f.payload)

        lst = await srv.listen("127.0.0.1", 0, echo)
        try:
            cli.learn_info(srv.endpoint_info())
            c = await cli.connect(lst.address, timeout=5)
            await c.send({"kind": "x"}, b"hi")
            assert (await c.recv()).payload == b"hi" and c.path_info()["direct"] is True
            await c.close()
        finally:
            await lst.close()
            await cli.close()
            await srv.close()

    asyncio.run(go())
