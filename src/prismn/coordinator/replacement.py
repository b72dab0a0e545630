"""Re-placement over time (issue 13 §4; DESIGN.md "Time"): move a deployment when the grid changes.

Every ``Policy.every_s`` the coordinator refreshes its peers' grid intensities (the provider chain of
``--carbon``) and judges each ready deployment whose objective is carbon (``objective: "carbon"``, or
the default low-carbon preference): it plans again, with the deployment's own request, on the peers it
could move to, and moves only when

1. hysteresis: at least ``dwell_s`` have passed since the deployment last moved;
2. threshold: the new plan emits at least ``threshold`` (relative) less gCO2e per token than the running
   plan, both priced on the same signal (the refreshed values, or their forecast mean);
3. move cost: that saving over the hold time (``dwell_s``, or the forecast horizon) at
   ``tokens_per_hour`` exceeds the carbon of moving: the weights each peer of the new plan lacks
   (downloaded over its link: bytes x k_net + time x active power, an upper bound; or read from its
   disk: time x active power) priced at its zone's intensity.

Forecast-aware (``forecast_h > 0``): plans are judged on each zone's mean forecast over the next
``forecast_h`` hours, so a plan that is clean now but not for long loses to one that stays clean.

Where the new plan may go: a peer serves one stage at a time, and the old plan keeps serving while the
new one loads (the switch drains), so the new plan is made on the peers free of any live deployment
plus the old plan's peers that keep exactly their stage (same layers, embedding and head: the stage
server reuses it). A plan that would give an old peer a different stage is made again without that
peer, until none does. The switch itself is ``Deployer.move_to``: new requests go to the new plan once
it is loaded, requests in flight finish on the old one, which is retired (and its peers unloaded) when
they are done. Every move is recorded in the plan (``moves``, ``history``) and every check's verdict in
``plan["replacement"]``: GET /v1/deployments/{id} shows both.

The policy functions (``Policy``, ``move_cost``, ``decide``, ``signal_swarm``) are pure and shared with
``benchmarks/carbon_week.py``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from prismn.carbon.point import CarbonUnavailable, Intensity, as_utc, utcnow
from prismn.errors import PrismnError
from prismn.model import ModelSpec
from prismn.placement import CostOptions, EvaluatedPlan, Plan, Stage, evaluate_plan
from prismn.placement.costmodel import CostModel
from prismn.placement.kernel import grams, network_joules, weighted_intensity
from prismn.swarm import Swarm

if TYPE_CHECKING:
    from prismn.carbon import CarbonProvider

log = logging.getLogger("prismn.coordinator")

WEIGHTS = ("download", "disk")
HISTORY_MAX = 50  # plans kept in a deployment's history (the newest)


# ---- the policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    every_s: float = 300.0  # how often intensities are refreshed and deployments judged
    threshold: float = 0.05  # least relative gCO2e/token gain worth a move
    dwell_s: float = 3 * 3600.0  # hysteresis: least time between two moves; also the hold time
    forecast_h: float = 0.0  # > 0: judge plans on the mean forecast of the next hours
    tokens_per_hour: float = 20_000.0  # demand a move's saving is counted over
    weights: str = "download"  # how a peer gets weights it lacks: "download" (its link) or "disk"
    disk_gbps: float = 2.0  # disk read speed when weights come from disk
    latency_slack: float | None = None  # new plan latency <= slack x the running plan's (None: the request's bound)

    def __post_init__(self) -> None:
        if self.every_s <= 0:
            raise PrismnError(f"re-placement every={self.every_s:g}s: give a positive period, e.g. every=5m")
        if not 0 <= self.threshold < 1:
            raise PrismnError(f"re-placement threshold={self.threshold:g}: give a share in [0, 1), e.g. 5%")
        if self.dwell_s < 0 or self.forecast_h < 0 or self.tokens_per_hour < 0 or self.disk_gbps <= 0:
            raise PrismnError("re-placement dwell, forecast, tokens and disk must not be negative")
        if self.weights not in WEIGHTS:
            raise PrismnError(f"re-placement weights={self.weights!r}: use {' or '.join(WEIGHTS)}")
        if self.latency_slack is not None and self.latency_slack < 1:
            raise PrismnError(f"re-placement latency={self.latency_slack:g}: give a factor >= 1, e.g. 1.1")

    @property
    def hold_h(self) -> float:
        """Hours a new plan is expected to run: the forecast horizon, else the hysteresis window (at least
        until the next check)."""
        return self.forecast_h if self.forecast_h > 0 else max(self.dwell_s, self.every_s) / 3600.0

    def in_dwell(self, since_last_move_s: float | None) -> bool:
        """Hysteresis: is a move ``since_last_move_s`` ago (None: never) too recent for another?"""
        return since_last_move_s is not None and since_last_move_s < self.dwell_s

    @property
    def signal(self) -> str:
        return f"mean forecast of the next {self.forecast_h:g} h" if self.forecast_h > 0 else "latest value"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> Policy:
        """'every=5m,threshold=5%,dwell=3h,forecast=6h,tokens=20000,weights=disk,latency=1.1' (any subset)."""
        names = {"every": "every_s", "threshold": "threshold", "dwell": "dwell_s", "forecast": "forecast_h",
                 "tokens": "tokens_per_hour", "weights": "weights", "disk": "disk_gbps", "latency": "latency_slack"}
        kw: dict[str, Any] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            k, sep, v = part.partition("=")
            k = k.strip().lower()
            if not sep or k not in names:
                raise PrismnError(f"--replace {part!r}: write KEY=VALUE with KEY one of {', '.join(names)}, "
                                  "e.g. every=5m,threshold=5%,dwell=3h")
            v = v.strip()
            try:
                if k in ("every", "dwell"):
                    kw[names[k]] = _seconds(v)
                elif k == "forecast":
                    kw[names[k]] = _seconds(v, default_unit="h") / 3600.0
                elif k == "threshold":
                    kw[names[k]] = float(v[:-1]) / 100 if v.endswith("%") else float(v)
                elif k == "weights":
                    kw[names[k]] = v
                else:
                    kw[names[k]] = float(v)
            except ValueError:
                raise PrismnError(f"--replace {part!r}: {v!r} is not a number (durations: 30s, 5m, 3h)") from None
        return cls(**kw)


def _seconds(v: str, default_unit: str = "s") -> float:
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([smh]?)", v.strip().lower())
    if not m:
        raise ValueError(v)
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or default_unit]


# ---- the cost of moving ------------------------------------------------------------------------
StageLike = Stage | dict[str, Any]


def stage_keys(stages: Iterable[StageLike]) -> list[tuple[str, int, int, bool, bool]]:
    """(peer, start, end, embedding, head) for placement Stages or plan-JSON stages alike."""
    return [Stage.of(s).key for s in stages]


def held_parts(stages: Iterable[StageLike]) -> dict[str, set[str]]:
    """peer -> the weight pieces it holds ('L12', 'embed', 'head')."""
    out: dict[str, set[str]] = {}
    for peer, a, b, emb, head in stage_keys(stages):
        parts = {f"L{i}" for i in range(a, b)} | ({"embed"} if emb else set()) | ({"head"} if head else set())
        out.setdefault(peer, set()).update(parts)
    return out


@dataclass(frozen=True)
class MoveCost:
    bytes: float
    joules: float
    gco2e: float
    load_s: float  # the slowest peer's load: how long the old plan keeps serving alone
    weights: str  # "download" or "disk"
    peers: dict[str, float]  # peer -> bytes it loads

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def move_cost(spec: ModelSpec, swarm: Swarm, old: Sequence[StageLike], new: Sequence[StageLike],
              cost: CostOptions | None = None, *, weights: str = "download", disk_gbps: float = 2.0) -> MoveCost:
    """The weights each peer of ``new`` lacks under ``old``, and the energy and carbon of loading them:
    downloaded over the peer's link (bytes x k_net + time x active power: an upper bound, a GPU waiting for
    its weights draws less) or read from the peer's disk (time x active power), at the peer zone's intensity."""
    if weights not in WEIGHTS:
        raise PrismnError(f"weights={weights!r}: use {' or '.join(WEIGHTS)}")
    size = {"embed": spec.embed_bytes, "head": spec.head_bytes}
    before, after = held_parts(old), held_parts(new)
    cm = CostModel(spec, cost or CostOptions())
    total = joules = g = load_s = 0.0
    per: dict[str, float] = {}
    for peer_id, parts in after.items():
        b = float(sum(size.get(p, spec.layer_bytes) for p in parts - before.get(peer_id, set())))
        if not b:
            continue
        peer = swarm.peer(peer_id)
        if weights == "disk":
            t = b / (disk_gbps * 1e9)
            j = t * cm.peer_power_w(peer)[0]
        else:
            t = b * 8 / (peer.bandwidth_mbps * 1e6)
            j = network_joules(b, cm.opt.k_net_kwh_per_gb) + t * cm.peer_power_w(peer)[0]
        per[peer_id] = b
        total += b
        joules += j
        g += float(grams(j, peer.intensity.g_per_kwh))
        load_s = max(load_s, t)
    return MoveCost(total, joules, g, load_s, weights, per)


# ---- the decision ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    move: bool
    rule: str  # move | same | infeasible | dwell | threshold | move_cost
    reason: str
    current_g_per_token: float
    candidate_g_per_token: float | None
    gain_g_per_token: float
    hold_h: float
    expected_saving_g: float  # gain x tokens_per_hour x hold_h
    cost: MoveCost | None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = self.cost.to_json() if self.cost else None
        return d


def decide(policy: Policy, current_g: float, candidate_g: float | None, cost: MoveCost | None,
           since_last_move_s: float | None, same: bool = False) -> Decision:
    """Move or stay, and why. Checked in order: a plan exists, it differs, hysteresis, threshold, move cost."""
    hold = policy.hold_h
    if candidate_g is None:
        return Decision(False, "infeasible", "no feasible plan on the peers it could move to", current_g, None, 0.0,
                        hold, 0.0, None)
    gain = current_g - candidate_g
    saving = gain * policy.tokens_per_hour * hold
    pct = 100 * gain / current_g if current_g > 0 else 0.0

    def d(move: bool, rule: str, reason: str) -> Decision:
        return Decision(move, rule, reason, current_g, candidate_g, gain, hold, saving, cost)

    if same:
        return d(False, "same", "the best plan is the running one")
    better = f"{pct:.1f}% cleaner" if gain >= 0 else f"{-pct:.1f}% dirtier"
    if policy.in_dwell(since_last_move_s):
        return d(False, "dwell", f"hysteresis: moved {since_last_move_s:.0f} s ago, under the {policy.dwell_s:.0f} s "
                                 f"dwell (the best plan, {better}, waits)")
    if gain < policy.threshold * current_g:
        return d(False, "threshold", f"the best plan it could move to is {better}, under the "
                                     f"{100 * policy.threshold:g}% threshold")
    moving = cost.gco2e if cost else 0.0
    if saving <= moving:
        return d(False, "move_cost", f"{pct:.1f}% cleaner saves {saving:.3g} g over {hold:g} h, not more than the "
                                     f"{moving:.3g} g it costs to move")
    return d(True, "move", f"{pct:.1f}% cleaner per token: saves {saving:.3g} g over {hold:g} h against "
                           f"{moving:.3g} g to move")


#: the gCO2e/token figure each carbon scope of the planner minimises (the evaluator reports them all)
SCOPE_METRICS = {"reserved": "gco2e_total_per_token_at_load", "operational": "gco2e_per_token",
                 "total": "gco2e_total_per_token"}


def carbon_metric(ev: EvaluatedPlan | None) -> str:
    """The metric a move is judged on: the one the planner minimised for ``ev`` (its notes name the carbon
    scope), so the policy and the planner never disagree about what "cleaner" means."""
    if ev is None:
        return "gco2e_per_token"
    key = SCOPE_METRICS.get(str(ev.plan.notes.get("carbon_scope", "operational")), "gco2e_per_token")
    return key if key in ev.metrics else "gco2e_per_token"


# ---- the signal: latest values, or the mean forecast -------------------------------------------
def forecast_mean(provider: CarbonProvider, zone: str, now: datetime, hours: float) -> Intensity:
    """The time-weighted mean of ``zone``'s forecast over [now, now + hours); CarbonUnavailable if none."""
    now = as_utc(now)
    end = now + timedelta(hours=hours)
    pts = provider.forecast(zone, now, end)
    values, weights = [], []
    for p in pts:
        if p.time is None:
            continue
        a = max(as_utc(p.time), now)
        b = min(as_utc(p.time) + timedelta(seconds=p.duration_s or 3600), end)
        w = (b - a).total_seconds()
        if w > 0:
            values.append(p.g_per_kwh)
            weights.append(w)
    if not weights:
        raise CarbonUnavailable(f"no forecast for {zone} over the next {hours:g} h")
    first = pts[0]
    covered = sum(weights) / (hours * 3600)
    # carbon is linear in intensity: planning on this mean minimises the time-weighted carbon (kernel)
    mean = float(weighted_intensity(np.array([values]), np.array(weights))[0])
    return replace(first, g_per_kwh=mean, time=now, duration_s=int(hours * 3600),
                   estimated=any(p.estimated for p in pts) or covered < 0.999,
                   source=f"mean forecast of the next {hours:g} h ({100 * covered:.0f}% covered) from {first.source}")


