"""Measured RTTs (all pairs, some pairs, triangle-violating) and deep plans (>= 20 stages), against the
independent MILP; the measured-RTT lower bound against true shortest paths; scale on 10,000 peers."""

from __future__ import annotations

import random
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse.csgraph import dijkstra

from prismn import geo
from prismn.model import load_model_spec
from prismn.placement import evaluate_plan
from prismn.placement.costmodel import CUDA_CONTEXT_GB
from prismn.placement.instance import Instance
from prismn.placement.optimal import Objective, plan_optimal
from prismn.swarm import parse_swarm
from prismn.swarmgen import generate_swarm

from .conftest import GPUS, fast_sample
from .milp import solve_milp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.placement import add_measured_rtts  # noqa: E402

SPEC_1B = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")
SPEC_405B = load_model_spec("meta-llama/Llama-3.1-405B", "bf16")
SPEC_70B = load_model_spec("meta-llama/Llama-3.1-70B", "bf16")
REL = 1e-6


def swarm_with_rtts(seed: int, n: int, mode: str, vram=(0.3, 2.0)):
    """`all`: every pair measured (estimate x 0.5..2); `some`: a third of the pairs; `wild`: random
    values 0.5..120 ms on half the pairs, far from the estimate and violating the triangle inequality."""
    rng = random.Random(seed)
    peers = [{"id": f"p{i}", "lat": rng.uniform(35, 60) - (60 if rng.random() < 0.15 else 0),
              "lon": rng.uniform(-10, 27), "free_vram_gb": round(rng.uniform(*vram) + CUDA_CONTEXT_GB, 2), "gpu": rng.choice(GPUS),
              "carbon_intensity": round(rng.uniform(10, 800), 1), "pue": round(rng.uniform(1.0, 1.6), 2),
              "bandwidth_mbps": rng.choice([20.0, 100.0, 1000.0])} for i in range(n)]
    coord = {"lat": rng.uniform(35, 60), "lon": rng.uniform(-10, 30)}
    pos = {p["id"]: (p["lat"], p["lon"]) for p in peers} | {"client": (coord["lat"], coord["lon"])}
    ids = list(pos)
    rtt: dict = {}
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if mode == "some" and rng.random() > 0.33 or mode == "wild" and rng.random() > 0.5:
                continue
            est = geo.estimate_rtt_ms(geo.haversine_km(*pos[a], *pos[b]))
            v = rng.uniform(0.5, 120.0) if mode == "wild" else est * rng.uniform(0.5, 2.0)
            rtt.setdefault(a, {})[b] = round(v, 3)
    return parse_swarm({"coordinator": coord, "peers": peers, "rtt_ms": rtt})


def true_client_paths_s(inst: Instance) -> np.ndarray:
    """Shortest one-way delay in excess of rtt_min/2 from the client to every peer, over all paths."""
    full = np.concatenate([np.arange(inst.n), [-1]])
    excess = (inst.rtt_ms(full, full) - inst.rtt_min_ms) / 2000.0
    np.fill_diagonal(excess, 0.0)
    excess = np.maximum(excess, 1e-300)  # csgraph treats 0 as "no edge"
    return dijkstra(excess, indices=inst.n)[:inst.n]


@pytest.mark.parametrize("mode", ["all", "some", "wild"])
@pytest.mark.parametrize("shortcuts", [64, 2, 0])
def test_client_path_bound_is_a_lower_bound(mode, shortcuts):
    for seed in range(4):
        inst = Instance(SPEC_1B, swarm_with_rtts(seed, 25, mode))
        bound = inst.client_path_bound_s(max_shortcuts=shortcuts)
        truth = true_client_paths_s(inst)
        assert np.all(bound <= truth + 1e-12), (bound - truth).max()
        assert np.all(bound >= 0)


def test_client_path_bound_is_the_distance_without_measurements():
    inst = Instance(SPEC_1B, parse_swarm(generate_swarm(50, 3)))
    truth = true_client_paths_s(inst)
    assert np.allclose(inst.client_path_bound_s(), truth, rtol=1e-9, atol=0)


