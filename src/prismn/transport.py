"""Transports that carry :mod:`prismn.wire` frames between peers.

:class:`Transport` / :class:`Connection` are the interface; :class:`TcpTransport` (asyncio TCP,
``TCP_NODELAY``) is the default implementation; :class:`prismn.iroh_transport.IrohTransport` (QUIC,
dial by endpoint key, NAT traversal, relays) implements the same classes. Callers build either one with
:func:`make_transport` and never import the Iroh module themselves (``iroh`` is an optional dependency).

Emulated wide-area delay: :class:`RttMatrix` holds ``{peer_id: {peer_id: rtt_ms}}`` (the client is
``"client"``). A connection given a one-way delay (:meth:`Connection.set_delay`, RTT/2 of its link)
holds every frame it sends for that long with a real sleep, in order, without blocking the sender —
so a laptop can host a swarm that behaves like peers in Oslo, Paris and São Paulo. Results measured
that way must be labelled "emulated".
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prismn.errors import PrismnError
from prismn.wire import Frame, Limits, encode_header, read_frame

log = logging.getLogger("prismn.transport")

Buffer = bytes | bytearray | memoryview


class TransportError(PrismnError):
    """A peer cannot be reached or an address is malformed."""


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → ``(host, port)``."""
    a = address.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port_s = rest.removeprefix(":")
    else:
        host, _, port_s = a.rpartition(":")
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise TransportError(f"bad peer address {address!r}: write it as HOST:PORT, e.g. 127.0.0.1:9001")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RttMatrix:
    """Round-trip times between peers in milliseconds; ``one_way_s`` is RTT/2 in seconds."""

    def __init__(self, rtt_ms: Mapping[str, Mapping[str, float]]):
        clean: dict[str, dict[str, float]] = {}
        if not isinstance(rtt_ms, Mapping):
            raise TransportError("an RTT matrix must be a JSON object {peer: {peer: rtt_ms}}")
        for a, row in rtt_ms.items():
            if not isinstance(row, Mapping):
                raise TransportError(f"RTT row for {a!r} must be an object {{peer: rtt_ms}}")
            for b, v in row.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                    raise TransportError(f"RTT {a}->{b} = {v!r} must be a non-negative number of milliseconds")
                clean.setdefault(str(a), {})[str(b)] = float(v)
        self.rtt_ms = clean

    def rtt(self, a: str, b: str) -> float:
        """RTT in ms; a missing direction falls back to the reverse one; the same peer is 0."""
        if a == b:
            return 0.0
        for x, y in ((a, b), (b, a)):
            if y in self.rtt_ms.get(x, {}):
                return self.rtt_ms[x][y]
        raise TransportError(f"the RTT matrix has no entry between {a!r} and {b!r}: add one")

    def one_way_s(self, a: str, b: str) -> float:
        return self.rtt(a, b) / 2000.0

    def to_json(self) -> dict[str, dict[str, float]]:
        return {a: dict(row) for a, row in self.rtt_ms.items()}


async def precise_sleep_until(deadline: float) -> None:
    """Sleep until ``perf_counter() >= deadline``: asyncio sleep for the bulk (ms-granular), then
    short blocking sleeps for the last millisecond, so emulated delays are accurate to ~0.1 ms."""
    remaining = deadline - time.perf_counter()
    if remaining > 0.002:
        await asyncio.sleep(remaining - 0.0015)
    while (remaining := deadline - time.perf_counter()) > 0:
        time.sleep(min(remaining, 2e-4))


