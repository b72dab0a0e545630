"""Exactness: Prismn's plan equals an independent MILP optimum (HiGHS) to 1e-6, on many swarms.

Both plans are judged by the one evaluator, so "equal" means equal on the evaluator's ruler, and the
strategy's own predicted objective must equal what the evaluator reports for its plan.
"""

from __future__ import annotations

import pytest

from prismn.model import load_model_spec
from prismn.placement import evaluate_plan
from prismn.placement.instance import Instance
from prismn.placement.optimal import Objective, plan_optimal

from .conftest import fast_sample, random_swarm
from .milp import solve_milp

SPEC_1B = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")  # 16 layers
SPEC_8B = load_model_spec("meta-llama/Llama-3.1-8B", "int8")  # 32 layers
REL = 1e-6
OP = "operational"  # the additive scopes; the reserved default is tested in test_reserved.py

CASES = [(seed, n) for seed, n in enumerate([6, 8, 10, 12, 14, 16, 18, 20, 24, 30] * 2)]


def metric_of(ev, kind: str, scope: str = "operational") -> float:
    if kind == "latency":
        return ev.metrics["latency_ms_per_token"]
    return ev.metrics["gco2e_total_per_token" if scope == "total" else "gco2e_per_token"]


def check(spec, sw, obj: Objective, milp_obj, milp_bound=None):
    inst = Instance(spec, sw, carbon_scope=obj.carbon_scope)
    ref = solve_milp(inst, milp_obj, milp_bound)
    ours = plan_optimal(spec, sw, obj)
    ev = evaluate_plan(ours, spec, sw)
    if ref is None:
        assert not ev.feasible and ours.problems, "the MILP says no plan fits, so Prismn must say so too"
        return None, ev
    ev_ref = evaluate_plan(ref, spec, sw)
    assert ev_ref.feasible, ev_ref.problems
    assert ev.feasible, ev.problems
    assert ours.notes["optimal"] is True
    # one ruler: the strategy's own prediction is what the evaluator reports
    pred = ours.notes["predicted"]
    assert pred["latency_ms_per_token"] == pytest.approx(ev.metrics["latency_ms_per_token"], rel=1e-9)
    assert pred[obj.carbon_metric] == pytest.approx(ev.metrics[obj.carbon_metric], rel=1e-9)
    return ev_ref, ev


@pytest.mark.parametrize("seed,n", fast_sample(CASES, 2))
@pytest.mark.parametrize("kind", ["latency", "carbon"])
def test_single_objective_matches_milp(seed, n, kind):
    spec = SPEC_1B if seed % 2 else SPEC_8B
    sw = random_swarm(seed, n, vram=(0.3, 2.0) if spec is SPEC_1B else (0.8, 5.0), measured=3 if seed % 5 == 4 else 0)
    w = (1.0, 0.0) if kind == "latency" else (0.0, 1.0)
    ref, ev = check(spec, sw, Objective(kind, carbon_scope=OP), w)
    if ref is not None:
        assert metric_of(ev, kind) == pytest.approx(metric_of(ref, kind), rel=REL)


@pytest.mark.parametrize("seed,n", fast_sample(CASES[::3]))
def test_total_carbon_scope_matches_milp(seed, n):
    sw = random_swarm(100 + seed, n)
    ref, ev = check(SPEC_1B, sw, Objective("carbon", carbon_scope="total"), (0.0, 1.0))
    if ref is not None:
        assert metric_of(ev, "carbon", "total") == pytest.approx(metric_of(ref, "carbon", "total"), rel=REL)


