"""The coordinator service: FastAPI app with the peer registry, deployments, OpenAI API and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import make_url

from prismn.coordinator.auth import Credentials, PeerSignatures, peer_key, require_admin, require_join
from prismn.coordinator.dashboard import dashboard_router
from prismn.coordinator.deployments import Deployer, deployment_json
from prismn.coordinator.errors import ApiError, NotFound
from prismn.coordinator.metrics import Metrics
from prismn.coordinator.openai_api import router
from prismn.coordinator.registry import Registry, UnknownPeer
from prismn.coordinator.schemas import (
    CredentialRequest,
    DeploymentLimits,
    DeploymentRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
)
from prismn.coordinator.settings import Settings
from prismn.coordinator.store import ReceiptRow, Store
from prismn.coordinator.views import peer_json, receipt_json
from prismn.errors import PrismnError
from prismn.identity import Identity

log = logging.getLogger("prismn.coordinator")


class State:
    """Everything one coordinator holds; routes reach it through closures and dependencies
    (``request.app.state.prismn``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings.db_url)
        self.secrets_dir = secrets_dir(settings)
        self.credentials = Credentials(self.store)
        self.secret_files = self.credentials.bootstrap(self.secrets_dir, settings.admin_key, settings.join_token,
                                                       settings.api_key)
        self.signatures = PeerSignatures()
        # signs stage assignments and proves the coordinator to stages (the pipeline client is this key)
        self.identity = Identity.load_or_create(self.secrets_dir / "coordinator.key")
        self.registry = Registry(self.store, settings)
        self.deployer = Deployer(self.store, self.registry, settings, identity=self.identity)
        self.metrics = Metrics()

    def store_receipt(self, dep_id: str, prompt: int, completion: int, receipt: dict[str, Any]) -> None:
        with self.store.session() as s:
            s.add(ReceiptRow(id=secrets.token_hex(12), deployment_id=dep_id, prompt_tokens=prompt,
                             completion_tokens=completion, gco2e=receipt["gco2e"], joules=receipt["joules"],
                             ms_per_token=receipt["measured"]["latency_ms_per_token"], receipt=receipt))

    async def sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.settings.sweep_s)
            try:
                stalled = loop.time() - t0 - self.settings.sweep_s
                if stalled > 1.0:  # this process could not take heartbeats meanwhile: not the peers' fault
                    await asyncio.to_thread(self.registry.extend_leases, stalled)
                gone = await asyncio.to_thread(self.registry.expire)
                if gone:
                    log.info("lease expired: %s (marked offline)", ", ".join(gone))
                    self.metrics.replans.inc(self.deployer.on_peers_offline(gone))
                pruned = await asyncio.to_thread(self.registry.prune, self.deployer.peers_in_use())
                if pruned:
                    log.info("removed peers offline for over %.0f s: %s", self.settings.peer_retention_s,
                             ", ".join(pruned))
                self.metrics.peers_online.set(len(self.store.peers("online")))
                self.metrics.deployments_ready.set(len(self.deployer.ready_models()))
            except Exception:  # never let the sweeper die: log and keep sweeping
                log.exception("lease sweep failed")


def secrets_dir(settings: Settings) -> Path:
    """Where the coordinator's secret files live: as asked, else beside a SQLite store, else $PRISMN_HOME."""
    if settings.secrets_dir:
        return Path(settings.secrets_dir).expanduser()
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).expanduser().resolve().parent
    return Path(os.environ.get("PRISMN_HOME") or Path.home() / ".cache" / "prismn")


def _first_error(exc: RequestValidationError) -> str:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON: send a JSON object"
    loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
    return f"{loc}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}"


