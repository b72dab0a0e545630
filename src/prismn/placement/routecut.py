"""Branch and cut for deep plans: a scalar additive objective over elementary routes, as a MILP.

DSSR (search.dssr) proves plans of a few stages; on deep plans (dozens of stages of a few layers each)
its relaxation reuses the fastest peers in short cycles and cannot be made elementary. The problem is
then what it looks like: a prize-collecting travelling-salesman path from the client through some peers
and back, with a knapsack on the layers. This module solves it as such with HiGHS (`highspy`):

- variables: y_ab for every finite hop (the client is node m), a role per peer (first / middle / last /
  only, at most one), n_p layers (n_p >= 1 on a used peer, at most its role's cap, sum L);
- each used peer has one hop in and one out, the client one of each; a first stage is entered from the
  client, a last stage leaves to it; no 2-cycles;
- MTZ rows on the layer count (u_b >= u_a + n_b - L (1 - y_ab)) make every integer solution a single
  route, so one MILP solve is exact; they are weak in the LP, so
- **connectivity cuts** carry the bound: for a set S of peers without the client and k in S, the hops
  leaving S sum to at least k's use. They are separated on the LP by a max-flow from each used peer to
  the client (scipy), the most used peer of each violated set named, and the LP re-solved (warm) until
  none is violated. On the deep benchmark cases the LP bound ends within 0.1-3.3% of the optimum and the
  MILP then closes in 1 to a few thousand nodes.

The same model proves the reserved carbon f = A x W + B (reserved.py) on one wall-time interval
[ta, tb] of intervals.py (`Reserve`): a column W (the wall time, a linear row over the same hops, roles
and layers, W <= tb) and one column z_p per peer with z_p >= W - tb (1 - x_p) and z_p >= f_p x_p
(f_p = max(ta, the peer's wall-time floor)) make sum_p alpha_p z_p = A x max(W, f_p) at every integer
point (McCormick: z_p = x_p W when x_p is 0 or 1), which is f on every plan of the interval and at least
f elsewhere; so the MILP's optimum bounds f over the interval exactly and its plan attains it. The
interval's class bound (intervals.class_costs: A W >= sum_p [(alpha_p - a) f_p + a ta] x_p + k_lo a
(W - ta)) is added as one row: it is what carries the bound while x is fractional.

Budgets are deterministic (cut rounds, MILP nodes; HiGHS is deterministic for the same input): the same
swarm gets the same answer and proof on any machine. Every plan returned is priced again by the caller's
exact cost (path_cost), so HiGHS's tolerances touch only the proof: a plan is called optimal when HiGHS
proves it to a relative gap of 1e-9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from prismn.placement.instance import ROLES
from prismn.placement.search import INF, Costs, path_cost

ROUTE_CUT_PEERS = 200  # branch and cut on at most this many candidates: its MILP has one column per hop
CUT_ROUNDS = 400  # LP re-solves with new connectivity cuts (deterministic)
MILP_NODES = 20_000  # branch-and-bound nodes of the final MILP (deterministic)
MIP_GAP = 1e-9  # relative gap at which HiGHS calls the MILP solved
VIOLATION = 1e-4  # a cut is added when the flow out of S is below k's use by more than this


@dataclass
class Reserve:
    """The reserved carbon's product term on one wall-time interval (see the module's docstring): minimise
    sum_p alpha_p x_p max(W, f_p) + c(plan) over plans of at least k_lo stages with W <= tb."""
    alpha: np.ndarray  # per peer: the reserved carbon of holding it for one second of wall time
    wall: Costs  # the wall time W of a plan, additive
    f: np.ndarray  # per peer: max(ta, its wall-time floor) <= W of every plan of the interval through it
    ta: float
    tb: float
    k_lo: int  # every plan the interval must bound has at least this many stages


@dataclass
class RouteCut:
    path: list[tuple[int, int, str]] | None  # (candidate, layers, role) in route order; None: no plan found
    value: float  # path_cost of path (INF without one)
    bound: float  # a lower bound on every elementary plan (INF: none exists)
    proven: bool  # path is optimal (to the MILP's 1e-9 relative gap)
    stats: dict = field(default_factory=dict)


class _Model:
    """The MILP of one Costs instance, its rows added to HiGHS as they are made."""

    def __init__(self, c: Costs, caps: dict[str, np.ndarray], L: int, scale: float, reserve: Reserve | None = None):
        import highspy  # imported on use: only deep plans need it

        self.hs = highspy
        m = len(c.R)
        self.m, self.L = m, L
        W = c.W
        self.arcs = [(a, b) for a in range(m + 1) for b in range(m + 1) if a != b and math.isfinite(W[a, b])]
        self.arc_id = {a: k for k, a in enumerate(self.arcs)}
        na = len(self.arcs)
        self.R0, self.N0, self.U0 = na, na + 4 * m, na + 5 * m
        self.Z0 = self.U0 + m  # with a Reserve: z_p (m columns), then W
        self.reserve = reserve
        nv = self.Z0 + (m + 1 if reserve is not None else 0)
        self.nv = nv
        lo, hi, cost = np.zeros(nv), np.ones(nv), np.zeros(nv)
        for k, (a, b) in enumerate(self.arcs):
            cost[k] = W[a, b]
        for ri, r in enumerate(ROLES):
            cols = self.R0 + ri * m + np.arange(m)
            bad = (caps[r] < (L if r == "only" else 1)) | ~np.isfinite(c.F[r])
            if reserve is not None:
                bad |= ~np.isfinite(reserve.wall.F[r])
            hi[cols[bad]] = 0.0
            cost[cols] = np.where(bad, 0.0, c.F[r])
        hi[self.N0:self.Z0] = L  # n and u
        cost[self.N0:self.U0] = c.R
        if reserve is not None:
            hi[self.Z0:] = reserve.tb  # z_p <= W <= tb at the optimum
            cost[self.Z0:self.Z0 + m] = reserve.alpha
        # The core class: highspy.Highs's constructor prints HiGHS's banner to stdout before any option can
        # be set, which would corrupt `prismn plan --json`
        h = highspy._core._Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("mip_rel_gap", MIP_GAP)
        h.setOptionValue("mip_max_nodes", MILP_NODES)
        h.addVars(nv, lo, hi)
        self.cost = cost * scale
        h.changeColsCost(nv, np.arange(nv, dtype=np.int32), self.cost)
        self.h, self.scale = h, scale
        self._rows(caps)
        if reserve is not None:
            self._reserve_rows(reserve)

    def used(self, p: int, sign: float = 1.0) -> list[tuple[int, float]]:
        """x_p, the peer's use: the sum of its role variables."""
        return [(self.R0 + ri * self.m + p, sign) for ri in range(len(ROLES))]

    def add(self, coefs: list[tuple[int, float]], lo: float, hi: float) -> None:
        idx = np.array([k for k, _ in coefs], dtype=np.int32)
        val = np.array([v for _, v in coefs], dtype=np.float64)
        self.h.addRow(lo, hi, len(idx), idx, val)

    def _rows(self, caps) -> None:
        m, L, inf = self.m, self.L, self.hs.kHighsInf
        out_of: list[list[int]] = [[] for _ in range(m + 1)]
        in_of: list[list[int]] = [[] for _ in range(m + 1)]
        for k, (a, b) in enumerate(self.arcs):
            out_of[a].append(k)
            in_of[b].append(k)
        self.add([(k, 1.0) for k in out_of[m]], 1, 1)
        self.add([(k, 1.0) for k in in_of[m]], 1, 1)
        first, last, only = (self.R0 + ROLES.index(r) * m for r in ("first", "last", "only"))
        for p in range(m):
            self.add([(k, 1.0) for k in out_of[p]] + self.used(p, -1), 0, 0)
            self.add([(k, 1.0) for k in in_of[p]] + self.used(p, -1), 0, 0)
            self.add(self.used(p), 0, 1)
            into, out = self.arc_id.get((m, p)), self.arc_id.get((p, m))
            self.add(([(into, 1.0)] if into is not None else []) + [(first + p, -1), (only + p, -1)], 0, 0)
            self.add(([(out, 1.0)] if out is not None else []) + [(last + p, -1), (only + p, -1)], 0, 0)
            self.add([(self.N0 + p, 1.0)] + self.used(p, -1), 0, inf)  # n >= 1 when used
            self.add([(self.N0 + p, 1.0)] + [(self.R0 + ri * m + p, -float(max(caps[r][p], 0)))
                                              for ri, r in enumerate(ROLES)], -inf, 0)  # n <= its role's cap
            self.add([(self.U0 + p, 1.0), (self.N0 + p, -1.0)], 0, inf)  # u_p >= n_p
        self.add([(self.N0 + p, 1.0) for p in range(m)], L, L)
        for (a, b), k in self.arc_id.items():
            if a < b < m and (b, a) in self.arc_id:  # no 2-cycles
                pair = [(k, 1.0), (self.arc_id[(b, a)], 1.0)]
                self.add(pair + self.used(a, -1), -inf, 0)
                self.add(pair + self.used(b, -1), -inf, 0)
            if a < m and b < m:  # MTZ on layers: u_b >= u_a + n_b - L (1 - y_ab)
                self.add([(self.U0 + b, 1.0), (self.U0 + a, -1.0), (self.N0 + b, -1.0), (k, -float(L))], -L, inf)

    def _reserve_rows(self, rv: Reserve) -> None:
        """W as a row; z_p >= x_p max(W, f_p) (McCormick); the class bound; at least k_lo stages."""
        m, inf = self.m, self.hs.kHighsInf
        Wc = self.Z0 + m
        S = rv.wall
        row = [(Wc, 1.0)] + [(k, -float(S.W[a, b])) for k, (a, b) in enumerate(self.arcs)]
        for ri, r in enumerate(ROLES):
            row += [(self.R0 + ri * m + p, -float(S.F[r][p])) for p in range(m) if np.isfinite(S.F[r][p])]
        row += [(self.N0 + p, -float(S.R[p])) for p in range(m)]
        self.add(row, 0, 0)
        for p in range(m):
            self.add([(self.Z0 + p, 1.0), (Wc, -1.0)] + self.used(p, -rv.tb), -rv.tb, inf)
            self.add([(self.Z0 + p, 1.0)] + self.used(p, -float(rv.f[p])), 0, inf)
        a = float(rv.alpha.min())
        lift = rv.k_lo * a
        cls = [(self.Z0 + p, float(rv.alpha[p])) for p in range(m)] + [(Wc, -lift)]
        for p in range(m):
            cls += self.used(p, -float((rv.alpha[p] - a) * rv.f[p] + a * rv.ta))
        self.add(cls, -lift * rv.ta, inf)
        self.add([k for p in range(m) for k in self.used(p)], rv.k_lo, inf)

    def cutoff(self, value: float) -> None:
        """Only plans whose objective is below value: a MILP with nothing below it is infeasible."""
        self.add([(k, float(v)) for k, v in enumerate(self.cost) if v != 0.0], -self.hs.kHighsInf, value * self.scale)

    def integrality(self, integer: bool) -> None:
        t = self.hs.HighsVarType.kInteger if integer else self.hs.HighsVarType.kContinuous
        cont = self.hs.HighsVarType.kContinuous
        types = np.array([t] * self.U0 + [cont] * (self.nv - self.U0))
        self.h.changeColsIntegrality(self.nv, np.arange(self.nv, dtype=np.int32), types)

    def solve(self) -> tuple[str, np.ndarray | None, float]:
        self.h.run()
        status = self.h.getModelStatus()
        if status == self.hs.HighsModelStatus.kInfeasible:
            return "infeasible", None, INF
        sol = self.h.getSolution()
        x = np.array(sol.col_value) if sol.value_valid else None
        return status.name, x, self.h.getInfo().objective_function_value / self.scale

    def cuts(self, x: np.ndarray) -> list[tuple[frozenset, int]]:
        """Violated connectivity cuts of an LP point: (S, k) with the hops out of S below k's use."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import breadth_first_order, maximum_flow

        m = self.m
        use = x[self.R0:self.N0].reshape(len(ROLES), m).sum(axis=0)
        cap = np.zeros((m + 1, m + 1))
        for k, (a, b) in enumerate(self.arcs):
            cap[a, b] = x[k]
        G = csr_matrix(np.round(cap * 1e6).astype(np.int32))  # max-flow wants integers: 1e-6 resolution
        found, seen = [], set()
        for k in np.argsort(-use, kind="stable"):
            if use[k] < 1e-3 or int(k) in seen:
                continue
            flow = maximum_flow(G, int(k), m)
            if flow.flow_value >= (use[k] - VIOLATION) * 1e6:
                continue
            residual = (G - flow.flow).tocsr()
            residual.data[residual.data <= 0] = 0
            residual.eliminate_zeros()
            S = set(breadth_first_order(residual, int(k), return_predecessors=False).tolist())
            S.discard(m)
            found.append((frozenset(S), max(S, key=lambda q: use[q])))
            seen |= S
        return found

    def add_cut(self, S: frozenset, k: int) -> None:
        leave = [self.arc_id[(a, b)] for a in S for b in range(self.m + 1) if b not in S and (a, b) in self.arc_id]
        self.add([(i, 1.0) for i in leave] + self.used(k, -1), 0, self.hs.kHighsInf)

    def start(self, path: list[tuple[int, int, str]]) -> None:
        """Offer a known plan to the MILP as its first incumbent."""
        m = self.m
        x = np.zeros(self.nv)
        src, u = m, 0
        for q, n, role in path:
            x[self.arc_id[(src, q)]] = 1
            x[self.R0 + ROLES.index(role) * m + q] = 1
            x[self.N0 + q] = n
            u += n
            x[self.U0 + q] = u
            src = q
        x[self.arc_id[(src, m)]] = 1
        rv = self.reserve
        if rv is not None:
            W = path_cost(rv.wall, path)
            x[self.Z0 + m] = W
            for q, _, _ in path:
                x[self.Z0 + q] = max(W, rv.f[q])
        sol = self.hs.HighsSolution()
        sol.col_value = list(x)
        self.h.setSolution(sol)

    def route(self, x: np.ndarray) -> list[tuple[int, int, str]]:
        m = self.m
        nxt = {a: b for k, (a, b) in enumerate(self.arcs) if x[k] > 0.5}
        role = x[self.R0:self.N0].reshape(len(ROLES), m).argmax(axis=0)
        path, cur = [], nxt[m]
        while cur != m:
            path.append((cur, int(round(x[self.N0 + cur])), ROLES[role[cur]]))
            cur = nxt[cur]
        return path


def route_cut(c: Costs, caps: dict[str, np.ndarray], L: int, incumbent: list[tuple[int, int, str]] | None,
              cut_rounds: int = CUT_ROUNDS, milp_nodes: int = MILP_NODES, reserve: Reserve | None = None,
              price=None, cutoff: float = INF) -> RouteCut:
    """The least additive cost c over elementary plans (see the module's docstring), or the best plan and
    bound found within the budgets. With `reserve`, the reserved carbon over one wall-time interval, each
    plan's value given by `price` (f), the incumbent one that meets the interval. With a finite `cutoff`
    the bound is settled as soon as it reaches the cutoff (bound >= cutoff: nothing below it)."""
    price = price or (lambda path: path_cost(c, path))
    ub = price(incumbent) if incumbent is not None else INF
    target = min(ub, cutoff)
    scale = 1e6 / target if math.isfinite(target) and target > 0 else 1e6
    model = _Model(c, caps, L, scale, reserve)
    model.integrality(False)
    stats = {"method": "branch and cut", "cut_rounds": 0, "cuts": 0}
    bound = -INF
    if incumbent is None and math.isfinite(cutoff):
        model.cutoff(cutoff)  # infeasible from here on means: nothing below the cutoff (no plan at all: INF)
    for _ in range(cut_rounds):
        status, x, value = model.solve()
        if x is None or status != "kOptimal":
            if status == "infeasible":
                return RouteCut(incumbent, ub, cutoff, False, stats)
            break
        bound = max(bound, value)
        stats["cut_rounds"] += 1
        if bound >= target * (1 - MIP_GAP):  # the incumbent (or cutoff) meets the bound
            proven = incumbent is not None and bound >= ub * (1 - MIP_GAP)
            return RouteCut(incumbent, ub, ub if proven else bound, proven, stats | {"lp_bound": bound})
        found = model.cuts(x)
        if not found:
            break
        for S, k in found:
            model.add_cut(S, k)
        stats["cuts"] += len(found)
    stats["lp_bound"] = bound
    model.integrality(True)
    model.h.setOptionValue("mip_max_nodes", int(milp_nodes))
    if incumbent is not None:
        model.start(incumbent)
    status, x, _ = model.solve()
    if status == "infeasible":
        return RouteCut(incumbent, ub, cutoff, False, stats)
    info = model.h.getInfo()
    stats["milp_nodes"] = int(info.mip_node_count)
    dual = info.mip_dual_bound / scale
    if math.isfinite(dual):
        bound = max(bound, dual)
    path, value = incumbent, ub
    feasible = int(model.hs.SolutionStatus.kSolutionStatusFeasible)
    if x is not None and info.primal_solution_status == feasible:  # an integer point: a single route
        found = model.route(x)
        cost = price(found)
        if cost < value:
            path, value = found, cost
    proven = status == "kOptimal" and path is not None
    if proven:  # the MILP's optimum: its dual bound meets the plan's value (to HiGHS's tolerance)
        bound = max(bound, value)
    if reserve is None:  # the plan's value is its own problem's cost: no bound exceeds it
        bound = min(bound, value)
    # with a Reserve the bound is over the interval's plans and may exceed the plan's f (its W below ta)
    return RouteCut(path, value, bound, proven, stats)