@pytest.mark.parametrize("mode", ["all", "some", "wild"])
@pytest.mark.parametrize("seed", fast_sample(range(5)))
@pytest.mark.parametrize("kind", ["latency", "carbon", "bounded"])
def test_measured_rtts_match_milp(mode, seed, kind):
    sw = swarm_with_rtts(seed, 8 + 2 * seed, mode)
    inst = Instance(SPEC_1B, sw)
    if kind == "bounded":
        fastest = evaluate_plan(plan_optimal(SPEC_1B, sw, Objective("latency")), SPEC_1B, sw)
        if not fastest.feasible:
            pytest.skip("no plan fits")
        budget = fastest.metrics["latency_ms_per_token"] * 1.1
        obj, w, bound = Objective("carbon", max_latency_ms=budget, carbon_scope="operational"), (0.0, 1.0), ("latency", budget / 1000)
    else:
        obj, w, bound = Objective(kind, carbon_scope="operational"), ((1.0, 0.0) if kind == "latency" else (0.0, 1.0)), None
    ref = solve_milp(inst, w, bound)
    ours = plan_optimal(SPEC_1B, sw, obj)
    if ref is None:
        assert ours.problems
        return
    ev, ev_ref = evaluate_plan(ours, SPEC_1B, sw), evaluate_plan(ref, SPEC_1B, sw)
    assert ev.feasible and ours.notes["optimal"] is True
    key = "latency_ms_per_token" if kind == "latency" else "gco2e_per_token"
    assert ev.metrics[key] == pytest.approx(ev_ref.metrics[key], rel=REL)
    if bound:
        assert ev.metrics["latency_ms_per_token"] <= bound[1] * 1e3 * (1 + 1e-9)


@pytest.mark.parametrize("seed", fast_sample(range(3)))
def test_deep_carbon_plan_405b_on_32_peers_matches_milp(seed):
    from .conftest import random_swarm

    sw = random_swarm(seed, 32, vram=(20, 60))
    ours = plan_optimal(SPEC_405B, sw, Objective("carbon", carbon_scope="operational"))
    ev = evaluate_plan(ours, SPEC_405B, sw)
    ref = evaluate_plan(solve_milp(Instance(SPEC_405B, sw), (0.0, 1.0)), SPEC_405B, sw)
    assert ev.feasible and ours.notes["optimal"] is True
    assert len(ours.stages) >= 20
    assert ev.metrics["gco2e_per_token"] == pytest.approx(ref.metrics["gco2e_per_token"], rel=REL)


@pytest.mark.parametrize("seed", fast_sample(range(3)))
@pytest.mark.parametrize("scope", ["operational", "total"])
def test_deep_carbon_plan_many_small_peers_matches_milp(seed, scope):
    from .conftest import random_swarm

    sw = random_swarm(50 + seed, 40, vram=(3, 9))
    ours = plan_optimal(SPEC_70B, sw, Objective("carbon", carbon_scope=scope))
    ev = evaluate_plan(ours, SPEC_70B, sw)
    ref = evaluate_plan(solve_milp(Instance(SPEC_70B, sw, carbon_scope=scope), (0.0, 1.0)), SPEC_70B, sw)
    key = "gco2e_total_per_token" if scope == "total" else "gco2e_per_token"
    assert ev.feasible and ours.notes["optimal"] is True
    assert len(ours.stages) >= 20
    assert ev.metrics[key] == pytest.approx(ref.metrics[key], rel=REL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["latency", "carbon"])
def test_ten_thousand_peers_with_measured_rtts_is_proven_in_bounded_memory(kind):
    sw = parse_swarm(add_measured_rtts(generate_swarm(10_000, 0), "knn"))
    tracemalloc.start()
    try:
        plan = plan_optimal(SPEC_70B, sw, Objective(kind, carbon_scope="operational"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.notes["optimal"] is True and not plan.problems
    assert peak < 1 * 2**30


def test_a_problem_beyond_the_machine_is_one_line(monkeypatch):
    from prismn.errors import PlanError
    from prismn.placement import optimal

    monkeypatch.setattr(optimal, "BYTES_PER_PAIR", 1e18)
    with pytest.raises(PlanError) as e:
        plan_optimal(SPEC_1B, parse_swarm(generate_swarm(30, 1)), Objective("latency"))
    assert "\n" not in str(e.value) and "GiB" in str(e.value) and "memory" in str(e.value)