class BodyLimit:
    """Refuse request bodies larger than ``limit`` bytes with 413 before anything parses them (a declared
    Content-Length is checked up front; a chunked body is counted as it arrives)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = ApiError(413, f"the request body is larger than this server's limit of {self.limit} bytes: "
                            "send less (or raise --max-body-bytes)", "request_too_large")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await err.response()(scope, receive, send)
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await err.response()(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings) -> FastAPI:
    state = State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.registry.grace()
        state.deployer.mark_restoring()
        sweeper = asyncio.get_running_loop().create_task(state.sweep())
        restore = asyncio.get_running_loop().create_task(state.deployer.restore())
        from prismn.coordinator.replacement import start_replacer  # carbon re-placement clock (--replace)

        replacer = start_replacer(state)
        try:
            yield
        finally:
            sweeper.cancel()
            restore.cancel()
            if replacer is not None:
                replacer.cancel()
            await state.deployer.shutdown()

    app = FastAPI(title="Prismn coordinator", lifespan=lifespan)
    app.state.prismn = state

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, _first_error(exc), "invalid_request").response()

    @app.exception_handler(PrismnError)
    async def prismn_error(_: Request, exc: PrismnError) -> JSONResponse:
        return ApiError(400, str(exc), "invalid_request").response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return ApiError(500, f"internal error ({exc.__class__.__name__}: {str(exc)[:200]}); see the coordinator log",
                        "internal_error").response()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "peers_online": len(state.store.peers("online"))}

    # the store is synchronous (SQLAlchemy): these handlers are plain functions, which FastAPI runs in
    # its thread pool, so heartbeats and listings never hold up the event loop that streams tokens
    @app.post("/v1/peers/join", response_model=JoinResponse)
    def join(req: JoinRequest, _: Any = Depends(require_join), key: str = Depends(peer_key)) -> JoinResponse:
        row = state.registry.join(req, key)
        log.info("peer %s joined from %s (%s, %.1f GiB, key %s…)", row.id, row.data_addr, row.gpu,
                 row.free_vram_gb, key[:12])
        return JoinResponse(peer_id=row.id, lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s,
                            peers=state.registry.addresses(exclude=row.id), coordinator_key=state.identity.public)

    @app.post("/v1/peers/{peer_id}/heartbeat", response_model=HeartbeatResponse)
    def heartbeat(peer_id: str, req: HeartbeatRequest, _: Any = Depends(require_join),
                  key: str = Depends(peer_key)) -> HeartbeatResponse:
        try:
            state.registry.heartbeat(peer_id, req, key)
        except UnknownPeer:
            raise NotFound(f"peer {peer_id!r} is not registered: join first (POST /v1/peers/join)",
                           "unknown_peer") from None
        return HeartbeatResponse(lease_expires_in_s=settings.lease_s, peers=state.registry.addresses(exclude=peer_id),
                                 coordinator_key=state.identity.public)

    @app.get("/v1/endpoints/{endpoint_id}", dependencies=[Depends(require_join)])
    def endpoint(endpoint_id: str) -> dict[str, Any]:
        """The address book for Iroh peers: dial an online peer by its endpoint id (= its key)."""
        info = state.registry.endpoint(endpoint_id)
        if info is None:
            raise NotFound(f"no online Iroh peer has endpoint id {endpoint_id[:16]!r}", "unknown_endpoint")
        return info

    @app.get("/v1/peers", dependencies=[Depends(require_admin)])
    def peers() -> dict[str, Any]:
        return {"data": [peer_json(p) for p in state.store.peers()]}

    @app.delete("/v1/peers/{peer_id}", dependencies=[Depends(require_admin)])
    def remove_peer(peer_id: str) -> dict[str, Any]:
        if peer_id in state.deployer.peers_in_use():
            raise ApiError(409, f"peer {peer_id!r} serves a live deployment: stop it first "
                                "(DELETE /v1/deployments/ID)", "peer_in_use")
        if not state.registry.remove(peer_id):
            raise NotFound(f"no peer {peer_id!r}: list them with GET /v1/peers", "unknown_peer")
        log.info("peer %s removed by the admin", peer_id)
        return {"id": peer_id, "removed": True}

    @app.post("/v1/deployments", dependencies=[Depends(require_admin)])
    async def create_deployment(req: DeploymentRequest) -> JSONResponse:
        row = await state.deployer.create(req)
        body = deployment_json(row)
        return JSONResponse(status_code=201 if row.state == "ready" else 409 if row.state == "failed" else 202,
                            content=body)

    @app.get("/v1/deployments", dependencies=[Depends(require_admin)])
    def list_deployments() -> dict[str, Any]:
        return {"data": [deployment_json(r) for r in state.store.deployments()]}

    def no_deployment(dep_id: str) -> NotFound:
        return NotFound(f"no deployment {dep_id!r}: list them with GET /v1/deployments", "unknown_deployment")

    @app.get("/v1/deployments/{dep_id}", dependencies=[Depends(require_admin)])
    async def get_deployment(dep_id: str) -> dict[str, Any]:
        try:
            return deployment_json(state.deployer.get(dep_id))
        except KeyError:
            raise no_deployment(dep_id) from None

    @app.patch("/v1/deployments/{dep_id}", dependencies=[Depends(require_admin)])
    def limit_deployment(dep_id: str, req: DeploymentLimits) -> dict[str, Any]:
        try:
            return deployment_json(state.deployer.set_limits(dep_id, req.max_sessions, req.max_queue))
        except KeyError:
            raise no_deployment(dep_id) from None

    @app.delete("/v1/deployments/{dep_id}", dependencies=[Depends(require_admin)])
    async def delete_deployment(dep_id: str) -> dict[str, Any]:
        try:
            return deployment_json(await state.deployer.stop(dep_id))
        except KeyError:
            raise no_deployment(dep_id) from None

    @app.get("/v1/receipts", dependencies=[Depends(require_admin)])
    def receipts(limit: int = Query(50, ge=1, le=1000), deployment: str | None = Query(None, max_length=128)
                 ) -> dict[str, Any]:
        return {"data": [receipt_json(r) for r in state.store.receipts(limit, deployment)]}

    # ---- credentials (admin) ------------------------------------------------------------------
    def credential_json(r: Any) -> dict[str, Any]:
        return {"id": r.id, "kind": r.kind, "label": r.label, "created": r.created_at.isoformat() + "Z",
                "expires": r.expires_at.isoformat() + "Z" if r.expires_at else None,
                "revoked": r.revoked_at.isoformat() + "Z" if r.revoked_at else None}

    def credential_routes(kind: str, path: str) -> None:
        def create(req: CredentialRequest) -> JSONResponse:
            issued = state.credentials.issue(kind, req.label, req.ttl_s)
            log.info("%s credential %s issued (%s)", kind, issued.id, req.label or "no label")
            return JSONResponse(status_code=201, content={"id": issued.id, "kind": kind, "secret": issued.secret,
                                                          "expires": issued.expires_at})

        def listing() -> dict[str, Any]:
            return {"data": [credential_json(r) for r in state.credentials.list(kind)]}

        app.post(path, dependencies=[Depends(require_admin)], status_code=201, name=f"create_{kind}")(create)
        app.get(path, dependencies=[Depends(require_admin)], name=f"list_{kind}")(listing)

    credential_routes("join", "/v1/admin/join-tokens")
    credential_routes("api", "/v1/admin/api-keys")

    @app.delete("/v1/admin/credentials/{cred_id}", dependencies=[Depends(require_admin)])
    def revoke(cred_id: str) -> dict[str, Any]:
        row = state.credentials.revoke(cred_id)
        if row is None:
            raise NotFound(f"no credential {cred_id!r}: list them with GET /v1/admin/join-tokens or "
                           "/v1/admin/api-keys", "unknown_credential")
        log.info("credential %s revoked", cred_id)
        return credential_json(row)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.peers_online.set(len(state.store.peers("online")))
        state.metrics.deployments_ready.set(len(state.deployer.ready_models()))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router(state))
    app.include_router(dashboard_router(state))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