def with_intensities(swarm: Swarm, values: dict[str, Intensity], keep: Iterable[str] | None = None) -> Swarm:
    """The swarm with each peer of a zone in ``values`` priced at that value (a peer's own, user-supplied
    intensity is kept), restricted to the peers in ``keep`` if given."""
    ids = set(keep) if keep is not None else None
    peers = []
    for p in swarm.peers:
        if ids is not None and p.id not in ids:
            continue
        v = values.get(p.zone or "")
        peers.append(replace(p, intensity=v) if v is not None and p.intensity.signal != "unknown" else p)
    kept = {p.id for p in peers}
    rtt = {k: v for k, v in swarm.rtt_overrides.items() if all(e in kept or e == "client" for e in k)}
    return Swarm(swarm.coordinator, peers, rtt)


def benchmarks_only(swarm: Swarm) -> Swarm:
    """The swarm without the timings stages observed while serving: the running plan's peers have them (slow
    under load), the peers it could move to do not, so comparing the two would favour moving. Both are
    priced on the same ruler instead: start-up benchmarks, else the GPU catalogue."""
    peers = [replace(p, measurements=[m for m in p.measurements if not str(m.source or "").startswith("observed")])
             for p in swarm.peers]
    return Swarm(swarm.coordinator, peers, swarm.rtt_overrides)


