"""The live snapshot the dashboard streams: peers, deployments, per-model numbers, receipts, events.

Peers and receipts are built by the same functions as GET /v1/peers and /v1/receipts
(:mod:`prismn.coordinator.views`, so the page shows exactly what the API says); deployments from `deployment_json`. Added here only
what those lack: each online peer's grid intensity and RTTs as the planner sees them, counters from
the Prometheus registry, and a log of changes seen between snapshots.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prismn.coordinator.deployments import LIVE_STATES, deployment_json
from prismn.coordinator.views import peer_json, receipt_json
from prismn.errors import PrismnError
from prismn.model import load_model_spec
from prismn.placement import PlanRequest, make_plan
from prismn.placement.optimal import CARBON_METRICS
from prismn.swarm import CLIENT

PRIVATE_PEER_FIELDS = ("data_addr", "public_key", "endpoint")  # the page is public: where a peer's stage server listens is not


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Live:
    def __init__(self, state: Any, app: Any):
        self.state, self.app = state, app
        self.samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=120)
        self.events: deque[dict[str, str]] = deque(maxlen=60)
        self._seen_peers: dict[str, str] | None = None
        self._seen_deps: dict[str, tuple] = {}
        self._seed: dict[tuple[str, int], dict[str, Any]] = {}
        self._cached: tuple[float, dict[str, Any] | None] = (0.0, None)

    async def snapshot(self, max_age_s: float = 0.5) -> dict[str, Any]:
        at, snap = self._cached
        if snap is not None and time.monotonic() - at < max_age_s:
            return snap
        store = self.state.store
        peers = [{k: v for k, v in peer_json(p).items() if k not in PRIVATE_PEER_FIELDS}
                 for p in await asyncio.to_thread(store.peers)]
        receipts = [receipt_json(r) for r in await asyncio.to_thread(store.receipts, 10)]
        rows = self.state.store.deployments()
        deps = [deployment_json(r) for r in rows if r.state != "stopped"]
        self._add_planner_view(peers, deps)
        self._log_changes(peers, deps)
        s = self.state.settings
        snap = {"time": _now(), "coordinator": {"lat": s.lat, "lon": s.lon, "emulate_wan": s.emulate_wan},
                "peers": peers, "deployments": deps, "numbers": self._numbers(rows), "receipts": receipts,
                "events": list(self.events)}
        self._cached = (time.monotonic(), snap)
        return snap

    def _add_planner_view(self, peers: list[dict[str, Any]], deps: list[dict[str, Any]]) -> None:
        """Intensity and RTTs of online peers as the planner sees them; the stage each one serves."""
        online = [p["id"] for p in peers if p["status"] == "online"]
        swarm = None
        if online:
            try:
                swarm = self.state.registry.swarm(online)
            except PrismnError:
                swarm = None
        serving: dict[str, dict[str, Any]] = {}
        for d in deps:
            if d["state"] in LIVE_STATES:
                for i, st in enumerate(d["plan"].get("stages", [])):
                    serving[st["peer"]] = {"deployment": d["id"], "model": d["model"], "index": i + 1,
                                           "layers": st["layers"]}
        for p in peers:
            p["serving"] = serving.get(p["id"])
            if swarm is None or p["id"] not in swarm.index:
                continue
            peer = swarm.peer(p["id"])
            p["intensity"] = peer.intensity.to_json()
            p["gpu_model"] = peer.gpu.name + (" (assumed)" if peer.gpu_assumed else "")
            p["rtt"] = [{"to": "client" if o == CLIENT else o, "ms": round(swarm.rtt_ms(p["id"], o), 2),
                         "source": swarm.rtt_source(p["id"], o)}
                        for o in [CLIENT, *online] if o != p["id"]]

    def _log_changes(self, peers: list[dict[str, Any]], deps: list[dict[str, Any]]) -> None:
        status = {p["id"]: p["status"] for p in peers}
        if self._seen_peers is not None:
            for pid, st in status.items():
                if self._seen_peers.get(pid) != st:
                    self.events.append({"time": _now(), "kind": "peer", "text": f"peer {pid} is {st}"})
        self._seen_peers = status
        for d in deps:
            route = tuple(s["peer"] for s in d["plan"].get("stages", []))
            key = (d["state"], d["generation"], route)
            old = self._seen_deps.get(d["id"])
            if old != key:
                what = f"{d['id']} ({d['model']}) {d['state']}"
                if route:
                    what += " on " + " \u2192 ".join(route)
                reason = d["error"] if d["state"] in ("failed", "replanning", "degraded") else None  # else stale
                if old and old[1] != d["generation"]:
                    what += f" (re-plan #{d['generation']}" + (f": {reason})" if reason else ")")
                elif reason:
                    what += f": {reason}"
                self.events.append({"time": _now(), "kind": "deployment", "text": what})
                self._seen_deps[d["id"]] = key

    # ---- numbers ----------------------------------------------------------------------------
    def _numbers(self, rows: list[Any]) -> list[dict[str, Any]]:
        reg = self.state.metrics.registry
        def val(name: str, **labels: str) -> float:
            return reg.get_sample_value(name, labels) or 0.0
        models = sorted({r.model for r in rows})
        now = time.monotonic()
        tokens = {m: val("prismn_tokens_total", model=m, kind="completion") for m in models}
        self.samples.append((now, tokens))
        old_t, old = next(((t, s) for t, s in self.samples if now - t <= 10.0), (now, tokens))
        out = []
        for m in models:
            live = [r for r in rows if r.model == m and r.state in LIVE_STATES and r.plan]
            dep = live[-1] if live else None
            n_lat = val("prismn_latency_seconds_per_token_count", model=m)
            n_batch = val("prismn_decode_batch_size_count", model=m)  # absent before batched serving
            grams = val("prismn_gco2e_total", model=m)
            row = {"model": m, "deployment": dep.id if dep else None, "state": dep.state if dep else "none",
                   "requests": val("prismn_requests_total", model=m, status="ok"),
                   "errors": val("prismn_requests_total", model=m, status="error"),
                   "completion_tokens": tokens[m],
                   "tokens_per_s": (tokens[m] - old.get(m, 0.0)) / (now - old_t) if now - old_t > 0.5 else None,
                   "latency_ms_per_token": val("prismn_latency_seconds_per_token_sum", model=m) / n_lat * 1e3
                   if n_lat else None,
                   "mean_batch": val("prismn_decode_batch_size_sum", model=m) / n_batch if n_batch else None,
                   "predicted": dep.plan.get("metrics") if dep else None,
                   "gco2e_total": grams,
                   "gco2e_per_token": grams / tokens[m] if tokens[m] else None,
                   "seed": self._seed_comparison(dep) if dep else None}
            if row["seed"] and row["seed"].get("saved_g_per_token") is not None:
                row["seed"]["saved_g"] = row["seed"]["saved_g_per_token"] * tokens[m]
            out.append(row)
        return out

    def _seed_comparison(self, dep: Any) -> dict[str, Any]:
        """The seed project's plan on the swarm this deployment was planned on, by the same evaluator.

        Savings are predicted (operational gCO2e per token, plan vs seed) times the tokens served.
        """
        key = (dep.id, dep.generation)
        if key in self._seed:
            return dict(self._seed[key])
        runner = getattr(self.state.deployer, "runners", {}).get(dep.id)
        swarm = getattr(runner, "swarm", None)
        if swarm is None:
            return {"note": "not known until the deployment is ready (the swarm it was planned on)"}
        req = dep.request or {}
        try:
            spec = replace(load_model_spec(dep.checkpoint, req.get("dtype")), name=dep.model)
            seed = make_plan("prismn-hackathon", spec, swarm, PlanRequest(preference=req.get("preference",
                                                                                               "low-carbon")))
        except PrismnError as e:
            out: dict[str, Any] = {"note": f"seed plan not available: {e}"}
        else:
            # compared on the carbon the deployment's plan minimised (its scope), by the same evaluator
            metric = CARBON_METRICS.get(req.get("carbon_scope") or "reserved", "gco2e_per_token")
            ours = (dep.plan.get("metrics") or {}).get(metric)
            theirs = seed.metrics.get(metric)
            ok = seed.feasible and ours is not None and theirs is not None
            out = {"seed_gco2e_per_token": theirs if ok else None,
                   "saved_g_per_token": theirs - ours if ok else None, "metric": metric,
                   "note": f"predicted ({metric}), same evaluator" if ok else "the seed's plan is infeasible "
                   "here: " + "; ".join(seed.problems[:2])}
        self._seed[key] = out
        return dict(out)