@pytest.mark.parametrize("seed,n", fast_sample(CASES[::2]))
@pytest.mark.parametrize("slack", [1.02, 1.15, 1.6])
def test_least_carbon_within_a_latency_budget_matches_milp(seed, n, slack):
    sw = random_swarm(200 + seed, n)
    fastest = evaluate_plan(plan_optimal(SPEC_1B, sw, Objective("latency", carbon_scope=OP)), SPEC_1B, sw)
    if not fastest.feasible:
        pytest.skip("no plan fits this swarm")
    budget_ms = fastest.metrics["latency_ms_per_token"] * slack
    ref, ev = check(SPEC_1B, sw, Objective("carbon", max_latency_ms=budget_ms, carbon_scope=OP), (0.0, 1.0),
                    ("latency", budget_ms / 1000.0))
    assert ev.metrics["latency_ms_per_token"] <= budget_ms * (1 + 1e-9)
    assert metric_of(ev, "carbon") == pytest.approx(metric_of(ref, "carbon"), rel=REL)


@pytest.mark.parametrize("seed,n", fast_sample(CASES[1::3]))
@pytest.mark.parametrize("slack", [1.05, 2.0])
def test_least_latency_within_a_carbon_budget_matches_milp(seed, n, slack):
    sw = random_swarm(300 + seed, n)
    cleanest = evaluate_plan(plan_optimal(SPEC_1B, sw, Objective("carbon", carbon_scope=OP)), SPEC_1B, sw)
    if not cleanest.feasible:
        pytest.skip("no plan fits this swarm")
    budget = cleanest.metrics["gco2e_per_token"] * slack
    ref, ev = check(SPEC_1B, sw, Objective("latency", max_gco2e=budget, carbon_scope=OP), (1.0, 0.0), ("carbon", budget))
    assert ev.metrics["gco2e_per_token"] <= budget * (1 + 1e-9)
    assert metric_of(ev, "latency") == pytest.approx(metric_of(ref, "latency"), rel=REL)


@pytest.mark.parametrize("seed,n", fast_sample(CASES[2::4]))
@pytest.mark.parametrize("weight", [0.25, 0.75])
def test_balanced_matches_milp(seed, n, weight):
    sw = random_swarm(400 + seed, n)
    ours = plan_optimal(SPEC_1B, sw, Objective("balanced", weight=weight, carbon_scope=OP))
    if ours.problems:
        pytest.skip("no plan fits this swarm")
    norm = ours.notes["normalisers"]
    wl = (1 - weight) / (norm["latency_ms"] / 1000.0)
    wc = weight / norm["gco2e"]
    ref = solve_milp(Instance(SPEC_1B, sw, carbon_scope=OP), (wl, wc))
    ev, ev_ref = evaluate_plan(ours, SPEC_1B, sw), evaluate_plan(ref, SPEC_1B, sw)

    def value(e):
        return (1 - weight) * e.metrics["latency_ms_per_token"] / norm["latency_ms"] + \
            weight * e.metrics["gco2e_per_token"] / norm["gco2e"]

    assert value(ev) == pytest.approx(value(ev_ref), rel=REL)
    assert ours.notes["objective_value"] == pytest.approx(value(ev), rel=1e-9)


@pytest.mark.parametrize("k", [4, 8, 11, 12, 30])
def test_best_order_is_exact_for_short_plans_and_2opt_optimal_for_long_ones(k):
    """best_order keeps the first and last stage, is exact (Held-Karp) up to 9 middle stages, and beyond
    that no single reversal of a middle segment shortens its order (a 2-opt local optimum), on asymmetric
    hop matrices too."""
    import itertools

    import numpy as np

    from prismn.placement.optimal import best_order

    rng = np.random.default_rng(k)
    W = rng.random((k + 1, k + 1))

    def length(o):
        return sum(W[a, b] for a, b in zip(o, o[1:], strict=False))

    o = best_order(W, k)
    assert sorted(o) == list(range(k)) and o[0] == 0 and o[-1] == k - 1
    if k - 2 <= 9 and k <= 8:
        best = min(length([0, *p, k - 1]) for p in itertools.permutations(range(1, k - 1)))
        assert length(o) == pytest.approx(best, rel=1e-12)
    for i in range(1, k - 2):
        for j in range(i + 1, k - 1):
            assert length(o[:i] + o[i:j + 1][::-1] + o[j + 1:]) >= length(o) - 1e-12
