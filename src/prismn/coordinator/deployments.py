"""Deployments: plan with the placement engine, load each stage on its peer, serve, re-plan on loss.

A deployment's plan is stored as the evaluator's JSON (`prismn plan --json`), so what the API shows,
what the peers load and what the receipts compare against are one object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import replace
from typing import Any

from prismn.coordinator.admission import Admission
from prismn.coordinator.registry import Registry
from prismn.coordinator.schemas import DeploymentRequest
from prismn.coordinator.settings import Settings
from prismn.coordinator.store import DeploymentRow, Store, utcnow
from prismn.errors import PlanError, PrismnError
from prismn.model import ModelSpec, load_model_spec
from prismn.placement import (
    CostOptions,
    EvaluatedPlan,
    Plan,
    PlanRequest,
    Stage,
    evaluate_plan,
    make_plan,
    strategy_names,
)
from prismn.placement.costmodel import CostModel
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
# (degraded: a peer of the plan was lost and the deployment is recovering: requests wait, then go on)
LIVE_STATES = ("ready", "loading", "replanning", "restoring", "degraded")


def kv_token_budget(spec: ModelSpec, swarm: Swarm, stages: list[dict[str, Any]]) -> int:
    """Tokens of KV cache the deployment can hold across all its sessions: on each stage, the memory the
    peer offers beyond its weights and workspace, divided by that stage's KV bytes per token."""
    cm = CostModel(spec, CostOptions())
    per_layer = spec.kv_bytes_per_token_per_layer()
    best: int | None = None
    for st in stages:
        if st["peer"] not in swarm.index:
            continue
        stage = Stage.of(st)
        n = stage.n_layers
        if n <= 0 or per_layer <= 0:
            continue
        fixed = cm.stage_bytes(n, stage.embedding, stage.head) - n * cm.context * per_layer
        tokens = int((cm.usable_bytes(swarm.peer(stage.peer)) - fixed) // (n * per_layer))
        best = tokens if best is None else min(best, tokens)
    return max(1, best if best is not None else cm.context)


def swap_metric(req: DeploymentRequest) -> str:
    """What a peer swapped into a plan (a lost span's new home, a warm spare) is chosen by: the deployment's
    own objective -- its carbon scope's metric when it asks for least carbon, latency otherwise."""
    from prismn.placement.optimal import CARBON_METRICS, objective_from_request

    preq = PlanRequest(preference=req.preference, objective=req.objective, weight=req.weight,
                       max_latency_ms=req.max_latency_ms, max_gco2e=req.max_gco2e, carbon_scope=req.carbon_scope)
    return CARBON_METRICS[req.carbon_scope] if objective_from_request(preq).kind == "carbon" else "latency_ms_per_token"


def _best_swap(plan: dict[str, Any], target: dict[str, Any], candidates: list[str], spec: ModelSpec,
               swarm: Swarm, cm: CostModel, metric: str = "latency_ms_per_token",
               max_latency_ms: float | None = None) -> tuple[str, float] | None:
    """(peer, value) of the candidate that can hold ``target``'s layers and keeps the plan best on ``metric``
    (ties: faster) when it takes that stage, within ``max_latency_ms``, judged by the evaluator; None if
    none fits."""
    want = Stage.of(target)
    best: tuple[str, float, float] | None = None
    for p in candidates:
        if p not in swarm.index or cm.max_layers(swarm.peer(p), want.embedding, want.head) < want.n_layers:
            continue
        stages = [want.on(p) if st is target else Stage.of(st) for st in plan["stages"]]
        ev = evaluate_plan(Plan("swap", spec.name, stages), spec, swarm)
        lat = ev.metrics["latency_ms_per_token"]
        if not ev.feasible or (max_latency_ms is not None and lat > max_latency_ms):
            continue
        value = float(ev.metrics.get(metric, lat))
        if best is None or (value, lat) < (best[1], best[2]):
            best = (p, value, lat)
    return (best[0], best[1]) if best else None


class Runner:
    """A loaded deployment: the pipeline client its requests share, tokenizer, plan and admission."""

    def __init__(self, dep_id: str, plan: dict[str, Any], addresses: dict[str, str], checkpoint: str,
                 rtt: dict[str, dict[str, float]] | None, dtype: str, model: str, *, identity: Any = None,
                 keys: dict[str, str] | None = None, assignment_ttl_s: float = 300.0, transport: Any = None):
        from prismn.runtime.client import Hop, PipelineClient
        from prismn.transport import RttMatrix

        self.dep_id = dep_id
        self.plan = plan
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.model = model  # as clients name it: the stages put this name on their observed timings
        # the coordinator's Identity: it proves itself to every stage and signs their assignments
        self.identity = identity
        self.assignment_ttl_s = assignment_ttl_s
        keys = keys or {}
        hops = [Hop(s.peer, addresses[s.peer], s.layers, s.embedding, s.head, keys.get(s.peer))
                for s in map(Stage.of, plan["stages"])]
        self.client = PipelineClient(hops, rtt=RttMatrix(rtt) if rtt else None, identity=self.identity,
                                     transport=transport)
        self.tokenizer: Any = None
        self.end_ids: list[int] = []
        self.swarm: Swarm | None = None  # the swarm the plan was made on (for receipts)
        self.admission = Admission(1, 1, 0, 1.0)  # replaced in start() once the stages are known
        self.created = time.time()
        self.served_as = model  # the name clients use for it
        self.kv_budget = 1 << 30  # tokens of KV cache all sessions may hold (set in start())

    def set_deadlines(self, step_floor_s: float, first_floor_s: float) -> None:
        """Per-step deadlines from the plan's prediction: 3x the predicted time, never under the floors."""
        m = self.plan.get("metrics") or {}
        step = float(m.get("latency_ms_per_token") or 0.0) / 1e3
        first = float(m.get("ttft_ms") or 0.0) / 1e3
        self.client.timeout_s = max(step_floor_s, 3 * step)
        self.client.first_token_timeout_s = max(first_floor_s, 3 * first)

    async def start(self, load: bool, *, spec: ModelSpec | None = None, max_sessions: int | None = None,
                    max_queue: int = 64, queue_timeout_s: float = 60.0) -> None:
        await self.client.connect()
        if load:
            await self.client.load(self.checkpoint, dtype=self.dtype, name=self.model, deployment=self.dep_id,
                                   assignments=self.assignments(self.client.hops))
        self.client.check_chain()
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            from prismn.text import end_of_turn_ids

            self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.checkpoint)
            self.end_ids = end_of_turn_ids(self.tokenizer)
        self.kv_budget = kv_token_budget(spec, self.swarm, self.plan["stages"]) if (spec and self.swarm) else 1 << 30
        self.admit(max_sessions, max_queue, queue_timeout_s)

    def assignments(self, hops: list[Any]) -> list[dict[str, Any]] | None:
        """The signed assignment of each of ``hops`` (None without an identity: unsigned local stages)."""
        if self.identity is None:
            return None
        from prismn.coordinator.assignments import sign_assignments

        return sign_assignments(self.identity, hops, deployment=self.dep_id, model=self.model,
                                checkpoint=self.checkpoint, dtype=self.dtype, ttl_s=self.assignment_ttl_s)

    def admit(self, max_sessions: int | None, max_queue: int, queue_timeout_s: float) -> None:
        """(Re)set admission: sessions at once (what the stages hold, or fewer if asked), the KV budget,
        the queue. Requests already running keep their slots on the admission they entered."""
        cap = self.client.max_sessions
        sessions = cap if max_sessions is None else min(max_sessions, cap)
        kv = self.kv_budget
        self.admission = Admission(sessions, kv, max_queue, queue_timeout_s, f"deployment {self.dep_id}")
        self.plan["serving"] = {"max_sessions": sessions, "kv_token_budget": kv if kv < 1 << 30 else None,
                                "max_queue": max_queue}
        log.info("deployment %s admits %d sessions at once, %s KV tokens, queue %d", self.dep_id, sessions,
                 kv if kv < 1 << 30 else "unbounded", max_queue)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.retire()


