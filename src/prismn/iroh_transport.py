"""The Iroh transport: Prismn frames over QUIC between endpoints dialled by their public key.

A peer's Iroh endpoint key IS its Prismn identity (:class:`prismn.identity.Identity`: the 32-byte seed
is the endpoint's secret key, the 64-hex public key its endpoint id), so the key a connection reports
as :attr:`Connection.remote_key` was proven by the QUIC/TLS handshake itself. Every connection carries
one bidirectional QUIC stream under one ALPN (:data:`ALPN`), on which frames travel exactly as over TCP
(:mod:`prismn.wire`: same prefix, header, limits and validation, and the same emulated delay).

Addresses name an endpoint by id: ``iroh:<64 hex>``. The transport keeps an **address book**
(id -> direct socket addresses and/or relay URL) that its owner feeds (:meth:`IrohTransport.learn`,
from the coordinator); :meth:`IrohTransport.connect` dials by id with what the book knows. An address
may also carry its own dial hints, ``iroh:<id>@127.0.0.1:7001,https://relay.example.org`` (what
:attr:`EndpointInfo.ticket` writes), which are learnt into the book when dialled.

Relays: ``relay=True`` (default) uses n0's public relays (and n0's discovery), ``relay_url=`` a
self-hosted relay, ``relay=False`` none (LAN, tests). A relay forwards QUIC packets it cannot read.

The binding's byte path: iroh 1.2's generated Python binding copies every outgoing ``bytes`` argument
into Rust one byte at a time in Python (2-4 MB/s). :func:`install_fast_bytes` replaces that one method
with a ``memmove`` (100+ MB/s) after checking that the binding still has the shape it was written for;
anything else is refused with one line naming the installed version.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prismn.errors import PrismnError
from prismn.transport import (
    Buffer,
    FramedConnection,
    Handler,
    Listener,
    Transport,
    TransportError,
    format_address,
    parse_address,
)
from prismn.wire import Frame, Limits, read_frame

try:
    import iroh
    from iroh import iroh_ffi as _ffi
except ImportError as _e:  # pragma: no cover - exercised only where iroh is missing
    raise ImportError(f"the iroh package is not installed ({_e}): pip install 'prismn[iroh]'") from None

if TYPE_CHECKING:
    from prismn.identity import Identity

log = logging.getLogger("prismn.transport.iroh")

#: the one application protocol a Prismn endpoint speaks: wire frames (prismn.wire, PRM1)
ALPN = b"prismn/frames/1"
PREFIX = "iroh:"
SUPPORTED = "1.2."  # the iroh releases whose binding the byte-path fix was written for
ENDPOINT_ID_RE = re.compile(r"^[0-9a-f]{64}$")
#: a read smaller than this takes what the stream has buffered; a larger remainder is read in slices of
#: _READ_SLICE (so copying out of Rust overlaps with the rest arriving)
_READ_CHUNK = 256 * 1024
_READ_SLICE = 8 << 20
#: payloads up to this size go out in the same write as their header (one FFI call)
_JOIN_MAX = 256 * 1024
#: larger payloads are written in slices of this size (each is copied once into a Rust buffer)
_WRITE_SLICE = 8 << 20


class IrohBindingError(PrismnError):
    """The installed iroh binding is not the one Prismn's byte-path fix was checked against."""


# ------------------------------------------------------------------------------------ byte path fix
def iroh_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iroh")
    except PackageNotFoundError:  # pragma: no cover - imported but not installed as a distribution
        return "unknown"


def _fast_write(self: Any, value: Any) -> None:
    """``_UniffiRustBufferBuilder.write`` with one ``memmove`` instead of a Python loop per byte."""
    mv = memoryview(value)
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.contiguous:
        # the converter wrote len(value) as the length: only flat byte buffers keep that honest
        raise TypeError("the iroh byte path takes flat byte buffers (bytes, bytearray, memoryview of bytes)")
    n = mv.nbytes
    with self._reserve(n):
        if n:
            dst = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value + self.rbuf.len
            if isinstance(value, bytes):
                ctypes.memmove(dst, value, n)
            elif not mv.readonly:
                ctypes.memmove(dst, (ctypes.c_char * n).from_buffer(mv.cast("B")), n)
            else:
                ctypes.memmove(dst, (ctypes.c_char * n).from_buffer_copy(mv.cast("B")), n)


