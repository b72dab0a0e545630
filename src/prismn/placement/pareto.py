"""The latency/carbon Pareto front of exact plans (epsilon-constraint method).

Start from the least-carbon plan; then repeatedly ask for the least carbon with a latency strictly
below the previous point's (ties broken by latency), until even the fastest plan is reached. Every
point is the exact optimum of its bounded problem, so no point is dominated by any plan. With
`max_points`, a point closer than (slowest - fastest) / max_points to the previous one is skipped
(the walk continues from one step further), so the front can be a subset of the full front, never a
wrong one; `complete` is true exactly when no point was skipped and every point is proven.
"""

from __future__ import annotations

from dataclasses import dataclass

from prismn.model import ModelSpec
from prismn.placement.costmodel import CostOptions
from prismn.placement.evaluator import evaluate_plan
from prismn.placement.optimal import Engine, polish_order, proof_gap, proof_text, to_plan
from prismn.placement.plan import EvaluatedPlan
from prismn.swarm import Swarm

PARETO_POPS = 2_000  # labels per Pareto point's bounded search (deterministic budget)


@dataclass
class Front:
    plans: list[EvaluatedPlan]  # fastest last
    complete: bool  # every Pareto point was found (no step skipped, every point proven)
    carbon_metric: str


def pareto_front(spec: ModelSpec, swarm: Swarm, options: CostOptions | None = None,
                 carbon_scope: str = "operational", max_points: int = 40,
                 engine: Engine | None = None) -> Front:
    engine = engine or Engine(spec, swarm, options, carbon_scope)
    metric = "gco2e_total_per_token" if carbon_scope == "total" else "gco2e_per_token"
    fastest = engine.solve(1.0, 0.0, "carbon")
    cleanest = engine.solve(0.0, 1.0, "latency")
    if fastest is None or cleanest is None:
        return Front([], True, metric)
    cleanest = polish_order(engine, cleanest)
    step = max(cleanest.latency_s - fastest.latency_s, 0.0) / max(max_points, 1)
    sols = [cleanest]
    complete = cleanest.proven and fastest.proven
    skipped = False
    while sols[-1].latency_s > fastest.latency_s * (1 + 1e-12):
        prev = sols[-1].latency_s
        # the exact next point: least carbon with latency strictly below the previous point's
        sol = engine.solve(0.0, 1.0, "latency", max(prev * (1 - 1e-9), fastest.latency_s * (1 + 1e-12)),
                           max_pops=PARETO_POPS)
        if sol is not None and sol.latency_s > prev - step and prev - step > fastest.latency_s:
            # closer than the step to the previous point: skip it (a real point left out of the front)
            stepped = engine.solve(0.0, 1.0, "latency", prev - step, max_pops=PARETO_POPS)
            if stepped is not None:
                sol, skipped = stepped, True
        if sol is None or sol.latency_s >= prev:
            # no faster plan: a proof, unless the search stopped at its budget before it found one
            complete &= not (sol is None and engine.gave_up)
            break
        complete &= sol.proven
        sols.append(sol)
    if sols[-1].latency_s > fastest.latency_s * (1 + 1e-12) or sols[-1].carbon_g > fastest.carbon_g:
        sols.append(fastest)
    # keep the non-dominated ones (ties and unproven points could leave a dominated one behind)
    plans = []
    for k, s in enumerate(sols):
        dominated = any(o.latency_s <= s.latency_s and o.carbon_g <= s.carbon_g and
                        (o.latency_s < s.latency_s or o.carbon_g < s.carbon_g) for o in sols)
        if dominated:
            continue
        plan = to_plan(engine, s, notes={"pareto_point": k, "optimal": s.proven,
                                         "proof": proof_text(s.proven, proof_gap(s)),
                                         "predicted": {"latency_ms_per_token": s.latency_s * 1e3, metric: s.carbon_g}})
        plans.append(evaluate_plan(plan, spec, swarm, engine.inst.opt))
    plans.sort(key=lambda e: -e.metrics["latency_ms_per_token"])
    return Front(plans, complete and not skipped, metric)
