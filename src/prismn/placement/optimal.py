"""Strategy `prismn`: the exact least-latency / least-carbon plan under memory constraints.

Problem (docs/placement.md): choose distinct peers p1..pk, k >= 1, and layer counts n_i >= 1 with
sum n_i = L and n_i <= cap(p_i, role_i) (CostModel.max_layers: the first stage also holds the
embedding, the last the LM head, a single stage both), minimising the evaluator's own metric for the
loop client -> p1 -> ... -> pk -> client:
  * objective `latency`: latency_ms_per_token;
  * objective `carbon`: by default the reserved carbon at the deployment's load,
    gco2e_total_per_token_at_load (every used peer held for the whole step: idle draw x wall time +
    extra draw while computing, x PUE, embodied by wall time, + network; solved by reserved.py, since
    it is A(set) x W(plan) + B, not additive); `carbon_scope="operational"` minimises compute-time
    gco2e_per_token, `carbon_scope="total"` compute-time gco2e_total_per_token;
  * objective `balanced`, weight w in [0, 1]:  (1 - w) * latency / latency* + w * carbon / carbon*,
    with latency* and carbon* the two single-objective optima (so both terms are 1 at their best);
  * bounds: least carbon with latency <= max_latency_ms, least latency with carbon <= max_gco2e.
Ties are broken by the other metric (carbon for latency, exactly: `exact_tie_break`; latency for
carbon and balanced).

How (all steps are exact, see search.py for the search itself):
  1. per-peer costs as arrays (instance.py), the same numbers the evaluator computes;
  2. a lower bound LB(q) on every plan that uses peer q (its own cheapest use + the cheapest fill of
     the other layers by per-layer cost + the least possible hops, including the round trip from the
     client to q); peers with LB(q) above a feasible plan's cost (or above a bound) cannot be in an
     optimal plan and are dropped;
  3. dominance: a peer at the same location as K others that are each at least as good in every
     cost term, every role's capacity and bandwidth is dropped, where K bounds the number of stages
     of an optimal plan (swapping it for an unused dominator never makes a plan worse);
  4. best-first search with admissible bounds over the survivors.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from prismn.errors import PlanError
from prismn.model import GIB, ModelSpec
from prismn.placement import routecut
from prismn.placement.costmodel import CostOptions
from prismn.placement.instance import CARBON_SCOPES, ROLES, Instance
from prismn.placement.knapsack import solve_order_free
from prismn.placement.plan import Plan, Stage
from prismn.placement.polish import polish
from prismn.placement.search import (
    INF,
    Costs,
    Result,
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
    visit_penalties,
)
from prismn.swarm import Swarm

OBJECTIVES = ("latency", "carbon", "balanced")
DSSR_CELLS = 2e9  # most cells of one relaxation table (decremental state-space relaxation, search.py)
# a seed only has to give a good feasible plan (its cost filters every other peer), not a proof: a small
# relaxation, then a greedy dive, keep a few reused peers from blowing DSSR up on a 16-peer seed
SEED_THETA, SEED_POPS = 6, 2_000
# peers the relaxation keeps elementary before the best-first search takes over with its tables as bounds
# (each one doubles the tables: 2^theta x L x m^2 work). Small values make 1,000-peer latency solves
# faster but leave deep ones to the search (theta 4: a 15-peer swarm went unproven), so: as before.
SEARCH_THETA = 14
THREE_STAGE_POOL = 64  # peers (best relaxed plans through them first) whose three-stage plans seed a scalar
#                        solve with hops (compiled, O(m^3): 0.2-1.8 ms measured here at 48-96 peers)
SEARCH_POPS = 10_000  # labels one best-first search may expand (the slowest seen here: ~80 s)
STRATEGY = "prismn"
# the evaluator's metric each carbon scope minimises
CARBON_METRICS = {"reserved": "gco2e_total_per_token_at_load", "operational": "gco2e_per_token",
                  "total": "gco2e_total_per_token"}


@dataclass(frozen=True)
class Objective:
    kind: str = "latency"  # latency | carbon | balanced
    weight: float = 0.5  # balanced: share of carbon
    max_latency_ms: float | None = None
    max_gco2e: float | None = None
    carbon_scope: str = "reserved"  # reserved (default) | operational | total, see docs/placement.md

    def __post_init__(self) -> None:
        if self.carbon_scope not in CARBON_SCOPES:
            raise PlanError(f"unknown carbon scope {self.carbon_scope!r}: use {', '.join(CARBON_SCOPES)}")
        if self.kind not in OBJECTIVES:
            raise PlanError(f"unknown objective {self.kind!r}: use {', '.join(OBJECTIVES)}")
        if not 0.0 <= self.weight <= 1.0:
            raise PlanError(f"--weight {self.weight} is outside [0, 1]: 0 is all latency, 1 all carbon")
        if self.kind == "balanced" and self.max_latency_ms is not None and self.max_gco2e is not None:
            raise PlanError("balanced takes one bound at a time: give --max-latency-ms or --max-gco2e, not both")
        for name, v in (("--max-latency-ms", self.max_latency_ms), ("--max-gco2e", self.max_gco2e)):
            if v is not None and not v > 0:
                raise PlanError(f"{name} must be > 0")

    @property
    def carbon_metric(self) -> str:
        return CARBON_METRICS[self.carbon_scope]

    def label(self) -> str:
        s = self.kind + (f" (weight {self.weight:g})" if self.kind == "balanced" else "")
        if self.max_latency_ms is not None:
            s += f", latency <= {self.max_latency_ms:g} ms"
        if self.max_gco2e is not None:
            s += f", carbon <= {self.max_gco2e:g} g"
        return s


def objective_from_request(req) -> Objective:
    kind = req.objective
    if kind is None:
        if req.max_latency_ms is not None:
            kind = "carbon"
        elif req.max_gco2e is not None:
            kind = "latency"
        else:
            kind = "carbon" if req.preference == "low-carbon" else "latency"
    return Objective(kind, req.weight, req.max_latency_ms, req.max_gco2e,
                     getattr(req, "carbon_scope", "reserved"))


# ---------------------------------------------------------------------------------------------------
@dataclass
class Solution:
    stages: list[tuple[int, int, str]]  # (peer index in the swarm, layers, role), route order
    latency_s: float
    carbon_g: float
    proven: bool
    value: float  # the primary objective in the solver's units
    stats: dict


class Engine:
    """One instance, many solves (objectives, bounds, Pareto points) sharing the per-peer arrays."""

    def __init__(self, spec: ModelSpec, swarm: Swarm, options: CostOptions | None = None,
                 carbon_scope: str = "operational"):
        self.inst = Instance(spec, swarm, options, carbon_scope)
        self.cells = DSSR_CELLS
        self.gave_up = False  # the last search stopped at its budget before it found any plan (none is proven)
        self.L = self.inst.L
        inst = self.inst
        self.usable = np.nonzero(inst.caps["middle"] >= 1)[0]
        self.tok_lb, self.act_lb = inst.hop_lower_bounds()
        self.dist = inst.client_path_bound_s()  # valid with measured RTTs too (triangle-violating ones)

    # ---- costs ----------------------------------------------------------------------------------
    def _arrays(self, wl: float, wc: float, idx: np.ndarray):
        lat, car = self.inst.latency, self.inst.carbon
        R = wl * lat.per_layer[idx] + wc * car.per_layer[idx]
        F = {r: wl * lat.fixed[r][idx] + wc * car.fixed[r][idx] for r in ROLES}
        return R, F

    def costs(self, wl: float, wc: float, idx: np.ndarray, W_lat: np.ndarray | None) -> Costs:
        R, F = self._arrays(wl, wc, idx)
        m = len(idx)
        if wl:
            W = wl * W_lat
        else:
            W = np.zeros((m + 1, m + 1))
            np.fill_diagonal(W, INF)
        return Costs(R, F, W)

    # ---- per-peer lower bounds ---------------------------------------------------------------------
    def peer_lower_bounds(self, wl: float, wc: float) -> np.ndarray:
        """LB(q): no plan that uses peer q costs less than this (in wl*latency + wc*carbon)."""
        inst, L, u = self.inst, self.L, self.usable
        lb = np.full(inst.n, INF)
        if not len(u):
            return lb
        R, F = self._arrays(wl, wc, u)
        capM = inst.caps["middle"][u]
        N = cheapest_fill(R, capM, L)
        fe = F["first"][inst.caps["first"][u] >= 1]
        fh = F["last"][inst.caps["last"][u] >= 1]
        fe_min = float(fe.min()) if len(fe) else INF
        fh_min = float(fh.min()) if len(fh) else INF
        d = self.dist[u]
        best = stage_and_fill(R, capM, N, L)
        multi = best + fe_min + fh_min + wl * (2 * self.tok_lb + self.act_lb + 2 * d)
        only = np.where(inst.caps["only"][u] >= L, L * R + F["only"] + wl * (2 * self.tok_lb + 2 * d), INF)
        lb[u] = np.minimum(multi, only)
        return lb

    def stage_bound(self, wl: float, wc: float, ub: float) -> int:
        """Most stages a plan costing <= ub can have (each stage adds a hop of >= act_lb seconds)."""
        if not wl or not math.isfinite(ub):
            return self.L
        inst, u, L = self.inst, self.usable, self.L
        R, F = self._arrays(wl, wc, u)
        capM = inst.caps["middle"][u]
        order = np.argsort(R, kind="stable")
        per_layer = np.repeat(R[order], np.minimum(capM[order], L))[:L]
        if len(per_layer) < L:
            return L
        fe = F["first"][inst.caps["first"][u] >= 1]
        fh = F["last"][inst.caps["last"][u] >= 1]
        base = float(per_layer.sum()) + float(min(fe.min(initial=INF), fh.min(initial=INF)))
        base += wl * 2 * self.tok_lb
        k = 1 + (ub - base) / (wl * self.act_lb)
        return int(max(1, min(L, math.floor(k + 1e-9))))

    # ---- dominance ---------------------------------------------------------------------------------
    def dominance_prune(self, idx: np.ndarray, K: int, reserved: bool = False) -> np.ndarray:
        """Drop peers that K others at the same location beat or match in every term (see module doc)."""
        inst = self.inst
        if len(idx) <= K:
            return idx
        lat, car = inst.latency, inst.carbon
        cols = [lat.per_layer, lat.fixed["first"], lat.fixed["last"], lat.fixed["only"],
                car.per_layer] + [car.fixed[r] for r in ROLES] + \
               [-inst.caps[r].astype(float) for r in ROLES] + [-inst.bw]
        if reserved:  # every term of A x W + B too: the peer's reservation rate, wall and B terms
            cols += [inst.alpha, inst.wall.per_layer, inst.reserved.per_layer] + \
                [inst.wall.fixed[r] for r in ROLES] + [inst.reserved.fixed[r] for r in ROLES]
        A = np.stack([c[idx] for c in cols], axis=1)  # smaller is better in every column
        scale = np.abs(A).max(axis=0)
        scale[scale == 0] = 1.0
        key = (A / scale).sum(axis=1)
        movable = ~inst.rtt_measured[idx]
        keep = np.ones(len(idx), dtype=bool)
        groups: dict[tuple[float, float], list[int]] = {}
        for k in np.nonzero(movable)[0]:
            groups.setdefault((inst.lat[idx[k]], inst.lon[idx[k]]), []).append(int(k))
        for members in groups.values():
            if len(members) <= K:
                continue
            mem = np.array(sorted(members, key=lambda k: (key[k], k)))
            kept: list[int] = []
            for k in mem:
                if len(kept) >= K:
                    Ak = A[kept]
                    if int(np.all(Ak <= A[k], axis=1).sum()) >= K:
                        keep[k] = False
                        continue
                kept.append(int(k))
        return idx[keep]

    # ---- one exact solve -----------------------------------------------------------------------------
    def solve(self, wl: float, wc: float, s_metric: str, bound_s: float | None = None,
              max_pops: int | None = None, max_cells: float = DSSR_CELLS,
              only: np.ndarray | None = None) -> Solution | None:
        """Lexicographic min of (wl*latency + wc*carbon, S) with S = latency|carbon, S <= bound_s.

        In the reserved scope (the default) carbon is A x W + B, not additive: any problem whose
        objective or bound involves carbon goes to the exact product search (reserved.py); the
        fastest plan alone stays the additive latency search (its carbon is then only reported).
        `only`: peers known to hold every plan that can meet the bound (the others are left out)."""
        self.gave_up = False
        if self.inst.carbon_scope == "reserved" and (wc or (s_metric == "carbon" and bound_s is not None)):
            from prismn.placement.reserved import RESERVED_POPS, solve_reserved

            bl = bound_s if s_metric == "latency" else None
            bf = bound_s if s_metric == "carbon" else None
            return solve_reserved(self, wl, wc, bl, bf, RESERVED_POPS if max_pops is None else max_pops, only)
        return self.solve_linear(wl, wc, s_metric, bound_s, SEARCH_POPS if max_pops is None else max_pops,
                                 max_cells, only)

    def solve_linear(self, wl: float, wc: float, s_metric: str, bound_s: float | None = None,
                     max_pops: int = SEARCH_POPS, max_cells: float = DSSR_CELLS,
                     only: np.ndarray | None = None) -> Solution | None:
        """solve() for additive metrics: latency, and carbon in the operational and total scopes.

        Budgets are deterministic: max_pops labels expanded, max_cells DP-table cells per relaxation."""
        self.cells = max_cells
        t0 = time.perf_counter()
        inst = self.inst
        sl, sc = (1.0, 0.0) if s_metric == "latency" else (0.0, 1.0)
        lbP = self.peer_lower_bounds(wl, wc)
        lbS = self.peer_lower_bounds(sl, sc)
        alive = self.usable[np.isfinite(lbP[self.usable])]
        if only is not None:
            alive = np.intersect1d(alive, only)
        if bound_s is not None:
            alive = alive[lbS[alive] <= bound_s * (1 + 1e-12)]
        stats: dict = {"peers": inst.n, "usable": len(self.usable), "after_bound_filter": len(alive)}
        if not len(alive):
            return None
        order = alive[np.argsort(lbP[alive], kind="stable")]

        # seed: the most promising peers, enough to hold the model twice over; its optimum is an
        # upper bound that filters every other peer by its lower bound
        capM = inst.caps["middle"]
        cum = np.cumsum(np.minimum(capM[order], self.L))
        seed_n = max(16, int(np.searchsorted(cum, 2 * self.L)) + 1)
        inc: Result | None = None
        while seed_n < len(order):
            seed_idx = order[:seed_n]
            inc = self._seed(seed_idx, wl, wc, sl, sc, bound_s)
            if inc is not None:
                break
            seed_n *= 4
        if inc is not None and bound_s is None and wl:  # before growing the seed: three-stage plans
            three = self._three_stage_seed(order[:2 * THREE_STAGE_POOL], wl, wc, sl, sc, inc.P)
            if three is not None:
                seed_idx, inc = three
        # a seed that leaves many peers alive gave a loose bound: grow it (x4) while that pays
        while inc is not None and seed_n < len(order):
            alive_n = int((lbP[order] <= inc.P * (1 + 1e-9) + 1e-300).sum())
            if alive_n <= max(400, 2 * seed_n) or 4 * seed_n > 1024:
                break
            seed_n *= 4
            bigger = order[:seed_n]
            better = self._seed(bigger, wl, wc, sl, sc, bound_s)
            if better is None:
                break
            seed_idx, inc = bigger, better
        if inc is not None:
            stats["seed"] = len(seed_idx)
            ub = inc.P
            cand = order[lbP[order] <= ub * (1 + 1e-9) + 1e-300]
            stats["after_lb_filter"] = len(cand)
            cand, through = self._through_filter(cand, wl, wc, sl, sc, ub, bound_s)
            stats["after_relaxed_filter"] = len(cand)
            if bound_s is None and through is not None and len(cand) > 2 * len(seed_idx):
                # a second seed on the peers whose relaxed best plans are best (the optimum's peers are
                # among them): usually the optimum itself, and a far tighter filter for the search
                best_first = cand[np.argsort(through, kind="stable")]
                cum2 = np.cumsum(np.minimum(capM[best_first], self.L))
                n2 = max(16, int(np.searchsorted(cum2, 2 * self.L)) + 1)
                again = self._seed(best_first[:n2], wl, wc, sl, sc, None)
                if again is not None and again.P < ub:
                    seed_idx, inc, ub = best_first[:n2], again, again.P
                    keep = through <= ub * (1 + 1e-9) + 1e-300  # the seed's own peers are within it
                    cand, through = cand[keep], through[keep]
                    stats.update({"second_seed": n2, "after_second_seed": len(cand)})
            if bound_s is None and through is not None and wl:
                # every three-stage plan over the peers whose relaxed best plans are best: at 1,000 peers
                # the optimum often has three stages among the first 64, and a tight incumbent filters
                # far more of the rest
                three = self._three_stage_seed(cand[np.argsort(through, kind="stable")[:THREE_STAGE_POOL]],
                                               wl, wc, sl, sc, ub)
                if three is not None:
                    seed_idx, inc, ub = three[0], three[1], three[1].P
                    keep = through <= ub * (1 + 1e-9) + 1e-300
                    cand, through = cand[keep], through[keep]
                    stats["after_three_stage_seed"] = len(cand)
            K = self.stage_bound(wl, wc, ub)
            if bound_s is not None and sl:
                K = min(K, self.stage_bound(sl, sc, bound_s))
            # the fastest plan's ties are broken by carbon in the reserved scope too: prune on its terms
            reserved = self.inst.carbon_scope == "reserved" and (wl, wc) == (1.0, 0.0)
            cand = self.dominance_prune(cand, max(K, 1), reserved=reserved)
            stats["stage_bound"] = K
            pos = {int(p): i for i, p in enumerate(cand)}
            incumbent = [(pos[int(seed_idx[q])], n, r) for q, n, r in inc.stages] \
                if all(int(seed_idx[q]) in pos for q, _, _ in inc.stages) else None
        else:
            cand, incumbent = order, None
        stats["candidates"] = len(cand)
        self._last_search = None
        res = self._search(cand, wl, wc, sl, sc, bound_s, incumbent, max_pops)
        idx = cand
        if res is None:
            self.gave_up = bool(self._last_search is not None and self._last_search.gave_up)
            return None
        stages = [(int(idx[q]), n, r) for q, n, r in res.stages]
        lat, car = self._metrics(stages)
        stats.update(res.stats)
        stats["pops"] = res.pops
        stats["seconds"] = time.perf_counter() - t0
        if not res.proven:
            stats["note"] = res.note
            stats["lower_bound"] = res.lower_bound
        return Solution(stages, lat, car, res.proven, res.P, stats)

    def _through_filter(self, idx, wl, wc, sl, sc, ub, bound_s) -> np.ndarray:
        """Keep peers whose relaxed best plan through them is within the incumbent (and the bound); returns
        them and those relaxed values (None when the swarm is too large to compute them)."""
        if len(idx) > 4000:
            return idx, None
        W_lat = self.inst.hop_time_matrix(idx) if (wl or sl) else None
        caps = {r: self.inst.caps[r][idx] for r in ROLES}
        P = self.costs(wl, wc, idx, W_lat)
        through = through_bounds(P, caps, self.L, relaxed_bounds(P, caps, self.L))
        if (wl, wc) == (1.0, 0.0) and bound_s is None:  # kept for the exact latency tie-break
            self._lat_through = (idx, through)
        keep = through <= ub * (1 + 1e-9) + 1e-300
        if bound_s is not None:
            S = self.costs(sl, sc, idx, W_lat)
            keep &= through_bounds(S, caps, self.L, relaxed_bounds(S, caps, self.L)) <= bound_s * (1 + 1e-12)
        return idx[keep], through[keep]

    def _three_stage_seed(self, pool, wl, wc, sl, sc, ub: float) -> tuple[np.ndarray, Result] | None:
        """The best three-stage plan over the peers `pool` when it costs less than ub: (pool, it as a seed
        Result over positions in pool), else None (search.best_three_stage_plan, unbounded problems)."""
        W3 = self.inst.hop_time_matrix(pool)
        P3 = self.costs(wl, wc, pool, W3)
        three = best_three_stage_plan(P3, {r: self.inst.caps[r][pool] for r in ROLES}, self.L)
        cost = path_cost(P3, three) if three is not None else INF
        if cost >= ub:
            return None
        S3 = self.costs(sl, sc, pool, W3)
        return pool, Result(three, cost, path_cost(S3, three), False, 0, -INF, note="three-stage seed")

    def _seed(self, idx, wl, wc, sl, sc, bound_s) -> Result | None:
        """A good feasible plan on a few peers. Unbounded: a small relaxation, else a greedy dive. Bounded:
        a small search too, since a greedy dive rarely meets a tight bound."""
        if bound_s is None:
            return self._search(idx, wl, wc, sl, sc, None, None, 0, SEED_THETA, prove=False)
        return self._search(idx, wl, wc, sl, sc, bound_s, None, SEED_POPS, SEED_THETA)

    def _search(self, idx, wl, wc, sl, sc, bound_s, incumbent, max_pops, max_theta: int | None = None,
                prove: bool = True) -> Result | None:
        if max_theta is None:  # scalar: small tables, then the search; bounded: as elementary as affordable
            max_theta = SEARCH_THETA if bound_s is None else 14
        check_memory(len(idx))
        W_lat = self.inst.hop_time_matrix(idx) if (wl or sl) else None
        P = self.costs(wl, wc, idx, W_lat)
        S = self.costs(sl, sc, idx, W_lat)
        caps = {r: self.inst.caps[r][idx] for r in ROLES}
        if not wl and bound_s is None:  # order-free (carbon): an exact knapsack, the order for latency after
            path, value = solve_order_free(P.R, P.F, caps, self.L)
            if path is None:
                return None
            path = [path[i] for i in best_order(_sub_hops(S.W, path), len(path))]
            return Result(path, value, path_cost(S, path), True, 0, value, stats={"method": "knapsack"})
        path, value, info = dssr(P, caps, self.L, max_theta, max_cells=self.cells)
        tables_P = info.pop("tables", None)
        if prove and (wl, wc) == (1.0, 0.0) and bound_s is None and tables_P is not None:
            self._lat_tables = (idx, P, caps, tables_P)  # reused by the exact latency tie-break
        if path is None and not wl and math.isfinite(value):  # dssr gave up: the knapsack is exact
            path, value = solve_order_free(P.R, P.F, caps, self.L)
            if path is not None:
                path = [path[i] for i in best_order(_sub_hops(S.W, path), len(path))]
        if bound_s is None:  # scalar objective: decremental state-space relaxation, exact
            if path is not None:
                return Result(path, value, path_cost(S, path), True, 0, value, stats={"dssr": info})
            if not math.isfinite(value):
                return None
            tables_S = None
        else:  # bounded: best-first search with the DSSR tables of both metrics as bounds
            if not math.isfinite(value):
                return None
            path_s, value_s, info_s = dssr(S, caps, self.L, max_theta, max_cells=self.cells)
            tables_S = info_s.pop("tables", None)
            if value_s > bound_s * (1 + 1e-12):
                return None
            if path is not None and path_cost(S, path) <= bound_s:  # the unbounded optimum meets the bound
                return Result(path, value, path_cost(S, path), True, 0, value, stats={"dssr": info})
            if incumbent is None and path_s is not None:
                incumbent = path_s  # the S-optimal plan meets the bound
        s = Search(P, S, caps, self.L, bound_s, tables_P=tables_P, tables_S=tables_S)
        self._last_search = s
        if bound_s is not None and path is not None and path_s is not None:
            lag = lagrangian(P, S, caps, self.L, bound_s, path, path_s, max_theta, self.cells)
            if lag.tables is not None:
                s.lagr = (lag.lam, lag.tables)
            if incumbent is None or path_cost(P, incumbent) > lag.best[0]:
                incumbent = lag.best[1]
        if wl and bound_s is None:  # DSSR gave up (deep plans): a route plan may beat the seed's
            route = knapsack_route(P, caps, self.L)
            if route is not None and (incumbent is None or path_cost(P, route) < path_cost(P, incumbent)):
                incumbent = route
        if incumbent is None:
            incumbent = s.dive()
        if not prove:  # a seed: any good feasible plan will do, the search proper comes later
            if incumbent is None:
                return None
            p_val, s_val = path_cost(P, incumbent), path_cost(S, incumbent)
            if bound_s is not None and s_val > bound_s:
                return None
            return Result(incumbent, p_val, s_val, False, 0, -INF, note="seed plan, not searched")
        pen = cut = None
        if wl and bound_s is None and incumbent is not None:
            # DSSR gave up (deep plans): the route problem as a MILP, branch and cut (exact, deterministic)
            inc_cost = path_cost(P, incumbent)
            if len(idx) <= routecut.ROUTE_CUT_PEERS:
                cut = routecut.route_cut(P, caps, self.L, incumbent)
            if cut is not None and cut.proven:
                return Result(cut.path, cut.value, path_cost(S, cut.path), True, 0, cut.value,
                              stats={"dssr": info, "route_cut": cut.stats})
            if cut is not None and cut.path is not None and cut.value < inc_cost:
                incumbent, inc_cost = cut.path, cut.value
            # the Lagrangian of 'each peer at most once' bounds the root
            pen = visit_penalties(P, caps, self.L, inc_cost)
            if pen.best is not None and pen.best[0] < inc_cost:
                incumbent = pen.best[1]
        res = s.run(incumbent, max_pops=max_pops)
        for extra in (pen, cut):
            if (res is not None and extra is not None and not res.proven and math.isfinite(extra.bound)
                    and extra.bound > res.lower_bound):
                res.lower_bound = extra.bound
                if extra.bound >= res.P * (1 - 1e-12):  # the bound meets the plan: it is optimal
                    res.proven, res.note = True, ""
        return res

    def _metrics(self, stages: list[tuple[int, int, str]]) -> tuple[float, float]:
        """Latency (s) and carbon (g, the instance's scope) of a plan, from the arrays."""
        inst = self.inst
        idx = np.array([p for p, _, _ in stages])
        W = inst.hop_time_matrix(idx)
        m = len(idx)
        lat = car = 0.0
        prev = m
        for k, (p, n, r) in enumerate(stages):
            lat += n * inst.latency.per_layer[p] + inst.latency.fixed[r][p] + W[prev, k]
            car += n * inst.carbon.per_layer[p] + inst.carbon.fixed[r][p]
            prev = k
        lat += W[prev, m]
        if inst.carbon_scope == "reserved":
            car = self.reserved_carbon(stages)
        return lat, car

    def reserved_carbon(self, stages: list[tuple[int, int, str]]) -> float:
        """A x W + B of a plan (grams per token at the deployment's load, every peer reserved)."""
        inst = self.inst
        idx = np.array([p for p, _, _ in stages])
        H = inst.hop_time_matrix(idx, inst.batch)
        m = len(idx)
        wall = A = B = 0.0
        prev = m
        for k, (p, n, r) in enumerate(stages):
            wall += n * inst.wall.per_layer[p] + inst.wall.fixed[r][p] + H[prev, k]
            A += inst.alpha[p]
            B += n * inst.reserved.per_layer[p] + inst.reserved.fixed[r][p]
            prev = k
        wall += H[prev, m]
        return A * wall + B

    # ---- diagnosis -------------------------------------------------------------------------------------
    def why_infeasible(self) -> str:
        inst, L, spec, cm = self.inst, self.L, self.inst.spec, self.inst.cm
        per_layer = spec.layer_bytes + cm.kv_layer_bytes
        if not inst.n:
            return "the swarm has no peers"
        caps = {r: np.maximum(inst.caps[r], 0) for r in ROLES}
        best_e = int(np.argmax(inst.usable))
        if caps["first"].max() < 1 and caps["only"].max() < 1:
            need = cm.stage_bytes(1, True, False)
            return (f"no peer can hold the embedding plus one layer ({need / GIB:.2f} GiB): the most usable VRAM is "
                    f"{inst.usable[best_e] / GIB:.2f} GiB on {inst.swarm.peers[best_e].id!r}; "
                    f"short by {(need - inst.usable[best_e]) / GIB:.2f} GiB there (add a bigger GPU or use a smaller dtype)")
        if caps["last"].max() < 1 and caps["only"].max() < 1:
            need = cm.stage_bytes(1, False, True)
            return (f"no peer can hold the LM head plus one layer ({need / GIB:.2f} GiB): the most usable VRAM is "
                    f"{inst.usable[best_e] / GIB:.2f} GiB on {inst.swarm.peers[best_e].id!r}; "
                    f"short by {(need - inst.usable[best_e]) / GIB:.2f} GiB there")
        total = int(caps["middle"].sum())
        if total < L or (inst.n == 1 and caps["only"][0] < L):
            held = min(total, L) if inst.n > 1 else int(caps["only"][0])
            missing = (L - held) * per_layer / GIB + (spec.embed_bytes + spec.head_bytes) / GIB * 0
            return (f"the swarm can hold at most {held} of the model's {L} layers even using every peer "
                    f"({inst.usable.sum() / GIB:.1f} GiB usable in total): about {missing:.1f} GiB of free VRAM is "
                    f"missing ({per_layer / GIB:.2f} GiB per layer with KV cache for {cm.context} tokens), "
                    f"plus room for the embedding and LM head on the first and last stage")
        return ("no plan fits: the peers that can hold the embedding or the LM head leave too little room for the "
                "remaining layers on the others")


BYTES_PER_PAIR = 64  # the hop matrix and its temporaries: ~8 float64 arrays of (m+1)^2


def check_memory(m: int) -> None:
    """Refuse, in one line, a search whose candidate hop matrix would not fit in this machine's memory."""
    need = BYTES_PER_PAIR * (m + 1) ** 2
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > avail:
        raise PlanError(f"this swarm leaves {m} candidate peers after every bound, which needs about "
                        f"{need / GIB:.1f} GiB but {avail / GIB:.1f} GiB is free: plan on a machine with more "
                        f"memory, or give a bound (--max-latency-ms) or fewer peers")


def knapsack_route(c: Costs, caps: dict[str, np.ndarray], L: int) -> list[tuple[int, int, str]] | None:
    """A good plan for a metric with hops when the exact search would be long (deep plans): the set that
    minimises the order-free bound (per-layer rates plus each stage's share of the hops, search.stage_shares),
    in its fastest order. Feasible whenever any plan is; no optimality claim."""
    path, _ = solve_order_free(c.R, stage_shares(c.W, c.F), caps, L)
    if path is None:
        return None
    return [path[i] for i in best_order(_sub_hops(c.W, path), len(path))]


def _sub_hops(W: np.ndarray, path: list[tuple[int, int, str]]) -> np.ndarray:
    """Hop matrix among a path's peers (in path order, the client last) from a candidates' hop matrix."""
    ids = np.array([q for q, _, _ in path] + [W.shape[0] - 1])
    return W[np.ix_(ids, ids)]


def best_order(W: np.ndarray, k: int) -> list[int]:
    """The fastest order of k stages whose first and last are fixed (same roles, so the same carbon):
    positions 0..k-1, W the (k+1)x(k+1) hop matrix in that order. Exact up to 9 middle stages
    (Held-Karp), 2-opt beyond; ties keep the given order."""
    if k <= 3:
        return list(range(k))
    mids = list(range(1, k - 1))
    if len(mids) <= 9:
        best: dict[tuple[int, int], tuple[float, list[int]]] = {}
        for i in mids:
            best[(1 << (i - 1), i)] = (W[0, i], [i])
        full = (1 << len(mids)) - 1
        for mask in range(1, full + 1):
            for i in mids:
                cur = best.get((mask, i))
                if cur is None:
                    continue
                for nxt in mids:
                    b = 1 << (nxt - 1)
                    if mask & b:
                        continue
                    cand = (cur[0] + W[i, nxt], cur[1] + [nxt])
                    key = (mask | b, nxt)
                    if key not in best or cand[0] < best[key][0]:
                        best[key] = cand
        end = min((best[(full, i)][0] + W[i, k - 1], best[(full, i)][1]) for i in mids)
        return [0] + end[1] + [k - 1]
    order = np.arange(k)
    improved = True
    while improved:  # 2-opt: reverse order[i..j]; each move's change in length in O(1) from prefix sums
        improved = False
        for i in range(1, k - 2):
            o = order
            fwd = np.concatenate([[0.0], np.cumsum(W[o[:-1], o[1:]])])  # fwd[t]: sum of edges before t
            bwd = np.concatenate([[0.0], np.cumsum(W[o[1:], o[:-1]])])  # the same edges walked backwards
            j = np.arange(i + 1, k - 1)
            delta = (W[o[i - 1], o[j]] + W[o[i], o[j + 1]] + (bwd[j] - bwd[i])
                     - W[o[i - 1], o[i]] - W[o[j], o[j + 1]] - (fwd[j] - fwd[i]))
            better = np.nonzero(delta < -1e-15)[0]
            if len(better):
                jj = int(j[better[0]])
                order = np.concatenate([o[:i], o[i:jj + 1][::-1], o[jj + 1:]])
                improved = True
    return [int(x) for x in order]


def polish_order(engine: Engine, sol: Solution) -> Solution:
    """Carbon does not depend on the order of the stages: among the orders of the same stages (same
    first and last peer, so the same roles and carbon) pick the fastest (see best_order)."""
    st = sol.stages
    if len(st) <= 3:
        return sol
    idx = np.array([p for p, _, _ in st])
    order = best_order(engine.inst.hop_time_matrix(idx), len(st))
    stages = [st[i] for i in order]
    lat, car = engine._metrics(stages)
    if lat < sol.latency_s and car <= sol.carbon_g * (1 + 1e-12):
        return Solution(stages, lat, car, sol.proven, sol.value, {**sol.stats, "reordered_for_latency": True})
    return sol




def break_tie(engine: Engine, sol: Solution) -> Solution:
    """Latency ties are broken by carbon among interchangeable peers: each stage moves to the cleanest
    unused peer with the very same latency terms (place, timings, link, no measured RTT, room for the
    stage). Such a swap keeps every hop and stage time, so the latency is unchanged and carbon can only
    fall. Ties between plans that differ otherwise are not searched. Carbon ties are broken by latency
    among the orders of the chosen stages (polish_order)."""
    inst = engine.inst
    key = np.stack([inst.lat, inst.lon, inst.lt, inst.et, inst.ht, inst.fx, inst.bw], axis=1)
    used = {p for p, _, _ in sol.stages}
    stages = list(sol.stages)
    reserved = inst.carbon_scope == "reserved"
    wall = sol.latency_s if reserved else 0.0  # the ranking only: the swap is judged exactly below
    for k, (p, n, role) in enumerate(stages):
        if inst.rtt_measured[p]:
            continue
        same = np.nonzero(np.all(key == key[p], axis=1) & ~inst.rtt_measured & (inst.caps[role] >= n))[0]
        if reserved:  # the same wall time: a peer's share is alpha x W + its own B terms
            rate = n * inst.reserved.per_layer[same] + inst.reserved.fixed[role][same] + inst.alpha[same] * wall
        else:
            rate = n * inst.carbon.per_layer[same] + inst.carbon.fixed[role][same]
        for q in same[np.argsort(rate, kind="stable")]:
            q = int(q)
            if q == p or q in used:
                if q == p:
                    break  # nothing cleaner than the peer already there
                continue
            used.discard(p)
            used.add(q)
            stages[k] = (q, n, role)
            break
    # layers between two stages whose peers take the same time per layer: moving them keeps latency
    rate = inst.reserved.per_layer if reserved else inst.carbon.per_layer
    moved = True
    while moved:
        moved = False
        for a in range(len(stages)):
            for b in range(len(stages)):
                (pa, na, ra), (pb, nb, rb) = stages[a], stages[b]
                if a == b or inst.lt[pa] != inst.lt[pb] or not rate[pb] < rate[pa]:
                    continue
                shift = min(na - 1, int(inst.caps[rb][pb]) - nb)
                if shift > 0:
                    stages[a], stages[b] = (pa, na - shift, ra), (pb, nb + shift, rb)
                    moved = True
    if stages == sol.stages:
        return sol
    lat, car = engine._metrics(stages)
    if not (car < sol.carbon_g and lat <= sol.latency_s * (1 + 1e-12)):
        return sol
    return Solution(stages, lat, car, sol.proven, sol.value, {**sol.stats, "tie_break": "less carbon at the same latency"})


TIE_POPS = 200  # labels of the exact latency tie-break (least carbon at the optimal latency)


TIE_LEX_POPS = 2_000  # labels of the lexicographic tie search (each cheap: the DSSR tables prune the rest)


def lexicographic_ties(engine: Engine, sol: Solution, only: np.ndarray | None) -> Solution | None:
    """Least carbon among the fastest plans as the lexicographic minimum of (latency, carbon'), where
    carbon' is additive: the scope's carbon, or in the reserved scope at batch 1 (wall time == latency)
    L* x A + B, which equals A x W + B on every plan whose latency is L*. The latency term is bounded by
    the exact DSSR tables of the latency relaxation on the tie candidates, so only labels on (near)
    fastest paths are expanded. None when it does not apply or is not proven within its budget."""
    inst = engine.inst
    if only is None or not len(only) or not sol.proven or len(only) > 400:
        return None
    if inst.carbon_scope == "reserved" and inst.batch != 1:
        return None
    stash = getattr(engine, "_lat_tables", None)
    if stash is not None and all(p in set(stash[0].tolist()) for p, _, _ in sol.stages):
        # the latency solve's own candidates (dominance kept every carbon term) and exact DSSR tables
        idx, P, caps, tables = stash
    else:
        idx = np.asarray(only, dtype=np.int64)
        P = engine.costs(1.0, 0.0, idx, inst.hop_time_matrix(idx))
        caps = {r: inst.caps[r][idx] for r in ROLES}
        path, value, info = dssr(P, caps, engine.L, 14, max_cells=engine.cells)
        tables = info.pop("tables", None)
        if path is None or not math.isfinite(value):
            return None
    m = len(idx)
    if inst.carbon_scope == "reserved":
        Wz = np.zeros((m + 1, m + 1))
        np.fill_diagonal(Wz, INF)
        lstar = sol.latency_s
        S = Costs(inst.reserved.per_layer[idx].copy(),
                  {r: lstar * inst.alpha[idx] + inst.reserved.fixed[r][idx] for r in ROLES}, Wz)
    else:
        S = engine.costs(0.0, 1.0, idx, None)
    pos = {int(p): i for i, p in enumerate(idx)}
    if not all(p in pos for p, _, _ in sol.stages):
        return None
    inc = [(pos[p], n, r) for p, n, r in sol.stages]
    res = Search(P, S, caps, engine.L, None, tables_P=tables).run(inc, max_pops=TIE_LEX_POPS)
    if res is None or not res.proven:
        return None
    stages = [(int(idx[q]), n, r) for q, n, r in res.stages]
    lat, car = engine._metrics(stages)
    return Solution(stages, lat, car, True, lat, {"method": "lexicographic ties", "pops": res.pops})


def exact_tie_break(engine: Engine, sol: Solution, info: dict) -> Solution:
    """Least carbon among the plans whose latency equals the optimum (1e-12 relative): the bounded
    problem with the bound at the optimum, solved exactly. Only peers whose latency lower bound meets
    the optimum take part, so it is small; within its label budget it is proven, else the swap
    tie-break (break_tie) stands and the notes say the tie-break was not proven."""
    if engine.inst.carbon_scope == "reserved" and not hasattr(engine, "_fastest"):
        engine._fastest = sol  # the proven fastest plan: the reserved search's wall-time floor and incumbent
    # an equally fast plan uses only peers through which the relaxed (peers may repeat) fastest plan is
    # no slower than the optimum: a small set, kept by the latency solve's relaxed filter
    from prismn.placement.reserved import tie_candidates

    only = tie_candidates(engine, sol)
    if only is not None:
        info["tie_candidates"] = len(only)
    tb = lexicographic_ties(engine, sol, only)
    if tb is None:  # at load (W != latency) or no small candidate set: the bounded carbon search
        tb = engine.solve(0.0, 1.0, "latency", sol.latency_s * (1 + 1e-12), max_pops=TIE_POPS, only=only)
    if tb is None or not tb.proven:
        info["tie_break"] = "carbon among equally fast plans: swap heuristic only (exact search hit its budget)"
        return sol
    info["tie_break"] = "least carbon among equally fast plans (exact)"
    if tb.carbon_g < sol.carbon_g and tb.latency_s <= sol.latency_s * (1 + 1e-12):
        return Solution(tb.stages, tb.latency_s, tb.carbon_g, sol.proven, sol.value,
                        {**sol.stats, "tie_break": "less carbon at the same latency (exact)"})
    return sol


# ---------------------------------------------------------------------------------------------------
def solve_objective(engine: Engine, obj: Objective) -> tuple[Solution | None, dict]:
    """Solve one objective; returns the solution and what the notes should say about it."""
    info: dict = {"objective": obj.label(), "carbon_scope": obj.carbon_scope}
    bl = obj.max_latency_ms / 1000.0 if obj.max_latency_ms is not None else None
    bc = obj.max_gco2e
    if obj.kind == "latency":
        sol = engine.solve(1.0, 0.0, "carbon", bc)
        if sol is not None and sol.proven:
            sol = break_tie(engine, sol)
            if bc is None:
                sol = exact_tie_break(engine, sol, info)
        elif bc is None:  # unproven (deep plans): a local search may still improve the plan
            sol = polish(engine, sol, 1.0, 0.0)
        if sol is not None and bl is not None and sol.latency_s > bl * (1 + 1e-12):
            info["bound_missed"] = f"the fastest plan takes {sol.latency_s * 1e3:.2f} ms > --max-latency-ms {obj.max_latency_ms:g}"
            return None, info
    elif obj.kind == "carbon":
        sol = engine.solve(0.0, 1.0, "latency", bl)
        if sol is not None and bl is None:
            sol = polish_order(engine, sol)
            if bc is None:
                sol = polish(engine, sol, 0.0, 1.0)
        if sol is not None and bc is not None and sol.carbon_g > bc * (1 + 1e-12):
            info["bound_missed"] = f"the least-carbon plan emits {sol.carbon_g:.6g} g > --max-gco2e {bc:g}"
            return None, info
    else:
        lat_best = engine.solve(1.0, 0.0, "carbon")
        car_best = engine.solve(0.0, 1.0, "latency")
        if lat_best is None or car_best is None:
            return None, info
        T, C = lat_best.latency_s, max(car_best.carbon_g, 1e-300)
        wl, wc = (1 - obj.weight) / T, obj.weight / C
        info["normalisers"] = {"latency_ms": T * 1e3, "gco2e": C}
        if bc is not None:
            sol = engine.solve(wl, wc, "carbon", bc)
        else:
            sol = engine.solve(wl, wc, "latency", bl)
            if bl is None:
                sol = polish(engine, sol, wl, wc)
    if sol is None and engine.gave_up:  # no plan found within the budget: none is proven either
        info["budget_hit"] = ("the search stopped at its label budget before it found a plan that meets the bounds; "
                              "one may exist: loosen the bound, or give fewer peers")
        return None, info
    if sol is None and "bound_missed" not in info:
        if obj.max_latency_ms is not None or obj.max_gco2e is not None:
            free = Objective("latency" if bl is not None else "carbon", carbon_scope=obj.carbon_scope)
            ref = engine.solve(*((1.0, 0.0, "carbon") if free.kind == "latency" else (0.0, 1.0, "latency")))
            if ref is not None:
                if bl is not None:
                    info["bound_missed"] = (f"no plan meets --max-latency-ms {obj.max_latency_ms:g}: the fastest plan "
                                            f"takes {ref.latency_s * 1e3:.2f} ms")
                else:
                    info["bound_missed"] = (f"no plan meets --max-gco2e {bc:g}: the least-carbon plan emits "
                                            f"{ref.carbon_g:.6g} g per token")
    return sol, info


def proof_gap(sol: Solution) -> float:
    """Relative distance of the plan's objective above the best proven lower bound (0 when optimal)."""
    if sol.proven:
        return 0.0
    lb = sol.stats.get("lower_bound", 0.0)
    return max(0.0, (sol.value - lb) / sol.value) if sol.value > 0 else 0.0


def proof_text(proven: bool, gap: float) -> str:
    return "optimal" if proven else f"best found, within {gap * 100:.2f}% of the proven bound"


def objective_value(obj: Objective, latency_ms: float, carbon_g: float, normalisers: dict | None) -> float:
    if obj.kind == "latency":
        return latency_ms
    if obj.kind == "carbon":
        return carbon_g
    return (1 - obj.weight) * latency_ms / normalisers["latency_ms"] + obj.weight * carbon_g / normalisers["gco2e"]


def to_plan(engine: Engine, sol: Solution, name: str = STRATEGY, notes: dict | None = None) -> Plan:
    swarm = engine.inst.swarm
    stages, start = [], 0
    for p, n, role in sol.stages:
        stages.append(Stage(swarm.peers[p].id, start, start + n, embedding=role in ("first", "only"),
                            head=role in ("last", "only")))
        start += n
    return Plan(name, engine.inst.spec.name, stages, notes or {})


def plan_optimal(spec: ModelSpec, swarm: Swarm, obj: Objective, options: CostOptions | None = None,
                 engine: Engine | None = None) -> Plan:
    t0 = time.perf_counter()
    try:
        engine = engine or Engine(spec, swarm, options, obj.carbon_scope)
        sol, info = solve_objective(engine, obj)
    except MemoryError:
        raise PlanError(f"planning {len(swarm)} peers ran out of memory: plan on a machine with more memory, "
                        f"or give fewer peers") from None
    info["solve_seconds"] = time.perf_counter() - t0
    if sol is None:
        if "budget_hit" in info:
            return Plan(STRATEGY, spec.name, [], info, [f"prismn found no plan within its search budget: {info['budget_hit']}"])
        why = info.get("bound_missed") or engine.why_infeasible()
        return Plan(STRATEGY, spec.name, [], info, [f"prismn found no plan that fits: {why}"])
    lat_ms = sol.latency_s * 1e3
    value = objective_value(obj, lat_ms, sol.carbon_g, info.get("normalisers"))
    gap = proof_gap(sol)
    info.update({
        "optimal": sol.proven,
        "proof": proof_text(sol.proven, gap),
        "gap": gap,
        "predicted": {"latency_ms_per_token": lat_ms, obj.carbon_metric: sol.carbon_g},
        "objective_value": value,
        "search": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sol.stats.items()},
    })
    return to_plan(engine, sol, notes=info)