_fast_write._prismn_fast = True  # type: ignore[attr-defined]


def _built(builder_cls: Any, write: Any, data: bytes) -> bytes:
    """The bytes a RustBuffer builder holds after ``write(data)``."""
    b = builder_cls()
    try:
        write(b, data)
        return ctypes.string_at(b.rbuf.data, b.rbuf.len)
    finally:
        b.discard()


def check_binding(ffi: Any = None, version: str | None = None) -> Any:
    """Check that the binding is the one the fix was written for; return its original ``write``.

    Checks: iroh is 1.2.x; ``_UniffiRustBufferBuilder`` has ``write(self, value)``, ``_reserve``,
    ``rbuf`` and ``discard``; the bytes converter writes an i32 length then calls ``buf.write``; and
    the original and the fast ``write`` build identical buffers for sample inputs. Raises
    :class:`IrohBindingError` (one line, naming the version) on any mismatch.
    """
    import inspect

    ffi = _ffi if ffi is None else ffi
    version = iroh_version() if version is None else version
    fix = f"install iroh==1.2.* (pip install 'prismn[iroh]') or update prismn.iroh_transport for iroh {version}"
    if not version.startswith(SUPPORTED):
        raise IrohBindingError(f"iroh {version} is installed but Prismn's Iroh transport supports iroh 1.2.x: {fix}")

    def bad(what: str) -> IrohBindingError:
        return IrohBindingError(f"the binding of iroh {version} does not have the shape Prismn patches ({what}): {fix}")

    builder = getattr(ffi, "_UniffiRustBufferBuilder", None)
    conv = getattr(ffi, "_UniffiFfiConverterBytes", None)
    if builder is None or conv is None:
        raise bad("no _UniffiRustBufferBuilder or _UniffiFfiConverterBytes")
    original = getattr(builder, "write", None)
    if original is None or not callable(original):
        raise bad("no _UniffiRustBufferBuilder.write")
    if getattr(original, "_prismn_fast", False):  # already patched (by a previous import): check the original
        original = getattr(builder, "_prismn_original_write", None)
        if original is None:
            raise bad("write was replaced by something else")
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        params = []
    if params != ["self", "value"]:
        raise bad(f"_UniffiRustBufferBuilder.write{tuple(params)} is not write(self, value)")
    for attr in ("_reserve", "discard", "finalize"):
        if not hasattr(builder, attr):
            raise bad(f"_UniffiRustBufferBuilder has no {attr}")
    try:
        src = inspect.getsource(conv.write)
    except (OSError, TypeError):
        src = ""
    if "write_i32(len(value))" not in src or "buf.write(value)" not in src:
        raise bad("the bytes converter no longer writes an i32 length then the bytes")
    samples = [b"", b"\x00", b"\xff", bytes(range(256)) * 3 + b"odd", os.urandom(1031)]
    try:
        for data in samples:
            if _built(builder, original, data) != _built(builder, _fast_write, data):
                raise bad("the fast write builds different bytes than the original")
    except IrohBindingError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the probe is a shape mismatch
        raise bad(f"{e.__class__.__name__} while probing the builder") from None
    return original


def install_fast_bytes() -> None:
    """Replace the binding's per-byte copy with ``memmove``, once, after :func:`check_binding`."""
    builder = _ffi._UniffiRustBufferBuilder
    if getattr(builder.write, "_prismn_fast", False):
        return
    original = check_binding()
    builder._prismn_original_write = original  # kept on the class: survives a re-import of this module
    builder.write = _fast_write
    log.debug("iroh %s: byte path patched (memmove)", iroh_version())


def original_write() -> Any:
    """The binding's own ``write`` (for tests that compare the two paths)."""
    builder = _ffi._UniffiRustBufferBuilder
    return getattr(builder, "_prismn_original_write", builder.write)


