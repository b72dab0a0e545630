"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions (SSE or not).

Each response's `usage` carries a `carbon` receipt (see receipts.py).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prismn.coordinator.deployments import Runner
from prismn.coordinator.receipts import build_receipt
from prismn.coordinator.schemas import ChatCompletionRequest, CompletionRequest
from prismn.errors import PrismnError


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None
        return JSONResponse(status_code=self.status, headers=headers, content={"error": {
            "message": self.message, "type": "invalid_request_error" if self.status < 500 else "server_error",
            "param": self.param, "code": self.code}})


def eos_ids(tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS and the chat template's end-of-turn marker."""
    out: set[int] = set()
    for v in (tokenizer.eos_token_id, getattr(tokenizer, "eos_token_ids", None)):
        if isinstance(v, int):
            out.add(v)
        elif isinstance(v, list | tuple | set):
            out.update(int(x) for x in v if isinstance(x, int))
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        if isinstance(tid, int):
            out.add(tid)
    return sorted(out)


def _prompt_ids(tokenizer: Any, req: ChatCompletionRequest | CompletionRequest) -> list[int]:
    if isinstance(req, ChatCompletionRequest):
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]
    prompt = req.prompt if isinstance(req.prompt, str) else "".join(req.prompt)
    return [int(t) for t in tokenizer(prompt)["input_ids"]]


