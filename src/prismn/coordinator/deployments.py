"""Deployments: plan with the placement engine, load each stage on its peer, serve, re-plan on loss.

A deployment's plan is stored as the evaluator's JSON (`prismn plan --json`), so what the API shows,
what the peers load and what the receipts compare against are one object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import replace
from typing import Any

from prismn.coordinator.registry import Registry
from prismn.coordinator.schemas import DeploymentRequest
from prismn.coordinator.settings import Settings
from prismn.coordinator.store import DeploymentRow, Store, utcnow
from prismn.errors import PlanError, PrismnError
from prismn.model import ModelSpec, load_model_spec
from prismn.placement import (
    CostOptions,
    EvaluatedPlan,
    PlanRequest,
    Stage,
    evaluate_plan,
    make_plan,
    strategy_names,
)
from prismn.swarm import CLIENT, Swarm

log = logging.getLogger("prismn.coordinator")


def canonical(ev: EvaluatedPlan) -> list[Stage]:
    """The runnable form of a plan: embedding on the first stage and head on the last, same layer split.

    Prismn's own plans already have this form; a baseline that parked the embedding and head on a
    mid-pipeline peer is deployed with them moved to the ends (its layer split and order are kept).
    """
    stages = [s for s in ev.plan.stages if s.n_layers > 0] or list(ev.plan.stages[:1])
    out = [Stage(s.peer, s.start, s.end) for s in stages]
    out[0].embedding, out[-1].head = True, True
    return out


def resolve_checkpoint_path(model: str) -> str:
    from prismn.runtime.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(model).path)


# states of a deployment that holds (or is about to hold) its peers' stages
LIVE_STATES = ("ready", "loading", "replanning", "restoring")


class Runner:
    """A loaded deployment: the pipeline client, its tokenizer and the plan it runs."""

    def __init__(self, dep_id: str, plan: dict[str, Any], addresses: dict[str, str], checkpoint: str,
                 rtt: dict[str, dict[str, float]] | None, dtype: str, model: str, load_token: str | None = None):
        from prismn.runtime.client import Hop, PipelineClient
        from prismn.transport import RttMatrix

        self.dep_id = dep_id
        self.plan = plan
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.model = model  # as clients name it: the stages put this name on their observed timings
        self.load_token = load_token  # the join token: peers load stages only for their coordinator
        hops = [Hop(s["peer"], addresses[s["peer"]], tuple(s["layers"]), s["embedding"], s["head"])
                for s in plan["stages"]]
        self.client = PipelineClient(hops, rtt=RttMatrix(rtt) if rtt else None)
        self.lock = asyncio.Lock()
        self.tokenizer: Any = None
        self.swarm: Swarm | None = None  # the swarm the plan was made on (for receipts)

    async def start(self, load: bool) -> None:
        await self.client.connect()
        if load:
            await self.client.load(self.checkpoint, dtype=self.dtype, name=self.model, token=self.load_token)
        self.client.check_chain()
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.checkpoint)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


class Deployer:
    def __init__(self, store: Store, registry: Registry, settings: Settings, load_token: str | None = None):
        self.store = store
        self.load_token = load_token
        self.registry = registry
        self.settings = settings
        self.runners: dict[str, Runner] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replanning: set[str] = set()

    # ---- planning --------------------------------------------------------------------------
    def spec_for(self, model: str, dtype: str) -> tuple[ModelSpec, str]:
        """The cost spec of a deployable model, named as clients call it, and its checkpoint path."""
        path = resolve_checkpoint_path(model)
        return replace(load_model_spec(path, dtype), name=model), path

    def plan(self, req: DeploymentRequest, spec: ModelSpec, swarm: Swarm) -> tuple[EvaluatedPlan, EvaluatedPlan]:
        """(the strategy's plan as judged, the runnable plan as judged) on the current swarm."""
        preq = PlanRequest(preference=req.preference, objective=req.objective, weight=req.weight,
                           max_latency_ms=req.max_latency_ms, max_gco2e=req.max_gco2e, cost=CostOptions())
        chosen = make_plan(req.strategy, spec, swarm, preq)
        run = chosen
        stages = canonical(chosen) if chosen.plan.stages else []
        if stages and [(s.peer, s.start, s.end, s.embedding, s.head) for s in stages] != \
                [(s.peer, s.start, s.end, s.embedding, s.head) for s in chosen.plan.stages]:
            moved = replace(chosen.plan, stages=stages, notes={**chosen.plan.notes, "normalised_from": chosen.to_json()["stages"]})
            run = evaluate_plan(moved, spec, swarm)
        return chosen, run

    def emulated_rtt(self, swarm: Swarm, peers: list[str]) -> dict[str, dict[str, float]] | None:
        if not self.settings.emulate_wan:
            return None
        ids = [CLIENT, *peers]
        return {a: {b: swarm.rtt_ms(a, b) for b in ids if b != a} for a in ids}

    # ---- lifecycle -------------------------------------------------------------------------
    async def create(self, req: DeploymentRequest) -> DeploymentRow:
        if req.strategy not in strategy_names():
            raise PlanError(f"unknown strategy {req.strategy!r}: use one of {', '.join(strategy_names())}")
        spec, path = await asyncio.to_thread(self.spec_for, req.model, req.dtype)
        dep_id = "dep-" + secrets.token_hex(4)
        with self.store.session() as s:
            row = DeploymentRow(id=dep_id, model=req.name or req.model, checkpoint=path,
                                request=req.model_dump(), state="planning")
            s.add(row)
        await self._deploy(dep_id, spec, exclude=set())
        return self.get(dep_id)

    async def _deploy(self, dep_id: str, spec: ModelSpec, exclude: set[str]) -> None:
        row = self.get(dep_id)
        req = DeploymentRequest.model_validate(row.request)
        try:
            # a peer serves one stage at a time: peers busy with another live deployment are not candidates
            busy = {s["peer"] for d in self.store.deployments() if d.id != dep_id and d.plan
                    and d.state in LIVE_STATES for s in d.plan["stages"]}
            online = [p.id for p in self.store.peers("online") if p.id not in exclude | busy]
            if not online:
                raise PlanError("no free peer is online" + (f" ({len(busy)} serve other deployments)" if busy else ""))
            swarm = self.registry.swarm(online)
            chosen, run = self.plan(req, spec, swarm)
            if not run.feasible:
                raise PlanError("no feasible plan on the online peers: " + "; ".join(run.problems[:3]))
            plan_json = {**run.to_json(), "strategy_plan": chosen.to_json() if run is not chosen else None}
            rtt = self.emulated_rtt(swarm, [s["peer"] for s in plan_json["stages"]])
            plan_json["emulated_rtt_ms"] = rtt
            self._update(dep_id, state="loading", plan=plan_json, error=None)
            old = self.runners.pop(dep_id, None)
            if old:
                await old.close()
            runner = Runner(dep_id, plan_json, self.registry.addresses(), row.checkpoint, rtt, spec.dtype, spec.name,
                            self.load_token)
            runner.swarm = swarm
            await runner.start(load=True)
            self.runners[dep_id] = runner
            self._update(dep_id, state="ready")
        except (TimeoutError, PrismnError, OSError, ConnectionError) as e:
            self._update(dep_id, state="failed", error=str(e))
            log.warning("deployment %s failed: %s", dep_id, e)

    def mark_restoring(self) -> None:
        """At start, before serving: a deployment the store calls live is not ready until `restore`
        has reconnected it (clients and operators must not see a stale "ready")."""
        for row in self.store.deployments():
            if row.state in LIVE_STATES and row.plan:
                self._update(row.id, state="restoring")

    async def restore(self) -> None:
        """After a restart: reconnect live deployments to peers that still hold their stages."""
        for row in self.store.deployments():
            if row.state != "restoring":
                continue
            req = DeploymentRequest.model_validate(row.request)
            try:
                addrs = self.registry.addresses()
                if any(s["peer"] not in addrs for s in row.plan["stages"]):
                    raise PrismnError("a peer of the plan is not online yet")
                runner = Runner(row.id, row.plan, addrs, row.checkpoint, row.plan.get("emulated_rtt_ms"), req.dtype,
                                req.model, self.load_token)
                runner.swarm = self.registry.swarm([s["peer"] for s in row.plan["stages"]])
                await runner.start(load=False)
                self.runners[row.id] = runner
                self._update(row.id, state="ready")
                log.info("deployment %s restored: its peers still hold their stages", row.id)
            except Exception as e:  # anything in the way (a peer gone, another stage loaded): re-plan it
                log.info("deployment %s not restored (%s: %s); re-planning", row.id, e.__class__.__name__, e)
                self.schedule_replan(row.id, f"restore: {e}")

    def schedule_replan(self, dep_id: str, reason: str) -> None:
        if dep_id in self._replanning:
            return
        self._replanning.add(dep_id)
        task = asyncio.get_running_loop().create_task(self._replan(dep_id, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replan(self, dep_id: str, reason: str) -> None:
        try:
            row = self.get(dep_id)
            req = DeploymentRequest.model_validate(row.request)
            log.info("re-planning %s: %s", dep_id, reason)
            self._update(dep_id, state="replanning", error=reason, generation=row.generation + 1)
            spec, _ = await asyncio.to_thread(self.spec_for, req.model, req.dtype)
            await self._deploy(dep_id, spec, exclude=set())
        finally:
            self._replanning.discard(dep_id)

    def on_peers_offline(self, peer_ids: list[str]) -> int:
        """Re-plan every deployment that used one of these peers; returns how many were scheduled."""
        gone = set(peer_ids)
        n = 0
        for row in self.store.deployments():
            if row.state in ("stopped",) or not row.plan:
                continue
            if gone & {s["peer"] for s in row.plan["stages"]}:
                runner = self.runners.pop(row.id, None)
                if runner:
                    task = asyncio.get_running_loop().create_task(runner.close())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self.schedule_replan(row.id, f"peer(s) {', '.join(sorted(gone))} went offline")
                n += 1
        return n

    async def stop(self, dep_id: str) -> DeploymentRow:
        runner = self.runners.pop(dep_id, None)
        if runner:
            await runner.close()
        self._update(dep_id, state="stopped")
        return self.get(dep_id)

    async def shutdown(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for r in list(self.runners.values()):
            await r.close()
        self.runners.clear()

    # ---- store helpers ---------------------------------------------------------------------
    def get(self, dep_id: str) -> DeploymentRow:
        with self.store.session() as s:
            row = s.get(DeploymentRow, dep_id)
            if row is None:
                raise KeyError(dep_id)
            return row

    def _update(self, dep_id: str, **fields: Any) -> None:
        with self.store.session() as s:
            row = s.get(DeploymentRow, dep_id)
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = utcnow()

    def runner_for_model(self, model: str) -> Runner | None:
        for row in self.store.deployments():
            if row.model == model and row.state == "ready" and row.id in self.runners:
                return self.runners[row.id]
        return None

    def ready_models(self) -> list[DeploymentRow]:
        return [r for r in self.store.deployments() if r.state == "ready" and r.id in self.runners]


def deployment_json(row: DeploymentRow) -> dict[str, Any]:
    plan = row.plan or {}
    return {
        "id": row.id, "model": row.model, "state": row.state, "error": row.error, "generation": row.generation,
        "request": row.request, "plan": plan, "predicted": plan.get("metrics"),
        "created_at": row.created_at.isoformat() + "Z", "updated_at": row.updated_at.isoformat() + "Z",
    }