# ------------------------------------------------------------------------------------ addresses
def _check_id(endpoint_id: str) -> str:
    e = str(endpoint_id).strip().lower()
    if not ENDPOINT_ID_RE.match(e):
        raise TransportError(f"bad Iroh endpoint id {endpoint_id!r}: it is the peer's public key, 64 hex characters")
    return e


def _check_relay(url: str) -> str:
    u = str(url).strip()
    if not (u.startswith("https://") or u.startswith("http://")) or len(u) < 10:
        raise TransportError(f"bad relay URL {url!r}: write it as https://relay.example.org")
    return u


def _check_direct(addr: str) -> str:
    host, port = parse_address(addr)
    return format_address(host, port)


def parse_iroh_address(address: str) -> tuple[str, list[str], str | None]:
    """``iroh:<id>[@hint,...]`` -> (endpoint id, direct addresses, relay URL); hints are HOST:PORT or a URL."""
    a = str(address).strip()
    if not a.startswith(PREFIX):
        raise TransportError(
            f"bad Iroh address {address!r}: write it as iroh:<64-hex endpoint id> (the peer's public key)"
        )
    body = a[len(PREFIX):]
    eid, _, hints = body.partition("@")
    eid = _check_id(eid)
    direct: list[str] = []
    relay: str | None = None
    for h in filter(None, (x.strip() for x in hints.split(","))):
        if h.startswith(("https://", "http://")):
            relay = _check_relay(h)
        else:
            direct.append(_check_direct(h))
    return eid, direct, relay


@dataclass(frozen=True)
class EndpointInfo:
    """What a peer publishes so that others can dial it: id, direct addresses, home relay."""

    endpoint_id: str
    direct_addresses: tuple[str, ...] = ()
    relay_url: str | None = None

    @property
    def address(self) -> str:
        """``iroh:<id>``: the address to dial once the address book knows this endpoint."""
        return PREFIX + self.endpoint_id

    @property
    def ticket(self) -> str:
        """``iroh:<id>@addr,...[,relay]``: an address that carries its own dial hints."""
        hints = [*self.direct_addresses, *([self.relay_url] if self.relay_url else [])]
        return self.address + ("@" + ",".join(hints) if hints else "")

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "direct_addresses": list(self.direct_addresses),
                "relay_url": self.relay_url}


@dataclass(frozen=True)
class BookEntry:
    """What the address book knows about one endpoint."""

    direct_addresses: tuple[str, ...] = ()
    relay_url: str | None = None


