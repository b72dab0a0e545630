"""Exact least reserved carbon by branch and bound over the wall time (see reserved.py for f).

f(P) = A(P) x W(P) + B(P) is a product, but for a fixed wall-time budget w it is bounded by a LINEAR
objective: every plan P with W(P) <= w has f(P) <= w x A(P) + B(P). So with

    g(w) = min over plans P with W(P) <= w of  w x A(P) + B(P)

f* = min over w of g(w): g(w) >= f(its argmin) >= f*, and g(W(P*)) <= f(P*). On an interval [ta, tb]
of w, g(w) >= LB(ta, tb) = min over plans with W <= tb of sum_i alpha_i x max(ta, floor_i) + B, where
floor_i <= the wall time of every plan that uses peer i (w >= W(P) >= floor_i for each of P's peers).
LB(ta, tb) is linear in the plan and order-free except for the constraint W <= tb:

  * the order-free knapsack (knapsack.py) over peers with floor_i <= tb gives it exactly whenever its
    set, in its fastest order, meets W <= tb (the relaxation's optimum is feasible);
  * otherwise the Lagrangian dual of W <= tb first (cheap, a bound only): W is at least an order-free
    sum over the set's stages (compute, each role's own hops to and from the client, the least hop into
    a middle or last stage), so for mu >= 0, min over sets of [cost + mu x (that sum - tb)] <= LB(ta, tb);
    the best mu closes most such intervals without a search;
  * and where it does not, the Lagrangian dual of W <= tb with the real hops (over the DSSR relaxation),
    and on narrow intervals the best-first search of search.py with W <= tb as its bounded metric, which
    gives it exactly.

Plans of one and two stages are priced one by one first (price_few_stages, exact), so the intervals
bound only plans of k >= k_lo = 3 stages (the class), and the Lagrangian and the search minimise a tighter
cost that keeps part of the wall time above ta (class_costs): E = sum_i [(alpha_i - a) max(ta, floor_i) +
a ta] + k_lo a (W - ta) + B <= f, a the least alpha, which gives up (A - k_lo a)(W - ta) where the linear
bound above gives up A (W - ta); on peers of similar alpha that is a tenth as much. Once the first
interval stays open, narrow() drops every peer through which no plan of the class can beat the incumbent (E at ta = omega0,
relaxed through each peer), and with few peers left and no wall-time cap prices every three-stage plan
over them (exact), so the class becomes k_lo = 4. Every bound then counts only plans of the class: the
order-free knapsack of E, its wall time bounded by the stages' shares, over sets of at least k_lo
stages (_class_knapsack), and the search with min_stages = k_lo. When the best plans have three stages
(1,000 peers), plans of four stages cost far more, and most intervals close at their first knapsacks.

The argmin plan P (W(P) = w, ta < w <= tb) is an incumbent; the interval splits into [ta, w) and
[w, tb], and on [w, tb] the bound at ta = w is f(P) itself when P is again the argmin: the interval
closes. Intervals are taken best bound first and dropped once their bound reaches the incumbent; the
first time the least open bound does, the incumbent is proven optimal. Budgets are counted in sub-solves
and search labels (deterministic, never wall-clock).
"""

from __future__ import annotations

import heapq

import numpy as np

from prismn.placement import routecut
from prismn.placement.instance import ROLES
from prismn.placement.knapsack import solve_order_free
from prismn.placement.search import (
    INF,
    Costs,
    Search,
    best_three_stage_plan,
    cheapest_fill,
    dssr,
    lagrangian,
    path_cost,
    relaxed_bounds,
    stage_and_fill,
    stage_shares,
    through_bounds,
)