class Deployer:
    def __init__(self, store: Store, registry: Registry, settings: Settings, identity: Any = None):
        self.store = store
        self.identity = identity  # the coordinator's key: signs assignments, proves itself to stages
        self.transport = self._transport()
        self.registry = registry
        self.settings = settings
        self.runners: dict[str, Runner] = {}  # deployment id -> its loaded runner
        self.by_model: dict[str, Runner] = {}  # the model name clients use -> the runner serving it now
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replanning: set[str] = set()
        self.moving: set[str] = set()  # deployments in a planned move (loading beside, or draining the old plan)
        self.draining: dict[str, set[str]] = {}  # deployment -> peers of the plan it left, until that plan drained

    def _transport(self) -> Any:
        """TCP to TCP peers; Iroh (made on first need, with the coordinator's key) to Iroh peers, dialled by
        endpoint id with the addresses the registry holds (the address book)."""
        from prismn.transport import MixedTransport, TcpTransport, make_transport

        def make_iroh() -> Any:
            t = make_transport("iroh", identity=self.identity, relay=self.settings.iroh_relay,
                               relay_url=self.settings.iroh_relay_url)

            async def resolve(eid: str) -> dict[str, Any] | None:
                return await asyncio.to_thread(self.registry.endpoint, eid)

            t.resolver = resolve  # type: ignore[attr-defined]
            return t

        return MixedTransport(TcpTransport(), make_iroh)

    def runner(self, dep_id: str, plan: dict[str, Any], addresses: dict[str, str], checkpoint: str,
               rtt: dict[str, dict[str, float]] | None, dtype: str, model: str) -> Runner:
        """A Runner for ``plan`` that proves the coordinator's key to its stages, checks theirs, signs their
        assignments and dials them over TCP or Iroh."""
        return Runner(dep_id, plan, addresses, checkpoint, rtt, dtype, model, identity=self.identity,
                      keys=self.registry.keys(), assignment_ttl_s=self.settings.assignment_ttl_s,
                      transport=self.transport)

    def peers_in_use(self, exclude: str | None = None) -> set[str]:
        """Peers holding a stage or spare of a live deployment (other than ``exclude``), and peers still
        serving a plan that a move left and that is draining (whatever the deployment: they finish requests
        in flight), unless the deployment's own plan kept them."""
        rows = [d for d in self.store.deployments() if d.plan and d.state in LIVE_STATES]
        used = {d.id: {s["peer"] for s in [*d.plan["stages"], *d.plan.get("spares", [])]} for d in rows}
        busy = set().union(*(peers for dep, peers in used.items() if dep != exclude))
        for dep, held in list(self.draining.items()):
            busy |= held - used.get(dep, set())
        return busy

    # ---- planning --------------------------------------------------------------------------
    def spec_for(self, model: str, dtype: str) -> tuple[ModelSpec, str]:
        """The cost spec of a deployable model, named as clients call it, and its checkpoint path."""
        path = resolve_checkpoint_path(model)
        return replace(load_model_spec(path, dtype), name=model), path

    def plan(self, req: DeploymentRequest, spec: ModelSpec, swarm: Swarm) -> tuple[EvaluatedPlan, EvaluatedPlan]:
        """(the strategy's plan as judged, the runnable plan as judged) on the current swarm."""
        preq = PlanRequest(preference=req.preference, objective=req.objective, weight=req.weight,
                           max_latency_ms=req.max_latency_ms, max_gco2e=req.max_gco2e, cost=CostOptions(),
                           carbon_scope=req.carbon_scope)
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
            busy = self.peers_in_use(exclude=dep_id)
            online = [p.id for p in self.store.peers("online") if p.id not in exclude | busy]
            if not online:
                raise PlanError("no free peer is online" + (f" ({len(busy)} serve other deployments)" if busy else ""))
            swarm = await asyncio.to_thread(self.registry.swarm, online)
            swapped = self._swap_in_spare(row.plan, set(online), spec, swarm)
            if swapped is None:  # else only the lost spans move, to free peers
                swapped = await asyncio.to_thread(self._swap_in_free_peers, row.plan, set(online), spec, swarm, req)
            if swapped is not None:  # same layer split; only the lost peers replaced
                chosen = run = swapped
            else:
                chosen, run = await asyncio.to_thread(self.plan, req, spec, swarm)  # big swarms take a while
            if not run.feasible:
                raise PlanError("no feasible plan on the online peers: " + "; ".join(run.problems[:3]))
            plan_json = {**run.to_json(), "strategy_plan": chosen.to_json() if run is not chosen else None}
            kept = [sp for sp in (row.plan or {}).get("spares", []) if sp["peer"] in online
                    and sp["peer"] not in {st["peer"] for st in plan_json["stages"]}] if swapped is not None else []
            rtt = self.emulated_rtt(swarm, [s["peer"] for s in plan_json["stages"]])
            plan_json["emulated_rtt_ms"] = rtt
            from prismn.coordinator.replacement import carry_record  # moves and plan history survive re-plans

            carry_record(row.plan, plan_json, row.error or f"re-planned ({row.state})")
            self._update(dep_id, state="loading", plan=plan_json, error=None)
            old = self._unserve(dep_id)
            if old:
                await old.close()
            runner = self.runner(dep_id, plan_json, self.registry.addresses(), row.checkpoint, rtt, spec.dtype,
                                 spec.name)
            runner.swarm = swarm
            await runner.start(load=True, **self._admission(req, spec))
            self._serve(row.model, runner)
            self._update(dep_id, state="ready", plan=runner.plan)
            # peers of the previous plan that this one left hold weights nobody uses: free them
            before = {s["peer"] for s in (row.plan or {}).get("stages", [])}
            if swapped is None:
                before |= {sp["peer"] for sp in (row.plan or {}).get("spares", [])}
            self._unload_later(before - {s["peer"] for s in runner.plan["stages"]} - {sp["peer"] for sp in kept},
                               spec.name, dep_id)
            runner.plan["spares"] = kept
            if req.spares > len(kept):
                await self._place_spares(dep_id, req, spec, runner)
            self._update(dep_id, plan=runner.plan)
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
                # only peers that re-joined since the restart count; wait (bounded) for the plan's
                addrs = await self._wait_for_peers([s["peer"] for s in row.plan["stages"]])
                runner = self.runner(row.id, row.plan, addrs, row.checkpoint, row.plan.get("emulated_rtt_ms"),
                                     req.dtype, req.model)
                runner.swarm = self.registry.swarm([s["peer"] for s in row.plan["stages"]])
                spec, _ = await asyncio.to_thread(self.spec_for, req.model, req.dtype)
                await runner.start(load=False, **self._admission(req, spec))
                self._serve(row.model, runner)
                self._update(row.id, state="ready")
                log.info("deployment %s restored: its peers still hold their stages", row.id)
            except Exception as e:  # anything in the way (a peer gone, another stage loaded): re-plan it
                log.info("deployment %s not restored (%s: %s); re-planning", row.id, e.__class__.__name__, e)
                self.schedule_replan(row.id, f"restore: {e}")

    async def _wait_for_peers(self, peers: list[str]) -> dict[str, str]:
        """The addresses of ``peers`` once all are online (re-joined), waiting at most a lease plus the
        re-join grace; PrismnError naming the missing ones after that."""
        st = self.settings
        deadline = time.monotonic() + st.lease_s + st.rejoin_grace_s
        while True:
            addrs = await asyncio.to_thread(self.registry.addresses)
            missing = [p for p in peers if p not in addrs]
            if not missing:
                return addrs
            if time.monotonic() > deadline:
                raise PrismnError(f"peer(s) {', '.join(missing)} did not re-join after the restart")
            await asyncio.sleep(0.2)

    # ---- failures mid-request ---------------------------------------------------------------
    async def recover(self, runner: Runner, peer_id: str, reason: str) -> Runner:
        """A peer of ``runner``'s plan failed during a request: take it out now (not at lease expiry),
        re-plan the deployment on the peers still online, and return the runner that serves it next
        (waiting at most --recovery-wait-s). Every request that hit the failure waits for the same one."""
        if peer_id and self.runners.get(runner.dep_id) is runner:
            log.warning("deployment %s: peer %s failed mid-request (%s); re-planning around it", runner.dep_id,
                        peer_id, reason)
            await asyncio.to_thread(self.registry.mark_offline, peer_id)
            self.on_peers_offline([peer_id])
        return await self.wait_for_runner(runner.served_as, not_this=runner)

    async def wait_for_runner(self, model: str, not_this: Runner | None = None,
                              timeout_s: float | None = None) -> Runner:
        """The runner serving ``model`` once there is one (other than ``not_this``), while its deployment
        is being planned, loaded, re-planned or restored; PrismnError when that fails or takes too long."""
        deadline = time.monotonic() + (self.settings.recovery_wait_s if timeout_s is None else timeout_s)
        while True:
            r = self.by_model.get(model)
            if r is not None and r is not not_this:
                return r
            rows = [d for d in await asyncio.to_thread(self.store.deployments) if d.model == model]
            if not any(d.state in LIVE_STATES or d.state == "planning" for d in rows):
                errs = [d.error for d in rows if d.error]
                raise PrismnError(f"model {model!r} has no live deployment" + (f" ({errs[-1]})" if errs else ""))
            if time.monotonic() > deadline:
                raise PrismnError(f"model {model!r} is still being re-planned or restored; retry shortly")
            await asyncio.sleep(0.1)

    # ---- warm spares ------------------------------------------------------------------------
    def _swap_in_spare(self, old: dict[str, Any] | None, online: set[str], spec: ModelSpec,
                       swarm: Swarm) -> EvaluatedPlan | None:
        """The previous plan with each lost peer replaced by an online spare that pre-loaded its stage,
        judged by the evaluator; None when a lost peer has no spare (then the planner re-plans)."""
        if not old or not old.get("spares"):
            return None
        spares = {(tuple(sp["layers"]), sp["peer"]) for sp in old["spares"] if sp["peer"] in online}
        stages, used = [], set()
        for st in old["stages"]:
            peer = st["peer"]
            if peer not in online:
                peer = next((p for (span, p) in sorted(spares) if span == tuple(st["layers"]) and p not in used), None)
                if peer is None:
                    return None
                used.add(peer)
            stages.append(Stage.of(st).on(peer))
        if not used:
            return None
        ev = evaluate_plan(Plan(old.get("strategy") or "prismn", spec.name, stages,
                                notes={"warm_spare": sorted(used)}), spec, swarm)
        return ev if ev.feasible else None

    def _swap_in_free_peers(self, old: dict[str, Any] | None, online: set[str], spec: ModelSpec,
                            swarm: Swarm, req: DeploymentRequest) -> EvaluatedPlan | None:
        """Re-plan only the lost spans: each lost stage goes, whole, to the free online peer that keeps the
        plan best on the deployment's objective (``swap_metric``); every other stage stays where it is (and
        keeps its loaded weights). None when a lost span fits no free peer (then the planner re-plans)."""
        if not old or not old.get("stages"):
            return None
        lost = [st for st in old["stages"] if st["peer"] not in online]
        if not lost:
            return None
        plan = {"stages": [dict(st) for st in old["stages"]]}
        free = [p for p in online if p not in {st["peer"] for st in old["stages"]}]
        cm = CostModel(spec, CostOptions())
        for st in plan["stages"]:
            if st["peer"] in online:
                continue
            best = _best_swap(plan, st, free, spec, swarm, cm, swap_metric(req), req.max_latency_ms)
            if best is None:
                return None
            st["peer"] = best[0]
            free.remove(best[0])
        stages = [Stage.of(st) for st in plan["stages"]]
        ev = evaluate_plan(Plan(old.get("strategy") or "prismn", spec.name, stages,
                                notes={"replaced_spans": [st["layers"] for st in lost]}), spec, swarm)
        return ev if ev.feasible else None

    async def _place_spares(self, dep_id: str, req: DeploymentRequest, spec: ModelSpec, runner: Runner) -> None:
        """Free peers that pre-load a copy of the plan's costliest stages (most layers to read again if
        their peer is lost), each on the free peer that keeps the swapped plan best on its objective."""
        plan = runner.plan
        taken = {s["peer"] for s in plan["stages"]} | {sp["peer"] for sp in plan.get("spares", [])}
        busy = self.peers_in_use(exclude=dep_id)
        free = [p.id for p in self.store.peers("online") if p.id not in taken | busy]
        if not free:
            log.info("deployment %s: no free peer for a warm spare", dep_id)
            return
        swarm = await asyncio.to_thread(self.registry.swarm, [*free, *(s["peer"] for s in plan["stages"])])
        cm = CostModel(spec, CostOptions())
        covered = {tuple(sp["layers"]) for sp in plan.get("spares", [])}
        order = sorted(plan["stages"], key=lambda st: st["layers"][0] - st["layers"][1])  # most layers first
        while len(plan.get("spares", [])) < req.spares and free:
            target = next((st for st in order if tuple(st["layers"]) not in covered), None)
            if target is None:
                break
            best = _best_swap(plan, target, free, spec, swarm, cm, swap_metric(req), req.max_latency_ms)
            covered.add(tuple(target["layers"]))
            if best is None:
                continue
            from prismn.runtime.client import Hop, PipelineClient

            pid = best[0]
            hop = Hop(pid, self.registry.addresses()[pid], tuple(target["layers"]), target["embedding"], target["head"],
                      self.registry.keys().get(pid))
            client = PipelineClient([hop], identity=self.identity, transport=self.transport)
            try:
                await client.connect()
                # a spare's assignment names no neighbours: it serves nothing until a swap re-assigns it
                await client.load(runner.checkpoint, dtype=runner.dtype, name=runner.model, deployment=dep_id,
                                  assignments=runner.assignments([hop]))
            except PrismnError as e:
                log.info("deployment %s: warm spare on %s failed to load: %s", dep_id, pid, e)
                continue
            finally:
                await client.aclose()
            plan.setdefault("spares", []).append({"peer": pid, "layers": target["layers"],
                                                  "embedding": target["embedding"], "head": target["head"],
                                                  "for_peer": target["peer"]})
            free.remove(pid)
            log.info("deployment %s: warm spare %s holds layers %s of %s", dep_id, pid, target["layers"],
                     target["peer"])

    # ---- planned moves (carbon re-placement: prismn.coordinator.replacement) -----------------
    async def move_to(self, dep_id: str, old: Runner, plan_json: dict[str, Any], swarm: Swarm, spec: ModelSpec,
                      move: dict[str, Any]) -> bool:
        """Load ``plan_json`` beside the running plan ``old`` (its peers are free or keep their identical
        stage), then send new requests to it; requests in flight finish on ``old``, which is retired and its
        peers unloaded once they are done (``_drain``). False, nothing changed, if the new plan does not
        load or a failure re-planned the deployment meanwhile (``move["failed"]`` says why)."""
        row = self.get(dep_id)
        req = DeploymentRequest.model_validate(row.request)
        fresh = {s["peer"] for s in plan_json["stages"]} - {h.peer_id for h in old.client.hops}
        self.moving.add(dep_id)
        runner = self.runner(dep_id, plan_json, self.registry.addresses(), row.checkpoint,
                             plan_json.get("emulated_rtt_ms"), spec.dtype, spec.name)
        runner.swarm = swarm
        runner.tokenizer, runner.end_ids = old.tokenizer, old.end_ids
        t0 = time.monotonic()
        try:
            await runner.start(load=True, **self._admission(req, spec))
            if self.runners.get(dep_id) is not old or dep_id in self._replanning:
                raise PrismnError("a failure re-planned the deployment while the new plan loaded")
        except Exception as e:  # noqa: BLE001 - whatever failed, the old plan keeps serving
            self.moving.discard(dep_id)
            await runner.close()
            live = {s["peer"] for s in (self.get(dep_id).plan or {}).get("stages", [])}
            self._unload_later(fresh - live, spec.name, dep_id)
            move["failed"] = str(e)
            log.warning("deployment %s: move not made: %s", dep_id, e)
            return False
        move.update(load_s_measured=round(time.monotonic() - t0, 3), switched_at=time.time(),
                    in_flight_at_switch=old.admission.active + old.admission.waiting)
        runner.plan["spares"] = []  # the old spares copy old stages: freed after the drain, placed again then
        self.draining[dep_id] = {h.peer_id for h in old.client.hops} | {sp["peer"] for sp in old.plan.get("spares", [])}
        self._serve(row.model, runner)
        self._update(dep_id, plan=runner.plan, generation=row.generation + 1)
        log.info("deployment %s moved to %s; %d request(s) finish on the old plan", dep_id,
                 [s["peer"] for s in runner.plan["stages"]], move["in_flight_at_switch"])
        task = asyncio.get_running_loop().create_task(self._drain(dep_id, old, move, req, spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _drain(self, dep_id: str, old: Runner, move: dict[str, Any], req: DeploymentRequest,
                     spec: ModelSpec) -> None:
        """Once no request runs or waits on ``old`` (for a second: one handed it just before the switch has
        begun by then), retire it and unload the peers the deployment's plan no longer uses."""
        st = self.settings
        deadline = time.monotonic() + st.request_timeout_s + st.queue_timeout_s
        held = self.draining.get(dep_id, set())
        idle_since: float | None = None
        try:
            while time.monotonic() < deadline:
                if old.admission.active or old.admission.waiting:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= 1.0:
                    break
                await asyncio.sleep(0.1)
            await old.close()
            cur = self.runners.get(dep_id)
            plan = cur.plan if cur is not None else (self.get(dep_id).plan or {})
            gone = held - {s["peer"] for s in [*plan.get("stages", []), *plan.get("spares", [])]}
            await self._unload(gone, old.model, dep_id)
            move.update(drained_at=time.time(), unloaded=sorted(gone))
            log.info("deployment %s: the old plan drained and was retired (unloaded %s)", dep_id, sorted(gone))
            if cur is not None:
                for m in plan.get("moves", []):
                    if m.get("id") == move["id"]:
                        m.update(move)
                if req.spares:
                    await self._place_spares(dep_id, req, spec, cur)
                self._update(dep_id, plan=cur.plan)
        finally:
            self.draining.pop(dep_id, None)
            self.moving.discard(dep_id)

    def _unload_later(self, peers: set[str], model: str, dep_id: str) -> None:
        """Free the stages of ``model`` on peers that no longer serve it (best effort, in the background)."""
        if peers:
            task = asyncio.get_running_loop().create_task(self._unload(peers, model, dep_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _unload(self, peers: set[str], model: str, dep_id: str) -> None:
        from prismn.handshake import authenticate

        addrs = await asyncio.to_thread(self.registry.addresses)
        keys = await asyncio.to_thread(self.registry.keys)
        for pid in sorted(peers):
            if pid not in addrs:
                continue  # gone: nothing to free there
            try:
                c = await self.transport.connect(addrs[pid], timeout=5.0)
                try:
                    if self.identity is not None:
                        await authenticate(c, self.identity, keys.get(pid))
                    # only this deployment's stage: a newer deployment on that peer keeps its own
                    await c.send({"kind": "unload", "model": model, "deployment": dep_id})
                    f = await asyncio.wait_for(c.recv(), 10.0)
                    log.info("peer %s %s its stage of %s", pid, "unloaded" if f and f.kind == "unloaded"
                             else "did not unload", model)
                finally:
                    await c.close()
            except Exception as e:  # a peer that cannot be reached frees its memory when it restarts
                log.info("could not unload %s from peer %s: %s", model, pid, e)

    def _admission(self, req: DeploymentRequest, spec: ModelSpec | None) -> dict[str, Any]:
        st = self.settings
        return {"spec": spec, "max_sessions": req.max_sessions,
                "max_queue": st.max_queue if req.max_queue is None else req.max_queue,
                "queue_timeout_s": st.queue_timeout_s}

    def _serve(self, model: str, runner: Runner) -> None:
        runner.served_as = model
        st = self.settings
        runner.set_deadlines(st.step_deadline_floor_s, st.first_token_deadline_floor_s)
        self.runners[runner.dep_id] = runner
        self.by_model[model] = runner

    def _unserve(self, dep_id: str) -> Runner | None:
        runner = self.runners.pop(dep_id, None)
        for name, r in list(self.by_model.items()):
            if r is runner:
                del self.by_model[name]
        return runner

    def schedule_replan(self, dep_id: str, reason: str, state: str = "replanning") -> None:
        if dep_id in self._replanning:
            return
        self._replanning.add(dep_id)
        task = asyncio.get_running_loop().create_task(self._replan(dep_id, reason, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replan(self, dep_id: str, reason: str, state: str = "replanning") -> None:
        try:
            row = self.get(dep_id)
            req = DeploymentRequest.model_validate(row.request)
            log.info("re-planning %s: %s", dep_id, reason)
            self._update(dep_id, state=state, error=reason, generation=row.generation + 1)
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
                runner = self._unserve(row.id)
                if runner:
                    task = asyncio.get_running_loop().create_task(runner.close())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self.schedule_replan(row.id, f"peer(s) {', '.join(sorted(gone))} went offline", state="degraded")
                n += 1
        return n

    def set_limits(self, dep_id: str, max_sessions: int | None, max_queue: int | None) -> DeploymentRow:
        """Change how many requests a deployment runs at once and queues, now and after re-plans."""
        row = self.get(dep_id)
        req = DeploymentRequest.model_validate({**row.request, "max_sessions": max_sessions, "max_queue": max_queue})
        self._update(dep_id, request=req.model_dump())
        runner = self.runners.get(dep_id)
        if runner is not None:
            a = self._admission(req, None)
            runner.admit(a["max_sessions"], a["max_queue"], a["queue_timeout_s"])
            self._update(dep_id, plan=runner.plan)
        return self.get(dep_id)

    async def stop(self, dep_id: str) -> DeploymentRow:
        self.get(dep_id)  # KeyError (404) before anything changes
        runner = self._unserve(dep_id)
        if runner:
            await runner.close()
            # before answering: a deployment created right after may want these peers
            await self._unload({h.peer_id for h in runner.client.hops}, runner.model, dep_id)
        self._update(dep_id, state="stopped")
        return self.get(dep_id)

    async def shutdown(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for r in list(self.runners.values()):
            await r.close()
        self.runners.clear()
        self.by_model.clear()
        await self.transport.close()

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
        """The runner serving ``model`` now, found in memory (no store scan per request)."""
        return self.by_model.get(model)

    def served_models(self) -> list[str]:
        return sorted(self.by_model)

    def ready_models(self) -> list[DeploymentRow]:
        return [r for r in self.store.deployments() if r.state == "ready" and r.id in self.runners]


def deployment_json(row: DeploymentRow) -> dict[str, Any]:
    plan = row.plan or {}
    return {
        "id": row.id, "model": row.model, "state": row.state, "error": row.error, "generation": row.generation,
        "request": row.request, "plan": plan, "predicted": plan.get("metrics"),
        "moves": plan.get("moves", []),  # carbon re-placement: when, why, expected saving, move cost
        "created_at": row.created_at.isoformat() + "Z", "updated_at": row.updated_at.isoformat() + "Z",
    }