class Generation:
    """One request's token stream with stop strings, detokenisation and a receipt at the end."""

    def __init__(self, app_state: Any, runner: Runner, req: ChatCompletionRequest | CompletionRequest):
        self.state, self.runner, self.req = app_state, runner, req
        s = app_state.settings
        max_tokens = req.max_completion_tokens or req.max_tokens or s.default_max_tokens
        if max_tokens > s.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is above this server's limit of {s.max_tokens_limit}: "
                                "ask for fewer", "max_tokens_too_large", "max_tokens")
        self.max_tokens = max_tokens
        tok = runner.tokenizer
        self.prompt_ids = _prompt_ids(tok, req)
        limit = int(runner.client.model_info.get("max_position_embeddings") or 0)
        if limit and len(self.prompt_ids) + max_tokens > limit:
            raise ApiError(400, f"prompt ({len(self.prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the "
                                f"model's context of {limit}: shorten the prompt or lower max_tokens",
                           "context_length_exceeded", "max_tokens")
        self.stops = req.stops()
        self.text = ""
        self.ids: list[int] = []
        self.finish_reason = "length"
        self.traces: list[list[Any]] = []
        self.receipt: dict[str, Any] | None = None

    async def deltas(self) -> AsyncIterator[str]:
        """New text as it becomes final (held back while it could still be the start of a stop string)."""
        tok = self.runner.tokenizer
        eos = eos_ids(tok)
        hold = max((len(s) for s in self.stops), default=1) - 1
        sent = 0
        req = self.req
        async with self.runner.lock:
            client = self.runner.client
            gen = client.agenerate(self.prompt_ids, max_new_tokens=self.max_tokens, temperature=req.temperature,
                                   top_p=req.top_p, seed=req.seed if req.seed is not None else secrets.randbits(31),
                                   stop_token_ids=eos)
            try:
                async for ev in gen:
                    self.traces.append(ev.trace)
                    if ev.token in eos:
                        self.finish_reason = "stop"
                        break
                    self.ids.append(ev.token)
                    self.text = tok.decode(self.ids, skip_special_tokens=True)
                    cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
                    if cut >= 0:
                        self.text = self.text[:cut]
                        self.finish_reason = "stop"
                        break
                    safe = len(self.text) - hold
                    if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
                        safe = min(safe, len(self.text) - 1)
                    if safe > sent:
                        yield self.text[sent:safe]
                        sent = safe
            except (PrismnError, ConnectionError, OSError, TimeoutError) as e:
                # a peer died, hung or dropped the link: not the caller's fault, and not for long (the
                # client reconnects on the next request; a peer whose lease expires is planned around)
                self.state.metrics.requests.labels(req.model, "error").inc()
                raise ApiError(503, f"deployment {self.runner.dep_id}: a peer failed during generation ({e}); "
                                    "retry in a few seconds", "peer_unavailable", retry_after_s=5) from None
            finally:
                await gen.aclose()
            stats = client.last_stats.as_dict()
        if len(self.text) > sent:
            yield self.text[sent:]
        runner = self.runner
        self.receipt = build_receipt(runner.plan, runner.swarm, self.traces, len(self.prompt_ids), len(self.ids),
                                     stats, client.emulated)
        self.receipt["deployment"] = runner.dep_id
        m, model = self.state.metrics, self.req.model
        m.tokens.labels(model, "prompt").inc(len(self.prompt_ids))
        m.tokens.labels(model, "completion").inc(len(self.ids))
        m.gco2e.labels(model).inc(self.receipt["gco2e"])
        m.joules.labels(model).inc(self.receipt["joules"])
        if stats.get("ttft_ms") is not None:
            m.ttft.labels(model).observe(stats["ttft_ms"] / 1e3)
        if stats.get("latency_ms_per_token") is not None:  # None when nothing was decoded after the first token
            m.latency.labels(model).observe(stats["latency_ms_per_token"] / 1e3)
        m.requests.labels(model, "ok").inc()
        self.state.store_receipt(runner.dep_id, len(self.prompt_ids), len(self.ids), self.receipt)

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.ids),
                "total_tokens": len(self.prompt_ids) + len(self.ids), "carbon": self.receipt}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def router(state: Any) -> APIRouter:
    r = APIRouter()

    def runner_for(model: str) -> Runner:
        runner = state.deployer.runner_for_model(model)
        if runner is None:
            ready = sorted({d.model for d in state.deployer.ready_models()})
            raise ApiError(404, f"model {model!r} is not deployed here: use one of {ready or 'none yet'} "
                                f"(GET /v1/models) or deploy it with POST /v1/deployments", "model_not_found", "model")
        return runner

    @r.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        state.check_api_key(request)
        data = [{"id": d.model, "object": "model", "created": int(d.created_at.timestamp()), "owned_by": "prismn",
                 "deployment": d.id} for d in state.deployer.ready_models()]
        return {"object": "list", "data": data}

    async def run(request: Request, req: ChatCompletionRequest | CompletionRequest, chat: bool) -> Any:
        state.check_api_key(request)
        runner = runner_for(req.model)
        gen = Generation(state, runner, req)
        cid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not req.stream:
            async for _ in gen.deltas():
                pass
            choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": gen.text}
            else:
                choice["text"] = gen.text
            return {"id": cid, "object": obj, "created": created, "model": req.model, "choices": [choice],
                    "usage": gen.usage(), "system_fingerprint": runner.dep_id}

        async def events() -> AsyncIterator[str]:
            chunk_obj = "chat.completion.chunk" if chat else "text_completion"

            def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
                c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
                if chat:
                    c["delta"] = ({"role": "assistant", "content": ""} if first else
                                  ({"content": delta} if delta is not None else {}))
                else:
                    c["text"] = delta or ""
                return {"id": cid, "object": chunk_obj, "created": created, "model": req.model, "choices": [c]}

            try:
                if chat:
                    yield _sse(chunk(None, None, first=True))
                async for d in gen.deltas():
                    yield _sse(chunk(d, None))
                final = chunk(None, gen.finish_reason)
                final["usage"] = gen.usage()
                yield _sse(final)
            except Exception as e:  # the stream has started: report in-band, then end it
                if not isinstance(e, ApiError):  # (an ApiError from the generation counted itself)
                    state.metrics.requests.labels(req.model, "error").inc()
                yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error"}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @r.post("/v1/chat/completions")
    async def chat_completions(request: Request, req: ChatCompletionRequest) -> Any:
        return await run(request, req, chat=True)

    @r.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest) -> Any:
        return await run(request, req, chat=False)

    return r