def signal_swarm(swarm: Swarm, provider: CarbonProvider, now: datetime, forecast_h: float) -> tuple[Swarm, dict]:
    """(the swarm priced on the policy's signal, zone -> what was used). With ``forecast_h`` 0 the swarm is
    returned as built (its latest values); else each zone's mean forecast, or its latest value where no
    forecast answers (said per zone)."""
    zones = sorted({p.zone for p in swarm.peers if p.zone and p.intensity.signal != "unknown"})
    used: dict[str, Any] = {}
    if forecast_h <= 0:
        for p in swarm.peers:
            if p.zone in zones and p.zone not in used:
                used[p.zone] = {"g_per_kwh": p.intensity.g_per_kwh, "source": p.intensity.source}
        return swarm, used
    values = {}
    for z in zones:
        try:
            values[z] = forecast_mean(provider, z, now, forecast_h)
            used[z] = {"g_per_kwh": values[z].g_per_kwh, "source": values[z].source}
        except CarbonUnavailable as e:
            latest = next(p.intensity for p in swarm.peers if p.zone == z)
            used[z] = {"g_per_kwh": latest.g_per_kwh, "source": latest.source, "forecast_unavailable": str(e)}
    return with_intensities(swarm, values), used


# ---- where a move may go -------------------------------------------------------------------------
def plan_beside(make: Callable[[Swarm], EvaluatedPlan], swarm: Swarm, free: Iterable[str],
                old: Sequence[StageLike], first: EvaluatedPlan | None = None) -> EvaluatedPlan | None:
    """The best plan (``make(swarm)``) that can load while ``old`` serves: on the ``free`` peers plus the old
    plan's peers, none of which may get a stage other than its own (a peer holds one stage; the server
    reuses an identical one). A plan that breaks this is made again without the peers it would change,
    until none. ``first``: ``make`` already run on exactly those peers. None when nothing feasible is left."""
    keep = {k[0]: k for k in stage_keys(old)}
    pool = set(free) | set(keep)
    run = first
    for _ in range(len(keep) + 1):
        if not pool:
            return None
        if run is None:
            run = make(with_intensities(swarm, {}, pool))
        if not run.feasible:
            return None
        clash = {k[0] for k in stage_keys(run.plan.stages) if k[0] in keep and keep[k[0]] != k}
        if not clash:
            return run
        pool -= clash
        run = None
    return None


