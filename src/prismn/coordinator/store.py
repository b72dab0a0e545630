"""The coordinator's store: peers, leases, deployments and request receipts, through SQLAlchemy 2.

SQLite file by default (nothing to install); PostgreSQL with a postgresql:// URL. The schema is
created on start and migrated forward by version (`MIGRATIONS`); nothing is ever dropped, so a
restarted coordinator has every peer and deployment back.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from prismn.errors import PrismnError

SCHEMA_VERSION = 2  # 2: peers.public_key, credentials


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # naive UTC: identical on SQLite and PostgreSQL


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "prismn_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class PeerRow(Base):
    __tablename__ = "peers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    city: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gpu: Mapped[str] = mapped_column(String(64))
    free_vram_gb: Mapped[float] = mapped_column(Float)
    carbon_intensity: Mapped[float | None] = mapped_column(Float, nullable=True)
    pue: Mapped[float | None] = mapped_column(Float, nullable=True)
    bandwidth_mbps: Mapped[float | None] = mapped_column(Float, nullable=True)
    data_addr: Mapped[str] = mapped_column(String(256))
    measurements: Mapped[list] = mapped_column(JSON, default=list)
    rtt_ms: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="online")  # online | rejoining (after a restart) | offline
    stage: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # what the peer reports it serves
    joined_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    lease_expires: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    joins: Mapped[int] = mapped_column(Integer, default=1)
    # the Ed25519 key the id was bound to at first join: only that key may heartbeat or re-join as it
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # an Iroh peer's published endpoint (id = its key, direct addresses, relay) and the paths it measured
    # to other peers (direct or relayed, Iroh's RTT): the address book stages dial each other by
    endpoint: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    checkpoint: Mapped[str] = mapped_column(String(512))
    request: Mapped[dict] = mapped_column(JSON)  # strategy, objective, bounds as asked
    plan: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the evaluated plan (prismn plan --json)
    state: Mapped[str] = mapped_column(String(16), default="planning")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every re-plan
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ReceiptRow(Base):
    __tablename__ = "receipts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    gco2e: Mapped[float] = mapped_column(Float)
    joules: Mapped[float] = mapped_column(Float)
    ms_per_token: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: nothing decoded after token 1
    receipt: Mapped[dict] = mapped_column(JSON)


class CredentialRow(Base):
    """A secret someone presents: only its SHA-256 is kept (the secrets are 32 random bytes, so a plain
    hash cannot be brute-forced), with its role, expiry and revocation."""

    __tablename__ = "credentials"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public handle, e.g. for revoking
    kind: Mapped[str] = mapped_column(String(16), index=True)  # admin | join | api
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# Forward-only migrations: version -> SQL statements run once, in order, inside one transaction.
MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE peers ADD COLUMN public_key VARCHAR(64)",  # credentials: created by create_all
        "ALTER TABLE peers ADD COLUMN endpoint JSON"],
}


class Store:
    def __init__(self, url: str):
        self.url = url
        kw: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kw)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self._migrate()
        except OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            raise PrismnError(f"cannot open the store at {safe_url(url)} ({reason}): check --db") from None
        if self.engine.url.get_backend_name() == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            os.chmod(self.engine.url.database, 0o600)  # it holds hashed secrets and peers' keys: owner only

    def _migrate(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.session() as s:
            row = s.get(MetaRow, "schema_version")
            version = int(row.value) if row else 0
            if version == 0:
                s.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            for v in sorted(k for k in MIGRATIONS if k > version):
                for stmt in MIGRATIONS[v]:
                    s.execute(text(stmt))
                row.value = str(v)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def join_token(self, wanted: str | None = None) -> str:
        """The swarm's join token: the one given, else the stored one, else a new one (stored)."""
        with self.session() as s:
            row = s.get(MetaRow, "join_token")
            if wanted:
                if row is None:
                    s.add(MetaRow(key="join_token", value=wanted))
                else:
                    row.value = wanted
                return wanted
            if row is None:
                row = MetaRow(key="join_token", value=secrets.token_urlsafe(24))
                s.add(row)
            return row.value

    def peers(self, status: str | None = None) -> list[PeerRow]:
        with self.session() as s:
            q = select(PeerRow).order_by(PeerRow.joined_at, PeerRow.id)
            if status:
                q = q.where(PeerRow.status == status)
            return list(s.scalars(q))

    def deployments(self) -> list[DeploymentRow]:
        with self.session() as s:
            return list(s.scalars(select(DeploymentRow).order_by(DeploymentRow.created_at)))

    def receipts(self, limit: int, deployment_id: str | None = None) -> list[ReceiptRow]:
        """The newest receipts first."""
        with self.session() as s:
            q = select(ReceiptRow).order_by(ReceiptRow.created_at.desc(), ReceiptRow.id).limit(limit)
            if deployment_id:
                q = q.where(ReceiptRow.deployment_id == deployment_id)
            return list(s.scalars(q))


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