MAX_SUBSOLVES = 400  # intervals one solve may bound (deterministic budget)
SUB_POPS = 3_000  # labels of one W-bounded search (when the knapsack's set is too slow for its interval)
SUB_LABELS = 20_000  # labels one such search may create (deep plans: thousands of children per label)
TOTAL_LABELS = 100_000  # labels created by all those searches together
SUB_MAX_STAGES = 12  # a knapsack set with more stages than this is not searched (deep: thousands of
#                      children per label); its interval is halved instead, or left open when narrow
DUAL_STEPS = 6  # knapsacks per Lagrangian bound (cutting planes on mu)
SUB_THETA = 14  # elementary peers of the DSSR tables that bound that search (as many as SUB_CELLS allow)
SUB_CELLS = 3e8  # table cells (2^theta x L x m^2) of one such DSSR (compiled: about 0.3 s at most): small
#                   swarms get many elementary peers, 1,000 candidates a few
LAGR_STEPS = 4  # relaxations of P + lam W per interval (the dual of W <= tb with the real hops)
REL = 1e-12
SEARCH_WIDTH = 1e-2  # intervals wider than this (relative) split instead of searching
SPLIT_MIN = 1e-4  # intervals narrower than this (relative) are split at the argmin's wall time only
NARROW_PEERS = 2_000  # narrow() takes relaxed tables of O(L m^2) time and m^2 memory: at most this many peers
THREE_STAGE_PEERS = 120  # narrow() prices every three-stage plan when at most this many peers remain
#                          (O(m^3) in compiled code, measured here: 3.6 ms at 76 peers, 27 ms at 150)
FEW_STAGES = 2  # plans of at most this many stages are priced one by one (exact); the intervals bound the
#                 others, each of which holds at least FEW_STAGES + 1 peers for the whole wall time


def _no_hops(m: int) -> np.ndarray:
    """The hop matrix of an order-free cost: no hop costs anything (the diagonal stays forbidden)."""
    W = np.zeros((m + 1, m + 1))
    np.fill_diagonal(W, INF)
    return W


def fewest_stages(caps: dict[str, np.ndarray], L: int) -> int:
    """The fewest stages any plan can have: the fewest peers whose largest stages hold all L layers
    (L + 1 when even all of them cannot)."""
    most = np.sort(np.minimum(np.maximum.reduce([caps[r] for r in ROLES]), L))[::-1]
    held = np.cumsum(np.maximum(most, 0))
    return int(np.searchsorted(held, L)) + 1 if len(held) and held[-1] >= L else L + 1


def _take(per_role: dict[str, np.ndarray], k: np.ndarray) -> dict[str, np.ndarray]:
    """Per-role arrays (caps, fixed costs) at positions k only."""
    return {r: per_role[r][k] for r in ROLES}


def _restrict(c: Costs, k: np.ndarray) -> Costs:
    """An additive cost over the peers at positions k only (the client stays last)."""
    w = np.append(k, len(c.R))
    return Costs(c.R[k], {r: c.F[r][k] for r in ROLES}, c.W[np.ix_(w, w)])


