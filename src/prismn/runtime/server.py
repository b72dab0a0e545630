"""The stage server: serves one stage of a model to pipeline clients and forwards activations to the
next stage directly.

Protocol (frames of :mod:`prismn.wire`; every reply goes back on the connection the request came on):

``info``   → ``info`` {stage, measurement, sessions, stats}
``ping``   → ``pong``
``load``   {checkpoint, layers, embedding?, head?, dtype?, device?} → ``loaded`` (bare servers only)
``unload`` {model?, deployment?} → ``unloaded``: drops the stage and its sessions if it is still the one
           loaded for that model and deployment (bare servers only, load token)
``open``   {session, next?, next_dtype?, max_context, sampling?, return_logits?, emulate?} → ``opened``;
           the connection it came on becomes the session's *client* connection: the last stage
           sends its tokens there, and any stage sends the session's errors there.
``step``   {items: [{session, step, pos, n, sample, trace}], dtype, shape} + one tensor whose first
           axis concatenates the items' tokens (:mod:`prismn.protocol`): token ids [T] to the first
           stage, hidden states [T, hidden] to the others. Items queue on their sessions; a scheduler
           runs the decode tokens of every ready session as ONE forward pass (continuous batching)
           and prompt chunks one at a time between those batches. A non-last stage forwards the
           batch's items as one ``step`` frame; the last one samples each session's token and sends
           ``tokens`` {items: [{session, step, token, pos, rows, trace}]} (+ float32 logits if asked)
           to each client connection. A trace entry is [peer, this item's share of the pass's
           compute seconds, batch size], so receipts charge each request its share.
``close``  {session} → ``closed``; frees the session's KV cache.
``bench``  → ``bench`` {measurement}: re-run the self-benchmark now.

Signed mode (a peer started by ``prismn peer``: ``identity`` and ``trust`` given): a connection must
first prove its key (:mod:`prismn.handshake`: ``hello`` → ``challenge`` → ``auth``; Iroh proves it in
the transport). Only ``ping`` needs no key. The coordinator (``trust``) may load, unload, bench and
read info; a load carries a :class:`~prismn.protocol.SignedAssignment` (signed by ``trust``, naming
this peer's key, not expired) and the stage serves exactly what it says: sessions are opened only by
its ``client``, steps come only from its ``upstream`` (or the client), and it forwards only to its
``downstream``, whose key it checks when dialling. Anything else gets one ``error`` frame and the
connection is closed; no session of anyone else is touched.

A frame that is malformed, truncated, oversized or carries a tensor of the wrong dtype, shape or size
closes that connection with a logged reason; the server keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import hmac
import logging
import os
import statistics
import time
from typing import Any

from prismn.handshake import StageHandshake, authenticate
from prismn.identity import Identity, verify_json
from prismn.protocol import Assignment, SignedAssignment, StepFrame, StepItem, TokenItem, dump, parse
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

PROTOCOL_VERSION = 2  # 2: steps carry a batch of sessions' items (prismn.protocol)


def _dtype_name(d: str) -> str | None:
    """A load request's dtype as the stage names it (float32, ...), None when unknown."""
    try:
        return canonical_dtype(d)
    except WireError:
        return None


