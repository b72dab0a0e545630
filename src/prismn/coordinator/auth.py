"""Who may do what on the coordinator: roles, hashed credentials, peer signatures — as FastAPI dependencies.

Roles: the **admin** key (deploy, delete, list everything, issue and revoke credentials), **join** tokens
(a peer may join, then heartbeat as itself only), **API** keys (clients may generate). Every secret is
stored as its SHA-256 only; the first admin key and join token are written once to owner-only files
(0600) beside the store, and the coordinator prints where they are, never what they are.

A peer proves its Ed25519 key on every join and heartbeat: it signs the method, path, a timestamp and
the body's hash (:func:`prismn.protocol.request_bytes`); timestamps must grow, so a recorded request
cannot be replayed. Its id is bound to its key at first join.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi import Request
from sqlalchemy import delete, select

from prismn.coordinator.errors import ApiError, Forbidden, Unauthorized
from prismn.coordinator.store import CredentialRow, MetaRow, Store, utcnow
from prismn.identity import PUBLIC_KEY_RE, verify, write_private
from prismn.protocol import request_bytes

KINDS = ("admin", "join", "api")
#: how far a signed peer request's timestamp may be from the coordinator's clock
CLOCK_SKEW_S = 120.0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(kind: str) -> str:
    return f"prismn_{kind}_{secrets.token_urlsafe(32)}"


@dataclass
class Issued:
    id: str
    kind: str
    secret: str
    expires_at: str | None


class Credentials:
    """The coordinator's credentials, hashed in the store."""

    def __init__(self, store: Store):
        self.store = store
        self._api_keys_exist: bool | None = None

    def issue(self, kind: str, label: str | None = None, ttl_s: float | None = None) -> Issued:
        secret = new_secret(kind)
        return Issued(self.register(kind, secret, label, ttl_s), kind, secret,
                      None if ttl_s is None else (utcnow() + timedelta(seconds=ttl_s)).isoformat() + "Z")

    def register(self, kind: str, secret: str, label: str | None = None, ttl_s: float | None = None) -> str:
        """Store ``secret``'s hash for ``kind`` (idempotent); its id."""
        assert kind in KINDS
        h = digest(secret)
        with self.store.session() as s:
            row = s.scalars(select(CredentialRow).where(CredentialRow.hash == h)).first()
            if row is None:
                row = CredentialRow(id=f"{kind}-{secrets.token_hex(6)}", kind=kind, hash=h, label=label,
                                    expires_at=None if ttl_s is None else utcnow() + timedelta(seconds=ttl_s))
                s.add(row)
            elif row.kind != kind:
                raise ApiError(400, f"that secret is already a {row.kind} credential: use a different one")
            self._api_keys_exist = None
            return row.id

    def check(self, secret: str, kinds: tuple[str, ...]) -> CredentialRow | None:
        """The live credential of one of ``kinds`` that ``secret`` is, else None (looked up by its hash: the
        secret itself is never compared or stored)."""
        if not secret:
            return None
        h = digest(secret)
        with self.store.session() as s:
            row = s.scalars(select(CredentialRow).where(CredentialRow.hash == h)).first()
        if row is None or row.kind not in kinds:
            return None
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at < utcnow()):
            return None
        return row

    def list(self, kind: str | None = None) -> list[CredentialRow]:
        with self.store.session() as s:
            q = select(CredentialRow).order_by(CredentialRow.created_at)
            return list(s.scalars(q.where(CredentialRow.kind == kind) if kind else q))

    def revoke(self, cred_id: str) -> CredentialRow | None:
        with self.store.session() as s:
            row = s.get(CredentialRow, cred_id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = utcnow()
            self._api_keys_exist = None
            return row

    def live(self, kind: str) -> bool:
        now = utcnow()
        return any(r.revoked_at is None and (r.expires_at is None or r.expires_at > now) for r in self.list(kind))

    def api_keys_exist(self) -> bool:
        if self._api_keys_exist is None:
            self._api_keys_exist = self.live("api")
        return self._api_keys_exist

    def bootstrap(self, secrets_dir: Path, admin_key: str | None, join_token: str | None,
                  api_key: str | None) -> dict[str, Path | None]:
        """At start: register secrets given through the environment; make the first admin key and join
        token (files, 0600) when there are none; move a join token stored in plain text (schema 1) to
        its hash. Returns where the files are."""
        out: dict[str, Path | None] = {"admin": None, "join": None}
        with self.store.session() as s:  # schema 1 kept the join token in plain text: hash it, drop it
            legacy = s.get(MetaRow, "join_token")
            old = legacy.value if legacy is not None else None
            if legacy is not None:
                s.execute(delete(MetaRow).where(MetaRow.key == "join_token"))
        if old:
            self.register("join", old, "kept from schema 1")
        for kind, given in (("admin", admin_key), ("join", join_token), ("api", api_key)):
            if given:
                self.register(kind, given, "from the environment")
        for kind, name in (("admin", "admin.key"), ("join", "join.token")):
            path = secrets_dir / name
            if not self.live(kind):
                secrets_dir.mkdir(parents=True, exist_ok=True)
                issued = self.issue(kind, "first start")
                write_private(path, issued.secret + "\n")
            if path.exists():
                out[kind] = path
        return out


def bearer(request: Request) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ").strip()


def _creds(request: Request) -> Credentials:
    return request.app.state.prismn.credentials


def require_admin(request: Request) -> CredentialRow:
    """Dependency: the admin key."""
    given = bearer(request)
    row = _creds(request).check(given, ("admin",))
    if row is not None:
        return row
    if given and _creds(request).check(given, ("join", "api")) is not None:
        raise Forbidden("this needs the admin key; a join token or API key cannot do it", "admin_only")
    raise Unauthorized("wrong or missing admin key: pass it as Authorization: Bearer KEY (the coordinator "
                       "printed where its file is)", "invalid_admin_key")


def require_join(request: Request) -> CredentialRow:
    """Dependency: a live join token (or the admin key)."""
    given = bearer(request)
    row = _creds(request).check(given, ("join", "admin"))
    if row is None:
        raise Unauthorized("wrong, expired or revoked join token: ask the operator for one (PRISMN_JOIN_TOKEN "
                           "or --token-file)", "invalid_token")
    return row


def require_client(request: Request) -> None:
    """Dependency of the OpenAI API: an API key (or the admin key) whenever keys are required — the
    coordinator listens beyond loopback, or API keys exist."""
    st = request.app.state.prismn
    if not (st.settings.require_api_key or st.credentials.api_keys_exist()):
        return
    if st.credentials.check(bearer(request), ("api", "admin")) is None:
        raise Unauthorized("wrong or missing API key: set it as the client's api_key (the operator makes one "
                           "with `prismn admin api-key create`)", "invalid_api_key")


class PeerSignatures:
    """Checks a peer's signed request: the key it names signed (method, path, timestamp, body hash), and
    its timestamps only grow (per key), so nothing recorded can be replayed."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    async def verified_key(self, request: Request) -> str:
        key = request.headers.get("x-prismn-key", "")
        sig = request.headers.get("x-prismn-signature", "")
        ts_s, _, sig_hex = sig.rpartition(".")
        if not PUBLIC_KEY_RE.match(key) or not sig_hex:
            raise Unauthorized("this request must be signed with the peer's key (X-Prismn-Key and "
                               "X-Prismn-Signature headers): use `prismn peer`", "unsigned")
        try:
            ts = float(ts_s)
        except ValueError:
            ts = float("nan")
        if not abs(ts - time.time()) <= CLOCK_SKEW_S:
            raise Unauthorized(f"the request's signature time is off by more than {CLOCK_SKEW_S:.0f} s: "
                               "set this machine's clock (NTP)", "clock_skew")
        body = await request.body()
        if not verify(key, sig_hex, request_bytes(request.method, request.url.path, ts_s, body)):
            raise Unauthorized("the request's signature does not match its key", "bad_signature")
        with self._lock:
            if ts <= self._last.get(key, 0.0):
                raise Unauthorized("replayed or out-of-order signed request refused", "replayed")
            self._last[key] = ts
        return key


async def peer_key(request: Request) -> str:
    """Dependency: the public key that signed this peer request."""
    return await request.app.state.prismn.signatures.verified_key(request)


def require_same_peer(row_key: str | None, key: str, peer_id: str) -> None:
    if row_key is not None and row_key != key:
        raise Forbidden(f"peer id {peer_id!r} belongs to another key: only that peer may use it (pick a new "
                        "--id, or the admin removes the old one: DELETE /v1/peers/ID)", "peer_key_mismatch")
