"""Plan previews for the dashboard: a strategy's plan, the baselines' plans and the Pareto front for
one model on a swarm, all judged by the shared evaluator (nothing is recomputed here)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prismn.errors import PlanError
from prismn.model import ModelSpec, catalog, load_model_spec
from prismn.placement import EvaluatedPlan, PlanRequest, make_plan, strategy_names
from prismn.placement.pareto import pareto_front
from prismn.swarm import Swarm

# the baselines every preview is compared with: (label, strategy, seed preference)
BASELINES = (("tandemn", "tandemn", "low-carbon"),
             ("prismn-hackathon (low-carbon)", "prismn-hackathon", "low-carbon"),
             ("prismn-hackathon (low-latency)", "prismn-hackathon", "low-latency"),
             ("petals", "petals", "low-carbon"))


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256, description="a deployed model's name or a catalog id")
    strategy: str = "prismn"
    weight: float = Field(default=0.5, ge=0, le=1, description="share of carbon in the balanced objective")
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_gco2e: float | None = Field(default=None, gt=0)
    dtype: str | None = None
    front_points: int = Field(default=16, ge=2, le=40)


def model_choices(deployments: list[Any]) -> list[dict[str, Any]]:
    """Deployed models first (as clients name them), then the embedded catalog."""
    out: dict[str, dict[str, Any]] = {}
    for d in deployments:
        req = d.request or {}
        if d.state != "stopped" and d.model not in out:
            out[d.model] = {"id": d.model, "deploy_model": req.get("model", d.model), "dtype": req.get("dtype"),
                            "checkpoint": d.checkpoint, "source": "deployed"}
    for cid in catalog():
        out.setdefault(cid, {"id": cid, "deploy_model": cid, "dtype": None, "checkpoint": None, "source": "catalog"})
    return list(out.values())


def spec_for(req: PreviewRequest, choices: list[dict[str, Any]]) -> ModelSpec:
    """Only listed models: a web page must not make the coordinator read arbitrary paths or the Hub."""
    found = next((c for c in choices if c["id"] == req.model), None)
    if found is None:
        raise PlanError(f"unknown model {req.model!r}: choose a deployed model or a catalog id "
                        f"({', '.join(c['id'] for c in choices[:6])}, ...)")
    dtype = req.dtype or found["dtype"]
    spec = load_model_spec(found["checkpoint"] or found["id"], dtype)
    return replace(spec, name=found["id"])


def _point(label: str, ev: EvaluatedPlan, kind: str, deploy: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "kind": kind, "deploy": deploy, **ev.to_json()}


SCOPE = "operational"


def preview(req: PreviewRequest, spec: ModelSpec, swarm: Swarm, deploy_model: str) -> dict[str, Any]:
    """What the page shows for one set of controls. `deploy` in each plan is the POST /v1/deployments
    body that asks the coordinator for that same plan (the coordinator re-plans on its free peers)."""
    if req.strategy not in strategy_names():
        raise PlanError(f"unknown strategy {req.strategy!r}: use one of {', '.join(strategy_names())}")
    # the page draws the front of compute-time (operational) carbon, so the slider's plan and every
    # deploy body it offers use that scope too: what is deployed is the plan that was shown
    base = {"model": deploy_model, "name": spec.name, "dtype": spec.dtype, "carbon_scope": SCOPE}
    preq = PlanRequest(objective="balanced", weight=req.weight, max_latency_ms=req.max_latency_ms,
                       max_gco2e=req.max_gco2e, carbon_scope=SCOPE)
    chosen = make_plan(req.strategy, spec, swarm, preq)
    chosen_deploy = {**base, "strategy": req.strategy, "objective": "balanced", "weight": req.weight,
                     "max_latency_ms": req.max_latency_ms, "max_gco2e": req.max_gco2e}
    baselines = []
    for label, strategy, pref in BASELINES:
        deploy = {**base, "strategy": strategy, "preference": pref}
        try:
            ev = make_plan(strategy, spec, swarm, PlanRequest(preference=pref))
        except PlanError as e:  # a baseline that cannot place the model says why, beside the others
            baselines.append({"label": label, "kind": "baseline", "deploy": deploy, "strategy": strategy,
                              "feasible": False, "problems": [str(e)], "stages": [], "hops": [], "metrics": {}})
            continue
        baselines.append(_point(label, ev, "baseline", deploy))
    front = pareto_front(spec, swarm, preq.cost, carbon_scope=SCOPE, max_points=req.front_points)
    # a Pareto point is the least carbon under its own latency: ask for exactly that (epsilon-constraint)
    points = [_point(f"pareto {i + 1}", ev, "pareto",
                     {**base, "strategy": "prismn", "objective": "carbon",
                      "max_latency_ms": ev.metrics["latency_ms_per_token"] * (1 + 1e-6)})
              for i, ev in enumerate(front.plans)]
    return {"model": spec.name, "dtype": spec.dtype, "peers": len(swarm),
            "chosen": _point(req.strategy, chosen, "chosen", chosen_deploy),
            "baselines": baselines, "front": points, "front_complete": front.complete,
            "carbon_metric": front.carbon_metric}
