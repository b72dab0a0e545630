"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions (SSE or not).

Each request is its own generation session on the deployment's shared pipeline (many run at once and
the stages batch their decode steps); admission bounds how many, a client that goes away cancels its
sessions on every stage. Each response's `usage` carries a `carbon` receipt (see receipts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prismn.coordinator.admission import Busy, TooLarge
from prismn.coordinator.auth import require_client
from prismn.coordinator.deployments import LIVE_STATES, Runner
from prismn.coordinator.errors import ApiError
from prismn.coordinator.receipts import build_receipt
from prismn.coordinator.schemas import ChatCompletionRequest, CompletionRequest
from prismn.errors import PrismnError
from prismn.runtime.client import StageFailed
from prismn.text import TextStream, prompt_ids


def _prompts(runner: Runner, req: ChatCompletionRequest | CompletionRequest) -> list[list[int]]:
    tok = runner.tokenizer
    if isinstance(req, ChatCompletionRequest):
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        return [prompt_ids(tok, messages=msgs)]
    return [prompt_ids(tok, p) for p in req.prompts()]


class Generation:
    """One choice of one request: its own session on the pipeline, text stream and receipt."""

    def __init__(self, state: Any, runner: Runner, req: ChatCompletionRequest | CompletionRequest,
                 prompt: list[int], max_tokens: int, index: int, seed: int):
        self.state, self.runner, self.req = state, runner, req
        self.prompt_ids, self.max_tokens, self.index, self.seed = prompt, max_tokens, index, seed
        self.text = ""
        self.ids: list[int] = []
        self.finish_reason = "length"
        self.traces: list[list[Any]] = []
        self.receipt: dict[str, Any] | None = None
        self.recoveries: list[dict[str, Any]] = []  # peers that failed mid-answer and how it went on
        self.used: list[tuple[dict[str, Any], Any]] = []  # earlier (plan, swarm)s this answer ran on
        self._last_token_at: float | None = None

    async def deltas(self) -> AsyncIterator[str]:
        """New text as it becomes final (held back while it could still be the start of a stop string).

        If a peer fails mid-answer, the deployment is re-planned around it and the session is rebuilt
        on the new pipeline by replaying the prompt and every token so far: the caller sees a pause, and
        under greedy decoding the same answer."""
        req = self.req
        eos = self.runner.end_ids
        text = TextStream(self.runner.tokenizer, req.stops(), eos)
        produced: list[int] = []  # every token so far, end-of-turn included: what a replay feeds back
        stats: dict[str, Any] = {}
        while True:
            runner = self.runner
            sess = runner.client.session(max_new_tokens=self.max_tokens - len(produced), temperature=req.temperature,
                                         top_p=req.top_p, seed=self.seed, stop_token_ids=eos)
            try:
                async for ev in sess.stream(self.prompt_ids + produced):
                    self._last_token_at = time.monotonic()
                    self.traces.append(ev.trace)
                    produced.append(ev.token)
                    if ev.token not in eos:
                        self.ids.append(ev.token)
                    d = text.push(ev.token)
                    if d:
                        yield d
                    if text.finish_reason:
                        break
                stats = sess.stats.as_dict()
                break
            except StageFailed as e:
                await self._recover(e)
            except (PrismnError, ConnectionError, OSError) as e:
                self.state.metrics.requests.labels(req.model, "error").inc()
                raise ApiError(503, f"deployment {runner.dep_id}: a peer failed during generation ({e}); "
                                    "retry in a few seconds", "peer_unavailable", retry_after_s=5) from None
        tail = text.finish()
        if tail:
            yield tail
        self.text = text.text
        self.finish_reason = "stop" if (text.finish_reason or stats.get("stop_reason") == "stop_token") else "length"
        await self._account(stats)

    async def _recover(self, e: StageFailed) -> None:
        """Route around the failed peer: the deployment's next runner, or a 503 naming what is missing."""
        runner, settings = self.runner, self.state.settings
        if len(self.recoveries) >= settings.max_recoveries:
            raise ApiError(503, f"deployment {runner.dep_id}: {len(self.recoveries) + 1} peers failed during one "
                                f"request, the last {e.peer_id} ({e}); retry shortly", "peer_unavailable",
                           retry_after_s=5) from None
        t0 = time.monotonic()
        stalled = t0 - (self._last_token_at or t0)  # from the last token to the failure being declared
        try:
            nxt = await self.state.deployer.recover(runner, e.peer_id, str(e))
        except PrismnError as why:
            raise ApiError(503, f"deployment {runner.dep_id}: peer {e.peer_id} failed during generation ({e}) and "
                                f"no new plan serves it: {why}", "peer_unavailable", retry_after_s=5) from None
        self.recoveries.append({"failed_peer": e.peer_id, "reason": str(e), "after_tokens": len(self.ids),
                                "detected_after_s": round(stalled, 3), "pause_s": round(time.monotonic() - t0, 3),
                                "new_route": [s["peer"] for s in nxt.plan["stages"]]})
        self.used.append((runner.plan, runner.swarm))
        self.runner = nxt
        self.state.metrics.recoveries.inc()

    async def _account(self, stats: dict[str, Any]) -> None:
        runner = self.runner
        self.receipt = build_receipt(runner.plan, runner.swarm, self.traces, len(self.prompt_ids), len(self.ids),
                                     stats, runner.client.emulated, earlier=self.used)
        self.receipt["deployment"] = runner.dep_id
        if self.recoveries:
            self.receipt["recoveries"] = self.recoveries
        m, model = self.state.metrics, self.req.model
        m.tokens.labels(model, "prompt").inc(len(self.prompt_ids))
        m.tokens.labels(model, "completion").inc(len(self.ids))
        m.gco2e.labels(model).inc(self.receipt["gco2e"])
        m.joules.labels(model).inc(self.receipt["joules"])
        if stats.get("ttft_ms") is not None:
            m.ttft.labels(model).observe(stats["ttft_ms"] / 1e3)
        if stats.get("latency_ms_per_token") is not None:  # None when nothing was decoded after the first token
            m.latency.labels(model).observe(stats["latency_ms_per_token"] / 1e3)
        if stats.get("mean_batch") is not None:
            m.batch.labels(model).observe(stats["mean_batch"])
        m.requests.labels(model, "ok").inc()
        # the store is synchronous (SQLAlchemy): keep it off the event loop every request shares
        await asyncio.to_thread(self.state.store_receipt, runner.dep_id, len(self.prompt_ids), len(self.ids),
                                self.receipt)

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.ids),
                "total_tokens": len(self.prompt_ids) + len(self.ids), "carbon": self.receipt}


