"""The stage server: serves one stage of a model to pipeline clients and forwards activations to the
next stage directly.

Protocol (frames of :mod:`prismn.wire`; every reply goes back on the connection the request came on):

``info``   → ``info`` {stage, measurement, sessions, stats}
``ping``   → ``pong``
``load``   {checkpoint, layers, embedding?, head?, dtype?, device?} → ``loaded`` (bare servers only)
``open``   {session, next?, next_dtype?, max_context, sampling?, return_logits?, emulate?} → ``opened``;
           the connection it came on becomes the session's *client* connection: the last stage
           sends its tokens there, and any stage sends the session's errors there.
``step``   {session, step, pos, dtype, shape} + tensor. The first stage takes token ids (int32/int64,
           shape [n]); the others take hidden states (the stage's dtype, [1, n, hidden]). A non-last
           stage forwards ``step`` to the next stage; the last one samples and sends
           ``token`` {session, step, token, pos, trace} (+ float32 logits if asked) to the client.
``close``  {session} → ``closed``; frees the session's KV cache.
``bench``  → ``bench`` {measurement}: re-run the self-benchmark now.

A frame that is malformed, truncated, oversized or carries a tensor of the wrong dtype, shape or size
closes that connection with a logged reason; the server keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import logging
import os
import statistics
import time
from typing import Any

from prismn.runtime import RuntimeStageError
from prismn.runtime.sessions import Session, SessionError, SessionLimits, SessionStore
from prismn.transport import Connection, RttMatrix, TcpTransport, Transport, TransportError
from prismn.wire import (
    FLOAT_DTYPES,
    Frame,
    Limits,
    WireError,
    canonical_dtype,
    check_tensor,
    tensor_payload,
    to_tensor,
)

log = logging.getLogger("prismn.stage")

PROTOCOL_VERSION = 1
MAX_TRACE = 64


def _req(h: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    v = h.get(key)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
        raise WireError(f"'{key}' must be {what}")
    return v


class StageServer:
    def __init__(
        self,
        stage: Any = None,
        *,
        limits: SessionLimits = SessionLimits(),
        peer_id: str = "stage",
        allow_load: bool | None = None,
        bench: bool = True,
        measurement: dict[str, Any] | None = None,
        transport: Transport | None = None,
        default_dtype: str = "fp32",
        default_device: str | None = None,
        load_token: str | None = None,
    ):
        self.stage = stage
        self.limits = limits
        self.peer_id = peer_id
        self.allow_load = (stage is None) if allow_load is None else allow_load
        # when set, a load request must carry it: loading makes this machine read files and fill its
        # memory, so only whoever holds the token (a peer's coordinator: the join token) may ask
        self.load_token = load_token
        self.bench = bench
        self.measurement = measurement
        self.transport = transport or TcpTransport()
        self.default_dtype, self.default_device = default_dtype, default_device
        self.sessions = SessionStore(limits)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prismn-stage")
        self.listener: Any = None
        self.address = ""
        self._next_pool: dict[tuple[str, float], Connection] = {}
        self._pool_lock = asyncio.Lock()
        self._compute_lock = asyncio.Lock()
        self._decode_s: collections.deque[float] = collections.deque(maxlen=256)
        self.served_name: str | None = None  # the model as the coordinator calls it (load's "model")
        #: steps of at most this many tokens run inline on the event loop (lowest per-hop overhead)
        self.inline_max_tokens = 16
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conns: set[Connection] = set()
        self.stats = {"steps": 0, "rejected_frames": 0, "errors": 0, "connections": 0}

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.listener = await self.transport.listen(host, port, self.handle)
        self.address = self.listener.address
        self._spawn(self._expiry_loop())
        return self.address

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.listener is not None:
            await self.listener.close()
        for c in list(self._next_pool.values()) + list(self._conns):
            with contextlib.suppress(Exception):
                await c.close()
        self.sessions.close_all()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _expiry_loop(self) -> None:
        period = max(0.05, min(5.0, self.limits.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            for sid in self.sessions.expire():
                log.info("session %s expired after %.0f s idle; cache freed", sid, self.limits.idle_timeout_s)

    def wire_limits(self) -> Limits:
        if self.stage is None:
            return Limits(max_payload=1 << 16)
        per_token = self.stage.hidden_size * 4 if not self.stage.first else 8
        return Limits(max_payload=max(1 << 16, self.limits.max_context * per_token))

    # ------------------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        return {
            "kind": "info",
            "version": PROTOCOL_VERSION,
            "peer_id": self.peer_id,
            "address": self.address,
            "pid": os.getpid(),
            "stage": self.stage.info() if self.stage is not None else None,
            "measurement": self.measurement,
            "observed": self.observed(),
            "sessions": {
                "open": len(self.sessions),
                "max": self.limits.max_sessions,
                "max_context": self.limits.max_context,
                "idle_timeout_s": self.limits.idle_timeout_s,
                "freed": self.sessions.freed_total,
            },
            "stats": dict(self.stats),
            "accepts_load": self.allow_load,
            "load_needs_token": self.load_token is not None,
        }

    def observed(self) -> dict[str, Any] | None:
        """A measurement dict from the decode steps this stage really served (median of the last 256):
        the whole step (wire bytes to tensor, layers, head and sampling) spread over the layers, with
        the self-benchmark's head/embedding share taken out when there is one."""
        if self.stage is None or len(self._decode_s) < 4:
            return None
        st = self.stage
        step = statistics.median(self._decode_s)
        m = self.measurement or {}
        extra = (m.get("s_head", 0.0) if st.last else 0.0) + (m.get("s_embed", 0.0) if st.first else 0.0)
        per_layer = max(step - extra, step * 0.5) / st.n_layers
        out = dict(m) if m else {"model": st.model_name, "dtype": {"float32": "fp32", "bfloat16": "bf16",
                                                                     "float16": "fp16"}[st.dtype_name],
                                 "device": "cuda" if st.device.startswith("cuda") else st.device,
                                 "s_head": 0.0, "s_embed": 0.0}
        out.update(s_per_layer=per_layer, s_step=step, steps=len(self._decode_s),
                   source=f"observed: median of {len(self._decode_s)} decode steps served")
        if self.served_name:
            out["model"] = self.served_name
        return out

    # ------------------------------------------------------------------------------ connections
    async def handle(self, conn: Connection) -> None:
        self._conns.add(conn)
        self.stats["connections"] += 1
        frame: Frame | None = None
        try:
            while True:
                if hasattr(conn, "limits"):
                    conn.limits = self.wire_limits()  # type: ignore[attr-defined]
                frame = None
                frame = await conn.recv()
                if frame is None:
                    return
                await self.dispatch(conn, frame)
        except WireError as e:
            await self._reject(conn, str(e), frame)
        except (ConnectionError, OSError) as e:
            log.info("connection from %s dropped: %s", conn.remote, e)
        finally:
            self._conns.discard(conn)
            gone = self.sessions.close_where(lambda s: s.attrs.get("client") is conn)
            if gone:
                log.info("client at %s left; freed %d session(s)", conn.remote, len(gone))

    async def _reject(self, conn: Connection, reason: str, frame: Frame | None) -> None:
        self.stats["rejected_frames"] += 1
        log.warning("closing connection from %s: %s", conn.remote, reason)
        if frame is not None:
            s = self.sessions.peek(frame.header.get("session"))
            if s is not None and s.attrs.get("client") is not conn:
                await self._fail_session(s, f"a malformed frame reached stage {self.peer_id}: {reason}")
        await conn.close()

    async def _fail_session(self, s: Session, message: str) -> None:
        self.stats["errors"] += 1
        self.sessions.close(s.id)
        client = s.attrs.get("client")
        log.warning("session %s failed: %s", s.id, message)
        if client is not None and not client.closed:
            with contextlib.suppress(ConnectionError, OSError):
                await client.send({"kind": "error", "session": s.id, "peer": self.peer_id, "message": message})

    async def _error(self, conn: Connection, sid: Any, message: str) -> None:
        self.stats["errors"] += 1
        with contextlib.suppress(ConnectionError, OSError):
            await conn.send({"kind": "error", "session": sid if isinstance(sid, str) else None,
                             "peer": self.peer_id, "message": message})

    async def dispatch(self, conn: Connection, frame: Frame) -> None:
        kind = frame.kind
        h = frame.header
        if kind == "step":
            await self.on_step(conn, frame)
        elif kind == "info":
            await conn.send(self.info())
        elif kind == "ping":
            await conn.send({"kind": "pong", "t": h.get("t")})
        elif kind == "open":
            await self.on_open(conn, h)
        elif kind == "close":
            sid = h.get("session")
            self.sessions.close(sid) if isinstance(sid, str) else None
            await conn.send({"kind": "closed", "session": sid if isinstance(sid, str) else None})
        elif kind == "load":
            await self.on_load(conn, h)
        elif kind == "bench":
            await self.on_bench(conn)
        elif kind in ("error", "pong", "closed"):
            log.info("%s from %s: %s", kind, conn.remote, h.get("message", ""))
        else:
            raise WireError(f"unknown frame kind {kind!r}")

    # ------------------------------------------------------------------------------ load
    async def on_load(self, conn: Connection, h: dict[str, Any]) -> None:
        if not self.allow_load:
            await self._error(conn, None, "this stage was started with --checkpoint and takes no load requests: "
                                          "start a bare `prismn stage serve` to load stages remotely")
            return
        if self.load_token is not None and not hmac.compare_digest(
                str(h.get("token") or "").encode(), self.load_token.encode()):
            log.warning("refused a load request from %s: wrong or missing load token", getattr(conn, "remote", "?"))
            await self._error(conn, None, "load refused: wrong or missing load token (a peer takes its coordinator's "
                                          "join token; a bare stage its --load-token)")
            return
        ckpt_ref = _req(h, "checkpoint", str, "a checkpoint folder or model name")
        layers = h.get("layers")
        if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(x, int) for x in layers)):
            raise WireError("'layers' must be [start, end]")
        dtype = h.get("dtype") or self.default_dtype
        device = h.get("device") or self.default_device
        bench = bool(h.get("bench", self.bench))
        emb, head = h.get("embedding"), h.get("head")
        name = h.get("model")
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= 200):
            raise WireError("'model' must be the model's name (a string of at most 200 characters)")

        def work() -> tuple[Any, Any]:
            from prismn.runtime.checkpoint import resolve_checkpoint
            from prismn.runtime.stage import Stage

            st = Stage(resolve_checkpoint(ckpt_ref), layers[0], layers[1], embedding=emb, head=head,
                       dtype=str(dtype), device=device)
            m = None
            if bench:
                from prismn.runtime.selfbench import self_benchmark

                m = self_benchmark(st)
            return st, m

        try:
            stage, m = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except Exception as e:  # a user error (bad path/range) or a load failure: one line back
            await self._error(conn, None, f"load failed: {e}")
            return
        freed = self.sessions.close_all()
        if freed:
            log.info("loading a new stage freed %d session(s)", len(freed))
        self.stage, self.measurement, self.served_name = stage, m, name
        self._decode_s.clear()
        log.info("loaded layers %d:%d of %s", stage.start, stage.end, stage.model_name)
        await conn.send({**self.info(), "kind": "loaded"})

    async def on_bench(self, conn: Connection) -> None:
        """Re-run the self-benchmark now (e.g. once all local stages have finished loading)."""
        if self.stage is None:
            await self._error(conn, None, f"stage {self.peer_id} has no model loaded")
            return
        from prismn.runtime.selfbench import self_benchmark

        self.measurement = await asyncio.get_running_loop().run_in_executor(self.executor, self_benchmark, self.stage)
        await conn.send({"kind": "bench", "measurement": self.measurement})

    # ------------------------------------------------------------------------------ sessions
    async def on_open(self, conn: Connection, h: dict[str, Any]) -> None:
        sid = _req(h, "session", str, "a session id")
        if self.stage is None:
            await self._error(conn, sid, f"stage {self.peer_id} has no model loaded: send it a load request first")
            return
        st = self.stage
        max_context = _req(h, "max_context", int, "an integer number of tokens")
        sampling = h.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise WireError("'sampling' must be an object")
        return_logits = h.get("return_logits", False)
        if return_logits not in (False, True, "all"):
            raise WireError("'return_logits' must be false, true or \"all\"")
        emulate = h.get("emulate")
        nxt = h.get("next")
        try:
            if st.max_positions and max_context > st.max_positions:
                raise SessionError(f"{max_context} tokens exceed the model's {st.max_positions} positions: "
                                   "shorten the prompt or max_new_tokens")
            rtt = me = None
            if emulate is not None:
                if not isinstance(emulate, dict) or not isinstance(emulate.get("self"), str):
                    raise WireError("'emulate' must be {self, next?, client?, rtt_ms}")
                try:
                    rtt = RttMatrix(emulate.get("rtt_ms") or {})
                except TransportError as e:
                    raise WireError(str(e)) from None
                me = emulate["self"]
            sampler = None
            if st.last:
                from prismn.runtime.stage import Sampler

                try:
                    sampler = Sampler(float(sampling.get("temperature", 0.0)), float(sampling.get("top_p", 1.0)),
                                      int(sampling.get("seed", 0)))
                except (TypeError, ValueError):
                    raise WireError("'sampling' needs numeric temperature, top_p and seed") from None
            next_conn = None
            next_dtype = st.dtype_name
            if not st.last:
                if not isinstance(nxt, str):
                    raise SessionError(f"stage {self.peer_id} is not the last stage: the open request must name 'next'")
                next_dtype = canonical_dtype(h.get("next_dtype") or st.dtype_name)
                if next_dtype not in FLOAT_DTYPES:
                    raise WireError("'next_dtype' must be a float dtype")
                delay = rtt.one_way_s(me, str(emulate.get("next"))) if rtt is not None and emulate else 0.0
                next_conn = await self._next_connection(nxt, delay)
            if rtt is not None and emulate:
                conn.set_delay(rtt.one_way_s(me, str(emulate.get("client", "client"))))
            self.sessions.open(sid, st.new_cache, max_context, client=conn, next=next_conn, next_dtype=next_dtype,
                               sampler=sampler, return_logits=return_logits)
        except (SessionError, TransportError, RuntimeStageError) as e:
            await self._error(conn, sid, str(e))
            return
        await conn.send({"kind": "opened", "session": sid, "peer": self.peer_id})

    async def _next_connection(self, address: str, delay: float) -> Connection:
        key = (address, round(delay, 6))
        async with self._pool_lock:
            c = self._next_pool.get(key)
            if c is not None and not c.closed:
                return c
            try:
                c = await self.transport.connect(address)
            except TransportError as e:
                raise TransportError(f"stage {self.peer_id} cannot reach its next hop: {e}") from None
            c.set_delay(delay)
            self._next_pool[key] = c
            self._spawn(self._watch_next(key, c))
            return c

    async def _watch_next(self, key: tuple[str, float], c: Connection) -> None:
        """Read what the next stage says on our outgoing connection (errors), notice when it closes."""
        try:
            while True:
                f = await c.recv()
                if f is None:
                    break
                if f.kind == "error":
                    s = self.sessions.peek(f.header.get("session"))
                    msg = str(f.header.get("message", "error"))
                    if s is not None:
                        await self._fail_session(s, f"next stage {f.header.get('peer', key[0])}: {msg}")
                    else:
                        log.warning("next stage %s: %s", key[0], msg)
        except (WireError, ConnectionError, OSError) as e:
            log.warning("connection to next stage %s broke: %s", key[0], e)
        finally:
            if self._next_pool.get(key) is c:
                del self._next_pool[key]
            for s in [s for sid in self.sessions.ids() if (s := self.sessions.peek(sid)) and s.attrs.get("next") is c]:
                await self._fail_session(s, f"the next stage at {key[0]} closed the connection")
            with contextlib.suppress(Exception):
                await c.close()

    # ------------------------------------------------------------------------------ steps
    async def on_step(self, conn: Connection, frame: Frame) -> None:
        h, payload = frame.header, frame.payload
        st = self.stage
        sid = h.get("session")
        if st is None:
            await self._error(conn, sid, f"stage {self.peer_id} has no model loaded")
            return
        # validate the tensor before anything touches it (WireError closes this connection)
        max_ctx = self.limits.max_context
        if st.first:
            dtype, shape = check_tensor(h, payload, dtypes=("int32", "int64"), ndim=1, max_elems=max_ctx)
            n_new = shape[0]
        else:
            dtype, shape = check_tensor(h, payload, dtypes=st.dtype_name, ndim=3,
                                        fixed={0: 1, 2: st.hidden_size}, max_elems=max_ctx * st.hidden_size)
            n_new = shape[1]
        s = self.sessions.peek(sid)
        if s is None:
            await self._error(conn, sid, f"unknown session {sid!r} on stage {self.peer_id} (closed or expired)")
            return
        try:
            self.sessions.check_step(s, h.get("step"), h.get("pos"), n_new)
        except SessionError as e:
            await self._fail_session(s, str(e))
            return
        trace = h.get("trace")
        trace = list(trace) if isinstance(trace, list) and len(trace) < MAX_TRACE else []
        step, pos = s.step, s.length
        cache = s.cache
        sampler, want_logits, next_dtype = s.attrs["sampler"], s.attrs["return_logits"], s.attrs["next_dtype"]

        def work() -> tuple[Any, Any, float]:
            import torch

            t0 = time.perf_counter()
            x = to_tensor(payload, dtype, shape)
            if st.first:
                if int(x.min()) < 0 or int(x.max()) >= st.vocab_size:
                    raise WireError(f"token id outside the vocabulary of {st.vocab_size}")
                x = x.to(torch.long).view(1, -1)
            out = st.forward(x, cache, pos, all_logits=(want_logits == "all"))
            if st.last:
                tok = sampler(out)
                logits = out[0].to(torch.float32).cpu() if want_logits else None
                return tok, logits, time.perf_counter() - t0
            out = out.to(getattr(torch, next_dtype))
            return tensor_payload(out), None, time.perf_counter() - t0

        try:
            async with self._compute_lock:  # one step at a time on this stage, in arrival order
                if n_new <= self.inline_max_tokens:
                    # decode-sized steps run on the event loop: a thread handoff costs ~0.4 ms per hop
                    result, logits, dt = work()
                else:
                    # long prefills run in a worker so the server keeps answering meanwhile
                    result, logits, dt = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except WireError:
            raise
        except Exception as e:  # a failure inside the model: fail this session, keep serving
            log.exception("step failed")
            await self._fail_session(s, f"stage {self.peer_id} failed on step {step}: {e.__class__.__name__}: {e}")
            return
        if self.sessions.peek(s.id) is not s:  # closed (client left / expired) while computing
            return
        self.sessions.advance(s, n_new)
        self.stats["steps"] += 1
        if n_new == 1:
            self._decode_s.append(dt)
        trace.append([self.peer_id, round(dt, 6)])
        try:
            if st.last:
                hdr: dict[str, Any] = {"kind": "token", "session": s.id, "step": step, "token": result,
                                       "pos": pos + n_new, "trace": trace}
                body: Any = b""
                if logits is not None:
                    ldt, lshape, body = tensor_payload(logits)
                    hdr.update(dtype=ldt, shape=lshape)
                await s.attrs["client"].send(hdr, body)
            else:
                odt, oshape, body = result
                await s.attrs["next"].send({"kind": "step", "session": s.id, "step": step, "pos": pos,
                                            "dtype": odt, "shape": oshape, "trace": trace}, body)
        except (ConnectionError, OSError) as e:
            await self._fail_session(s, f"stage {self.peer_id} could not forward step {step}: {e}")


async def serve(server: StageServer, host: str, port: int, on_ready: Any = None) -> None:
    """Start and serve until cancelled (Ctrl-C)."""
    addr = await server.start(host, port)
    if on_ready is not None:
        on_ready(addr)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
