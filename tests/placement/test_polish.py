"""placement/polish.py: the local search that improves unproven (deep) plans. It must price routes with
the engine's own figures, split each route's layers optimally, return only valid plans, and never
touch a proven plan or the proven bound."""

from __future__ import annotations

import itertools

import pytest

from prismn.model import load_model_spec
from prismn.placement import CostOptions
from prismn.placement.optimal import Engine, Solution
from prismn.placement.polish import Polisher, polish

from .conftest import random_swarm

SPEC_1B = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")


def _engine(seed: int, scope: str, vram=(0.6, 1.6)) -> Engine:
    return Engine(SPEC_1B, random_swarm(640 + seed, 6, vram=vram), CostOptions(), scope)


def _objective(eng: Engine, stages, wl: float, wc: float) -> float:
    lat, car = eng._metrics(stages)
    return wl * lat + wc * car


@pytest.mark.parametrize("scope,wl,wc", [("reserved", 0.0, 1.0), ("reserved", 1.0, 0.0), ("operational", 1.0, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_routes_split_is_optimal_and_priced_as_the_engine_prices_it(seed, scope, wl, wc):
    """Polisher.price: for a fixed route, the least objective over every layer split (enumerated), equal
    to the engine's own figure for the plan it returns."""
    eng = _engine(seed, scope)
    pol = Polisher(eng, wl, wc)
    L, m = eng.L, len(pol.peers)
    checked = 0
    for k in (2, 3):
        for order in itertools.permutations(range(m), k):
            v, path = pol.price(list(order))
            roles = ["first"] + ["middle"] * (k - 2) + ["last"]
            best = float("inf")
            for cuts in itertools.combinations(range(1, L), k - 1):
                ns = [b - a for a, b in zip((0, *cuts), (*cuts, L), strict=True)]
                if all(n <= pol.caps[r][q] for q, n, r in zip(order, ns, roles, strict=True)):
                    plan = [(int(pol.peers[q]), n, r) for q, n, r in zip(order, ns, roles, strict=True)]
                    best = min(best, _objective(eng, plan, wl, wc))
            if path is None:
                assert best == float("inf")
                continue
            checked += 1
            plan = [(int(pol.peers[q]), n, r) for q, n, r in path]
            assert v == pytest.approx(_objective(eng, plan, wl, wc), rel=1e-12)
            assert v == pytest.approx(best, rel=1e-12)
    assert checked > 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polish_improves_an_unproven_plan_keeps_its_bound_and_leaves_a_proven_one(seed):
    """From the worst feasible two-stage plan, marked unproven with a bound, polish returns a valid plan
    (distinct peers, caps kept, every layer placed) that is better, still unproven, with the same bound;
    a proven plan comes back unchanged."""
    eng = _engine(seed, "reserved", vram=(1.0, 2.5))
    pol = Polisher(eng, 0.0, 1.0)
    worst = None
    for order in itertools.permutations(range(len(pol.peers)), 2):
        v, path = pol.price(list(order))
        if path is not None and (worst is None or v > worst[0]):
            worst = (v, [(int(pol.peers[q]), n, r) for q, n, r in path])
    assert worst is not None
    lat, car = eng._metrics(worst[1])
    sol = Solution(worst[1], lat, car, False, car, {"lower_bound": 0.5 * car})
    out = polish(eng, sol, 0.0, 1.0)
    assert out.value < sol.value and not out.proven
    assert out.stats["lower_bound"] == sol.stats["lower_bound"] and out.stats["polished"]["from"] == sol.value
    assert out.value == pytest.approx(eng._metrics(out.stages)[1], rel=1e-12) == out.carbon_g
    peers = [p for p, _, _ in out.stages]
    assert len(set(peers)) == len(peers) and sum(n for _, n, _ in out.stages) == eng.L
    assert all(1 <= n <= eng.inst.caps[r][p] for p, n, r in out.stages)
    proven = Solution(worst[1], lat, car, True, car, {})
    assert polish(eng, proven, 0.0, 1.0) is proven
