"""The decremental state-space relaxation (search.dssr) against brute force on small random problems:
its relaxation, which may reuse a peer but never as p -> q -> p, bounds every elementary plan from below
and is at least the plain relaxation's bound; its final path is an elementary optimum."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from prismn.placement.search import (
    Costs,
    _dssr_path,
    _dssr_tables,
    dssr,
    lagrangian,
    path_cost,
    relaxed_bounds,
)


def _problem(seed: int, m: int, L: int):
    rng = np.random.default_rng(seed)
    W = rng.uniform(0.1, 3.0, (m + 1, m + 1))
    np.fill_diagonal(W, math.inf)
    c = Costs(rng.uniform(0.2, 2.0, m), {r: rng.uniform(0.0, 1.5, m) for r in ("first", "middle", "last", "only")}, W)
    caps = {r: rng.integers(1, L + 1, m) for r in ("first", "middle", "last")}
    caps["only"] = np.where(rng.random(m) < 0.2, L, 0)
    return c, caps


def _cost(c, path):
    m, src, total = len(c.R), len(c.R), 0.0
    for q, n, r in path:
        total += c.W[src, q] + c.F[r][q] + n * c.R[q]
        src = q
    return total + c.W[src, m]


def _plans(c, caps, L):
    """Every elementary plan: k distinct peers in order, layer cuts, roles, within the caps."""
    m = len(c.R)
    for k in range(1, min(m, L) + 1):
        for peers in itertools.permutations(range(m), k):
            for cuts in itertools.combinations(range(1, L), k - 1):
                ns = np.diff([0, *cuts, L])
                roles = ["only"] if k == 1 else ["first"] + ["middle"] * (k - 2) + ["last"]
                if all(n <= caps[r][p] for p, n, r in zip(peers, ns, roles, strict=True)):
                    yield list(zip(peers, ns, roles, strict=True))


def _brute(c, caps, L):
    return min((_cost(c, p) for p in _plans(c, caps, L)), default=math.inf)


# seeds 8, 23, 44, 49, 59: the plain relaxation's optimum there goes p -> q -> p
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 8, 23, 44, 49, 59])
def test_dssr_is_exact_and_its_relaxation_forbids_two_cycles(seed):
    m, L = 5, 7
    c, caps = _problem(seed, m, L)
    opt = _brute(c, caps, L)
    tabs, root_row, bit = _dssr_tables(c, caps, L, [])
    root = float(root_row.min())
    assert root <= opt * (1 + 1e-12)  # a relaxation: never above the elementary optimum
    assert root >= relaxed_bounds(c, caps, L).root * (1 - 1e-12)  # and no weaker than the plain one
    path = _dssr_path(c, caps, L, tabs, root_row, bit)
    assert _cost(c, path) == pytest.approx(root, rel=1e-12)  # the path is the relaxation's optimum
    peers = [q for q, _, _ in path]
    assert all(a != b for a, b in zip(peers, peers[2:], strict=False))  # never p -> q -> p
    found, value, _ = dssr(c, caps, L)
    if math.isfinite(opt):
        assert found is not None and len({q for q, _, _ in found}) == len(found)
        assert value == pytest.approx(opt, rel=1e-12) and _cost(c, found) == pytest.approx(opt, rel=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_lagrangian_dual_bounds_the_bounded_optimum_and_its_plan_meets_the_bound(seed):
    """search.lagrangian (min P subject to S <= bound): its dual is never above the brute-force bounded
    optimum, and the plan it returns meets the bound (so its P is never below that optimum)."""
    m, L = 5, 6
    P, caps = _problem(seed, m, L)
    S, _ = _problem(1000 + seed, m, L)
    plans = list(_plans(P, caps, L))
    p_opt = min(plans, key=lambda p: path_cost(P, p))
    s_opt = min(plans, key=lambda p: path_cost(S, p))
    # a bound between the two optima: the P-optimal plan misses it, the S-optimal plan meets it
    bound = 0.5 * (path_cost(S, p_opt) + path_cost(S, s_opt))
    if path_cost(S, p_opt) <= bound:
        pytest.skip("the P-optimal plan is also the S-optimal one")
    opt = min(path_cost(P, p) for p in plans if path_cost(S, p) <= bound)
    lag = lagrangian(P, S, caps, L, bound, p_opt, s_opt, max_theta=8, max_cells=1e9)
    assert lag.lam > 0 and lag.tables is not None
    assert lag.dual <= opt * (1 + 1e-12)
    value, plan = lag.best
    assert path_cost(S, plan) <= bound * (1 + 1e-12)
    assert value == pytest.approx(path_cost(P, plan), rel=1e-12) and value >= opt * (1 - 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_route_is_a_valid_plan_never_below_the_optimum(seed):
    """optimal.knapsack_route (the deep-plan incumbent: the set minimising the order-free bound, in its
    fastest order) is an elementary plan within every cap, holding all L layers, and so never cheaper than
    the brute-force optimum; the order-free bound it minimises is never above that optimum."""
    from prismn.placement.knapsack import solve_order_free
    from prismn.placement.optimal import knapsack_route
    from prismn.placement.search import stage_shares

    m, L = 5, 7
    c, caps = _problem(seed, m, L)
    route = knapsack_route(c, caps, L)
    assert route is not None
    assert any(route == p for p in _plans(c, caps, L))  # elementary, roles in order, caps kept, L layers
    opt = _brute(c, caps, L)
    assert path_cost(c, route) >= opt * (1 - 1e-12)
    _, bound = solve_order_free(c.R, stage_shares(c.W, c.F), caps, L)
    assert bound <= opt * (1 + 1e-12)