# ---- the record ----------------------------------------------------------------------------------
def carry_record(old: dict[str, Any] | None, new: dict[str, Any], why: str) -> dict[str, Any]:
    """Give ``new`` the deployment's record: its moves, and a history of the plans it left (the old one
    added, with when and why it ended). Returns ``new``."""
    if not old or not old.get("stages"):
        return new
    new["moves"] = list(old.get("moves") or [])
    entry = {"ended_at": _iso(time.time()), "why": why, "strategy": old.get("strategy"),
             "stages": [[s["peer"], s["layers"][0], s["layers"][1]] for s in old["stages"]],
             "metrics": {k: (old.get("metrics") or {}).get(k) for k in ("latency_ms_per_token", "gco2e_per_token")}}
    new["history"] = [*(old.get("history") or []), entry][-HISTORY_MAX:]
    return new


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat()


def last_move_at(plan: dict[str, Any]) -> float | None:
    """When (epoch seconds) the deployment last switched plans by a move."""
    times = [m.get("switched_at") for m in plan.get("moves") or [] if m.get("switched_at")]
    return max(times) if times else None


# ---- in the coordinator --------------------------------------------------------------------------
def carbon_driven(request: dict[str, Any]) -> bool:
    """Does the deployment ask for least carbon (so that the grid's changes should move it)? Latency and
    balanced objectives, and strategies that ignore carbon, are never moved for carbon."""
    from prismn.placement import PlanRequest
    from prismn.placement.optimal import objective_from_request

    strategy = request.get("strategy") or "prismn"
    preference = request.get("preference") or "low-carbon"
    if strategy == "prismn-hackathon":
        return preference == "low-carbon"
    req = PlanRequest(preference=preference, objective=request.get("objective"),
                      max_latency_ms=request.get("max_latency_ms"), max_gco2e=request.get("max_gco2e"))
    return strategy == "prismn" and objective_from_request(req).kind == "carbon"