class Connection(ABC):
    """A bidirectional, ordered stream of frames with one peer."""

    remote: str = "?"
    #: the remote end's Ed25519 public key (64 hex) when the transport authenticated it (Iroh: the
    #: remote endpoint id, proven by the QUIC/TLS handshake); None when it does not (TCP)
    remote_key: str | None = None

    @abstractmethod
    async def send(self, header: dict[str, Any], payload: Buffer = b"") -> None: ...

    @abstractmethod
    async def recv(self) -> Frame | None:
        """The next frame; None when the peer closed cleanly; WireError when it sent garbage."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def set_delay(self, seconds: float) -> None:
        """Emulated one-way delay applied to every frame this side sends from now on."""

    @property
    @abstractmethod
    def closed(self) -> bool: ...


class Listener(ABC):
    address: str

    @abstractmethod
    async def close(self) -> None: ...


Handler = Callable[[Connection], Awaitable[None]]


class Transport(ABC):
    #: ``"tcp"`` or ``"iroh"``
    kind: str = "?"

    @abstractmethod
    async def connect(self, address: str, *, timeout: float = 10.0) -> Connection: ...

    @abstractmethod
    async def listen(self, host: str, port: int, handler: Handler) -> Listener: ...

    async def close(self) -> None:
        """Release what the transport holds (Iroh: its endpoint); TCP holds nothing."""
        return None


TRANSPORT_KINDS = ("tcp", "iroh")


def make_transport(
    kind: str = "tcp",
    *,
    identity: Any = None,
    relay: bool = True,
    relay_url: str | None = None,
    limits: Limits = Limits(),
) -> Transport:
    """The transport called ``kind``: ``"tcp"`` (LAN, tests) or ``"iroh"`` (QUIC, dial by key).

    For Iroh, ``identity`` (a :class:`prismn.identity.Identity`) is the endpoint key (None: a fresh
    throwaway key, fine for a client nobody needs to recognise); ``relay=True`` uses n0's public relays,
    ``relay_url`` a self-hosted one, ``relay=False`` none (LAN, tests). TCP ignores those options.
    """
    k = str(kind).strip().lower()
    if k == "tcp":
        return TcpTransport(limits)
    if k == "iroh":
        try:
            from prismn.iroh_transport import IrohTransport
        except ImportError as e:  # iroh itself missing: name the fix
            msg = str(e) if "pip install" in str(e) else f"the Iroh transport cannot be loaded ({e}): pip install 'prismn[iroh]'"
            raise TransportError(msg) from None
        return IrohTransport(identity, relay=relay, relay_url=relay_url, limits=limits)
    raise TransportError(f"unknown transport {kind!r}: use one of {', '.join(TRANSPORT_KINDS)}")


class MixedTransport(Transport):
    """Listens with one transport and dials both: ``iroh:`` addresses through an Iroh transport (made on
    first use from ``make_iroh``, with this process's identity), everything else over TCP. A coordinator
    and the peers of a mixed swarm use it, so a TCP peer can still hand activations to an Iroh peer."""

    def __init__(self, primary: Transport, make_iroh: Callable[[], Transport] | None = None):
        self.primary = primary
        self.kind = primary.kind
        self._tcp = primary if primary.kind == "tcp" else TcpTransport()
        self._iroh = primary if primary.kind == "iroh" else None
        self._make_iroh = make_iroh

    def iroh(self) -> Transport:
        if self._iroh is None:
            if self._make_iroh is None:
                raise TransportError("this process dials TCP only: start it with --transport iroh to reach Iroh peers")
            self._iroh = self._make_iroh()
        return self._iroh

    async def connect(self, address: str, *, timeout: float = 10.0) -> Connection:
        t = self.iroh() if address.startswith("iroh:") else self._tcp
        return await t.connect(address, timeout=timeout)

    async def listen(self, host: str, port: int, handler: Handler) -> Listener:
        return await self.primary.listen(host, port, handler)

    async def close(self) -> None:
        for t in {id(x): x for x in (self.primary, self._tcp, self._iroh) if x is not None}.values():
            await t.close()


# ------------------------------------------------------------------------------- emulated delay
class FramedConnection(Connection):
    """What TCP and Iroh connections share: the send path with its emulated one-way delay.

    A subclass writes one frame (prefix + header bytes, then payload) with :meth:`_write_now` and says
    whether its link is going away with :meth:`_link_closing`. With no delay and nothing queued a frame
    is written straight away; otherwise a pump task releases each frame at its due time, in order,
    without blocking the sender.
    """

    def __init__(self) -> None:
        self.delay_s = 0.0
        self._queue: collections.deque[tuple[float, bytes, Buffer]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self._last_due = 0.0
        self._closed = False

    @abstractmethod
    async def _write_now(self, head: bytes, payload: Buffer, n: int) -> None: ...

    @abstractmethod
    def _link_closing(self) -> bool: ...

    @property
    def closed(self) -> bool:
        return self._closed or self._link_closing()

    def set_delay(self, seconds: float) -> None:
        self.delay_s = max(0.0, float(seconds))

    async def send(self, header: dict[str, Any], payload: Buffer = b"") -> None:
        if self.closed:
            raise ConnectionResetError(f"connection to {self.remote} is closed")
        n = memoryview(payload).nbytes
        head = encode_header(header, n)
        if self.delay_s <= 0 and not self._queue:
            await self._write_now(head, payload, n)
            return
        # emulated link: hand the frame to the pump, which releases it after the one-way delay
        due = max(time.perf_counter() + self.delay_s, self._last_due)
        self._last_due = due
        self._queue.append((due, head, payload))
        if self._pump is None:
            self._wake = asyncio.Event()
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())
        assert self._wake is not None
        self._wake.set()

    async def _run_pump(self) -> None:
        assert self._wake is not None
        try:
            while not self._closed:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                due, head, payload = self._queue[0]
                await precise_sleep_until(due)
                self._queue.popleft()
                if self._link_closing():
                    return
                await self._write_now(head, payload, memoryview(payload).nbytes)
        except (ConnectionError, OSError) as e:
            log.info("delayed send to %s failed: %s", self.remote, e)
        except asyncio.CancelledError:
            pass

    async def _flush_delayed(self) -> None:
        """Before closing: let frames already "in flight" on an emulated link arrive (at most 5 s)."""
        if self._pump is not None and self._queue and not self._link_closing():
            try:
                await asyncio.wait_for(asyncio.shield(self._drain_queue()), timeout=5.0)
            except TimeoutError:
                pass

    def _stop_pump(self) -> None:
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()

    async def _drain_queue(self) -> None:
        while self._queue:
            await asyncio.sleep(0.001)


# ---------------------------------------------------------------------------------------------- TCP
class TcpConnection(FramedConnection):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits):
        super().__init__()
        self.reader, self.writer, self.limits = reader, writer, limits
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        peer = writer.get_extra_info("peername")
        self.remote = format_address(str(peer[0]), int(peer[1])) if peer else "?"

    def _link_closing(self) -> bool:
        return self.writer.is_closing()

    async def _write_now(self, head: bytes, payload: Buffer, n: int) -> None:
        self.writer.write(head)
        if n:
            self.writer.write(payload)
        await self.writer.drain()

    async def recv(self) -> Frame | None:
        return await read_frame(self.reader, self.limits)

    async def close(self) -> None:
        await self._flush_delayed()
        self._stop_pump()
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class TcpListener(Listener):
    def __init__(self, server: asyncio.AbstractServer):
        self.server = server
        sockname = server.sockets[0].getsockname()
        self.address = format_address(sockname[0], sockname[1])

    async def close(self) -> None:
        self.server.close()
        try:
            await asyncio.wait_for(self.server.wait_closed(), timeout=2.0)
        except TimeoutError:
            pass


class TcpTransport(Transport):
    """asyncio TCP, one frame after another on each connection."""

    kind = "tcp"

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits

    async def connect(self, address: str, *, timeout: float = 10.0) -> Connection:
        host, port = parse_address(address)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=1 << 24), timeout=timeout
            )
        except (OSError, TimeoutError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e.__class__.__name__
            raise TransportError(
                f"cannot reach peer at {address} ({reason}): is `prismn stage serve` running there?"
            ) from None
        return TcpConnection(reader, writer, self.limits)

    async def listen(self, host: str, port: int, handler: Handler) -> Listener:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = TcpConnection(reader, writer, self.limits)
            try:
                await handler(conn)
            finally:
                await conn.close()

        try:
            server = await asyncio.start_server(on_client, host, port, limit=1 << 24)
        except OSError as e:
            raise TransportError(
                f"cannot listen on {format_address(host, port)} ({e.strerror}): pick another --port"
            ) from None
        return TcpListener(server)
