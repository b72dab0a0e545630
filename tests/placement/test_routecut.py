"""Branch and cut for deep plans (placement/routecut.py): exact against DSSR and an independent MILP."""

from __future__ import annotations

import numpy as np
import pytest

from prismn.placement import CostOptions, evaluate_plan
from prismn.placement.instance import ROLES, Instance
from prismn.placement.optimal import Engine, Objective, plan_optimal
from prismn.placement.routecut import route_cut
from prismn.placement.search import dssr, path_cost

from .conftest import fast_sample, random_swarm
from .milp import solve_milp
from .test_measured_deep import REL, SPEC_1B, SPEC_70B, swarm_with_rtts

KEY = "gco2e_total_per_token_at_load"  # the reserved carbon at load: the default carbon objective's figure


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


def test_fewest_stages_is_the_fewest_largest_stages_that_hold_the_model():
    from prismn.placement.intervals import fewest_stages

    def caps(*most):  # the same cap in every role but "only"
        c = np.array(most)
        return {"first": c, "middle": c, "last": c, "only": np.zeros(len(c), dtype=int)}

    assert fewest_stages(caps(3, 9, 4, 2), 10) == 2  # 9 + 4
    assert fewest_stages(caps(3, 9, 4, 2), 13) == 2  # exactly
    assert fewest_stages(caps(3, 9, 4, 2), 14) == 3
    assert fewest_stages(caps(3, 9, 4, 2), 18) == 4
    assert fewest_stages(caps(3, 9, 4, 2), 19) == 19 + 1  # no plan holds 19 layers
    assert fewest_stages(caps(30, 1), 10) == 1  # a stage holds at most L layers


@pytest.mark.parametrize("seed,n,mode", fast_sample([(0, 10, "none"), (6, 8, "wild"), (2, 10, "some"),
                                                      (3, 12, "all"), (4, 9, "none")], 2))
def test_reserved_intervals_by_branch_and_cut_match_milp(seed, n, mode, monkeypatch):
    """The reserved carbon's interval bound by branch and cut (intervals.IntervalSearch._route_cut, the
    McCormick model of routecut.Reserve): with SUB_MAX_STAGES at one stage every interval whose knapsack
    set does not fit it takes that bound, as deep intervals do, and the plan is proven and matches the
    independent MILP (measured RTTs on no pair, all pairs, some, or wild values)."""
    from prismn.placement import intervals

    monkeypatch.setattr(intervals, "SUB_MAX_STAGES", 1)
    sw = (random_swarm(540 + seed, n, vram=(0.3, 1.2)) if mode == "none"
          else swarm_with_rtts(540 + seed, n, mode, vram=(0.3, 1.2)))
    ours = plan_optimal(SPEC_1B, sw, Objective("carbon"))
    ref = solve_milp(Instance(SPEC_1B, sw, CostOptions(), carbon_scope="reserved"), (0.0, 1.0))
    ev, ev_ref = evaluate_plan(ours, SPEC_1B, sw), evaluate_plan(ref, SPEC_1B, sw)
    assert ours.notes["optimal"] is True and ours.notes["proof"] == "optimal"
    assert ev.metrics[KEY] == pytest.approx(ev_ref.metrics[KEY], rel=REL)
    assert ours.notes["search"]["route_cuts"], "no interval took the branch and cut: the test tests nothing"


def test_reserved_model_is_exact_on_every_plan_of_its_interval():
    """routecut.Reserve prices a plan at sum_p alpha_p max(W, f_p) + B: f itself when the plan's wall
    time is in the interval. Offered one plan as its incumbent and restricted to that plan's peers and
    order (every other hop forbidden), the model returns that plan with f exactly and proves it."""
    from prismn.placement.intervals import IntervalSearch
    from prismn.placement.routecut import Reserve
    from prismn.placement.search import INF, Costs

    sw = random_swarm(545, 6, vram=(0.3, 1.2))
    eng = Engine(SPEC_1B, sw, CostOptions(), "reserved")
    idx = eng.usable
    it = IntervalSearch(eng, idx, 0.0, np.zeros(len(idx)))
    plan = plan_optimal(SPEC_1B, sw, Objective("carbon"))
    at = {eng.inst.swarm.peers[i].id: k for k, i in enumerate(idx)}
    roles = ["first"] + ["middle"] * (len(plan.stages) - 2) + ["last"]
    path = [(at[s.peer], s.end - s.start, r) for s, r in zip(plan.stages, roles, strict=True)]
    assert len(path) >= 2
    W, A, B, f = it.evaluate(path)
    m = len(idx)
    HW = np.full((m + 1, m + 1), INF)  # only the plan's own hops
    for (a, _, _), (b, _, _) in zip([(m, 0, "")] + path, path + [(m, 0, "")], strict=True):
        HW[a, b] = it.HW[a, b]
    S = Costs(it.Rw, it.Fw, HW)
    for ta, tb in ((W * 0.9, W * 1.1), (W, W), (W * 0.5, W * 3)):
        rv = Reserve(it.alpha, S, np.full(m, ta), ta, tb, len(path))
        cut = route_cut(Costs(it.Rb, it.Fb, np.where(np.isfinite(HW), 0.0, INF)), it.caps,
                        eng.L, path, reserve=rv, price=lambda p: it.evaluate(p)[3])
        assert cut.proven and cut.value == pytest.approx(f, rel=1e-12)
        assert cut.bound == pytest.approx(f, rel=1e-6)
        assert [q for q, _, _ in cut.path] == [q for q, _, _ in path]


@pytest.mark.slow
def test_deep_reserved_carbon_is_proven_and_matches_milp():
    """A deep plan (>= 20 stages: 70B on many small peers) of least reserved carbon (the default scope) is
    proven optimal, and the independent MILP finds the same carbon. The MILP's product A x W is a big-M
    model, hopeless on deep plans with the loose big-M (it did not finish in 600 s); so the test gives it
    a wall-time cap it derives on its own: a plan P that beats ours has A(P) x W(P) <= f(P) <= f(ours),
    and A(P) is at least the sum of the k least alphas, k the fewest stages that can hold the model. The
    grids are kept within 200-400 g/kWh so that the cap is tight (the reference then takes about 75 s)."""
    sw = random_swarm(60, 26, vram=(5, 12), intensity=(200, 400))
    ours = plan_optimal(SPEC_70B, sw, Objective("carbon"))
    ev = evaluate_plan(ours, SPEC_70B, sw)
    assert ev.feasible and ours.notes["optimal"] is True and ours.notes["proof"] == "optimal"
    assert len(ours.stages) >= 20 and ours.notes["search"]["route_cuts"]
    inst = Instance(SPEC_70B, sw, CostOptions(), carbon_scope="reserved")
    most = np.sort(np.minimum(np.maximum.reduce([inst.caps[r] for r in ROLES]), inst.L))[::-1]
    k = int(np.searchsorted(np.cumsum(most), inst.L)) + 1
    cap = ev.metrics[KEY] / float(np.sort(inst.alpha)[:k].sum()) * (1 + 1e-9)
    ref = solve_milp(inst, (0.0, 1.0), time_limit=500, wall_max=cap)
    assert ev.metrics[KEY] == pytest.approx(evaluate_plan(ref, SPEC_70B, sw).metrics[KEY], rel=REL)