class Replacer:
    """The coordinator's clock: refresh intensities, judge each carbon-driven deployment, move it."""

    def __init__(self, state: Any, policy: Policy, provider: CarbonProvider | None = None):
        from prismn.carbon import default_provider

        self.state = state
        self.policy = policy
        self.provider = provider or getattr(state.settings, "carbon", None) or default_provider()
        self._specs: dict[str, ModelSpec] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.policy.every_s)
            try:
                await self.tick()
            except Exception:  # never let the clock die: log and keep ticking
                log.exception("re-placement check failed")

    async def tick(self) -> list[dict[str, Any]]:
        """Judge every ready, carbon-driven deployment once; returns the verdicts."""
        dep = self.state.deployer
        out = []
        for row in await asyncio.to_thread(self.state.store.deployments):
            runner = dep.runners.get(row.id)
            if row.state != "ready" or runner is None or row.id in dep._replanning or row.id in dep.moving:
                continue
            if not carbon_driven(row.request):
                continue
            try:
                out.append(await self.check(row, runner))
            except PrismnError as e:
                log.info("re-placement of %s not judged: %s", row.id, e)
                runner.plan["replacement"] = {"checked_at": _iso(time.time()), "checked_at_s": time.time(),
                                              "error": str(e), "policy": self.policy.to_json()}
                await self._save(row.id, runner)
        return out

    async def check(self, row: Any, runner: Any) -> dict[str, Any]:
        from prismn.coordinator.schemas import DeploymentRequest

        dep, store, policy = self.state.deployer, self.state.store, self.policy
        req = DeploymentRequest.model_validate(row.request)
        spec = self._specs.get(row.id)
        if spec is None:
            spec = self._specs[row.id] = (await asyncio.to_thread(dep.spec_for, req.model, req.dtype))[0]
        plan = runner.plan
        old = plan["stages"]
        old_peers = {s["peer"] for s in old}
        own_spares = {sp["peer"] for sp in plan.get("spares", [])}
        busy = await asyncio.to_thread(self.state.deployer.peers_in_use, row.id)
        online = [p.id for p in await asyncio.to_thread(store.peers, "online") if p.id not in busy]
        if not old_peers <= set(online):
            raise PrismnError("a peer of the plan is offline (failure recovery re-plans it)")
        now = utcnow()
        live = await asyncio.to_thread(self.state.registry.swarm, online)  # the refresh: --carbon's values now
        runner.swarm = live  # receipts price at the latest refreshed intensities
        ruler = benchmarks_only(live)
        sig, used = await asyncio.to_thread(signal_swarm, ruler, self.provider, now, policy.forecast_h)
        free = [p for p in online if p not in old_peers | own_spares]
        bound = req.max_latency_ms
        if policy.latency_slack is not None:
            running_ms = evaluate_plan(_plan(plan, spec), spec, ruler).metrics["latency_ms_per_token"]
            bound = min(b for b in (bound, policy.latency_slack * running_ms) if b is not None)
        cand = await asyncio.to_thread(self.candidate, req.model_copy(update={"max_latency_ms": bound}), spec, sig,
                                       free, old)
        current = evaluate_plan(_plan(plan, spec), spec, sig)
        metric = carbon_metric(cand)
        cur_g = current.metrics[metric]
        cost = None
        if cand is not None and cand.feasible:
            cost = move_cost(spec, live, old, cand.plan.stages, weights=policy.weights, disk_gbps=policy.disk_gbps)
        last = last_move_at(plan)
        d = decide(policy, cur_g, cand.metrics[metric] if cand is not None and cand.feasible else None,
                   cost, None if last is None else time.time() - last,
                   same=cand is not None and stage_keys(cand.plan.stages) == stage_keys(old))
        verdict = {"checked_at": _iso(time.time()), "checked_at_s": time.time(), "signal": policy.signal,
                   "metric": metric, "intensities": used,
                   "policy": policy.to_json(), "decision": d.to_json(),
                   "candidate": [[s.peer, s.start, s.end] for s in cand.plan.stages] if cand is not None else None}
        plan["replacement"] = verdict
        log.info("re-placement check of %s: %s (%s)", row.id, d.rule, d.reason)
        if dep.runners.get(row.id) is not runner or row.id in dep._replanning:
            verdict["moved"] = False  # a failure re-planned it meanwhile: that plan wins, this verdict is stale
            return verdict
        if not d.move:
            await self._save(row.id, runner)
            return verdict
        assert cand is not None and cost is not None
        # the stored plan is priced on the live values (the signal may be a forecast)
        run = evaluate_plan(cand.plan, spec, live)
        new = {**run.to_json(), "strategy_plan": None}
        new["emulated_rtt_ms"] = dep.emulated_rtt(live, [s.peer for s in run.plan.stages])
        zones = {live.peer(p).zone: live.peer(p).intensity.g_per_kwh for p in {*old_peers, *(s.peer for s in
                 run.plan.stages)} if live.peer(p).zone}
        move = {"id": "mv-" + secrets.token_hex(4), "decided_at": _iso(time.time()), "why": d.reason,
                "signal": policy.signal, "metric": metric, "intensities_g_per_kwh": zones,
                "from": [[s["peer"], s["layers"][0], s["layers"][1]] for s in old],
                "to": [[s.peer, s.start, s.end] for s in run.plan.stages],
                "gco2e_per_token_before": cur_g, "gco2e_per_token_after": d.candidate_g_per_token,
                "expected_saving_g": d.expected_saving_g, "hold_h": d.hold_h, "move_cost": cost.to_json(),
                "kept_peers": sorted(old_peers & {s.peer for s in run.plan.stages})}
        carry_record(plan, new, f"moved for carbon: {d.reason}")
        new["moves"].append(move)
        new["replacement"] = verdict
        moved = await dep.move_to(row.id, runner, new, live, spec, move)
        verdict["moved"] = moved
        if not moved:
            verdict["move_failed"] = move.get("failed")
            await self._save(row.id, runner)
        return verdict

    async def _save(self, dep_id: str, runner: Any) -> None:
        """Store the runner's plan (with the last verdict) if it still serves the deployment."""
        dep = self.state.deployer
        if dep.runners.get(dep_id) is runner:
            await asyncio.to_thread(dep._update, dep_id, plan=runner.plan)

    def candidate(self, req: Any, spec: ModelSpec, sig: Swarm, free: list[str],
                  old: list[dict[str, Any]]) -> EvaluatedPlan | None:
        """The deployment's best plan on the free peers plus the old plan's peers that keep their stage."""
        return plan_beside(lambda sw: self.state.deployer.plan(req, spec, sw)[1], sig, free, old)


def _plan(plan: dict[str, Any], spec: ModelSpec) -> Plan:
    return Plan(plan.get("strategy") or "prismn", spec.name,
                [Stage(p, a, b, e, h) for p, a, b, e, h in stage_keys(plan["stages"])])


def start_replacer(state: Any) -> asyncio.Task[None] | None:
    """The coordinator's re-placement clock, if --replace asked for one."""
    policy = getattr(state.settings, "replacement", None)
    if policy is None:
        return None
    r = Replacer(state, policy)
    state.replacer = r
    log.info("re-placement every %.0f s (threshold %g%%, dwell %.0f s, signal: %s)", policy.every_s,
             100 * policy.threshold, policy.dwell_s, policy.signal)
    return asyncio.get_running_loop().create_task(r.run())
