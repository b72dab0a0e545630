"""The coordinator service: FastAPI app with the peer registry, deployments, OpenAI API and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from prismn.coordinator.dashboard import dashboard_router
from prismn.coordinator.deployments import Deployer, deployment_json
from prismn.coordinator.metrics import Metrics
from prismn.coordinator.openai_api import ApiError, router
from prismn.coordinator.registry import Registry, UnknownPeer
from prismn.coordinator.schemas import (
    DeploymentLimits,
    DeploymentRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
)
from prismn.coordinator.settings import Settings
from prismn.coordinator.store import ReceiptRow, Store
from prismn.errors import PrismnError

log = logging.getLogger("prismn.coordinator")


class State:
    """Everything one coordinator holds; routes reach it through closures."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings.db_url)
        self.token = self.store.join_token(settings.join_token)
        self.registry = Registry(self.store, settings)
        self.deployer = Deployer(self.store, self.registry, settings, load_token=self.token)
        self.metrics = Metrics()

    def check_token(self, request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given, self.token):
            raise ApiError(401, "wrong or missing join token: pass the token the coordinator printed at start "
                                "(Authorization: Bearer TOKEN)", "invalid_token")

    def check_api_key(self, request: Request) -> None:
        if self.settings.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given, self.settings.api_key):
            raise ApiError(401, "wrong or missing API key: set it as the client's api_key", "invalid_api_key")

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
                self.metrics.peers_online.set(len(self.store.peers("online")))
                self.metrics.deployments_ready.set(len(self.deployer.ready_models()))
            except Exception:  # never let the sweeper die: log and keep sweeping
                log.exception("lease sweep failed")


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
        try:
            yield
        finally:
            sweeper.cancel()
            restore.cancel()
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
    def join(request: Request, req: JoinRequest) -> JoinResponse:
        state.check_token(request)
        row = state.registry.join(req)
        log.info("peer %s joined from %s (%s, %.1f GiB)", row.id, row.data_addr, row.gpu, row.free_vram_gb)
        return JoinResponse(peer_id=row.id, lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s,
                            peers=state.registry.addresses(exclude=row.id))

    @app.post("/v1/peers/{peer_id}/heartbeat", response_model=HeartbeatResponse)
    def heartbeat(peer_id: str, request: Request, req: HeartbeatRequest) -> HeartbeatResponse:
        state.check_token(request)
        try:
            state.registry.heartbeat(peer_id, req)
        except UnknownPeer:
            raise ApiError(404, f"peer {peer_id!r} is not registered: join first (POST /v1/peers/join)",
                           "unknown_peer") from None
        return HeartbeatResponse(lease_expires_in_s=settings.lease_s, peers=state.registry.addresses(exclude=peer_id))

    @app.get("/v1/peers")
    def peers(request: Request) -> dict[str, Any]:
        state.check_token(request)
        rows = state.store.peers()
        return {"data": [{"id": p.id, "status": p.status, "lat": p.lat, "lon": p.lon, "zone": p.zone,
                          "city": p.city, "gpu": p.gpu, "free_vram_gb": p.free_vram_gb, "data_addr": p.data_addr,
                          "measurements": p.measurements, "stage": p.stage, "joins": p.joins,
                          "last_seen": p.last_seen.isoformat() + "Z"} for p in rows]}

    @app.post("/v1/deployments")
    async def create_deployment(request: Request, req: DeploymentRequest) -> JSONResponse:
        state.check_token(request)
        row = await state.deployer.create(req)
        body = deployment_json(row)
        return JSONResponse(status_code=201 if row.state == "ready" else 409 if row.state == "failed" else 202,
                            content=body)

    @app.get("/v1/deployments")
    def list_deployments(request: Request) -> dict[str, Any]:
        state.check_token(request)
        return {"data": [deployment_json(r) for r in state.store.deployments()]}

    @app.get("/v1/deployments/{dep_id}")
    async def get_deployment(dep_id: str, request: Request) -> dict[str, Any]:
        state.check_token(request)
        try:
            return deployment_json(state.deployer.get(dep_id))
        except KeyError:
            raise ApiError(404, f"no deployment {dep_id!r}: list them with GET /v1/deployments") from None

    @app.patch("/v1/deployments/{dep_id}")
    def limit_deployment(dep_id: str, request: Request, req: DeploymentLimits) -> dict[str, Any]:
        state.check_token(request)
        try:
            return deployment_json(state.deployer.set_limits(dep_id, req.max_sessions, req.max_queue))
        except KeyError:
            raise ApiError(404, f"no deployment {dep_id!r}: list them with GET /v1/deployments") from None

    @app.delete("/v1/deployments/{dep_id}")
    async def delete_deployment(dep_id: str, request: Request) -> dict[str, Any]:
        state.check_token(request)
        try:
            return deployment_json(await state.deployer.stop(dep_id))
        except KeyError:
            raise ApiError(404, f"no deployment {dep_id!r}: list them with GET /v1/deployments") from None

    @app.get("/v1/receipts")
    def receipts(request: Request, limit: int = Query(50, ge=1, le=1000),
                       deployment: str | None = None) -> dict[str, Any]:
        state.check_token(request)
        return {"data": [{"id": r.id, "deployment": r.deployment_id, "created": r.created_at.isoformat() + "Z",
                          "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                          "gco2e": r.gco2e, "joules": r.joules, "ms_per_token": r.ms_per_token,
                          "receipt": r.receipt} for r in state.store.receipts(limit, deployment)]}

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.peers_online.set(len(state.store.peers("online")))
        state.metrics.deployments_ready.set(len(state.deployer.ready_models()))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router(state))
    app.include_router(dashboard_router(state))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
