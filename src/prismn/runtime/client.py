"""Pipeline client: opens a session on every stage, then streams tokens.

The loop each token takes (the one DESIGN.md's cost model prices)::

    client --ids--> stage 1 --hidden--> stage 2 --> ... --> stage k --token id--> client

The client sends token ids (int32, 4 B each) to stage 1; every stage forwards its activations
straight to the next one; the last stage applies the final norm and head, samples (temperature,
top-p, seed) and sends only the token id back. Prefill is one step with the whole prompt. The
client itself needs no torch (only to look at logits it asked for).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prismn.errors import PrismnError
from prismn.transport import Connection, RttMatrix, TcpTransport, Transport, TransportError
from prismn.wire import Frame, WireError, check_tensor, to_tensor


class PipelineError(PrismnError):
    """The pipeline cannot be set up or a stage failed while generating."""


@dataclass
class Hop:
    """One stage as the client sees it: who, where, and (from a plan) what it should serve."""

    peer_id: str
    address: str
    layers: tuple[int, int] | None = None
    embedding: bool | None = None
    head: bool | None = None


@dataclass
class TokenEvent:
    token: int
    index: int  # 0 for the first new token
    t: float  # seconds since the prefill was sent
    latency_s: float  # this step: from sending to stage 1 until the token came back
    trace: list[Any] = field(default_factory=list)  # [[peer, compute seconds], ...] in path order
    logits: Any = None  # float32 tensor [n, vocab] when asked for
    text: str = ""  # new text (set by Pipeline.generate when it has a tokenizer)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    step_s: list[float] = field(default_factory=list)  # decode step latencies (after the first token)
    compute_s: list[float] = field(default_factory=list)  # Σ stage compute per decode step
    stop_reason: str = ""
    emulated: bool = False

    # None, not NaN, when nothing was decoded after the first token (max_tokens=1, or EOS at once):
    # NaN is not JSON, and PostgreSQL's json type refuses it.
    @property
    def s_per_token(self) -> float | None:
        return statistics.fmean(self.step_s) if self.step_s else None

    @property
    def tokens_per_s(self) -> float | None:
        return 1.0 / statistics.fmean(self.step_s) if self.step_s else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "ttft_ms": self.ttft_s * 1e3,
            "latency_ms_per_token": self.s_per_token * 1e3 if self.step_s else None,
            "median_ms_per_token": statistics.median(self.step_s) * 1e3 if self.step_s else None,
            "compute_ms_per_token": statistics.fmean(self.compute_s) * 1e3 if self.compute_s else None,
            "tokens_per_s": self.tokens_per_s,
            "stop_reason": self.stop_reason,
            "emulated": self.emulated,
        }


class PipelineClient:
    """Async client for a chain of stage servers (``hops`` in pipeline order)."""

    def __init__(
        self,
        hops: Sequence[Hop],
        *,
        transport: Transport | None = None,
        rtt: RttMatrix | None = None,
        client_id: str = "client",
        timeout_s: float = 300.0,
    ):
        if not hops:
            raise PipelineError("a pipeline needs at least one stage: pass --peer NAME=HOST:PORT")
        self.hops = list(hops)
        self.transport = transport or TcpTransport()
        self.rtt = rtt
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.conns: list[Connection] = []
        self.infos: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[tuple[int, Frame | None]] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        self.last_stats = GenerationStats()
        if rtt is not None:  # every link of the loop must be in the matrix, fail early
            ids = [client_id] + [h.peer_id for h in self.hops] + [client_id]
            for a, b in zip(ids, ids[1:], strict=False):
                rtt.rtt(a, b)

    @property
    def emulated(self) -> bool:
        return self.rtt is not None

    # ------------------------------------------------------------------------------ plumbing
    async def _read(self, i: int, c: Connection) -> None:
        try:
            while True:
                f = await c.recv()
                await self._inbox.put((i, f))
                if f is None:
                    return
        except (WireError, ConnectionError, OSError):
            await self._inbox.put((i, None))

    def _who(self, i: int) -> str:
        return f"peer {self.hops[i].peer_id} at {self.hops[i].address}"

    async def _send(self, i: int, header: dict[str, Any], payload: Any = b"") -> None:
        try:
            await self.conns[i].send(header, payload)
        except (ConnectionError, OSError) as e:
            raise PipelineError(f"{self._who(i)}: the link dropped ({e}); check that peer's log") from None

    async def _collect(self, kinds: set[str], pending: set[int], sid: str | None, timeout: float | None = None,
                       step: int | None = None) -> dict[int, Frame]:
        out: dict[int, Frame] = {}
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        pending = set(pending)
        while pending:
            remaining = deadline - time.monotonic()
            try:
                i, f = await asyncio.wait_for(self._inbox.get(), max(0.0, remaining))
            except TimeoutError:
                who = ", ".join(self._who(i) for i in sorted(pending))
                raise PipelineError(f"no answer from {who} within {self.timeout_s:.0f} s: is it overloaded or stuck?") from None
            if f is None:
                raise PipelineError(f"{self._who(i)} closed the connection: check that peer's log")
            h = f.header
            if f.kind == "error" and h.get("session") in (sid, None):
                raise PipelineError(f"{self._who(i)}: {h.get('message', 'error')}")
            if f.kind in kinds and i in pending and (sid is None or h.get("session") == sid) \
                    and (step is None or h.get("step") == step):
                out[i] = f
                pending.discard(i)
        return out

    # ------------------------------------------------------------------------------ setup
    async def connect(self) -> list[dict[str, Any]]:
        """Connect to every stage, read its info, check the chain is one whole model in order."""
        if self.conns:
            return self.infos
        try:
            for i, hop in enumerate(self.hops):
                c = await self.transport.connect(hop.address)
                if self.rtt is not None:
                    c.set_delay(self.rtt.one_way_s(self.client_id, hop.peer_id))
                self.conns.append(c)
                self._readers.append(asyncio.get_running_loop().create_task(self._read(i, c)))
            await self.refresh_info()
        except BaseException:  # all or nothing: a half-connected pipeline would pass for a connected one
            await self.aclose()
            raise
        return self.infos

    async def refresh_info(self) -> list[dict[str, Any]]:
        await asyncio.gather(*(c.send({"kind": "info"}) for c in self.conns))
        got = await self._collect({"info"}, set(range(len(self.hops))), None, timeout=60)
        self.infos = [got[i].header for i in range(len(self.hops))]
        return self.infos

    async def load(self, checkpoint: str, *, dtype: str | None = None, device: str | None = None,
                   bench: bool = False, name: str | None = None, token: str | None = None) -> list[dict[str, Any]]:
        """Ask bare stage servers to load the plan's layers of ``checkpoint`` (a path on each peer);
        ``name`` is the model as callers name it, which the stages put on their measurements."""
        for hop in self.hops:
            if hop.layers is None:
                raise PipelineError(f"peer {hop.peer_id} has no layer range to load: give one in the plan")
        await asyncio.gather(*(
            c.send({"kind": "load", "checkpoint": checkpoint, "layers": list(hop.layers or ()),
                    "embedding": hop.embedding, "head": hop.head, "dtype": dtype, "device": device, "bench": bench,
                    **({"model": name} if name else {}), **({"token": token} if token else {})})
            for c, hop in zip(self.conns, self.hops, strict=True)
        ))
        await self._collect({"loaded"}, set(range(len(self.hops))), None, timeout=max(self.timeout_s, 600))
        return await self.refresh_info()

    def check_chain(self) -> None:
        stages = [info.get("stage") for info in self.infos]
        for i, st in enumerate(stages):
            if st is None:
                raise PipelineError(f"{self._who(i)} has no model loaded: start it with `prismn stage serve "
                                    "--checkpoint ... --layers A:B` (or load it)")
        assert all(st is not None for st in stages)
        fp = {st["fingerprint"] for st in stages}  # type: ignore[index]
        if len(fp) > 1:
            raise PipelineError("the stages serve different models: restart them from the same checkpoint")
        n = stages[0]["num_layers"]  # type: ignore[index]
        expect = 0
        for i, (hop, st) in enumerate(zip(self.hops, stages, strict=True)):
            a, b = st["layers"]  # type: ignore[index]
            if hop.layers is not None and tuple(hop.layers) != (a, b):
                raise PipelineError(f"{self._who(i)} serves layers {a}:{b} but the plan gives it "
                                    f"{hop.layers[0]}:{hop.layers[1]}: restart it with --layers {hop.layers[0]}:{hop.layers[1]}")
            if a != expect:
                raise PipelineError(f"{self._who(i)} starts at layer {a} where layer {expect} was expected: "
                                    "the stages must cover the model's layers in order")
            expect = b
        if expect != n:
            raise PipelineError(f"the stages end at layer {expect} but the model has {n}: add the missing stage")
        if not stages[0]["embedding"]:  # type: ignore[index]
            raise PipelineError(f"{self._who(0)} lacks the embedding: the first stage must start at layer 0")
        if not stages[-1]["head"]:  # type: ignore[index]
            raise PipelineError(f"{self._who(len(stages) - 1)} lacks the head: the last stage must hold it")

    @property
    def model_info(self) -> dict[str, Any]:
        return dict(self.infos[0]["stage"]) if self.infos and self.infos[0].get("stage") else {}

    # ------------------------------------------------------------------------------ generation
    async def agenerate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_token_ids: Sequence[int] = (),
        return_logits: bool | str = False,
    ) -> AsyncIterator[TokenEvent]:
        """Stream new tokens. ``return_logits="all"`` also returns the prefill's logits for every position."""
        if not self.conns:
            await self.connect()
        self.check_chain()
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise PipelineError("the prompt is empty: give at least one token")
        if max_new_tokens < 1:
            raise PipelineError("max_new_tokens must be at least 1")
        vocab = int(self.model_info["vocab_size"])
        if min(ids) < 0 or max(ids) >= vocab:
            raise PipelineError(f"prompt token ids must be in [0, {vocab}): is the tokenizer for this model?")
        k = len(self.hops)
        sid = uuid.uuid4().hex
        ctx = len(ids) + max_new_tokens
        stats = self.last_stats = GenerationStats(prompt_tokens=len(ids), emulated=self.emulated)
        stops = {int(t) for t in stop_token_ids}
        failed = False
        try:
            for i, hop in enumerate(self.hops):
                h: dict[str, Any] = {"kind": "open", "session": sid, "max_context": ctx}
                if i < k - 1:
                    h["next"] = self.hops[i + 1].address
                    h["next_dtype"] = self.infos[i + 1]["stage"]["dtype"]
                else:
                    h["sampling"] = {"temperature": float(temperature), "top_p": float(top_p), "seed": int(seed)}
                    h["return_logits"] = return_logits
                if self.rtt is not None:
                    h["emulate"] = {"self": hop.peer_id, "client": self.client_id, "rtt_ms": self.rtt.to_json(),
                                    "next": self.hops[i + 1].peer_id if i < k - 1 else self.client_id}
                await self._send(i, h)
            await self._collect({"opened"}, set(range(k)), sid)
            t_start = time.perf_counter()
            x = ids
            pos = 0
            for step in range(max_new_tokens):
                t_sent = time.perf_counter()
                buf = array.array("i", x)
                await self._send(0, {"kind": "step", "session": sid, "step": step, "pos": pos, "dtype": "int32",
                                     "shape": [len(x)]}, memoryview(buf).cast("B"))
                got = await self._collect({"token"}, {k - 1}, sid, step=step)
                f = got[k - 1]
                now = time.perf_counter()
                tok = f.header.get("token")
                if not isinstance(tok, int) or not 0 <= tok < vocab:
                    raise PipelineError(f"{self._who(k - 1)} sent an invalid token {tok!r}")
                logits = None
                if f.payload:
                    dt, shape = check_tensor(f.header, f.payload, dtypes="float32", ndim=2, fixed={-1: vocab})
                    logits = to_tensor(f.payload, dt, shape)
                trace = f.header.get("trace") if isinstance(f.header.get("trace"), list) else []
                pos += len(x)
                if step == 0:
                    stats.ttft_s = now - t_start
                else:
                    stats.step_s.append(now - t_sent)
                    with contextlib.suppress(TypeError, ValueError, IndexError):
                        stats.compute_s.append(sum(float(e[1]) for e in trace))
                stats.new_tokens += 1
                yield TokenEvent(tok, step, now - t_start, now - t_sent, trace, logits)
                if tok in stops:
                    stats.stop_reason = "stop_token"
                    break
                x = [tok]
            else:
                stats.stop_reason = "length"
        except Exception:
            failed = True
            raise
        finally:
            if not stats.stop_reason:
                stats.stop_reason = "failed" if failed else "stopped"
            for c in self.conns:
                if not c.closed:
                    with contextlib.suppress(ConnectionError, OSError):
                        await c.send({"kind": "close", "session": sid})
            if failed:  # a broken or stuck link: start over, so the next generation reconnects and re-checks
                await self.aclose()

    async def aclose(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                await c.close()
        for t in self._readers:
            t.cancel()
        self.conns, self._readers = [], []
        self._inbox = asyncio.Queue()  # nothing from the old connections may answer a new session


class Pipeline:
    """Synchronous facade: ``for ev in Pipeline(hops, tokenizer=tok).generate("Hi"): print(ev.text)``."""

    def __init__(self, hops: Sequence[Hop], *, rtt: RttMatrix | None = None, tokenizer: Any = None,
                 timeout_s: float = 300.0, transport: Transport | None = None):
        self.loop = asyncio.new_event_loop()
        self.tokenizer = tokenizer
        self.client = PipelineClient(hops, rtt=rtt, timeout_s=timeout_s, transport=transport)
        try:
            self.infos = self._run(self.client.connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def load(self, checkpoint: str, **kw: Any) -> list[dict[str, Any]]:
        self.infos = self._run(self.client.load(checkpoint, **kw))
        return self.infos

    @property
    def stats(self) -> GenerationStats:
        return self.client.last_stats

    def encode(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        if not isinstance(prompt, str):
            return [int(t) for t in prompt]
        if self.tokenizer is None:
            raise PipelineError("a text prompt needs a tokenizer: pass --tokenizer DIR or prompt token ids")
        if chat:
            out = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            if isinstance(out, dict) or hasattr(out, "keys"):
                out = out["input_ids"]
            return [int(t) for t in out]
        return [int(t) for t in self.tokenizer.encode(prompt)]

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str | int] | None = None,
        chat: bool = False,
        return_logits: bool | str = False,
    ) -> Iterator[TokenEvent]:
        """Stream TokenEvents; ``stop`` mixes token ids and strings (text stops need a tokenizer)."""
        ids = self.encode(prompt, chat)
        stop = list(stop or [])
        stop_ids = [s for s in stop if isinstance(s, int)]
        stop_strs = [s for s in stop if isinstance(s, str) and s]
        if stop_strs and self.tokenizer is None:
            raise PipelineError("stop strings need a tokenizer: pass token ids instead")
        agen = self.client.agenerate(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     seed=seed, stop_token_ids=stop_ids, return_logits=return_logits)
        new: list[int] = []
        shown = ""
        try:
            while True:
                try:
                    ev = self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
                new.append(ev.token)
                if self.tokenizer is not None:
                    text = self.tokenizer.decode(new, skip_special_tokens=True)
                    hit = next((s for s in stop_strs if s in text), None)
                    if hit is not None:
                        text = text[: text.index(hit)]
                    if not text.endswith("\ufffd"):
                        ev.text, shown = text[len(shown):], text
                    yield ev
                    if hit is not None:
                        self.client.last_stats.stop_reason = "stop_string"
                        return
                else:
                    yield ev
        finally:
            self._run(agen.aclose())

    def close(self) -> None:
        if not self.loop.is_closed():
            with contextlib.suppress(Exception):
                self._run(self.client.aclose())
            self.loop.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def hops_from_plan(plan: dict[str, Any], peers: dict[str, str]) -> list[Hop]:
    """Hops from a ``prismn plan --json`` document and ``{peer id: address}``."""
    if not isinstance(plan, dict) or not isinstance(plan.get("stages"), list) or not plan["stages"]:
        raise PipelineError("the plan has no stages: pass the JSON printed by `prismn plan --json`")
    if plan.get("feasible") is False:
        raise PipelineError("the plan is marked infeasible: make a feasible plan first (more peers or a smaller model)")
    hops: list[Hop] = []
    for i, st in enumerate(plan["stages"]):
        try:
            peer = str(st["peer"])
            a, b = (int(x) for x in st["layers"])
        except (KeyError, TypeError, ValueError):
            raise PipelineError(f"plan stage {i} needs 'peer' and 'layers': [start, end]") from None
        if peer not in peers:
            raise PipelineError(f"the plan uses peer {peer!r} but no address was given: add --peer {peer}=HOST:PORT")
        hops.append(Hop(peer, peers[peer], (a, b), st.get("embedding"), st.get("head")))
    if hops[-1].head is False:
        raise PipelineError("the plan puts the head on the client, which the runtime does not support yet: "
                            "plan with the head on the last stage")
    return hops


__all__ = ["GenerationStats", "Hop", "Pipeline", "PipelineClient", "PipelineError", "TokenEvent",
           "TransportError", "hops_from_plan"]