class IntervalSearch:
    """min f over plans on candidates `idx` (peer indices), given an incumbent; see module doc."""

    def __init__(self, engine, idx: np.ndarray, omega0: float, floor: np.ndarray, w_max: float = INF):
        inst = self.inst = engine.inst
        self.engine = engine
        self.idx, self.L = idx, inst.L
        m = self.m = len(idx)
        self.caps = {r: inst.caps[r][idx] for r in ROLES}
        self.HW = inst.hop_time_matrix(idx, inst.batch)
        self.Rw, self.Fw = inst.wall.per_layer[idx], {r: inst.wall.fixed[r][idx] for r in ROLES}
        self.Rb, self.Fb = inst.reserved.per_layer[idx], {r: inst.reserved.fixed[r][idx] for r in ROLES}
        self.alpha = inst.alpha[idx]
        self.omega0 = omega0
        self.w_max = w_max  # a bound on the wall time (at batch 1 the latency bound): no plan above it counts
        wall = Costs(self.Rw, self.Fw, self.HW)
        self.wall_costs = wall
        floor = np.maximum(floor, omega0)
        if m:  # the relaxed fastest plan through each peer (peers may repeat): no plan using it is faster
            thr = through_bounds(wall, self.caps, self.L, relaxed_bounds(wall, self.caps, self.L))
            floor = np.maximum(floor, np.where(np.isfinite(thr), thr, INF))
        self.floor = floor
        # order-free lower bound of a stage's share of W, per role (search.stage_shares): W >= their sum
        if m:
            self.w_role = stage_shares(self.HW, self.Fw)
        self.subsolves = 0
        self.pops = 0
        self.labels = 0
        self.duals = 0  # knapsacks solved for Lagrangian bounds
        self.lagrangians = 0  # intervals that took the DSSR-relaxed Lagrangian dual
        self._fastest_plans: list = []  # (peers, fastest plan over them, its wall time): see _fastest_in
        self.k_lo = 1  # every plan the intervals must still bound has at least this many stages
        self.route_cuts: list[dict] = []  # the stats of each interval bounded by branch and cut (deep sets)
        self.best: list[tuple[int, int, str]] | None = None  # the incumbent: every plan a bound meets is offered
        self.U = INF
        self.alive = np.ones(m, dtype=bool)  # peers a plan that beats the incumbent may still use (narrow)

    # ---- plans -------------------------------------------------------------------------------------
    def evaluate(self, path: list[tuple[int, int, str]]) -> tuple[float, float, float, float]:
        """(W, A, B, f) of a path over local indices, in route order."""
        m = self.m
        src, W, A, B = m, 0.0, 0.0, 0.0
        for q, n, r in path:
            W += self.HW[src, q] + self.Fw[r][q] + n * self.Rw[q]
            A += self.alpha[q]
            B += self.Fb[r][q] + n * self.Rb[q]
            src = q
        W += self.HW[src, m]
        return W, A, B, A * W + B

    def offer(self, path: list[tuple[int, int, str]]) -> float:
        """A plan met on the way (a knapsack's set in its fastest order, a search's result): keep the best.
        Returns the plan's wall time."""
        w, _, _, f = self.evaluate(path)
        if f < self.U and w <= self.w_max:
            self.best, self.U = list(path), f
        return w

    def fastest_order(self, path: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        from prismn.placement.optimal import _sub_hops, best_order

        return [path[i] for i in best_order(_sub_hops(self.HW, path), len(path))]

    def price_few_stages(self) -> None:
        """Offer the best plan of each stage count up to FEW_STAGES, found by pricing every one of them (the
        pairs in a compiled loop, O(m^2)); from then on the intervals bound only plans of more stages."""
        from prismn.placement.compiled import as_f64, as_i64, best_two_stage

        m, L = self.m, self.L
        one = np.nonzero(self.caps["only"] >= L)[0]
        if len(one):  # summed as evaluate() sums them
            W = (self.HW[m, one] + self.Fw["only"][one] + L * self.Rw[one]) + self.HW[one, m]
            f = self.alpha[one] * W + (self.Fb["only"][one] + L * self.Rb[one])
            f = np.where(W <= self.w_max, f, INF)
            k = int(np.argmin(f))
            if np.isfinite(f[k]):
                self.offer([(int(one[k]), L, "only")])
        if L >= 2:
            f, p, q, n = best_two_stage(as_f64(self.HW), as_f64(self.Rw), as_f64(self.Fw["first"]), as_f64(self.Fw["last"]),
                                        as_f64(self.Rb), as_f64(self.Fb["first"]), as_f64(self.Fb["last"]),
                                        as_f64(self.alpha), as_i64(np.minimum(self.caps["first"], L)),
                                        as_i64(np.minimum(self.caps["last"], L)), int(L), float(self.w_max))
            if p >= 0:
                self.offer([(int(p), int(n), "first"), (int(q), L - int(n), "last")])
        self.k_lo = max(FEW_STAGES + 1, fewest_stages(self.caps, L))  # no plan has fewer stages than that

    def price_three_stages(self, sub: np.ndarray) -> None:
        """Offer the best three-stage plan over the peers `sub` (local indices): every ordered triple, each
        split optimally (search.best_three_stage_plan, O(|sub|^3)). Exact over them when w_max is INF; under
        a wall-time cap it skips a route whose best split exceeds it (an incumbent only)."""
        w = np.append(sub, self.m)
        wall = Costs(self.Rw[sub], _take(self.Fw, sub), self.HW[np.ix_(w, w)])
        B = Costs(self.Rb[sub], _take(self.Fb, sub), self.HW[np.ix_(w, w)])
        path = best_three_stage_plan(wall, _take(self.caps, sub), self.L, B, self.alpha[sub], self.w_max)
        if path is not None:
            self.offer([(int(sub[q]), n, r) for q, n, r in path])

    def narrow(self) -> None:
        """Drop the peers no plan of the class (at least k_lo stages) that beats the incumbent can use, over
        the whole run: E at ta = omega0 (class_costs) bounds f on every plan of the class, since every
        plan's wall time is at least omega0, so the relaxed least E through a peer (may_beat's first test)
        bounds every such plan through it. Plans of fewer stages are priced already. At 1,000 peers a few
        dozen of several hundred candidates remain. Then, with no wall-time cap, every three-stage plan
        over the few that remain is priced (exactly: for a fixed route f is linear in the layer counts),
        the class becomes plans of at least four stages, and its tighter E narrows again."""
        for _ in range(2):
            sub = np.nonzero(self.alive)[0]
            if not len(sub):
                return
            P, shift = self.class_costs(sub, self.omega0, _restrict(self.wall_costs, sub))
            caps = _take(self.caps, sub)
            thr = through_bounds(P, caps, self.L, relaxed_bounds(P, caps, self.L)) - shift
            self.alive[sub[thr >= self.U * (1 - REL)]] = False
            if self.k_lo != FEW_STAGES + 1 or self.w_max < INF or self.alive.sum() > THREE_STAGE_PEERS:
                return
            self.price_three_stages(np.nonzero(self.alive)[0])
            self.k_lo = FEW_STAGES + 2

    # ---- one interval ------------------------------------------------------------------------------
    def bound(self, ta: float, tb: float, ub: float):
        """LB(ta, tb) (see module doc) and a plan attaining it: (value, path, exact). value >= ub means
        nothing in the interval beats ub (path may be None); exact False: a valid bound only."""
        self.subsolves += 1
        sub = np.nonzero((self.floor <= tb * (1 + REL)) & self.alive)[0]
        if not len(sub):
            return INF, None, True
        res = self.alpha[sub] * np.maximum(ta, self.floor[sub])
        F = {r: res + self.Fb[r][sub] for r in ROLES}
        R = self.Rb[sub]
        caps = _take(self.caps, sub)
        keep = self._filter(R, F, caps, ub)
        if not len(keep):
            return INF, None, True
        sub = sub[keep]
        R, F, caps = R[keep], _take(F, keep), _take(caps, keep)
        path, value = solve_order_free(R, F, caps, self.L)
        if path is None or value >= ub * (1 - REL):
            return value, None, True
        if self.k_lo >= FEW_STAGES + 1:  # the plans left to bound have at least k_lo stages
            value = max(value, self._class_knapsack(sub, ta, caps))
            if value >= ub * (1 - REL):
                return value, None, True
        path = self.fastest_order([(int(sub[q]), n, r) for q, n, r in path])
        if self.offer(path) <= tb * (1 + REL):
            return value, path, True
        if len(path) > SUB_MAX_STAGES or self.L * len(sub) ** 2 > SUB_CELLS:
            # deep (the W-bounded search would not finish), or too many peers for even one relaxation
            # table: the order-free Lagrangian dual first (cheap); then, on deep sets of few peers, branch
            # and cut (exact); else the interval splits
            dual = self._dual(sub, R, F, caps, tb, ub, value, path)
            if dual >= ub * (1 - REL):
                return dual, None, True
            if len(path) > SUB_MAX_STAGES and len(sub) <= routecut.ROUTE_CUT_PEERS:
                return self._route_cut(sub, caps, ta, tb, max(value, dual))
            return max(value, dual), path, False
        # the label search only where splitting no longer tightens the bound (narrow intervals), within budget
        searchable = self.labels < TOTAL_LABELS and tb - ta <= SEARCH_WIDTH * ta
        # the knapsack's set is too slow for the interval: the W-bounded search, exact
        wall_idx = np.append(sub, self.m)
        S = Costs(self.Rw[sub], {r: self.Fw[r][sub] for r in ROLES}, self.HW[np.ix_(wall_idx, wall_idx)])
        P, shift = self.class_costs(sub, ta, S)
        ok = self.may_beat(P, shift, S, caps, tb, ub)
        if not ok.all():
            if not ok.any():
                return INF, None, True
            k = np.nonzero(ok)[0]
            sub, R, F, caps = sub[k], R[k], _take(F, k), _take(caps, k)
            S, P = _restrict(S, k), _restrict(P, k)
        path_s, vs, tables_s = self._fastest_in(sub, S, caps)
        if vs > tb * (1 + REL):
            return INF, None, True
        path_p, _, info_p = dssr(P, caps, self.L, SUB_THETA, max_cells=SUB_CELLS)

        def plan_of(local):
            return [(int(sub[q]), n, r) for q, n, r in local]

        def settles(local) -> bool:  # E is exact only for plans of at least k_lo stages
            return len(local) >= self.k_lo

        if path_p is not None and path_cost(S, path_p) <= tb * (1 + REL):  # E's optimum meets W <= tb
            self.offer(plan_of(path_p))
            e = path_cost(P, path_p) - shift
            if e >= ub * (1 - REL) or settles(path_p):
                return max(value, e), plan_of(path_p), True
        if searchable and tables_s is None:
            tables_s = dssr(S, caps, self.L, SUB_THETA, max_cells=SUB_CELLS)[2].pop("tables", None)
        s = Search(P, S, caps, self.L, tb, tables_P=info_p.pop("tables", None), tables_S=tables_s,
                   amortise=True, min_stages=self.k_lo) if searchable else None
        if path_s is not None:  # the Lagrangian dual of W <= tb with the real hops (DSSR-relaxed)
            at = {int(g): i for i, g in enumerate(sub)}
            start = path_p
            if start is None:  # the knapsack's set when its peers are all still here, else the fastest plan
                start = [(at[g], n, r) for g, n, r in path] if all(g in at for g, _, _ in path) else path_s
            lag = lagrangian(P, S, caps, self.L, tb, start, path_s, SUB_THETA, SUB_CELLS, LAGR_STEPS)
            self.lagrangians += 1
            self.offer(plan_of(lag.best[1]))
            dual = lag.dual - shift
            if dual >= ub * (1 - REL):
                return dual, None, True
            if lag.best[0] <= lag.dual * (1 + REL) and settles(lag.best[1]):  # a plan attains the dual: exact
                return max(value, lag.best[0] - shift), plan_of(lag.best[1]), True
            value = max(value, dual)
            if lag.tables is not None and s is not None:
                s.lagr = (lag.lam, lag.tables)
        if s is None:
            return value, path, False
        out = self._searched(s)
        if out is None:
            return (value, None, False) if s.gave_up else (INF, None, True)
        path = plan_of(out.stages)
        self.offer(path)
        return (max(value, out.P - shift) if out.proven else max(value, out.lower_bound - shift)), path, out.proven

    def may_beat(self, P: Costs, shift: float, S: Costs, caps: dict[str, np.ndarray], tb: float,
                 ub: float) -> np.ndarray:
        """Which peers may take part in a plan of the class (at least k_lo stages) with W <= tb and
        f < ub: the relaxed best plan through each peer (peers may repeat) bounds every real one through
        it, for E = P - shift <= f and for W. The others cannot be in a better plan on this interval."""
        ok = through_bounds(P, caps, self.L, relaxed_bounds(P, caps, self.L)) - shift < ub * (1 - REL)
        return ok & (through_bounds(S, caps, self.L, relaxed_bounds(S, caps, self.L)) <= tb * (1 + REL))

    def _fastest_in(self, sub: np.ndarray, S: Costs, caps: dict[str, np.ndarray]):
        """The least wall time over plans on peers `sub`: (its plan over positions in sub, or None when the
        relaxation gave up; the value, a lower bound then; the relaxation's tables, or None). An earlier
        relaxation whose fastest plan lies inside `sub` answers it when every peer of `sub` it did not see
        has a floor (no plan through it is faster) at least that plan's wall time: then no plan here is
        faster than that one, and that one is here. Intervals differ mostly in a few slow or dirty peers,
        so one relaxation usually serves many of them."""
        inside = np.zeros(self.m, dtype=bool)
        inside[sub] = True
        for around, plan, value in self._fastest_plans:
            if (self.floor[inside & ~around] >= value).all() and all(inside[g] for g, _, _ in plan):
                pos = np.cumsum(inside) - 1  # each peer's position in sub
                return [(int(pos[g]), n, r) for g, n, r in plan], value, None
        path, value, info = dssr(S, caps, self.L, SUB_THETA, max_cells=SUB_CELLS)
        if path is not None:
            self._fastest_plans.append((inside, [(int(sub[q]), n, r) for q, n, r in path], value))
        return path, value, info.pop("tables", None)

    def class_costs(self, sub: np.ndarray, ta: float, S: Costs) -> tuple[Costs, float]:
        """(P, shift): P(plan) - shift = E(plan) <= f(plan) for every plan on peers `sub` of at least k_lo
        stages with W >= ta (S: the wall time on `sub`). E keeps part of each plan's wall time, which the
        interval's own bound (alpha_i x max(ta, floor_i) per stage) gives up:
            A W = sum_i alpha_i W >= sum_i [(alpha_i - a) f_i + a ta] + k_lo a (W - ta),
        a the least alpha on `sub`, f_i = max(ta, floor_i) <= W; the difference is
        sum_i (alpha_i - a)(W - f_i) + a (k - k_lo)(W - ta) >= 0. With k_lo = 3 and peers of similar alpha
        the bound loses only (A - 3a)(W - ta) where the interval's own loses A (W - ta). E carries the real
        hops (k_lo a W), so the DSSR-relaxed Lagrangian and the search minimise it."""
        a = float(self.alpha[sub].min())
        lift = self.k_lo * a
        f_i = np.maximum(ta, self.floor[sub])
        per_stage = Costs(self.Rb[sub], {r: (self.alpha[sub] - a) * f_i + a * ta + self.Fb[r][sub] for r in ROLES},
                          _no_hops(len(sub)))
        return per_stage.combine(1.0, S, lift), lift * ta

    def _class_knapsack(self, sub: np.ndarray, ta: float, caps: dict[str, np.ndarray]) -> float:
        """A lower bound on f over the plans of the class (at least k_lo stages) on peers `sub` with W >= ta,
        order-free: E (class_costs) with its wall time W bounded below by the stages' shares (stage_shares,
        W >= sum_i w_role(i) + n_i Rw_i), minimised over stage sets of at least k_lo stages
        (compiled.knapsack_min_stages). Since every stage reserves its peer for at least ta, forcing k_lo
        stages is what lifts this above the all-plans knapsack when the best plans have fewer."""
        from prismn.placement.compiled import as_f64, as_i64, knapsack_min_stages

        a = float(self.alpha[sub].min())
        lift = self.k_lo * a
        base = (self.alpha[sub] - a) * np.maximum(ta, self.floor[sub]) + a * ta
        F = {r: base + lift * self.w_role[r][sub] + self.Fb[r][sub] for r in ("first", "middle", "last")}
        R = self.Rb[sub] + lift * self.Rw[sub]
        cap = {r: as_i64(np.minimum(caps[r], self.L)) for r in ("first", "middle", "last")}
        v = knapsack_min_stages(as_f64(R), as_f64(F["middle"]), as_f64(F["first"]), as_f64(F["last"]),
                                cap["middle"], cap["first"], cap["last"], int(self.L), int(self.k_lo))
        return v - lift * ta

    def _route_cut(self, sub: np.ndarray, caps: dict[str, np.ndarray], ta: float, tb: float, value: float):
        """LB(ta, tb) exactly by branch and cut (routecut.Reserve: f itself over the interval's plans of the
        class, linear through one McCormick column per peer): (bound, plan, exact) as bound() returns."""
        S = _restrict(self.wall_costs, sub)
        B = Costs(self.Rb[sub], _take(self.Fb, sub), np.where(np.isfinite(S.W), 0.0, INF))  # B has no hop terms
        rv = routecut.Reserve(self.alpha[sub], S, np.maximum(ta, self.floor[sub]), ta, tb, self.k_lo)
        at = {int(g): i for i, g in enumerate(sub)}
        inc = None  # the incumbent, when the interval's model admits it
        if (self.best is not None and len(self.best) >= self.k_lo and all(g in at for g, _, _ in self.best)
                and self.evaluate(self.best)[0] <= tb):
            inc = [(at[g], n, r) for g, n, r in self.best]

        def glob(local):
            return [(int(sub[q]), n, r) for q, n, r in local]

        cut = routecut.route_cut(B, caps, self.L, inc, reserve=rv, price=lambda p: self.evaluate(glob(p))[3],
                                 cutoff=self.U)
        self.route_cuts.append({"ta_ms": ta * 1e3, "tb_ms": tb * 1e3, **cut.stats})
        path = glob(cut.path) if cut.path is not None else None
        if path is not None:
            self.offer(path)
        return max(value, cut.bound), path, cut.proven

    def _searched(self, s: Search):
        """The W-bounded label search within its budget (labels counted)."""
        out = s.run(None, max_pops=SUB_POPS, max_labels=SUB_LABELS)
        self.labels += s.n_labels
        if out is not None:
            self.pops += out.pops
        return out

    def _dual(self, sub, R, F, caps, tb: float, ub: float, v0: float, path0):
        """max over mu >= 0 of min over sets [cost + mu x (Wlb(set) - tb)] (a lower bound on LB(ta, tb):
        every plan with W <= tb has Wlb <= tb), by the cutting-plane (Kelley) method on the lines of the
        sets found. Each set found is offered as a plan (in its fastest order)."""
        def wlb(p):  # over candidate indices
            return sum(self.w_role[r][q] for q, _, r in p) + sum(n * self.Rw[q] for q, n, _ in p)

        lines = [(v0, wlb(path0) - tb)]  # (cost, Wlb - tb) of each set
        if lines[0][1] <= 0:  # the knapsack's own set meets the relaxed constraint: mu = 0 is the dual optimum
            return v0
        # the set of least Wlb (the line that falls fastest): if even it exceeds tb, no plan fits the interval
        wr = {r: self.w_role[r][sub] for r in ROLES}
        Rw = self.Rw[sub]
        fast, wmin = solve_order_free(Rw, wr, caps, self.L)
        self.duals += 1
        if fast is None or wmin > tb * (1 + REL):
            return INF
        lines.append((sum(F[r][q] + n * R[q] for q, n, r in fast), wmin - tb))
        best_dual = v0
        for _ in range(DUAL_STEPS):
            # the mu where the upper envelope's least line changes: max over mu of min over lines
            up = [ln for ln in lines if ln[1] > 0]
            down = [ln for ln in lines if ln[1] <= 0]
            mu, top = 0.0, -INF
            for cu, su in up:
                for cd, sd in down:
                    m_ = (cd - cu) / (su - sd)
                    if m_ > 0:
                        val = min(c + m_ * s_ for c, s_ in lines)
                        if val > top:
                            mu, top = m_, val
            if mu <= 0:
                break
            p, v = solve_order_free(R + mu * Rw, {r: F[r] + mu * wr[r] for r in ROLES}, caps, self.L)
            self.duals += 1
            if p is None:
                break
            c = sum(F[r][q] + n * R[q] for q, n, r in p)
            dual = v - mu * tb
            best_dual = max(best_dual, dual)
            found = [(int(sub[q]), n, r) for q, n, r in p]
            self.offer(self.fastest_order(found))
            if best_dual >= ub * (1 - REL) or top - dual <= REL * max(abs(top), 1e-300):
                break  # the interval closes, or the dual is at its optimum (the new line is on the envelope)
            lines.append((c, wlb(found) - tb))
        return best_dual

    def _filter(self, R, F, caps, ub: float) -> np.ndarray:
        """Peers that may be in a set costing < ub: own stage + the cheapest amortised fill of the rest."""
        L = self.L
        capx = np.maximum.reduce([caps[r] for r in ROLES])
        ok = capx >= 1
        cap1 = np.maximum(np.minimum(capx, L), 1)
        fmin = np.minimum.reduce([np.where(caps[r] >= 1, F[r], INF) for r in ROLES])
        rate = np.where(ok, R + fmin / cap1, INF)
        N = cheapest_fill(rate, np.where(ok, cap1, 0), L)
        only = np.where(caps["only"] >= L, F["only"] + L * R, INF)
        lb = np.minimum(fmin + stage_and_fill(R, capx, N, L), only)
        return np.nonzero(lb < ub * (1 + 1e-9))[0]

    # ---- the branch and bound ----------------------------------------------------------------------
    def run(self, incumbent: list[tuple[int, int, str]] | None, max_subsolves: int = MAX_SUBSOLVES):
        """incumbent: a plan over local indices, or None. Returns (path, f, proven, lower bound); path None
        and proven: no plan has W <= w_max."""
        if incumbent is not None:
            self.offer(incumbent)
        if self.m:
            self.price_few_stages()
        U = self.U
        # f < U needs A W < U, and A is at least the k_lo least alphas (every plan left has k_lo stages)
        a_lo = float(np.sort(self.alpha)[:self.k_lo].sum()) if self.m else 0.0
        tmax = U / a_lo if a_lo > 0 else INF
        tmax = min(tmax, self.w_max)
        if not self.m or tmax < self.omega0:
            return self.best, U, True, U
        heap: list[tuple[float, float, float]] = [(-INF, self.omega0, tmax)]
        stuck = INF  # the least bound of an interval whose search hit its budget (left open)
        while heap:
            lb, ta, tb = heap[0]
            if min(lb, stuck) >= U * (1 - REL):
                return self.best, U, True, U
            if lb >= U * (1 - REL):  # only stuck intervals below the incumbent remain
                break
            if self.subsolves >= max_subsolves:
                return self.best, U, False, min(lb, stuck)
            heapq.heappop(heap)
            if self.subsolves == 1 and self.m <= NARROW_PEERS:
                # the first interval (all wall times) did not close: narrow for the rest of the run (the
                # bounds in the heap stay valid: the class only shrinks, and what leaves it is priced)
                self.narrow()
            value, path, exact = self.bound(ta, tb, self.U)
            U = self.U  # every plan the bound met was offered
            if path is not None:
                w = self.evaluate(path)[0]
            if value >= U * (1 - REL):
                continue
            if not exact:  # the search hit its budget: halve the interval (both halves bound tighter)
                mid = 0.5 * (ta + tb)
                if mid - ta > SPLIT_MIN * ta:
                    heapq.heappush(heap, (value, mid, tb))
                    heapq.heappush(heap, (value, ta, mid))
                else:
                    stuck = min(stuck, value)
                continue
            # path attains the bound and meets W <= tb; W(path) > ta (else f(path) <= value < U)
            # split at the plan's wall time (the part above closes when the plan is again the argmin) and
            # at the middle of what lies below it (the bound at ta is loose by (W - ta) x A for slow plans)
            w = min(w, tb)
            if w > ta:
                heapq.heappush(heap, (value, w, tb))
            lo_tb = w * (1 - REL)
            mid = 0.5 * (ta + lo_tb)
            if lo_tb > ta and mid - ta > SPLIT_MIN * ta:
                heapq.heappush(heap, (value, mid, lo_tb))
                heapq.heappush(heap, (value, ta, mid))
            elif lo_tb > ta:
                heapq.heappush(heap, (value, ta, lo_tb))
        if stuck >= U * (1 - REL):
            return self.best, U, True, U
        return self.best, U, False, stuck
