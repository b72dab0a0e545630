"""Placement: pure functions (model, swarm, objective) -> Plan, judged by one shared evaluator.

Strategies are registered by name; `make_plan` runs one and `evaluate_plan` scores any plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prismn.errors import PlanError
from prismn.model import ModelSpec
from prismn.placement.baselines import prismn_hackathon, tandemn
from prismn.placement.costmodel import CostModel, CostOptions
from prismn.placement.evaluator import evaluate_plan, route
from prismn.placement.plan import EvaluatedPlan, Plan, Stage
from prismn.swarm import Swarm

PREFERENCES = ("low-carbon", "low-latency")


@dataclass(frozen=True)
class PlanRequest:
    """What the user asks for; each strategy reads the parts it understands."""

    preference: str = "low-carbon"  # the seed project's two preferences
    objective: str | None = None  # latency | carbon | balanced (Prismn's own strategy)
    weight: float = 0.5  # balanced: share of carbon in the scalarised objective
    max_latency_ms: float | None = None
    max_gco2e: float | None = None
    cost: CostOptions = field(default_factory=CostOptions)
    # reserved (default): every used peer held for the whole step at the deployment's load, idle draw and
    # embodied by wall time, plus network (gco2e_total_per_token_at_load); operational: compute time only
    # (gco2e_per_token); total: compute-time operational + embodied + network (gco2e_total_per_token)
    carbon_scope: str = "reserved"

    def __post_init__(self) -> None:
        if self.preference not in PREFERENCES:
            raise PlanError(f"unknown preference {self.preference!r}: use {' or '.join(PREFERENCES)}")
        if self.carbon_scope not in ("reserved", "operational", "total"):
            raise PlanError(f"unknown carbon scope {self.carbon_scope!r}: use reserved, operational or total")


Strategy = Callable[[ModelSpec, Swarm, PlanRequest], Plan]
def _prismn(spec: ModelSpec, swarm: Swarm, req: PlanRequest) -> Plan:
    from prismn.placement.optimal import objective_from_request, plan_optimal

    return plan_optimal(spec, swarm, objective_from_request(req), req.cost)


def _petals(spec: ModelSpec, swarm: Swarm, req: PlanRequest) -> Plan:
    from prismn.placement.petals import plan_petals

    return plan_petals(spec, swarm, req.cost)


STRATEGIES: dict[str, Strategy] = {
    "tandemn": lambda spec, swarm, req: tandemn(spec, swarm),
    "prismn-hackathon": lambda spec, swarm, req: prismn_hackathon(spec, swarm, req.preference),
    "petals": _petals,
    "prismn": _prismn,
}


def register(name: str, fn: Strategy) -> None:
    STRATEGIES[name] = fn


def strategy_names() -> list[str]:
    return list(STRATEGIES)


def make_plan(strategy: str, spec: ModelSpec, swarm: Swarm, request: PlanRequest | None = None) -> EvaluatedPlan:
    """Run a strategy and judge its plan with the shared evaluator."""
    fn = STRATEGIES.get(strategy)
    if fn is None:
        raise PlanError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    req = request or PlanRequest()
    return evaluate_plan(fn(spec, swarm, req), spec, swarm, req.cost)


__all__ = [
    "STRATEGIES", "CostModel", "CostOptions", "EvaluatedPlan", "Plan", "PlanRequest", "Stage",
    "evaluate_plan", "make_plan", "register", "route", "strategy_names",
]