def _req(h: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    v = h.get(key)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
        raise WireError(f"'{key}' must be {what}")
    return v


class Refused(WireError):
    """A frame its sender may not send (not authenticated, or not in the stage's signed assignment)."""


# what each role may send once authenticated (signed mode); "ping" needs no key at all
ALLOWED = {
    "coordinator": {"info", "load", "unload", "bench", "open", "close", "step", "error", "pong", "closed"},
    "client": {"info", "open", "close", "step", "error", "pong", "closed"},
    "upstream": {"step", "error", "pong", "closed"},
}


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
        identity: Identity | None = None,
        trust: str | None = None,
    ):
        if trust is not None and identity is None:
            raise ValueError("a signed-mode stage server needs its own identity")
        self.stage = stage
        self.identity = identity
        #: the coordinator's public key: when set, the server runs in signed mode (see the module doc)
        self.trust = trust
        self.assignment: Assignment | None = None
        self._hs: dict[Connection, StageHandshake] = {}
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
        self._wake = asyncio.Event()  # set when a session has work queued
        self._last_kind = "decode"
        #: most sessions' decode steps one forward pass takes (continuous batching)
        self.max_batch = limits.max_sessions
        self.batch_sizes: dict[int, int] = {}  # forward passes by batch size
        #: longest a first-stage decode batch waits for sessions still in the loop (see _gather); 0: never
        self.gather_max_s = 0.25
        self._last_pass_s = 0.0
        self._decode_s: collections.deque[float] = collections.deque(maxlen=256)
        self.served_name: str | None = None  # the model as the coordinator calls it (load's "model")
        self.served_deployment: str | None = None  # the deployment the stage was loaded for (load's "deployment")
        #: steps of at most this many tokens run inline on the event loop (lowest per-hop overhead)
        self.inline_max_tokens = 16
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conns: set[Connection] = set()
        self.stats = {"steps": 0, "batched_items": 0, "rejected_frames": 0, "errors": 0, "connections": 0}

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.listener = await self.transport.listen(host, port, self.handle)
        self.address = self.listener.address
        self._spawn(self._expiry_loop())
        self._spawn(self._scheduler())
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
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "accepts_load": self.allow_load,
            "load_needs_token": self.load_token is not None,
        }

    def observed(self) -> dict[str, Any] | None:
        """A measurement from the decode steps this stage really served alone (median of the last 256):
        the whole step (wire bytes to tensor, layers, head and sampling). With a self-benchmark, its
        per-layer time stays the layers' share and the rest of the step becomes ``s_step_fixed`` (the
        per-stage cost that does not grow with layers); without one, the step is spread over the layers."""
        if self.stage is None or len(self._decode_s) < 4:
            return None
        st = self.stage
        step = statistics.median(self._decode_s)
        m = self.measurement or {}
        extra = (m.get("s_head", 0.0) if st.last else 0.0) + (m.get("s_embed", 0.0) if st.first else 0.0)
        if m.get("s_per_layer"):
            per_layer = float(m["s_per_layer"])
            fixed = max(0.0, step - extra - st.n_layers * per_layer)
        else:
            per_layer, fixed = max(step - extra, step * 0.5) / st.n_layers, 0.0
        out = dict(m) if m else {"model": st.model_name, "dtype": {"float32": "fp32", "bfloat16": "bf16",
                                                                     "float16": "fp16"}[st.dtype_name],
                                 "device": "cuda" if st.device.startswith("cuda") else st.device,
                                 "s_head": 0.0, "s_embed": 0.0}
        out.update(s_per_layer=per_layer, s_step_fixed=fixed, s_step=step, steps=len(self._decode_s),
                   layers=st.n_layers, source=f"observed: median of {len(self._decode_s)} decode steps served")
        if self.served_name:
            out["model"] = self.served_name
        return out

    # ------------------------------------------------------------------------------ connections
    async def handle(self, conn: Connection) -> None:
        self._conns.add(conn)
        if self.trust is not None and self.identity is not None:
            self._hs[conn] = StageHandshake(self.identity, conn)
        self.stats["connections"] += 1
        frame: Frame | None = None
        try:
            while True:
                if hasattr(conn, "limits"):  # a stranger (signed mode, no key yet) sends no tensors at all
                    stranger = self.trust is not None and self.role(conn) is None
                    conn.limits = Limits(max_payload=0) if stranger else self.wire_limits()  # type: ignore[attr-defined]
                frame = None
                frame = await conn.recv()
                if frame is None:
                    return
                await self.dispatch(conn, frame)
        except Refused as e:
            self.stats["refused"] = self.stats.get("refused", 0) + 1
            log.warning("refused %s from %s: %s", frame.kind if frame else "a frame", conn.remote, e)
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send({"kind": "error", "session": None, "peer": self.peer_id, "message": f"refused: {e}"})
            await conn.close()
        except WireError as e:
            await self._reject(conn, str(e), frame)
        except (ConnectionError, OSError) as e:
            log.info("connection from %s dropped: %s", conn.remote, e)
        finally:
            self._conns.discard(conn)
            self._hs.pop(conn, None)
            gone = self.sessions.close_where(lambda s: s.attrs.get("client") is conn)
            if gone:
                log.info("client at %s left; freed %d session(s)", conn.remote, len(gone))

    async def _reject(self, conn: Connection, reason: str, frame: Frame | None) -> None:
        self.stats["rejected_frames"] += 1
        log.warning("closing connection from %s: %s", conn.remote, reason)
        # the sessions it named cannot go on (their step is lost) -- unless the sender is a stranger,
        # whose frames must never end anyone else's session
        if frame is not None and (self.trust is None or self.role(conn) is not None):
            items = frame.header.get("items")
            named = [it.get("session") for it in items if isinstance(it, dict)] if isinstance(items, list) else []
            for sid in [frame.header.get("session"), *named[:1024]]:
                s = self.sessions.peek(sid)
                if s is not None and s.attrs.get("client") is not conn:
                    await self._fail_session(s, f"a malformed frame reached stage {self.peer_id}: {reason}")
        await conn.close()

    async def _fail_session(self, s: Session, message: str, failed: str | None = None) -> None:
        """End a session with an error to its client; ``failed`` names the peer (id or address) whose
        failure ended it, when that is not this stage's own doing, so the client can route around it."""
        self.stats["errors"] += 1
        self.sessions.close(s.id)
        client = s.attrs.get("client")
        log.warning("session %s failed: %s", s.id, message)
        if client is not None and not client.closed:
            hdr = {"kind": "error", "session": s.id, "peer": self.peer_id, "message": message}
            if failed:
                hdr["failed"] = failed
            with contextlib.suppress(ConnectionError, OSError):
                await client.send(hdr)

    async def _error(self, conn: Connection, sid: Any, message: str) -> None:
        self.stats["errors"] += 1
        with contextlib.suppress(ConnectionError, OSError):
            await conn.send({"kind": "error", "session": sid if isinstance(sid, str) else None,
                             "peer": self.peer_id, "message": message})

    def role(self, conn: Connection) -> str | None:
        """Who the authenticated key on ``conn`` is to this stage (signed mode); None: nobody."""
        hs = self._hs.get(conn)
        key = hs.key if hs is not None else None
        if key is None:
            return None
        if key == self.trust:
            return "coordinator"
        a = self.assignment
        if a is not None and key == a.client:
            return "client"
        if a is not None and a.upstream is not None and key == a.upstream.key:
            return "upstream"
        return None

    async def _gate(self, conn: Connection, kind: str, h: dict[str, Any]) -> bool:
        """Signed mode: run the handshake, refuse what the sender may not send. True: dispatch the frame."""
        if kind == "ping":
            return True
        hs = self._hs.get(conn)
        if hs is None:  # signed mode switched on after this connection came in
            hs = self._hs[conn] = StageHandshake(self.identity, conn)  # type: ignore[arg-type]
        if kind == "hello":
            if hs.key is not None:
                raise Refused("this connection is already authenticated")
            await hs.on_hello(h)
            return False
        if kind == "auth":
            hs.on_auth(h)
            return False
        if hs.key is None:
            raise Refused(f"{kind!r} needs an authenticated key: this stage serves only its coordinator's "
                          "signed pipeline")
        role = self.role(conn)
        if role is None or kind not in ALLOWED[role]:
            raise Refused(f"key {hs.key[:12]}… may not send {kind!r} to stage {self.peer_id}"
                          + ("" if role else " (it is not in this stage's signed assignment)"))
        return True

    async def dispatch(self, conn: Connection, frame: Frame) -> None:
        kind = frame.kind
        h = frame.header
        if self.trust is not None and not await self._gate(conn, kind, h):
            return
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
        elif kind == "unload":
            await self.on_unload(conn, h)
        elif kind == "bench":
            await self.on_bench(conn, h)
        elif kind in ("error", "pong", "closed"):
            log.info("%s from %s: %s", kind, conn.remote, h.get("message", ""))
        else:
            raise WireError(f"unknown frame kind {kind!r}")

    # ------------------------------------------------------------------------------ load
    def _holds_load_token(self, h: dict[str, Any]) -> bool:
        """No load token set, or the request carries it (compared in constant time)."""
        return self.load_token is None or hmac.compare_digest(str(h.get("token") or "").encode(),
                                                              self.load_token.encode())

    async def _may_load(self, conn: Connection, h: dict[str, Any], what: str) -> bool:
        """Loading and unloading change what this machine holds: bare servers only, with the load token."""
        if not self.allow_load:
            await self._error(conn, None, f"this stage was started with --checkpoint and takes no {what} requests: "
                                          "start a bare `prismn stage serve` to load stages remotely")
            return False
        if not self._holds_load_token(h):
            log.warning("refused a %s request from %s: wrong or missing load token", what,
                        getattr(conn, "remote", "?"))
            await self._error(conn, None, f"{what} refused: wrong or missing load token (a peer takes its "
                                          "coordinator's join token; a bare stage its --load-token)")
            return False
        return True

    async def on_unload(self, conn: Connection, h: dict[str, Any]) -> None:
        """Drop the stage (its sessions and weights) when the deployment it served moved or stopped;
        ``model`` must name what is loaded, so a late unload never drops a newer stage."""
        if not await self._may_load(conn, h, "unload"):
            return
        name, dep = h.get("model"), h.get("deployment")
        if self.stage is not None and (name is None or name == self.served_name) \
                and (dep is None or dep == self.served_deployment):
            freed = self.sessions.close_all()
            log.info("unloaded layers %d:%d of %s (%d session(s) freed)", self.stage.start, self.stage.end,
                     self.stage.model_name, len(freed))
            self.stage, self.measurement, self.served_name, self.served_deployment = None, None, None, None
            self.assignment = None
            self._decode_s.clear()
            import gc

            gc.collect()  # the weights' memory goes back now, not at some later collection
        await conn.send({**self.info(), "kind": "unloaded"})

    def _verified(self, h: dict[str, Any]) -> Assignment:
        """The load's signed assignment, if the coordinator signed it for this peer and it is still valid."""
        raw = h.get("assignment")
        if not isinstance(raw, dict):
            raise Refused("a load must carry the coordinator's signed assignment")
        sa: SignedAssignment = parse(SignedAssignment, raw)
        a = sa.assignment
        assert self.trust is not None and self.identity is not None
        if not verify_json(self.trust, sa.signature, a.model_dump(mode="json")):
            raise Refused("the assignment's signature is not the coordinator's")
        if a.peer_key != self.identity.public:
            raise Refused(f"the assignment is for peer {a.peer} ({a.peer_key[:12]}…), not this one")
        if a.expires_at < time.time():
            raise Refused("the assignment has expired: ask the coordinator for a fresh one")
        if not (0 <= a.layers[0] < a.layers[1]):
            raise Refused("the assignment's layer range is empty")
        return a

    async def on_load(self, conn: Connection, h: dict[str, Any]) -> None:
        if not await self._may_load(conn, h, "load"):
            return
        assignment = None
        if self.trust is not None:  # signed mode: the assignment says what to load, nothing else does
            assignment = self._verified(h)
            ckpt_ref, layers = assignment.checkpoint, list(assignment.layers)
            dtype, device = assignment.dtype, self.default_device
            emb, head = assignment.embedding, assignment.head
            name, dep = assignment.model, assignment.deployment
            bench = bool(h.get("bench", self.bench))
        else:
            ckpt_ref = _req(h, "checkpoint", str, "a checkpoint folder or model name")
            layers = h.get("layers")
            if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(x, int) for x in layers)):
                raise WireError("'layers' must be [start, end]")
            dtype = h.get("dtype") or self.default_dtype
            device = h.get("device") or self.default_device
            bench = bool(h.get("bench", self.bench))
            emb, head = h.get("embedding"), h.get("head")
            name, dep = h.get("model"), h.get("deployment")
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= 200):
            raise WireError("'model' must be the model's name (a string of at most 200 characters)")
        if dep is not None and not (isinstance(dep, str) and 0 < len(dep) <= 128):
            raise WireError("'deployment' must be a deployment id (a string of at most 128 characters)")

        st0 = self.stage
        if (st0 is not None and not bench and name == self.served_name and [st0.start, st0.end] == layers
                and emb in (None, st0.first) and head in (None, st0.last)
                and str(st0.ckpt.path) == str(ckpt_ref) and st0.dtype_name == _dtype_name(str(dtype))):
            # the same stage again (a re-plan that kept this peer's layers): keep the weights, and the
            # time-to-recover is not spent reading them a second time
            log.info("load of layers %d:%d of %s: already loaded, kept", st0.start, st0.end, st0.model_name)
            self.served_deployment = dep
            self.assignment = assignment  # the neighbours may have changed (a span moved)
            await conn.send({**self.info(), "kind": "loaded", "reused": True})
            return

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
        self.stage, self.measurement, self.served_name, self.served_deployment = stage, m, name, dep
        self.assignment = assignment
        self._decode_s.clear()
        log.info("loaded layers %d:%d of %s", stage.start, stage.end, stage.model_name)
        await conn.send({**self.info(), "kind": "loaded"})

    async def on_bench(self, conn: Connection, h: dict[str, Any]) -> None:
        """Re-run the self-benchmark now (e.g. once all local stages have finished loading). It keeps the
        machine busy: with a load token (or in signed mode) only its holder may ask."""
        if not self._holds_load_token(h):
            await self._error(conn, None, "bench refused: wrong or missing load token")
            return
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
                expect = None
                if self.trust is not None:  # forward only to the signed downstream, whose key we check
                    down = self.assignment.downstream if self.assignment is not None else None
                    if down is None or nxt != down.address:
                        raise SessionError(f"refused: 'next' {nxt!r} is not this stage's signed downstream"
                                      + (f" ({down.peer} at {down.address})" if down else " (it has none)"))
                    expect = down.key
                delay = rtt.one_way_s(me, str(emulate.get("next"))) if rtt is not None and emulate else 0.0
                next_conn = await self._next_connection(nxt, delay, expect)
            if rtt is not None and emulate:
                conn.set_delay(rtt.one_way_s(me, str(emulate.get("client", "client"))))
            self.sessions.open(sid, st.new_cache, max_context, client=conn, next=next_conn, next_dtype=next_dtype,
                               sampler=sampler, return_logits=return_logits, pending=collections.deque())
        except (SessionError, TransportError, RuntimeStageError) as e:
            await self._error(conn, sid, str(e))
            return
        await conn.send({"kind": "opened", "session": sid, "peer": self.peer_id})

    async def _next_connection(self, address: str, delay: float, expect: str | None = None) -> Connection:
        key = (address, round(delay, 6))
        async with self._pool_lock:
            c = self._next_pool.get(key)
            if c is not None and not c.closed and getattr(c, "prismn_key", None) == expect:
                return c
            try:
                c = await self.transport.connect(address)
                if expect is not None and self.identity is not None:
                    try:
                        await authenticate(c, self.identity, expect)
                    except (TransportError, TimeoutError, ConnectionError, OSError) as e:
                        await c.close()
                        raise TransportError(f"handshake with {address} failed: {e}") from None
                    c.prismn_key = expect  # type: ignore[attr-defined]
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
                        nxt = str(f.header.get("peer", key[0]))
                        await self._fail_session(s, f"next stage {nxt}: {msg}", failed=f.header.get("failed"))
                    else:
                        log.warning("next stage %s: %s", key[0], msg)
        except (WireError, ConnectionError, OSError) as e:
            log.warning("connection to next stage %s broke: %s", key[0], e)
        finally:
            if self._next_pool.get(key) is c:
                del self._next_pool[key]
            for s in [s for sid in self.sessions.ids() if (s := self.sessions.peek(sid)) and s.attrs.get("next") is c]:
                await self._fail_session(s, f"the next stage at {key[0]} closed the connection", failed=key[0])
            with contextlib.suppress(Exception):
                await c.close()

    # ------------------------------------------------------------------------------ steps
    async def on_step(self, conn: Connection, frame: Frame) -> None:
        """Validate a step frame and queue each item on its session; the scheduler runs them."""
        st = self.stage
        msg = parse(StepFrame, frame.header)
        if st is None:
            for it in msg.items:
                await self._error(conn, it.session, f"stage {self.peer_id} has no model loaded")
            return
        total = sum(it.n for it in msg.items)
        max_tokens = self.limits.max_context * max(1, len(msg.items))
        if st.first:
            dtype, shape = check_tensor(frame.header, frame.payload, dtypes=("int32", "int64"), ndim=1,
                                        fixed={0: total}, max_elems=max_tokens)
        else:
            dtype, shape = check_tensor(frame.header, frame.payload, dtypes=st.dtype_name, ndim=2,
                                        fixed={0: total, 1: st.hidden_size}, max_elems=max_tokens * st.hidden_size)
        x = to_tensor(frame.payload, dtype, shape)
        if st.first and (int(x.min()) < 0 or int(x.max()) >= st.vocab_size):
            raise WireError(f"token id outside the vocabulary of {st.vocab_size}")
        off = 0
        for it in msg.items:
            part, off = x[off: off + it.n], off + it.n
            s = self.sessions.peek(it.session)
            if s is None:
                await self._error(conn, it.session, f"unknown session {it.session!r} on stage {self.peer_id} "
                                                    "(closed or expired)")
                continue
            try:
                self.sessions.check_step(s, it.step, it.pos, it.n)
            except SessionError as e:
                await self._fail_session(s, str(e))
                continue
            self.sessions.enqueue(s, it.n)
            s.attrs["pending"].append(_Work(s, it, part))
        self._wake.set()

    def _next_batch(self, peek: bool = False) -> list[_Work]:
        """Continuous batching: every session whose next work is one decode token runs in one pass;
        prompt chunks (several tokens) run one at a time, alternating with the decode batches so a long
        prompt never stalls everyone else's next token."""
        decode: list[_Work] = []
        prefill: _Work | None = None
        for sid in self.sessions.ids():
            s = self.sessions.peek(sid)
            if s is None or not s.attrs.get("pending"):
                continue
            w = s.attrs["pending"][0]
            if w.item.n == 1:
                decode.append(w)
            elif prefill is None:
                prefill = w
        if prefill is not None and (not decode or self._last_kind == "decode") and not peek:
            self._last_kind = "prefill"
            return [prefill]
        if not decode:
            return []
        if not peek:
            self._last_kind = "decode"
        batch = decode[: self.max_batch]
        if not self.stage.batchable:  # type: ignore[union-attr]
            batch = batch[:1]
        return batch

    def _in_flight(self) -> int:
        """Decoding sessions whose next token is elsewhere in the loop (later stages, the client)."""
        n = 0
        for sid in self.sessions.ids():
            s = self.sessions.peek(sid)
            if s is not None and s.length > 0 and not s.attrs.get("pending"):
                n += 1
        return n

    async def _gather(self, batch: list[_Work]) -> list[_Work]:
        """On the first stage, a decode batch smaller than the sessions decoding waits up to one pass for
        the others to come round: groups that drifted apart merge into one pass (on a CPU the pass costs
        nearly the same for 8 or 32 sessions), and stay merged. A lone session never waits."""
        if not (self.stage is not None and self.stage.first and batch and batch[0].item.n == 1):
            return batch
        wait_until = time.perf_counter() + min(self.gather_max_s, self._last_pass_s)
        while self._in_flight() and len(batch) < self.max_batch and time.perf_counter() < wait_until:
            await asyncio.sleep(0.002)
            batch = self._next_batch(peek=True) or batch
        return batch

    async def _scheduler(self) -> None:
        while True:
            await self._wake.wait()
            batch = self._next_batch()
            if not batch:
                self._wake.clear()
                continue
            if self.gather_max_s > 0:
                batch = await self._gather(batch)
            for w in batch:
                w.s.attrs["pending"].popleft()
            await asyncio.sleep(0)  # let frames, heartbeats and closes in between batches
            try:
                await self._run(batch)
            except Exception:  # never let the scheduler die: fail these sessions, keep serving the rest
                log.exception("a batch failed outside the model")
                for w in batch:
                    await self._fail_session(w.s, f"stage {self.peer_id} failed on step {w.item.step}")

    async def _run(self, batch: list[_Work]) -> None:
        st = self.stage
        assert st is not None
        B = len(batch)
        total = sum(w.item.n for w in batch)
        next_dtypes = {w.s.attrs["next_dtype"] for w in batch}

        def work() -> tuple[Any, list[Any], Any, float]:
            import torch

            t0 = time.perf_counter()
            if B == 1 and batch[0].item.n > 1 or B == 1 and not batch[0].item.sample:
                w = batch[0]
                want = w.s.attrs["return_logits"]
                x = w.x.to(torch.long).view(1, -1) if st.first else w.x.view(1, w.item.n, -1)
                out = st.forward(x, w.s.cache, w.item.pos, all_logits=(want == "all"), head=w.item.sample)
                out = out[0]  # [n, hidden] or [rows, vocab]
            else:
                x = torch.cat([w.x for w in batch])
                out = st.decode_batch(x.to(torch.long) if st.first else x, [w.s.cache for w in batch],
                                      [w.item.pos for w in batch])
            if st.last:
                tokens, rows = [], []
                for i, w in enumerate(batch):
                    if not w.item.sample:
                        tokens.append(None)
                        rows.append(None)
                        continue
                    z = out if B == 1 else out[i: i + 1]
                    tokens.append(w.s.attrs["sampler"](z))
                    rows.append(z.to(torch.float32).cpu() if w.s.attrs["return_logits"] else None)
                return tokens, rows, None, time.perf_counter() - t0
            (nd,) = next_dtypes if len(next_dtypes) == 1 else (st.dtype_name,)
            return [], [], tensor_payload(out.reshape(total, -1).to(getattr(torch, nd))), time.perf_counter() - t0

        try:
            if B == 1 and total <= self.inline_max_tokens:
                # a lone decode step runs on the event loop: a thread handoff costs ~0.4 ms per hop
                tokens, rows, payload, dt = work()
            else:  # batches and prompt chunks run in a worker so the server keeps receiving meanwhile
                tokens, rows, payload, dt = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except Exception as e:  # a failure inside the model: fail these sessions, keep serving
            log.exception("step failed")
            for w in batch:
                await self._fail_session(w.s, f"stage {self.peer_id} failed on step {w.item.step}: "
                                              f"{e.__class__.__name__}: {e}", failed=self.peer_id)
            return
        self.stats["steps"] += 1
        self.stats["batched_items"] += B
        if batch[0].item.n == 1:
            self._last_pass_s = dt
        self.batch_sizes[B] = self.batch_sizes.get(B, 0) + 1
        if B == 1 and total == 1:
            self._decode_s.append(dt)
        live = [(i, w) for i, w in enumerate(batch) if self.sessions.peek(w.s.id) is w.s]  # not closed meanwhile
        for _, w in live:
            self.sessions.advance(w.s, w.item.n)
        if st.last:
            by_client: dict[int, tuple[Connection, list[TokenItem], list[Any]]] = {}
            for i, w in live:
                if tokens[i] is None:
                    continue
                trace = [*w.item.trace, (self.peer_id, round(dt * w.item.n / total, 6), B)]
                r = rows[i]
                item = TokenItem(session=w.s.id, step=w.item.step, token=tokens[i], pos=w.item.pos + w.item.n,
                                 rows=0 if r is None else int(r.shape[0]), trace=trace)
                conn = w.s.attrs["client"]
                g = by_client.setdefault(id(conn), (conn, [], []))
                g[1].append(item)
                if r is not None:
                    g[2].append(r)
            for conn, items, logit_rows in by_client.values():
                hdr: dict[str, Any] = {"kind": "tokens", "items": [dump(t) for t in items]}
                body: Any = b""
                if logit_rows:
                    import torch

                    ldt, lshape, body = tensor_payload(torch.cat(logit_rows))
                    hdr.update(dtype=ldt, shape=lshape)
                await self._send_or_fail(conn, hdr, body, [w for _, w in live])
            return
        # forward one frame per next connection: the batch travels on together
        odt, _, raw = payload
        row_bytes = len(raw) // total if total else 0
        offs, o = [], 0
        for w in batch:
            offs.append(o)
            o += w.item.n
        by_next: dict[int, tuple[Connection, list[dict[str, Any]], list[memoryview], list[_Work]]] = {}
        for i, w in live:
            conn = w.s.attrs["next"]
            g = by_next.setdefault(id(conn), (conn, [], [], []))
            trace = [*w.item.trace, (self.peer_id, round(dt * w.item.n / total, 6), B)]
            g[1].append(dump(StepItem(session=w.s.id, step=w.item.step, pos=w.item.pos, n=w.item.n,
                                      sample=w.item.sample, trace=trace)))
            g[2].append(raw[offs[i] * row_bytes: (offs[i] + w.item.n) * row_bytes])
            g[3].append(w)
        for conn, items, parts, works in by_next.values():
            n_tok = sum(it["n"] for it in items)
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            await self._send_or_fail(conn, {"kind": "step", "items": items, "dtype": odt,
                                            "shape": [n_tok, st.hidden_size]}, body, works)

    async def _send_or_fail(self, conn: Connection, header: dict[str, Any], body: Any, works: list[_Work]) -> None:
        try:
            await conn.send(header, body)
        except (ConnectionError, OSError) as e:
            for w in works:
                await self._fail_session(w.s, f"stage {self.peer_id} could not forward step {w.item.step}: {e}",
                                         failed=getattr(conn, "remote", None))


@dataclasses.dataclass
class _Work:
    """One session's queued step on this stage: its item and its slice of the frame's tensor."""

    s: Session
    item: StepItem
    x: Any


async def serve(server: StageServer, host: str, port: int, on_ready: Any = None) -> None:
    """Start and serve until cancelled (Ctrl-C)."""
    addr = await server.start(host, port)
    if on_ready is not None:
        on_ready(addr)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
