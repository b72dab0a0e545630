"""Mutual authentication on a stage connection, once per connection (never per step).

Over TCP the dialler and the stage prove their Ed25519 keys to each other in three frames::

    dialler -> hello     {key, nonce}
    stage   -> challenge {key, nonce, signature of (dialler's nonce, both keys)}
    dialler -> auth      {signature of (stage's nonce, both keys)}

Each side signs the other's fresh nonce, so a recorded handshake cannot be replayed. A transport that
authenticates keys itself (Iroh: the QUIC connection's remote endpoint id) exposes the remote key as
``conn.remote_key`` and needs no handshake. TCP carries no encryption: on an untrusted network use Iroh.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from prismn.identity import Identity, verify
from prismn.protocol import Auth, Challenge, Hello, dump, handshake_bytes, parse
from prismn.transport import Connection, TransportError
from prismn.wire import WireError

HANDSHAKE_TIMEOUT_S = 10.0


def transport_key(conn: Connection) -> str | None:
    """The remote key the transport itself authenticated (Iroh), else None."""
    key = getattr(conn, "remote_key", None)
    return key if isinstance(key, str) else None


async def authenticate(conn: Connection, me: Identity, expect: str | None = None,
                       timeout_s: float = HANDSHAKE_TIMEOUT_S) -> str:
    """Prove ``me`` to the stage on ``conn`` and check its key (``expect``, when given); its key back.
    TransportError naming the reason when the stage refuses or is not who the plan says."""
    known = transport_key(conn)
    if known is not None:
        if expect is not None and known != expect:
            raise TransportError(f"the peer at {conn.remote} is {known[:12]}…, not the expected {expect[:12]}…")
        return known
    nonce = secrets.token_hex(16)
    await conn.send(dump(Hello(kind="hello", key=me.public, nonce=nonce)))
    f = await asyncio.wait_for(conn.recv(), timeout_s)
    if f is None:
        raise TransportError(f"the peer at {conn.remote} closed the connection during the handshake")
    if f.kind == "error":
        raise TransportError(f"the peer at {conn.remote} refused the handshake: {f.header.get('message')}")
    try:
        ch: Challenge = parse(Challenge, f.header)
    except WireError as e:
        raise TransportError(f"the peer at {conn.remote} answered the handshake wrongly: {e}") from None
    if expect is not None and ch.key != expect:
        raise TransportError(f"the peer at {conn.remote} is {ch.key[:12]}…, not the expected {expect[:12]}…: "
                             "its address now belongs to someone else")
    if not verify(ch.key, ch.signature, handshake_bytes("stage", nonce, ch.key, me.public)):
        raise TransportError(f"the peer at {conn.remote} could not prove its key")
    await conn.send(dump(Auth(kind="auth", signature=me.sign(handshake_bytes("dialler", ch.nonce, me.public,
                                                                                  ch.key)))))
    return ch.key


class StageHandshake:
    """The stage's side: one per connection; ``key`` is set once the dialler has proven it."""

    def __init__(self, me: Identity, conn: Connection):
        self.me, self.conn = me, conn
        self.key: str | None = transport_key(conn)
        self._pending: tuple[str, str] | None = None  # (dialler's key, our nonce) after hello

    async def on_hello(self, header: dict[str, Any]) -> None:
        h: Hello = parse(Hello, header)
        nonce = secrets.token_hex(16)
        self._pending = (h.key, nonce)
        sig = self.me.sign(handshake_bytes("stage", h.nonce, self.me.public, h.key))
        await self.conn.send(dump(Challenge(kind="challenge", key=self.me.public, nonce=nonce, signature=sig)))

    def on_auth(self, header: dict[str, Any]) -> str:
        a: Auth = parse(Auth, header)
        if self._pending is None:
            raise WireError("auth before hello: start the handshake with a hello frame")
        key, nonce = self._pending
        self._pending = None
        if not verify(key, a.signature, handshake_bytes("dialler", nonce, key, self.me.public)):
            raise WireError("the handshake signature does not match the key the dialler named")
        self.key = key
        return key