# ------------------------------------------------------------------------------------ connection
class _Reader:
    """``readexactly`` over an Iroh receive stream, so :func:`prismn.wire.read_frame` validates frames
    exactly as it does on TCP (prefix checked against the limits before the payload is read)."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def readexactly(self, n: int) -> bytes:
        if n <= len(self.buf):
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        parts: list[bytes] = []
        if self.buf:
            parts.append(bytes(self.buf))
            self.buf.clear()
        have = len(parts[0]) if parts else 0
        while have < n:
            if self.eof:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            want = n - have
            try:
                if want > _READ_CHUNK:
                    chunk = await self.stream.read_exact(min(want, _READ_SLICE))
                else:
                    chunk = await self.stream.read(_READ_CHUNK)
            except iroh.IrohError as e:
                self.eof = True
                if have == 0 and n > 0 and _is_closed_error(e):
                    raise asyncio.IncompleteReadError(b"", n) from None
                if have:
                    raise asyncio.IncompleteReadError(b"".join(parts), n) from None
                raise ConnectionResetError(f"Iroh stream failed: {_reason(e)}") from None
            if not chunk:
                self.eof = True
                continue
            if have + len(chunk) > n:
                extra = len(chunk) - (n - have)
                self.buf += chunk[-extra:]
                chunk = chunk[:-extra]
            parts.append(chunk)
            have += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _reason(e: BaseException) -> str:
    msg = str(getattr(e, "message", "") or e) or e.__class__.__name__
    return msg.splitlines()[0][:200]


def _is_closed_error(e: BaseException) -> bool:
    m = _reason(e).lower()
    return any(w in m for w in ("closed", "reset", "lost", "finish", "stopped", "timed out", "timeout"))


class IrohConnection(FramedConnection):
    """One QUIC connection with one bidirectional stream of frames. The dialling side opens the
    stream and speaks first (as every Prismn client does); the accepting side takes the stream when
    its first bytes arrive."""

    def __init__(self, conn: Any, limits: Limits, *, stream: Any = None, remote_addr: str | None = None):
        super().__init__()
        self.conn = conn
        self.limits = limits
        self.remote_key: str | None = conn.remote_id().to_bytes().hex()
        self.remote = PREFIX + self.remote_key + (f"@{remote_addr}" if remote_addr else "")
        self._stream = stream
        self._stream_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._reader: _Reader | None = None
        self._send: Any = None
        if stream is not None:
            self._adopt(stream)

    def _adopt(self, bi: Any) -> None:
        self._stream = bi
        self._send = bi.send()
        self._reader = _Reader(bi.recv())

    async def _ensure_stream(self) -> None:
        if self._stream is not None:
            return
        async with self._stream_lock:
            if self._stream is None:
                try:
                    bi = await self.conn.accept_bi()
                except iroh.IrohError as e:
                    raise ConnectionResetError(f"Iroh connection from {self.remote} ended: {_reason(e)}") from None
                self._adopt(bi)

    def _link_closing(self) -> bool:
        try:
            return self.conn.close_reason() is not None
        except Exception:  # noqa: BLE001 - a handle already released counts as closed
            return True

    async def _write_now(self, head: bytes, payload: Buffer, n: int) -> None:
        await self._ensure_stream()
        # a frame half written would desynchronise the stream: a cancelled sender lets it finish
        await asyncio.shield(self._write_frame(head, payload, n))

    async def _write_frame(self, head: bytes, payload: Buffer, n: int) -> None:
        async with self._send_lock:
            try:
                if n <= _JOIN_MAX:
                    await self._send.write_all(head + bytes(payload) if n else head)
                    return
                await self._send.write_all(head)
                mv = memoryview(payload).cast("B")
                for off in range(0, n, _WRITE_SLICE):
                    await self._send.write_all(mv[off: off + _WRITE_SLICE])
            except iroh.IrohError as e:
                raise ConnectionResetError(f"Iroh link to {self.remote} failed: {_reason(e)}") from None

    async def recv(self) -> Frame | None:
        await self._ensure_stream()
        assert self._reader is not None
        return await read_frame(self._reader, self.limits)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._closed:
            return
        await self._flush_delayed()
        self._stop_pump()
        if self._send is not None and not self._link_closing():
            # QUIC drops unacknowledged data on an immediate close: finish the stream and wait
            # (bounded) until the peer acknowledged everything, then close
            with contextlib.suppress(Exception):
                async with self._send_lock:
                    await self._send.finish()
                    await asyncio.wait_for(self._send.stopped(), timeout=2.0)
        with contextlib.suppress(Exception):
            self.conn.close(0, b"closed")

    def path_info(self) -> dict[str, Any]:
        """Best effort: the selected path (direct or relayed), its remote address and Iroh's RTT."""
        try:
            paths = self.conn.paths()
            rtt = self.conn.rtt()
        except Exception as e:  # noqa: BLE001 - informational only
            return {"error": _reason(e)}
        sel = next((p for p in paths if p.is_selected), None)
        return {
            "remote_key": self.remote_key,
            "direct": bool(sel is not None and sel.is_ip),
            "relayed": bool(sel is not None and sel.is_relay),
            "remote_addr": sel.remote_addr if sel is not None else None,
            "rtt_ms": (float(sel.rtt_ms) if sel is not None else (float(rtt) if rtt is not None else None)),
            "paths": [{"remote_addr": p.remote_addr, "direct": p.is_ip, "relayed": p.is_relay,
                       "selected": p.is_selected, "rtt_ms": float(p.rtt_ms)} for p in paths],
        }


