"""The peer agent: a bare stage server plus the control loop that keeps it registered.

It joins with the swarm's token, heartbeats every few seconds, re-joins by itself when the
coordinator forgot it, and keeps retrying (with capped back-off) while the coordinator is away: it
never exits for that, and never drops a loaded stage for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from prismn.identity import Identity
from prismn.protocol import HeartbeatRequest, JoinRequest, request_bytes

log = logging.getLogger("prismn.peer")


@dataclass
class PeerConfig:
    coordinator: str
    token: str
    peer_id: str
    lat: float
    lon: float
    gpu: str
    free_vram_gb: float
    zone: str | None = None
    city: str | None = None
    carbon_intensity: float | None = None
    pue: float | None = None
    bandwidth_mbps: float | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    advertise_host: str | None = None
    bench_models: list[str] = field(default_factory=list)
    bench_lock: str | None = None
    max_backoff_s: float = 10.0


def benchmark(model: str, lock_file: str | None = None) -> dict[str, Any] | None:
    """Time this machine's decode on the last two layers (+ head) of a prepared checkpoint.

    Peers sharing one machine (the demo) pass the same `lock_file` so that they time one at a time
    instead of measuring each other's load.
    """
    if lock_file:
        import fcntl

        with open(lock_file, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                return benchmark(model)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    from prismn.runtime.checkpoint import resolve_checkpoint
    from prismn.runtime.selfbench import self_benchmark
    from prismn.runtime.stage import Stage

    ckpt = resolve_checkpoint(model)
    n = ckpt.num_layers
    stage = Stage(ckpt, max(0, n - 2), n, embedding=n <= 2, head=True, dtype="fp32", device="cpu")
    m = self_benchmark(stage)
    m["model"] = model  # as deployments will name it
    return m


def signed_headers(identity: Identity, method: str, path: str, raw: bytes) -> dict[str, str]:
    """The headers that prove ``identity`` sent this request body (checked by the coordinator's auth)."""
    ts = f"{time.time():.6f}"
    sig = identity.sign(request_bytes(method, path, ts, raw))
    return {"Content-Type": "application/json", "X-Prismn-Key": identity.public, "X-Prismn-Signature": f"{ts}.{sig}"}


class PeerAgent:
    def __init__(self, cfg: PeerConfig, server: Any = None, identity: Identity | None = None):
        self.cfg = cfg
        self.server = server
        # the peer's key: its id is bound to it at first join, and it signs every join and heartbeat
        self.identity = identity or (server.identity if server is not None and server.identity else Identity.generate())
        self.http = httpx.AsyncClient(base_url=cfg.coordinator.rstrip("/"), timeout=10.0,
                                      headers={"Authorization": f"Bearer {cfg.token}"})
        self.measurements: list[dict[str, Any]] = []
        self.paths: dict[str, dict[str, Any]] = {}  # Iroh: peer id -> the path measured to it
        self.known_peers: dict[str, str] = {}
        self.rtt_ms: dict[str, float] = {}
        self.heartbeat_s = 5.0
        self._rtt_task: asyncio.Task[None] | None = None
        self.joined = False
        self.stopping = asyncio.Event()
        self.joins = 0

    @property
    def data_addr(self) -> str:
        addr = self.server.address if self.server is not None else f"{self.cfg.listen_host}:{self.cfg.listen_port}"
        if addr.startswith("iroh:"):  # dialled by key: the coordinator's address book says where
            return addr
        if self.cfg.advertise_host:
            addr = f"{self.cfg.advertise_host}:{addr.rsplit(':', 1)[1]}"
        return addr

    def stage_info(self) -> dict[str, Any] | None:
        if self.server is None:
            return None
        info = self.server.info()
        # observed: the decode steps the stage really served, beside the benchmark the planner uses
        return {"stage": info.get("stage"), "sessions": info.get("sessions"), "measurement": info.get("measurement"),
                "observed": info.get("observed")}

    def all_measurements(self) -> list[dict[str, Any]]:
        out = list(self.measurements)
        live = self.server.info().get("measurement") if self.server is not None else None
        if live and live.get("model") and not any(m["model"] == live["model"] for m in out):
            out.append(live)
        return out

    async def measure_rtts(self) -> None:
        """RTT to the coordinator (HTTP) and to the peers it told us about (stage-server ping)."""
        t0 = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            await self.http.get("/healthz")
            self.rtt_ms["client"] = (time.perf_counter() - t0) * 1e3
        from prismn.transport import TcpTransport

        # over the stage server's own transport: an Iroh ping measures the path activations will take
        transport = self.server.transport if self.server is not None else TcpTransport()

        async def one(pid: str, addr: str) -> None:
            try:
                c = await transport.connect(addr, timeout=2.0)
                try:
                    t0 = time.perf_counter()
                    await c.send({"kind": "ping"})
                    await asyncio.wait_for(c.recv(), 2.0)
                    self.rtt_ms[pid] = (time.perf_counter() - t0) * 1e3
                    if hasattr(c, "path_info"):  # Iroh: direct or relayed, and Iroh's own RTT estimate
                        self.paths[pid] = c.path_info()
                finally:
                    await c.close()
            except Exception:  # an unreachable peer simply gets no measurement
                self.rtt_ms.pop(pid, None)

        # all at once: one slow or busy peer must not hold up the others (or the heartbeat)
        await asyncio.gather(*(one(pid, addr) for pid, addr in list(self.known_peers.items())[:32]))

    async def join(self) -> None:
        c = self.cfg
        body = {"id": c.peer_id, "lat": c.lat, "lon": c.lon, "free_vram_gb": c.free_vram_gb, "gpu": c.gpu,
                "zone": c.zone, "city": c.city, "carbon_intensity": c.carbon_intensity, "pue": c.pue,
                "bandwidth_mbps": c.bandwidth_mbps, "data_addr": self.data_addr,
                "measurements": self.all_measurements(), "rtt_ms": self.rtt_ms, "stage": self.stage_info(),
                "transport": self.endpoint_info()}
        r = await self._signed_post("/v1/peers/join", JoinRequest.model_validate(
            {k: v for k, v in body.items() if v is not None}).model_dump(mode="json", exclude_none=True))
        if r.status_code != 200:
            raise RuntimeError(f"join refused ({r.status_code}): {_message(r)}")
        data = r.json()
        self.trust(data)
        self.heartbeat_s = float(data["heartbeat_s"])
        self.known_peers = data.get("peers", {})
        self.joined = True
        self.joins += 1
        log.info("joined %s as %s (heartbeat every %.1f s)", c.coordinator, c.peer_id, self.heartbeat_s)

    async def heartbeat(self) -> None:
        body = HeartbeatRequest(measurements=self.all_measurements(), rtt_ms=self.rtt_ms, stage=self.stage_info(),
                                transport=self.endpoint_info())
        r = await self._signed_post(f"/v1/peers/{self.cfg.peer_id}/heartbeat", body.model_dump(mode="json"))
        if r.status_code == 404:  # the coordinator lost us (new store): join again
            self.joined = False
            raise RuntimeError("the coordinator does not know this peer any more; re-joining")
        if r.status_code != 200:
            raise RuntimeError(f"heartbeat refused ({r.status_code}): {_message(r)}")
        self.known_peers = r.json().get("peers", {})
        self.trust(r.json())

    def endpoint_info(self) -> dict[str, Any] | None:
        """An Iroh peer's endpoint (id, direct addresses, relay) and measured paths, for the address book."""
        t = getattr(self.server, "transport", None)
        primary = getattr(t, "primary", t)
        if primary is None or getattr(primary, "kind", "tcp") != "iroh":
            return None
        return {**primary.endpoint_info().to_json(), "paths": dict(self.paths)}

    async def resolve_endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        """Ask the coordinator's address book where an Iroh peer is now (dial by key)."""
        r = await self.http.get(f"/v1/endpoints/{endpoint_id}")
        return r.json() if r.status_code == 200 else None

    def trust(self, answer: dict[str, Any]) -> None:
        """The stage server takes signed assignments from the coordinator's key only."""
        key = answer.get("coordinator_key")
        if self.server is not None and isinstance(key, str) and self.server.trust != key:
            log.info("stage server trusts the coordinator key %s…", key[:12])
            self.server.trust = key

    async def _signed_post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST ``body`` signed with this peer's key (method, path, time, body hash)."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        return await self.http.post(path, content=raw, headers=signed_headers(self.identity, "POST", path, raw))

    async def run(self) -> None:
        """Join, then heartbeat until stopped; every failure is retried with capped back-off."""
        backoff = 0.5
        beats = 0
        while not self.stopping.is_set():
            try:
                if not self.joined:
                    await self.join()
                else:
                    if beats % 6 == 0 and (self._rtt_task is None or self._rtt_task.done()):
                        # in the background: the lease never waits for a peer that is slow to answer
                        self._rtt_task = asyncio.get_running_loop().create_task(self.measure_rtts())
                    await self.heartbeat()
                    beats += 1
                backoff = 0.5
                wait = self.heartbeat_s
            except (httpx.HTTPError, RuntimeError, OSError) as e:
                log.warning("coordinator unreachable or refusing (%s); retrying in %.1f s", _short(e), backoff)
                wait, backoff = backoff, min(self.cfg.max_backoff_s, backoff * 2)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)

    async def aclose(self) -> None:
        self.stopping.set()
        if self._rtt_task is not None:
            self._rtt_task.cancel()
        await self.http.aclose()


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        return r.text[:200]


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__
