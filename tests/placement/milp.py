"""An independent exact model of Prismn's placement problem as a MILP (HiGHS through SciPy).

Used only by the tests to check the product's own solver. Same problem: a loop client -> p1 -> ...
-> pk -> client over distinct peers (arcs y, MTZ subtour elimination), one role per used peer
(first / middle / last / only), n_p >= 1 layers within that role's cap, sum n_p = L. Latency and
carbon are linear in (n, roles, arcs) with the coefficients taken from the evaluator's cost model.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from prismn.placement.instance import Instance
from prismn.placement.plan import Plan, Stage

ROLES = ("first", "middle", "last", "only")


def solve_milp(inst: Instance, objective: tuple[float, float], bound: tuple[str, float] | None = None,
               time_limit: float = 120.0, wall_max: float | None = None) -> Plan | None:
    """min wl*latency + wc*carbon [s.t. metric <= bound]; latency in seconds, carbon in the instance scope.
    wall_max (reserved scope): only plans whose wall time is at most this, which also tightens the big-M
    of the product A x W (the caller derives it: e.g. no plan above it can beat a known one)."""
    P, L = inst.n, inst.L
    idx = np.arange(P)
    H = inst.hop_time_matrix(idx)  # client = index P
    nodes = P + 1
    arcs = [(a, b) for a in range(nodes) for b in range(nodes) if a != b]
    nv = 0

    def alloc(k):
        nonlocal nv
        r = np.arange(nv, nv + k)
        nv += k
        return r

    y = alloc(len(arcs))
    x = alloc(P)
    role = {r: alloc(P) for r in ROLES}
    n = alloc(P)
    u = alloc(P)
    lo, hi = np.zeros(nv), np.ones(nv)
    integrality = np.ones(nv)
    hi[n] = L
    hi[u] = P
    integrality[u] = 0
    caps = {"first": inst.caps["first"], "middle": inst.caps["middle"], "last": inst.caps["last"],
            "only": inst.caps["only"]}
    for r in ROLES:
        bad = caps[r] < (L if r == "only" else 1)
        hi[role[r][bad]] = 0
    rows, lb, ub = [], [], []

    def add(coefs: dict[int, float], lo_: float, hi_: float):
        row = np.zeros(nv)
        for k, v in coefs.items():
            row[k] += v
        rows.append(row)
        lb.append(lo_)
        ub.append(hi_)

    arc_id = {a: y[i] for i, a in enumerate(arcs)}
    c = P
    add({arc_id[(c, b)]: 1 for b in range(P)}, 1, 1)
    add({arc_id[(a, c)]: 1 for a in range(P)}, 1, 1)
    for p in range(P):
        add({**{arc_id[(p, b)]: 1 for b in range(nodes) if b != p}, x[p]: -1}, 0, 0)
        add({**{arc_id[(a, p)]: 1 for a in range(nodes) if a != p}, x[p]: -1}, 0, 0)
        add({arc_id[(c, p)]: 1, role["first"][p]: -1, role["only"][p]: -1}, 0, 0)
        add({arc_id[(p, c)]: 1, role["last"][p]: -1, role["only"][p]: -1}, 0, 0)
        add({role[r][p]: 1 for r in ROLES} | {x[p]: -1}, 0, 0)
        add({n[p]: 1, x[p]: -1}, 0, np.inf)  # n >= x
        cap = {role[r][p]: -float(max(caps[r][p], 0)) for r in ROLES}
        add({n[p]: 1, **cap}, -np.inf, 0)  # n <= cap of its role (0 when unused)
    add({n[p]: 1 for p in range(P)}, L, L)
    for a in range(P):
        for b in range(P):
            if a != b:  # u_b >= u_a + 1 - P (1 - y_ab)
                add({u[b]: 1, u[a]: -1, arc_id[(a, b)]: -P}, 1 - P, np.inf)

    def metric(name: str) -> np.ndarray:
        v = np.zeros(nv)
        met = inst.latency if name == "latency" else inst.carbon
        v[n] = met.per_layer
        for r in ROLES:
            v[role[r]] += met.fixed[r]
        if name == "latency":
            for (a, b), k in arc_id.items():
                v[k] = H[a, b]
        return v

    lat, car = metric("latency"), metric("carbon")
    if inst.carbon_scope == "reserved":
        # f = A x W + B with A = sum alpha_p x_p: z_p = x_p x W is linear for binary x_p (big-M, exact)
        HW = inst.hop_time_matrix(idx, inst.batch)
        wall = np.zeros(nv)
        wall[n] = inst.wall.per_layer
        for r in ROLES:
            wall[role[r]] += inst.wall.fixed[r]
        for (a, b), k in arc_id.items():
            wall[k] = HW[a, b]
        finite = HW[np.isfinite(HW)]
        big_m = float(L * inst.wall.per_layer.max() + sum(inst.wall.fixed[r].max() for r in ROLES) * P
                      + finite.max() * (P + 1))
        if wall_max is not None:
            big_m = min(big_m, wall_max)
        z0 = nv
        nv += P
        lo, hi, integrality = np.append(lo, np.zeros(P)), np.append(hi, np.full(P, big_m)), np.append(integrality, np.zeros(P))
        rows[:] = [np.append(r_, np.zeros(P)) for r_ in rows]
        wall, lat = np.append(wall, np.zeros(P)), np.append(lat, np.zeros(P))
        car = np.zeros(nv)
        car[n] = inst.reserved.per_layer
        for r in ROLES:
            car[role[r]] += inst.reserved.fixed[r]
        for p in range(P):
            car[z0 + p] = inst.alpha[p]
            row = -wall.copy()  # z_p >= W - M (1 - x_p)
            row[z0 + p] += 1.0
            row[x[p]] -= big_m
            rows.append(row)
            lb.append(-big_m)
            ub.append(np.inf)
        if wall_max is not None:
            rows.append(wall.copy())
            lb.append(-np.inf)
            ub.append(wall_max)
    obj = objective[0] * lat + objective[1] * car
    # HiGHS stops at an absolute gap of 1e-6: scale the objective so that this is negligible
    typical = float(np.median(np.abs(obj[n]))) * L or 1.0
    obj = obj * (1e6 / typical)
    cons = [LinearConstraint(np.array(rows), lb, ub)]
    if bound is not None:
        row = lat if bound[0] == "latency" else car
        scale = 1.0 / bound[1]  # keep the row well conditioned: metric / bound <= 1
        cons.append(LinearConstraint(row[None, :] * scale, -np.inf, 1.0))
    res = milp(obj, constraints=cons, integrality=integrality, bounds=Bounds(lo, hi),
               options={"mip_rel_gap": 1e-10, "time_limit": time_limit})
    if res.x is None or res.status not in (0,):
        if res.status == 1:
            raise TimeoutError("MILP hit its time limit")
        return None
    sol = np.round(res.x).astype(int)
    nxt = {a: b for (a, b), k in arc_id.items() if sol[k] == 1}
    order, cur = [], nxt[c]
    while cur != c:
        order.append(cur)
        cur = nxt[cur]
    stages, start = [], 0
    for k, p in enumerate(order):
        stages.append(Stage(inst.swarm.peers[p].id, start, start + int(sol[n[p]]), embedding=k == 0,
                            head=k == len(order) - 1))
        start += int(sol[n[p]])
    return Plan("milp", inst.spec.name, stages)