class IrohListener(Listener):
    def __init__(self, transport: IrohTransport, task: asyncio.Task[None]):
        self.transport = transport
        self.task = task
        self.info = transport.endpoint_info()
        self.address = self.info.address

    async def close(self) -> None:
        """Stop accepting and close the endpoint (its UDP socket): the peer is no longer reachable here."""
        self.task.cancel()
        await self.transport._close_endpoint()


# ------------------------------------------------------------------------------------ transport
class IrohTransport(Transport):
    """Prismn frames over Iroh (QUIC). One endpoint per transport, bound on first use.

    ``identity``: the peer's :class:`prismn.identity.Identity` (its seed is the endpoint's secret key);
    None makes a throwaway key. ``relay``: n0's public relays (True) or none (False); ``relay_url``: a
    self-hosted relay instead. ``limits``: what a received frame may be (as on TCP).
    """

    kind = "iroh"

    def __init__(self, identity: Identity | None = None, *, relay: bool = True, relay_url: str | None = None,
                 limits: Limits = Limits(), handshake_timeout: float = 10.0):
        install_fast_bytes()
        self._seed = identity.seed() if identity is not None else secrets.token_bytes(32)
        self.endpoint_id = iroh.SecretKey.from_bytes(self._seed).public().to_bytes().hex()
        if identity is not None and identity.public != self.endpoint_id:  # pragma: no cover - key mismatch
            raise TransportError("the identity's public key is not its Iroh endpoint id: the key file is damaged")
        self.relay_url = _check_relay(relay_url) if relay_url else None
        self.relay = bool(relay) or self.relay_url is not None
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self.book: dict[str, BookEntry] = {}
        #: optional ``async (endpoint_id) -> EndpointInfo | dict | None``: asked (e.g. the coordinator)
        #: when an id is unknown or its known addresses fail, then the dial is tried once more
        self.resolver: Callable[[str], Awaitable[EndpointInfo | dict[str, Any] | None]] | None = None
        self._ep: Any = None
        self._bind_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        mode = self.relay_url or ("n0 relays" if self.relay else "no relay")
        return f"IrohTransport({self.endpoint_id[:12]}…, {mode})"

    # --------------------------------------------------------------------- address book
    def learn(self, endpoint_id: str, addrs: list[str] | tuple[str, ...] = (), relay_url: str | None = None,
              *, replace: bool = True) -> None:
        """Record how to reach ``endpoint_id`` (64 hex): direct ``HOST:PORT`` addresses and/or a relay
        URL. ``replace`` (default) forgets what was known before (a restarted peer's old port is stale)."""
        eid = _check_id(endpoint_id)
        if isinstance(addrs, str):
            addrs = [addrs]
        direct = tuple(dict.fromkeys(_check_direct(a) for a in addrs))
        relay = _check_relay(relay_url) if relay_url else None
        if not direct and relay is None:
            raise TransportError(f"nothing to learn for Iroh endpoint {eid[:12]}…: give direct addresses or a relay URL")
        old = self.book.get(eid)
        if old is not None and not replace:
            direct = tuple(dict.fromkeys((*direct, *old.direct_addresses)))
            relay = relay or old.relay_url
        self.book[eid] = BookEntry(direct, relay)

    def learn_info(self, info: EndpointInfo | dict[str, Any]) -> None:
        """Learn what a peer published (:meth:`endpoint_info` or its ``to_json()``)."""
        if isinstance(info, dict):
            info = EndpointInfo(str(info.get("endpoint_id", "")), tuple(info.get("direct_addresses") or ()),
                                info.get("relay_url"))
        self.learn(info.endpoint_id, list(info.direct_addresses), info.relay_url)

    def forget(self, endpoint_id: str) -> None:
        self.book.pop(_check_id(endpoint_id), None)

    def known(self, endpoint_id: str) -> BookEntry | None:
        return self.book.get(_check_id(endpoint_id))

    # --------------------------------------------------------------------- endpoint
    def _options(self, bind_addr: str) -> Any:
        if self.relay_url is not None:
            preset, mode = iroh.preset_minimal(), iroh.RelayMode.custom_from_urls([self.relay_url])
        elif self.relay:
            preset, mode = iroh.preset_n0(), iroh.RelayMode.default_mode()
        else:
            preset, mode = iroh.preset_minimal(), iroh.RelayMode.disabled()
        return iroh.EndpointOptions(preset=preset, relay_mode=mode, bind_addr=bind_addr, alpns=[ALPN],
                                    secret_key=self._seed)

    async def _endpoint(self, bind_addr: str = "0.0.0.0:0") -> Any:
        loop = asyncio.get_running_loop()
        if self._bind_lock is None or self._lock_loop is not loop:  # a transport may outlive its loop
            self._bind_lock, self._lock_loop = asyncio.Lock(), loop
        async with self._bind_lock:
            if self._ep is None or self._ep.is_closed():
                try:
                    self._ep = await iroh.Endpoint.bind(self._options(bind_addr))
                except iroh.IrohError as e:
                    raise TransportError(f"cannot open an Iroh endpoint on {bind_addr} ({_reason(e)}): pick another --port") from None
                log.info("Iroh endpoint %s bound on %s", self.endpoint_id, ", ".join(self._ep.bound_sockets()))
            return self._ep

    def endpoint_info(self) -> EndpointInfo:
        """This endpoint's id, direct addresses and home relay, to publish to the coordinator."""
        if self._ep is None or self._ep.is_closed():
            raise TransportError("the Iroh endpoint is not open yet: call listen() (or connect()) first")
        a = self._ep.addr()
        direct = list(a.direct_addresses())
        if not direct:  # no address discovery (relays off): what we are bound to, minus wildcards
            direct = [s for s in self._ep.bound_sockets() if not s.startswith(("0.0.0.0:", "[::]:"))]
        return EndpointInfo(self.endpoint_id, tuple(direct), a.relay_url() or None)

    async def wait_online(self, timeout: float = 10.0) -> bool:
        """With relays: wait (bounded) until the endpoint has a home relay, so that :meth:`endpoint_info`
        carries its relay URL; True once it has. Without relays there is nothing to wait for (True)."""
        ep = await self._endpoint()
        if not self.relay:
            return True
        try:
            await asyncio.wait_for(ep.online(), timeout=timeout)
        except (TimeoutError, iroh.IrohError) as e:
            log.warning("no Iroh relay reachable within %g s (%s): publishing direct addresses only", timeout,
                        _reason(e) if isinstance(e, iroh.IrohError) else "timeout")
            return False
        return True

    async def _close_endpoint(self) -> None:
        ep, self._ep = self._ep, None
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None
        if ep is not None and not ep.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ep.close(), timeout=5.0)

    async def close(self) -> None:
        for t in list(self._handler_tasks):
            t.cancel()
        await self._close_endpoint()

    # --------------------------------------------------------------------- Transport
    async def connect(self, address: str, *, timeout: float = 10.0) -> IrohConnection:
        eid, direct, relay = parse_iroh_address(address)
        if direct or relay:
            self.learn(eid, direct, relay, replace=False)
        entry = self.book.get(eid)
        if entry is None and await self._resolve(eid):
            entry = self.book.get(eid)
        if entry is None:
            raise TransportError(
                f"unknown Iroh endpoint {eid[:16]}…: the address book has no address for it; learn it from "
                f"the coordinator (transport.learn) or dial iroh:<id>@HOST:PORT"
            )
        try:
            return await self._dial(eid, entry, timeout)
        except TransportError:
            # the book may be stale (the peer restarted elsewhere): ask once for its current address
            if not await self._resolve(eid) or self.book.get(eid) == entry:
                raise
        return await self._dial(eid, self.book[eid], timeout)

    async def _resolve(self, eid: str) -> bool:
        """Ask the resolver for ``eid``'s current address; True when it taught the book something."""
        if self.resolver is None:
            return False
        try:
            info = await self.resolver(eid)
        except Exception as e:  # noqa: BLE001 - a failing resolver means "no news"
            log.info("resolving Iroh endpoint %s failed: %s", eid[:16], e)
            return False
        if info is None:
            return False
        if isinstance(info, dict):
            info = EndpointInfo(str(info.get("endpoint_id", eid)), tuple(info.get("direct_addresses") or ()),
                                info.get("relay_url"))
        if _check_id(info.endpoint_id) != eid:
            log.warning("the resolver answered for %s when asked for %s; ignored", info.endpoint_id[:16], eid[:16])
            return False
        if not info.direct_addresses and not info.relay_url:
            return False
        self.learn_info(info)
        return True

    async def _dial(self, eid: str, entry: BookEntry, timeout: float) -> IrohConnection:
        ep = await self._endpoint()
        where = ", ".join([*entry.direct_addresses, *([entry.relay_url] if entry.relay_url else [])])
        try:
            target = iroh.EndpointAddr(iroh.EndpointId.from_bytes(bytes.fromhex(eid)), entry.relay_url,
                                       list(entry.direct_addresses))
            conn = await asyncio.wait_for(ep.connect(target, ALPN), timeout=timeout)
            bi = await asyncio.wait_for(conn.open_bi(), timeout=timeout)
        except (iroh.IrohError, TimeoutError) as e:
            reason = _reason(e) if isinstance(e, iroh.IrohError) else f"no answer within {timeout:g} s"
            raise TransportError(
                f"cannot reach Iroh peer {eid[:16]}… via {where} ({reason}): is it serving with "
                f"--transport iroh, and has the address book its current address?"
            ) from None
        got = conn.remote_id().to_bytes().hex()
        if got != eid:  # pragma: no cover - the TLS handshake already guarantees this
            conn.close(1, b"wrong peer")
            raise TransportError(f"Iroh peer at {where} is {got[:16]}…, not {eid[:16]}…")
        return IrohConnection(conn, self.limits, stream=bi)

    async def listen(self, host: str, port: int, handler: Handler) -> IrohListener:
        if self._accept_task is not None and not self._accept_task.done():
            raise TransportError("this Iroh transport already listens: one listener per endpoint")
        bind_addr = format_address(host or "0.0.0.0", int(port))
        if self._ep is not None and not self._ep.is_closed():
            bound = self._ep.bound_sockets()
            if port and not any(s.endswith(f":{port}") for s in bound):
                raise TransportError(
                    f"this Iroh endpoint is already bound to {', '.join(bound)}: listen before connecting, or use port 0"
                )
            ep = self._ep
        else:
            ep = await self._endpoint(bind_addr)
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop(ep, handler))
        return IrohListener(self, self._accept_task)

    async def _accept_loop(self, ep: Any, handler: Handler) -> None:
        while True:
            try:
                inc = await ep.accept_next()
            except iroh.IrohError as e:
                log.info("Iroh endpoint stopped accepting: %s", _reason(e))
                return
            if inc is None:
                return
            t = asyncio.get_running_loop().create_task(self._serve(inc, handler))
            self._handler_tasks.add(t)
            t.add_done_callback(self._handler_tasks.discard)

    async def _serve(self, inc: Any, handler: Handler) -> None:
        remote_addr: str | None = None
        try:
            with contextlib.suppress(Exception):
                ra = await inc.remote_addr()
                remote_addr = str(getattr(ra, "addr", "")) or None
            accepting = await inc.accept()
            conn = await asyncio.wait_for(accepting.connect(), timeout=self.handshake_timeout)
        except (iroh.IrohError, TimeoutError) as e:
            log.info("Iroh handshake from %s failed: %s", remote_addr or "?", _reason(e))
            return
        if conn.alpn() != ALPN:  # pragma: no cover - the endpoint only advertises ALPN
            conn.close(1, b"unknown protocol")
            return
        c = IrohConnection(conn, self.limits, remote_addr=remote_addr)
        try:
            await handler(c)
        except (ConnectionError, OSError) as e:
            log.info("Iroh connection from %s dropped: %s", c.remote, e)
        finally:
            await c.close()
