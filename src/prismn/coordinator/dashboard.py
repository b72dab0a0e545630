"""The dashboard's routes: the page at `/`, its static files, a live SSE stream and plan previews.

Reading is public (like a status page; peers' data addresses are left out). Changing state is not
done here: the page deploys through POST /v1/deployments with the admin credential it asks for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from prismn.coordinator.openai_api import ApiError
from prismn.dashboard import ROOT
from prismn.dashboard.live import Live
from prismn.dashboard.preview import PreviewRequest, model_choices, preview, spec_for
from prismn.errors import PrismnError

log = logging.getLogger("prismn.coordinator")
STREAM_EVERY_S = 1.0
KEEPALIVE_S = 15.0


def _file(rel: str) -> FileResponse:
    path = (ROOT / rel).resolve()
    if not path.is_relative_to(ROOT.resolve()) or not path.is_file():
        raise ApiError(404, f"no dashboard file {rel!r}: the page is at /", "not_found")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


def dashboard_router(state: Any) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    live: dict[str, Live] = {}
    planning = asyncio.Lock()  # previews are CPU work: one at a time

    def get_live(request: Request) -> Live:
        if "live" not in live:
            live["live"] = Live(state, request.app)
        return live["live"]

    @r.get("/")
    async def page() -> FileResponse:
        return _file("static/index.html")

    @r.get("/dashboard/static/{rel:path}")
    async def static(rel: str) -> FileResponse:
        return _file("static/" + rel)

    @r.get("/dashboard/vendor/{rel:path}")
    async def vendor(rel: str) -> FileResponse:
        return _file("vendor/" + rel)

    @r.get("/dashboard/api/snapshot")
    async def snapshot(request: Request) -> dict[str, Any]:
        return await get_live(request).snapshot()

    @r.get("/dashboard/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        lv = get_live(request)

        async def events() -> AsyncIterator[str]:
            last, quiet = None, 0.0
            while not await request.is_disconnected():
                try:
                    body = json.dumps(await lv.snapshot())
                except Exception:  # a failed snapshot (store busy, a peer row mid-update) must not end the stream
                    log.exception("dashboard snapshot failed")
                    body = last
                if body != last:
                    yield f"event: snapshot\ndata: {body}\n\n"
                    last, quiet = body, 0.0
                elif quiet >= KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    quiet = 0.0
                await asyncio.sleep(STREAM_EVERY_S)
                quiet += STREAM_EVERY_S

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @r.get("/dashboard/api/models")
    async def models() -> dict[str, Any]:
        return {"data": model_choices(state.store.deployments())}

    @r.post("/dashboard/api/plan")
    async def plan(req: PreviewRequest) -> dict[str, Any]:
        choices = model_choices(state.store.deployments())
        try:
            spec = spec_for(req, choices)
            swarm = state.registry.swarm()
        except PrismnError as e:
            raise ApiError(400, str(e), "invalid_request") from None
        deploy_model = next(c["deploy_model"] for c in choices if c["id"] == req.model)
        async with planning:
            return await asyncio.to_thread(preview, req, spec, swarm, deploy_model)

    return r
