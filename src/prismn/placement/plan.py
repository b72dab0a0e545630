"""Plans: an ordered list of stages (peer, layer range, embedding/head) plus what a strategy noted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class Stage:
    """One stage of a plan: a peer holding layers [start, end) and maybe the embedding and the LM head.
    The one stage type: plan JSON carries it as {"peer", "layers": [start, end], "embedding", "head"}
    (`Stage.of` reads either form back)."""

    peer: str
    start: int  # first layer held
    end: int  # one past the last layer held: layers [start, end)
    embedding: bool = False
    head: bool = False

    @property
    def n_layers(self) -> int:
        return self.end - self.start

    @property
    def layers(self) -> tuple[int, int]:
        return (self.start, self.end)

    @property
    def key(self) -> tuple[str, int, int, bool, bool]:
        """What makes two stages the same stage (a stage server reuses an identical one)."""
        return (self.peer, self.start, self.end, self.embedding, self.head)

    @classmethod
    def of(cls, s: Stage | Mapping[str, Any]) -> Stage:
        """A Stage, or one read from a plan-JSON stage ({"peer", "layers": [start, end], "embedding", "head"})."""
        if isinstance(s, Stage):
            return s
        a, b = s["layers"]
        return cls(str(s["peer"]), int(a), int(b), bool(s.get("embedding", False)), bool(s.get("head", False)))

    def on(self, peer: str) -> Stage:
        """The same layers (and embedding, head) held by another peer."""
        return replace(self, peer=peer)


@dataclass
class Plan:
    strategy: str
    model: str
    stages: list[Stage]
    notes: dict[str, Any] = field(default_factory=dict)  # the strategy's own report, e.g. its estimator
    problems: list[str] = field(default_factory=list)  # why the strategy itself could not place the model


@dataclass
class EvaluatedPlan:
    """A plan judged by the one evaluator: feasibility, reasons, metrics, per-stage and per-hop detail."""

    plan: Plan
    feasible: bool
    problems: list[str]
    metrics: dict[str, float]
    stages: list[dict[str, Any]]
    hops: list[dict[str, Any]]
    options: dict[str, Any]

    @property
    def proof(self) -> str:
        """'optimal', 'best found, within X% of the proven bound', or what a baseline can claim."""
        if "proof" in self.plan.notes:
            return self.plan.notes["proof"]
        return "no plan" if not self.plan.stages else "heuristic: no optimality claim"

    def to_json(self) -> dict[str, Any]:
        return {
            "proof": self.proof,
            "strategy": self.plan.strategy,
            "model": self.plan.model,
            "feasible": self.feasible,
            "problems": self.problems,
            "stages": self.stages,
            "hops": self.hops,
            "metrics": self.metrics,
            "notes": self.plan.notes,
            "assumptions": self.options,
        }