def usage_of(gens: list[Generation]) -> dict[str, Any]:
    """One request's usage: tokens summed over its choices; the receipt of each choice."""
    prompt = sum(len(g.prompt_ids) for g in gens if g.index % max(1, gens[0].req.n) == 0)
    completion = sum(len(g.ids) for g in gens)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if len(gens) == 1:
        out["carbon"] = gens[0].receipt
    else:
        out["carbon"] = {"gco2e": sum(g.receipt["gco2e"] for g in gens if g.receipt),
                         "joules": sum(g.receipt["joules"] for g in gens if g.receipt),
                         "choices": [g.receipt for g in gens]}
    return out


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def router(state: Any) -> APIRouter:
    r = APIRouter(dependencies=[Depends(require_client)])  # an API key whenever keys are required
    settings = state.settings

    async def runner_for(model: str) -> Runner:
        runner = state.deployer.runner_for_model(model)
        if runner is None and any(d.model == model and d.state in LIVE_STATES
                                  for d in await asyncio.to_thread(state.store.deployments)):
            try:  # being planned, loaded, re-planned or restored: wait for it (bounded), don't refuse
                return await state.deployer.wait_for_runner(model)
            except PrismnError as e:
                raise ApiError(503, f"{e}", "deployment_unavailable", "model", retry_after_s=5) from None
        if runner is None:
            ready = state.deployer.served_models()
            raise ApiError(404, f"model {model!r} is not deployed here: use one of {ready or 'none yet'} "
                                f"(GET /v1/models) or deploy it with POST /v1/deployments", "model_not_found", "model")
        return runner

    @r.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": int(r.created), "owned_by": "prismn", "deployment": r.dep_id}
                for name, r in sorted(state.deployer.by_model.items())]
        return {"object": "list", "data": data}

    def generations(runner: Runner, req: ChatCompletionRequest | CompletionRequest) -> list[Generation]:
        max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
        if max_tokens > settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is above this server's limit of {settings.max_tokens_limit}: "
                                "ask for fewer", "max_tokens_too_large", "max_tokens")
        prompts = _prompts(runner, req)
        limit, bound = runner.client.context_limit
        for p in prompts:
            if not p:
                raise ApiError(400, "the prompt is empty after tokenisation: send some text", "invalid_request",
                               "prompt")
            if limit and len(p) + max_tokens > limit:
                raise ApiError(400, f"prompt ({len(p)} tokens) + max_tokens ({max_tokens}) exceed {limit} tokens, "
                                    f"{bound}: shorten the prompt or lower max_tokens",
                               "context_length_exceeded", "max_tokens")
        base = req.seed if req.seed is not None else secrets.randbits(31)
        return [Generation(state, runner, req, p, max_tokens, i * req.n + j, (base + j) % (2**64))
                for i, p in enumerate(prompts) for j in range(req.n)]

    async def run_one(g: Generation, out: asyncio.Queue[tuple[int, str | None, BaseException | None]]) -> None:
        """Generate one choice inside its admission slot, posting (index, delta) and finally (index, None)."""
        try:
            async with g.runner.admission.slot(len(g.prompt_ids) + g.max_tokens):
                async with asyncio.timeout(settings.request_timeout_s):
                    async for d in g.deltas():
                        await out.put((g.index, d, None))
            await out.put((g.index, None, None))
        except Busy as e:
            state.metrics.requests.labels(g.req.model, "busy").inc()
            await out.put((g.index, None, ApiError(429, str(e), "server_busy", retry_after_s=e.retry_after_s)))
        except TooLarge as e:
            await out.put((g.index, None, ApiError(400, str(e), "context_length_exceeded", "max_tokens")))
        except TimeoutError:
            state.metrics.requests.labels(g.req.model, "timeout").inc()
            await out.put((g.index, None, ApiError(504, f"the request ran longer than {settings.request_timeout_s:.0f} s "
                                                        "and was stopped: ask for fewer tokens", "timeout")))
        except ApiError as e:
            await out.put((g.index, None, e))
        except Exception as e:  # noqa: BLE001 - reported to the caller in the API's error shape
            await out.put((g.index, None, ApiError(500, f"generation failed: {e.__class__.__name__}: {e}",
                                                   "internal_error")))

    async def merged(gens: list[Generation]) -> AsyncIterator[tuple[int, str]]:
        """Run every choice at once (they batch on the stages); yield (index, delta) as they come.
        Leaving early (client gone) cancels every choice's session on every stage."""
        q: asyncio.Queue[tuple[int, str | None, BaseException | None]] = asyncio.Queue()
        tasks = [asyncio.get_running_loop().create_task(run_one(g, q)) for g in gens]
        try:
            left = len(tasks)
            while left:
                i, d, err = await q.get()
                if err is not None:
                    raise err
                if d is None:
                    left -= 1
                else:
                    yield i, d
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def until_disconnected(request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)

    async def run(request: Request, req: ChatCompletionRequest | CompletionRequest, chat: bool) -> Any:
        runner = await runner_for(req.model)
        gens = generations(runner, req)
        cid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not req.stream:
            async def collect() -> None:
                async for _ in merged(gens):
                    pass

            work = asyncio.get_running_loop().create_task(collect())
            watch = asyncio.get_running_loop().create_task(until_disconnected(request))
            try:
                await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                work.cancel()
                raise
            finally:
                watch.cancel()
            if not work.done():  # the client left: its sessions are closed on every stage now
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return JSONResponse(status_code=499, content=ApiError(499, "client closed the request",
                                                                      "client_closed").body())
            work.result()
            choices = []
            for g in gens:
                c: dict[str, Any] = {"index": g.index, "finish_reason": g.finish_reason, "logprobs": None}
                if chat:
                    c["message"] = {"role": "assistant", "content": g.text}
                else:
                    c["text"] = g.text
                choices.append(c)
            return {"id": cid, "object": obj, "created": created, "model": req.model, "choices": choices,
                    "usage": usage_of(gens), "system_fingerprint": runner.dep_id}

        async def events() -> AsyncIterator[str]:
            chunk_obj = "chat.completion.chunk" if chat else "text_completion"

            def chunk(index: int, delta: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
                c: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
                if chat:
                    c["delta"] = ({"role": "assistant", "content": ""} if first else
                                  ({"content": delta} if delta is not None else {}))
                else:
                    c["text"] = delta or ""
                return {"id": cid, "object": chunk_obj, "created": created, "model": req.model, "choices": [c]}

            try:
                if chat:
                    for g in gens:
                        yield _sse(chunk(g.index, None, None, first=True))
                async for i, d in merged(gens):
                    yield _sse(chunk(i, d, None))
                for g in gens:
                    final = chunk(g.index, None, g.finish_reason)
                    final["usage"] = g.usage()  # Prismn: each choice's receipt rides on its last chunk
                    yield _sse(final)
                if req.include_usage:
                    yield _sse({"id": cid, "object": chunk_obj, "created": created, "model": req.model,
                                "choices": [], "usage": usage_of(gens)})
            except ApiError as e:  # the stream has started: report in-band, then end it
                yield _sse(e.body())
            except Exception as e:  # noqa: BLE001
                state.metrics.requests.labels(req.model, "error").inc()
                yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error"}})
            yield "data: [DONE]\n\n"

        if len(gens) == 1:
            # refuse before the stream starts when the deployment is full, so the client sees a real 429
            adm = runner.admission
            if adm.full(len(gens[0].prompt_ids) + gens[0].max_tokens):
                state.metrics.requests.labels(req.model, "busy").inc()
                raise ApiError(429, f"deployment {runner.dep_id} is busy: {adm.active} requests running and "
                                    f"{adm.waiting} queued (the queue is full); retry shortly", "server_busy",
                               retry_after_s=adm.retry_after())
        return StreamingResponse(events(), media_type="text/event-stream")

    @r.post("/v1/chat/completions")
    async def chat_completions(request: Request, req: ChatCompletionRequest) -> Any:
        return await run(request, req, chat=True)

    @r.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest) -> Any:
        return await run(request, req, chat=False)

    return r
