"""The `prismn` and `petals` strategies, the Pareto front and `prismn plan`'s new options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prismn.model import load_model_spec
from prismn.placement import PlanRequest, evaluate_plan, make_plan, strategy_names
from prismn.placement.optimal import Objective, plan_optimal
from prismn.placement.pareto import pareto_front
from prismn.swarm import parse_swarm
from prismn.swarmgen import generate_swarm

from .conftest import fast_sample, random_swarm

SPEC = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")
SPEC_70B = load_model_spec("meta-llama/Llama-3.1-70B", "bf16")
ROOT = Path(__file__).resolve().parents[2]


def test_strategies_are_registered():
    assert {"prismn", "petals", "tandemn", "prismn-hackathon"} <= set(strategy_names())


@pytest.mark.parametrize("seed", fast_sample(range(4), 2))
def test_one_ruler_prediction_equals_evaluator(seed):
    sw = random_swarm(500 + seed, 20)
    for req in (PlanRequest(objective="latency"), PlanRequest(objective="carbon"),
                PlanRequest(objective="balanced", weight=0.3), PlanRequest(objective="carbon", carbon_scope="total")):
        ev = make_plan("prismn", SPEC, sw, req)
        if not ev.feasible:
            continue
        pred = ev.plan.notes["predicted"]
        for k, v in pred.items():
            assert v == pytest.approx(ev.metrics[k], rel=1e-9)
        assert ev.plan.notes["optimal"] is True


def test_preferences_map_onto_objectives():
    sw = random_swarm(7, 15)
    low_c = make_plan("prismn", SPEC, sw, PlanRequest(preference="low-carbon"))
    low_l = make_plan("prismn", SPEC, sw, PlanRequest(preference="low-latency"))
    assert low_c.plan.notes["objective"].startswith("carbon")
    assert low_l.plan.notes["objective"].startswith("latency")
    assert low_c.metrics["gco2e_per_token"] <= low_l.metrics["gco2e_per_token"] * (1 + 1e-9)
    assert low_l.metrics["latency_ms_per_token"] <= low_c.metrics["latency_ms_per_token"] * (1 + 1e-9)


def test_no_plan_says_how_much_memory_is_missing_and_where():
    sw = random_swarm(1, 4, vram=(0.3, 0.5))
    ev = make_plan("prismn", SPEC_70B, sw, PlanRequest(objective="latency"))
    assert not ev.feasible
    (msg,) = [p for p in ev.plan.problems]
    assert "prismn found no plan" in msg and "GiB" in msg and ("short by" in msg or "missing" in msg)


def test_a_bound_that_cannot_be_met_is_explained():
    sw = random_swarm(3, 12)
    ev = make_plan("prismn", SPEC, sw, PlanRequest(max_latency_ms=0.001))
    assert not ev.feasible
    assert "fastest plan takes" in ev.plan.problems[0]


def test_bounds_pick_the_cheapest_plan_within_them():
    sw = random_swarm(11, 20)
    fast = make_plan("prismn", SPEC, sw, PlanRequest(objective="latency"))
    clean = make_plan("prismn", SPEC, sw, PlanRequest(objective="carbon"))
    mid = (fast.metrics["latency_ms_per_token"] + clean.metrics["latency_ms_per_token"]) / 2
    ev = make_plan("prismn", SPEC, sw, PlanRequest(max_latency_ms=mid))
    assert ev.plan.notes["objective"].startswith("carbon")
    assert ev.metrics["latency_ms_per_token"] <= mid * (1 + 1e-9)
    key = "gco2e_total_per_token_at_load"  # the default carbon scope: reserved at load
    assert clean.metrics[key] <= ev.metrics[key] * (1 + 1e-9)
    assert ev.metrics[key] <= fast.metrics[key] * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_petals_is_a_feasible_simulation_and_prismn_is_never_slower(seed):
    sw = random_swarm(600 + seed, 25, vram=(0.5, 3.0))
    pe = make_plan("petals", SPEC, sw)
    assert "simulation" in pe.plan.notes
    if not pe.feasible:
        assert pe.plan.problems
        return
    # its own Dijkstra prediction is the evaluator's number: the route was costed on the same ruler
    assert pe.plan.notes["predicted_latency_ms"] == pytest.approx(pe.metrics["latency_ms_per_token"], rel=1e-9)
    peers = [s.peer for s in pe.plan.stages]
    assert len(peers) == len(set(peers))
    ours = make_plan("prismn", SPEC, sw, PlanRequest(objective="latency"))
    assert ours.metrics["latency_ms_per_token"] <= pe.metrics["latency_ms_per_token"] * (1 + 1e-9)


def test_petals_on_a_generated_swarm():
    sw = parse_swarm(generate_swarm(200, 3))
    pe = make_plan("petals", SPEC_70B, sw)
    ours = make_plan("prismn", SPEC_70B, sw, PlanRequest(objective="latency"))
    assert pe.feasible and ours.feasible
    assert ours.metrics["latency_ms_per_token"] <= pe.metrics["latency_ms_per_token"] * (1 + 1e-9)


@pytest.mark.parametrize("seed", fast_sample(range(3)))
def test_pareto_front_is_non_dominated_and_spans_both_optima(seed):
    sw = random_swarm(700 + seed, 14)
    front = pareto_front(SPEC, sw, max_points=50)
    if not front.plans:
        return
    pts = [(e.metrics["latency_ms_per_token"], e.metrics["gco2e_per_token"]) for e in front.plans]
    assert all(e.feasible for e in front.plans)
    for a in pts:
        assert not any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in pts)
    fast = evaluate_plan(plan_optimal(SPEC, sw, Objective("latency")), SPEC, sw).metrics
    clean = evaluate_plan(plan_optimal(SPEC, sw, Objective("carbon", carbon_scope="operational")), SPEC, sw).metrics
    assert min(p[0] for p in pts) == pytest.approx(fast["latency_ms_per_token"], rel=1e-9)
    assert min(p[1] for p in pts) == pytest.approx(clean["gco2e_per_token"], rel=1e-9)


def test_placement_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import prismn.placement, prismn.placement.optimal, prismn.placement.petals, prismn.placement.pareto\n"
            "from prismn.placement import make_plan, PlanRequest\n"
            "assert 'prismn' in prismn.placement.strategy_names()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow  # > 2 s: subprocesses
def test_plan_cli_objectives_pareto_and_plot(tmp_path):
    path = tmp_path / "swarm.json"
    path.write_text(json.dumps(generate_swarm(40, 2)))

    def prismn(*args):
        r = subprocess.run([sys.executable, "-m", "prismn", *args], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = json.loads(prismn("plan", "--swarm", str(path), "--model", "llama-3.1-8b", "--strategy", "prismn",
                            "--objective", "balanced", "--weight", "0.4", "--json"))
    assert out["feasible"] and out["notes"]["objective"].startswith("balanced")
    out = json.loads(prismn("plan", "--swarm", str(path), "--model", "llama-3.1-8b", "--max-latency-ms", "500",
                            "--json"))
    assert out["metrics"]["latency_ms_per_token"] <= 500
    png = tmp_path / "front.png"
    text = prismn("plan", "--swarm", str(path), "--model", "llama-3.1-8b", "--pareto", "--plot", str(png))
    assert "Pareto front" in text and png.stat().st_size > 1000
    r = subprocess.run([sys.executable, "-m", "prismn", "plan", "--swarm", str(path), "--model", "llama-3.1-8b",
                        "--objective", "fastest"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "--objective" in r.stderr and "Traceback" not in r.stderr
