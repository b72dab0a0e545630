"""Branch and cut for deep plans (placement/routecut.py): exact against DSSR and an independent MILP."""

from __future__ import annotations

import pytest

from prismn.placement import CostOptions, evaluate_plan
from prismn.placement.instance import ROLES, Instance
from prismn.placement.optimal import Engine, Objective, plan_optimal
from prismn.placement.routecut import route_cut
from prismn.placement.search import dssr, path_cost

from .conftest import fast_sample, random_swarm
from .milp import solve_milp
from .test_measured_deep import REL, SPEC_1B, SPEC_70B, swarm_with_rtts


def _costs(sw, wl: float = 1.0, wc: float = 0.0):
    eng = Engine(SPEC_1B, sw, CostOptions(), "reserved")
    idx = eng.usable
    P = eng.costs(wl, wc, idx, eng.inst.hop_time_matrix(idx))
    return eng, P, {r: eng.inst.caps[r][idx] for r in ROLES}


@pytest.mark.parametrize("seed,mode,weights", fast_sample([
    (0, "some", (1.0, 0.0)), (1, "wild", (1.0, 0.0)), (8, "all", (1.0, 0.0)), (3, "some", (0.5, 2e3)),
    (4, "wild", (0.3, 5e3)), (5, "none", (1.0, 0.0)), (6, "all", (1.0, 0.0))], 2))
def test_branch_and_cut_matches_dssr(seed, mode, weights):
    """On swarms DSSR proves (plans of several stages of small peers; measured RTTs on all pairs, some,
    or wild values that break the triangle inequality; latency and latency + carbon), the branch and cut
    proves the same optimum, with no incumbent to start from and with a poor one."""
    sw = (random_swarm(900 + seed, 9, vram=(0.3, 1.0)) if mode == "none"
          else swarm_with_rtts(900 + seed, 9, mode, vram=(0.3, 1.0)))
    eng, P, caps = _costs(sw, *weights)
    path, value, _ = dssr(P, caps, eng.L, 14)
    assert path is not None and len(path) >= 3
    for start in (None, list(reversed(path)) if len(path) > 1 and path[0][2] == "first" else None):
        if start is not None:  # the same peers in reverse: a feasible plan when the end roles' caps allow it
            start = [(q, n, "first" if i == 0 else "last" if i == len(start) - 1 else "middle")
                     for i, (q, n, _) in enumerate(start)]
            if any(n > caps[r][q] for q, n, r in start):
                continue
        cut = route_cut(P, caps, eng.L, start)
        assert cut.proven
        assert cut.value == pytest.approx(value, rel=1e-9)
        assert path_cost(P, cut.path) == pytest.approx(cut.value, rel=1e-12)
        assert len({q for q, _, _ in cut.path}) == len(cut.path)  # elementary
        assert sum(n for _, n, _ in cut.path) == eng.L
        assert all(n <= caps[r][q] for q, n, r in cut.path)


def test_no_plan_when_the_swarm_cannot_hold_the_model():
    sw = swarm_with_rtts(902, 9, "all", vram=(0.3, 1.0))  # DSSR: no plan fits
    eng, P, caps = _costs(sw)
    assert dssr(P, caps, eng.L, 14)[0] is None
    cut = route_cut(P, caps, eng.L, None)
    assert cut.path is None and not cut.proven


def test_budget_ends_with_a_valid_bound():
    """With no cut rounds and no MILP nodes the answer is unproven, and its bound still holds."""
    sw = swarm_with_rtts(905, 9, "some", vram=(0.3, 1.0))
    eng, P, caps = _costs(sw)
    path, value, _ = dssr(P, caps, eng.L, 14)
    cut = route_cut(P, caps, eng.L, None, cut_rounds=1, milp_nodes=0)
    assert cut.bound <= value * (1 + 1e-9)
    if cut.path is not None:
        assert cut.value >= value * (1 - 1e-12)


@pytest.mark.parametrize("seed,mode", fast_sample([(0, "some"), (4, "wild"), (2, "all"), (3, "none")], 1))
def test_latency_with_dssr_off_matches_milp(seed, mode, monkeypatch):
    """With the DSSR limited to no elementary peer (it gives up at once, as on deep plans), the latency
    solve proves its plan by branch and cut; an independent MILP (tests/placement/milp.py) agrees."""
    from prismn.placement import optimal

    monkeypatch.setattr(optimal, "SEARCH_THETA", 0)
    sw = (random_swarm(950 + seed, 8, vram=(0.3, 1.0)) if mode == "none"
          else swarm_with_rtts(950 + seed, 8, mode, vram=(0.3, 1.0)))
    ours = plan_optimal(SPEC_1B, sw, Objective("latency"))
    ref = solve_milp(Instance(SPEC_1B, sw), (1.0, 0.0))
    if ref is None:
        assert ours.problems
        return
    ev, ev_ref = evaluate_plan(ours, SPEC_1B, sw), evaluate_plan(ref, SPEC_1B, sw)
    assert ours.notes["optimal"] is True and ours.notes["proof"] == "optimal"
    assert ev.metrics["latency_ms_per_token"] == pytest.approx(ev_ref.metrics["latency_ms_per_token"], rel=REL)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_deep_latency_plan_is_proven_and_matches_milp(seed):
    """A deep plan (>= 20 stages: 70B on many small peers) is proven optimal in latency, and the
    independent MILP finds the same latency."""
    sw = random_swarm(60 + seed, 26, vram=(5, 12))
    ours = plan_optimal(SPEC_70B, sw, Objective("latency"))
    ev = evaluate_plan(ours, SPEC_70B, sw)
    assert ev.feasible and ours.notes["optimal"] is True
    assert len(ours.stages) >= 20
    ref = evaluate_plan(solve_milp(Instance(SPEC_70B, sw), (1.0, 0.0), time_limit=600), SPEC_70B, sw)
    assert ev.metrics["latency_ms_per_token"] == pytest.approx(ref.metrics["latency_ms_per_token"], rel=REL)
