"""Pipeline client: opens a session on every stage, then streams tokens.

The loop each token takes (the one DESIGN.md's cost model prices)::

    client --ids--> stage 1 --hidden--> stage 2 --> ... --> stage k --token id--> client

The client sends token ids (int32, 4 B each) to stage 1; every stage forwards its activations
straight to the next one; the last stage applies the final norm and head, samples (temperature,
top-p, seed) and sends only the token id back. A long prompt goes in chunks of ``prefill_chunk``
tokens, so the stages can run other sessions' decode steps between them. The client itself needs
no torch (only to look at logits it asked for).

One client serves many generations at once: each is a :class:`GenerationSession` with its own id,
KV cache on every stage, sampler, statistics and cancellation; the client only holds the shared
connections and routes what comes back to the session it belongs to.
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
from prismn.handshake import authenticate
from prismn.protocol import StepItem, TokensFrame, dump, parse
from prismn.transport import Connection, RttMatrix, TcpTransport, Transport, TransportError
from prismn.wire import Frame, WireError, check_tensor, to_tensor


class PipelineError(PrismnError):
    """The pipeline cannot be set up or a stage failed while generating."""


class StageFailed(PipelineError):
    """A peer of the pipeline failed mid-generation (its link broke, it reported a failure, or it stopped
    answering within the step deadline): ``peer_id`` names it, so a caller can route around it."""

    def __init__(self, message: str, peer_id: str):
        super().__init__(message)
        self.peer_id = peer_id


@dataclass
class Hop:
    """One stage as the client sees it: who, where, and (from a plan) what it should serve."""

    peer_id: str
    address: str
    layers: tuple[int, int] | None = None
    embedding: bool | None = None
    head: bool | None = None
    key: str | None = None  # the stage's public key: checked in the handshake when the client has an identity


@dataclass
class TokenEvent:
    token: int
    index: int  # 0 for the first new token
    t: float  # seconds since the prefill was sent
    latency_s: float  # this step: from sending to stage 1 until the token came back
    trace: list[Any] = field(default_factory=list)  # [[peer, share of compute s, batch], ...] in path order
    logits: Any = None  # float32 tensor [n, vocab] when asked for
    text: str = ""  # new text (set by Pipeline.generate when it has a tokenizer)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    step_s: list[float] = field(default_factory=list)  # decode step latencies (after the first token)
    compute_s: list[float] = field(default_factory=list)  # Σ stage compute per decode step (this request's share)
    batch_sizes: list[int] = field(default_factory=list)  # largest batch any stage ran each decode step in
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
            "mean_batch": statistics.fmean(self.batch_sizes) if self.batch_sizes else None,
            "stop_reason": self.stop_reason,
            "emulated": self.emulated,
        }


class PipelineClient:
    """Async client for a chain of stage servers (``hops`` in pipeline order), shared by sessions."""

    def __init__(
        self,
        hops: Sequence[Hop],
        *,
        transport: Transport | None = None,
        rtt: RttMatrix | None = None,
        client_id: str = "client",
        timeout_s: float = 300.0,
        prefill_chunk: int = 128,
        identity: Any = None,
    ):
        if not hops:
            raise PipelineError("a pipeline needs at least one stage: pass --peer NAME=HOST:PORT")
        self.hops = list(hops)
        self.transport = transport or TcpTransport()
        #: an :class:`~prismn.identity.Identity`: when given, every stage connection starts with the
        #: handshake (signed-mode stages answer nothing else) and each stage's key is checked
        self.identity = identity
        self.rtt = rtt
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.conns: list[Connection] = []
        self.infos: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[tuple[int, Frame | None]] = asyncio.Queue()  # frames of no session
        self._sessions: dict[str, asyncio.Queue[tuple[int, str, Any, Any]]] = {}  # session id -> its inbox
        self._readers: list[asyncio.Task[None]] = []
        self._connect_lock = asyncio.Lock()
        self._probes: dict[str, dict[int, asyncio.Future[None]]] = {}  # ping id -> stage -> its pong
        self.retired = False  # set for good by retire(): a re-planned or stopped pipeline never re-dials
        #: longest wait for one answer while every stage still answers pings (busy, not dead)
        self.max_wait_s = max(timeout_s, 600.0)
        #: deadline for the first token (prefill) and for each later one; a stage that misses it is probed
        self.first_token_timeout_s = timeout_s
        if rtt is not None:  # every link of the loop must be in the matrix, fail early
            ids = [client_id] + [h.peer_id for h in self.hops] + [client_id]
            for a, b in zip(ids, ids[1:], strict=False):
                rtt.rtt(a, b)

    @property
    def emulated(self) -> bool:
        return self.rtt is not None

    @property
    def sessions_open(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------------------ plumbing
    async def _read(self, i: int, c: Connection) -> None:
        """Route what stage i says: a session's frames to that session, the rest to the control inbox."""
        try:
            while True:
                f = await c.recv()
                if f is None:
                    break
                if f.kind == "tokens":
                    self._route_tokens(i, f)
                    continue
                if f.kind == "pong" and f.header.get("t") in self._probes:
                    fut = self._probes[f.header["t"]].get(i)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                    continue
                sid = f.header.get("session")
                q = self._sessions.get(sid) if isinstance(sid, str) else None
                if q is not None:
                    q.put_nowait((i, f.kind, f.header, None))
                else:
                    await self._inbox.put((i, f))
        except (WireError, ConnectionError, OSError):
            pass
        # the link is gone (the peer closed it or died): every session in flight learns it now, naming
        # this peer, and so does a control wait; the connection counts as closed from here on
        for q in list(self._sessions.values()):
            q.put_nowait((i, "gone", None, None))
        await self._inbox.put((i, None))
        with contextlib.suppress(Exception):
            await c.close()

    def _route_tokens(self, i: int, f: Frame) -> None:
        msg: TokensFrame = parse(TokensFrame, f.header)
        logits = None
        rows = sum(it.rows for it in msg.items)
        if rows:
            vocab = int(self.model_info.get("vocab_size") or 0)
            dt, shape = check_tensor(f.header, f.payload, dtypes="float32", ndim=2, fixed={0: rows, -1: vocab})
            logits = to_tensor(f.payload, dt, shape)
        off = 0
        for it in msg.items:
            part = logits[off: off + it.rows] if (logits is not None and it.rows) else None
            off += it.rows
            q = self._sessions.get(it.session)
            if q is not None:
                q.put_nowait((i, "token", it, part))

    def _who(self, i: int) -> str:
        return f"peer {self.hops[i].peer_id} at {self.hops[i].address}"

    def hop_for(self, ref: Any) -> int | None:
        """The index of the hop a peer id or address names, if any."""
        for i, h in enumerate(self.hops):
            if ref in (h.peer_id, h.address):
                return i
        return None

    async def probe(self, timeout_s: float = 1.0) -> list[int]:
        """Ping every stage at once; the indices of those that do not answer within ``timeout_s``."""
        pid = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        futs = {i: loop.create_future() for i in range(len(self.conns))}
        self._probes[pid] = futs
        try:
            for c in self.conns:
                with contextlib.suppress(ConnectionError, OSError):
                    await c.send({"kind": "ping", "t": pid})
            await asyncio.wait(list(futs.values()), timeout=timeout_s)
            return [i for i, f in futs.items() if not f.done()]
        finally:
            del self._probes[pid]

    async def _send(self, i: int, header: dict[str, Any], payload: Any = b"") -> None:
        try:
            await self.conns[i].send(header, payload)
        except (ConnectionError, OSError) as e:
            raise PipelineError(f"{self._who(i)}: the link dropped ({e}); check that peer's log") from None

    async def _collect(self, kinds: set[str], pending: set[int], timeout: float | None = None) -> dict[int, Frame]:
        """Control replies (info, loaded) from the stages in ``pending``."""
        out: dict[int, Frame] = {}
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        pending = set(pending)
        while pending:
            remaining = deadline - time.monotonic()
            try:
                i, f = await asyncio.wait_for(self._inbox.get(), max(0.0, remaining))
            except TimeoutError:
                who = ", ".join(self._who(i) for i in sorted(pending))
                limit = self.timeout_s if timeout is None else timeout
                raise StageFailed(f"no answer from {who} within {limit:.0f} s: is it overloaded or stuck?",
                                  self.hops[min(pending)].peer_id) from None
            if f is None:
                raise PipelineError(f"{self._who(i)} closed the connection: check that peer's log")
            if f.kind == "error" and f.header.get("session") is None:
                raise PipelineError(f"{self._who(i)}: {f.header.get('message', 'error')}")
            if f.kind in kinds and i in pending:
                out[i] = f
                pending.discard(i)
        return out

    # ------------------------------------------------------------------------------ setup
    async def connect(self) -> list[dict[str, Any]]:
        """Connect to every stage, read its info; reconnect when a link has dropped since."""
        async with self._connect_lock:
            if self.retired:
                raise StageFailed("this pipeline was retired (re-planned or stopped)", "")
            if self.conns and not any(c.closed for c in self.conns):
                return self.infos
            if self.conns:
                await self.aclose()
            try:
                for i, hop in enumerate(self.hops):
                    try:
                        c = await self.transport.connect(hop.address)
                        if self.identity is not None:
                            try:
                                await authenticate(c, self.identity, hop.key)
                            except BaseException:
                                await c.close()
                                raise
                    except (TransportError, TimeoutError, ConnectionError, OSError) as e:
                        raise StageFailed(f"{self._who(i)}: {e}", hop.peer_id) from None
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
        got = await self._collect({"info"}, set(range(len(self.hops))), timeout=10)
        self.infos = [got[i].header for i in range(len(self.hops))]
        return self.infos

    async def load(self, checkpoint: str, *, dtype: str | None = None, device: str | None = None,
                   bench: bool = False, name: str | None = None, token: str | None = None,
                   deployment: str | None = None,
                   assignments: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Ask bare stage servers to load the plan's layers of ``checkpoint`` (a path on each peer);
        ``name`` is the model as callers name it, which the stages put on their measurements;
        ``deployment`` tags the stage, so that only that deployment's unload can drop it.
        ``assignments``: one signed assignment per hop (signed-mode stages load only what it says)."""
        for hop in self.hops:
            if hop.layers is None:
                raise PipelineError(f"peer {hop.peer_id} has no layer range to load: give one in the plan")
        if assignments is not None and len(assignments) != len(self.hops):
            raise PipelineError("one signed assignment per stage is needed")
        await asyncio.gather(*(
            c.send({"kind": "load", "checkpoint": checkpoint, "layers": list(hop.layers or ()),
                    "embedding": hop.embedding, "head": hop.head, "dtype": dtype, "device": device, "bench": bench,
                    **({"model": name} if name else {}), **({"token": token} if token else {}),
                    **({"deployment": deployment} if deployment else {}),
                    **({"assignment": assignments[i]} if assignments is not None else {})})
            for i, (c, hop) in enumerate(zip(self.conns, self.hops, strict=True))
        ))
        await self._collect({"loaded"}, set(range(len(self.hops))), timeout=max(self.timeout_s, 600))
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

    @property
    def context_limit(self) -> tuple[int, str]:
        """(most tokens a session may hold, what sets that bound): the model's positions or a stage's
        session context, whichever is smaller."""
        best: tuple[int, str] = (0, "unknown")
        for i, info in enumerate(self.infos):
            st, ss = info.get("stage") or {}, info.get("sessions") or {}
            for n, why in ((st.get("max_positions"), "the model's context"),
                           (ss.get("max_context"), f"the session context of {self._who(i)} (its --max-context)")):
                if isinstance(n, int) and n > 0 and (best[0] == 0 or n < best[0]):
                    best = (n, why)
        return best

    @property
    def max_sessions(self) -> int:
        """Sessions every stage can hold at once (the smallest stage's limit)."""
        caps = [int((info.get("sessions") or {}).get("max") or 0) for info in self.infos]
        return min((c for c in caps if c > 0), default=1)

    # ------------------------------------------------------------------------------ generation
    def session(self, **options: Any) -> GenerationSession:
        """A new generation with its own caches on every stage (see :class:`GenerationSession`)."""
        return GenerationSession(self, **options)

    async def agenerate(self, prompt_ids: Sequence[int], **options: Any) -> AsyncIterator[TokenEvent]:
        """Stream new tokens of one generation (a convenience over :meth:`session`)."""
        async for ev in self.session(**options).stream(prompt_ids):
            yield ev

    async def retire(self, reason: str = "the pipeline was retired (re-planned or stopped)") -> None:
        """Close for good: sessions in flight are told, and no later generation reconnects."""
        self.retired = True
        await self.aclose(reason)

    async def aclose(self, reason: str = "the pipeline was closed") -> None:
        # readers first: a link closed here must not be reported to sessions as a peer that failed;
        # sessions still in flight learn that their pipeline is gone (their caller may re-route them)
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for q in list(self._sessions.values()):
            q.put_nowait((-1, "reset", reason, None))
        for c in self.conns:
            with contextlib.suppress(Exception):
                await c.close()
        self.conns, self._readers = [], []
        self._inbox = asyncio.Queue()  # nothing from the old connections may answer a new request


class GenerationSession:
    """One request's generation: its id, its KV cache on every stage, its sampler and statistics.

    ``stream(prompt_ids)`` yields :class:`TokenEvent` s; leaving the iteration early (a client that went
    away, a stop string, cancellation) closes the session on every stage at once.
    """

    def __init__(self, client: PipelineClient, *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop_token_ids: Sequence[int] = (),
                 return_logits: bool | str = False):
        if max_new_tokens < 1:
            raise PipelineError("max_new_tokens must be at least 1")
        self.client = client
        self.id = uuid.uuid4().hex
        self.max_new_tokens = int(max_new_tokens)
        self.sampling = {"temperature": float(temperature), "top_p": float(top_p), "seed": int(seed)}
        self.stops = {int(t) for t in stop_token_ids}
        self.return_logits = return_logits
        self.stats = GenerationStats(emulated=client.emulated)
        self.inbox: asyncio.Queue[tuple[int, str, Any, Any]] = asyncio.Queue()

    async def _next(self, want: str, step: int | None, pending: set[int] | None = None,
                    timeout_s: float | None = None) -> tuple[int, Any, Any]:
        c = self.client
        limit = c.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + limit
        while True:
            try:
                i, kind, msg, extra = await asyncio.wait_for(self.inbox.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                silent = await c.probe()  # who is stuck? the stage that does not even answer a ping
                if silent:
                    raise StageFailed(f"{c._who(silent[0])} did not answer within {limit:.1f} s (nor a ping): "
                                      "it is stuck or gone", c.hops[silent[0]].peer_id) from None
                if time.monotonic() - started > c.max_wait_s:
                    who = ", ".join(c._who(i) for i in sorted(pending or {len(c.hops) - 1}))
                    raise PipelineError(f"no answer from {who} within {c.max_wait_s:.0f} s although every stage "
                                        "answers pings: is it overloaded?") from None
                deadline = time.monotonic() + limit  # every stage is alive, only busy (a queue of prompts): wait on
                continue
            if kind == "gone":
                raise StageFailed(f"{c._who(i)} closed the connection: check that peer's log", c.hops[i].peer_id)
            if kind == "reset":
                raise StageFailed(str(msg), "")
            if kind == "error":
                text = f"{c._who(i)}: {msg.get('message', 'error')}"
                failed = c.hop_for(msg.get("failed")) if msg.get("failed") else None
                if failed is not None:
                    raise StageFailed(text, c.hops[failed].peer_id)
                raise PipelineError(text)
            if kind == want and (step is None or msg.step == step) and (pending is None or i in pending):
                return i, msg, extra

    async def _open(self) -> None:
        c = self.client
        k = len(c.hops)
        ctx = self.prompt_len + self.max_new_tokens
        headers = []
        for i, hop in enumerate(c.hops):
            h: dict[str, Any] = {"kind": "open", "session": self.id, "max_context": ctx}
            if i < k - 1:
                h["next"] = c.hops[i + 1].address
                h["next_dtype"] = c.infos[i + 1]["stage"]["dtype"]
            else:
                h["sampling"] = self.sampling
                h["return_logits"] = self.return_logits
            if c.rtt is not None:
                h["emulate"] = {"self": hop.peer_id, "client": c.client_id, "rtt_ms": c.rtt.to_json(),
                                "next": c.hops[i + 1].peer_id if i < k - 1 else c.client_id}
            headers.append(h)
        await asyncio.gather(*(c._send(i, h) for i, h in enumerate(headers)))  # every stage at once
        pending = set(range(k))
        while pending:
            i, _, _ = await self._next("opened", None, pending)
            pending.discard(i)

    async def _send_ids(self, ids: list[int], step: int, pos: int, sample: bool) -> None:
        item = StepItem(session=self.id, step=step, pos=pos, n=len(ids), sample=sample)
        buf = array.array("i", ids)
        await self.client._send(0, {"kind": "step", "items": [dump(item)], "dtype": "int32", "shape": [len(ids)]},
                                memoryview(buf).cast("B"))

    async def stream(self, prompt_ids: Sequence[int]) -> AsyncIterator[TokenEvent]:
        c = self.client
        await c.connect()
        c.check_chain()
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise PipelineError("the prompt is empty: give at least one token")
        vocab = int(c.model_info["vocab_size"])
        if min(ids) < 0 or max(ids) >= vocab:
            raise PipelineError(f"prompt token ids must be in [0, {vocab}): is the tokenizer for this model?")
        self.prompt_len = len(ids)
        stats = self.stats
        stats.prompt_tokens = len(ids)
        k = len(c.hops)
        c._sessions[self.id] = self.inbox
        failed = False
        try:
            await self._open()
            t_start = time.perf_counter()
            # the prompt in chunks: only the last one asks for a token back
            chunk = len(ids) if self.return_logits == "all" else c.prefill_chunk
            step = pos = 0
            for a in range(0, len(ids), chunk):
                part = ids[a: a + chunk]
                await self._send_ids(part, step, pos, sample=a + chunk >= len(ids))
                step, pos = step + 1, pos + len(part)
            t_sent = t_start
            for n in range(self.max_new_tokens):
                _, item, logits = await self._next("token", step - 1, {k - 1},
                                                   c.first_token_timeout_s if n == 0 else c.timeout_s)
                now = time.perf_counter()
                tok = item.token
                if not 0 <= tok < vocab:
                    raise PipelineError(f"{c._who(k - 1)} sent an invalid token {tok!r}")
                if n == 0:
                    stats.ttft_s = now - t_start
                else:
                    stats.step_s.append(now - t_sent)
                    stats.compute_s.append(sum(e[1] for e in item.trace))
                    stats.batch_sizes.append(max((e[2] for e in item.trace), default=1))
                stats.new_tokens += 1
                yield TokenEvent(tok, n, now - t_start, now - t_sent, [list(e) for e in item.trace], logits)
                if tok in self.stops:
                    stats.stop_reason = "stop_token"
                    break
                if n + 1 < self.max_new_tokens:
                    t_sent = time.perf_counter()
                    await self._send_ids([tok], step, pos, sample=True)
                    step, pos = step + 1, pos + 1
            else:
                stats.stop_reason = "length"
        except BaseException:
            failed = True
            raise
        finally:
            if not stats.stop_reason:
                stats.stop_reason = "failed" if failed else "stopped"
            c._sessions.pop(self.id, None)
            # shielded: a cancelled request (client gone) must still free its caches on every stage
            await asyncio.shield(self.close())
            if failed and any(conn.closed for conn in c.conns):
                # a broken link: the next generation reconnects and re-checks the chain
                with contextlib.suppress(Exception):
                    await c.aclose()

    async def close(self) -> None:
        """Free this session's caches on every stage at once (no reply awaited)."""
        c = self.client
        await asyncio.gather(*(self._close_on(conn) for conn in c.conns), return_exceptions=True)

    async def _close_on(self, conn: Connection) -> None:
        if not conn.closed:
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send({"kind": "close", "session": self.id})


class Pipeline:
    """Synchronous facade: ``for ev in Pipeline(hops, tokenizer=tok).generate("Hi"): print(ev.text)``."""

    def __init__(self, hops: Sequence[Hop], *, rtt: RttMatrix | None = None, tokenizer: Any = None,
                 timeout_s: float = 300.0, transport: Transport | None = None, identity: Any = None):
        self.loop = asyncio.new_event_loop()
        self.tokenizer = tokenizer
        self.client = PipelineClient(hops, rtt=rtt, timeout_s=timeout_s, transport=transport, identity=identity)
        self._stats = GenerationStats()
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
        """The statistics of the last generation."""
        return self._stats

    def encode(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        if not isinstance(prompt, str):
            return [int(t) for t in prompt]
        if self.tokenizer is None:
            raise PipelineError("a text prompt needs a tokenizer: pass --tokenizer DIR or prompt token ids")
        from prismn.text import prompt_ids

        return prompt_ids(self.tokenizer, messages=[{"role": "user", "content": prompt}]) if chat \
            else prompt_ids(self.tokenizer, prompt)

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
        """Stream TokenEvents; ``stop`` mixes token ids and strings (text stops need a tokenizer);
        with a tokenizer each event's ``text`` is the text that became final with it."""
        ids = self.encode(prompt, chat)
        stop = list(stop or [])
        stop_ids = [s for s in stop if isinstance(s, int)]
        stop_strs = [s for s in stop if isinstance(s, str) and s]
        if stop_strs and self.tokenizer is None:
            raise PipelineError("stop strings need a tokenizer: pass token ids instead")
        text = None
        if self.tokenizer is not None:
            from prismn.text import TextStream

            text = TextStream(self.tokenizer, stop_strs)
        sess = self.client.session(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=seed, stop_token_ids=stop_ids, return_logits=return_logits)
        self._stats = sess.stats
        agen = sess.stream(ids)
        try:
            while True:
                try:
                    ev = self._run(agen.__anext__())
                except StopAsyncIteration:
                    break
                if text is not None:
                    ev.text = text.push(ev.token)
                    if text.finish_reason == "stop":  # a stop string (ids are handled by the session)
                        yield ev
                        sess.stats.stop_reason = "stop_string"
                        return
                yield ev
            if text is not None and (tail := text.finish()):
                yield TokenEvent(-1, -1, 0.0, 0.0, text=tail)  # held-back text, no new token
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


__all__ = ["GenerationSession", "GenerationStats", "Hop", "Pipeline", "PipelineClient", "PipelineError", "StageFailed",
           "TokenEvent", "TransportError", "hops_from_plan"]
