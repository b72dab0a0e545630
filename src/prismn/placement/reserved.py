"""Exact least reserved carbon: every peer of a plan is held for the whole decode step.

Per token at the deployment's load b (evaluator.at_load_metrics), a plan's carbon is

    f = A(set) x W(plan) + B(plan)
    A = sum_i (P_idle_i x I_i / 3.6e6 + embodied_i) / b     per used peer, whatever its layers
    W = wall time of one step at batch b: sum of stage step times + every hop carrying b activations
    B = sum_i (P_active_i - P_idle_i) x t_i(b) x I_i / 3.6e6 / b + network carbon (per-role terms)

a product of two sums, which no additive shortest-path or knapsack formulation minimises. It is solved
exactly by a best-first (A*) search over elementary partial plans (layers placed j, last peer p, used
set, partial A, W, B and batch-1 latency), with

  * an admissible bound: with Ŵ = max(W + h_W(j, p), Ω0) a lower bound on the finished plan's wall
    time (h_W the relaxed cost-to-go of the wall time, Ω0 the fastest plan's latency, which no plan's
    wall time at any load undercuts), f_final >= A_final x Ŵ + B_final >= A x Ŵ + B + G_Ŵ(j), where
    G_ω(j) = the least ω x ΔA + ΔB of any way to place the remaining layers (peers may repeat: a
    relaxation). G_ω is concave in ω (a minimum of lines), so interpolating it between grid points
    stays a lower bound;
  * dominance: at the same (j, p), a label no worse in A, W, B and latency that used a subset of the
    peers makes the other one useless (f grows with each of them);
  * an incumbent from the fastest plan and from order-free knapsacks of ω x A + B (ordered for wall
    time), and a filter dropping every peer whose own lower bound exceeds it.

The first label popped whose bound reaches the incumbent proves it optimal. The budget is in labels
(deterministic); past it the plan says how far it may be from the proven bound.

Per-peer wall-time floors (the relaxed fastest plan through each peer) strengthen the bound: a
completion peer is reserved for max(omega, its floor) (second tables, read at the grid point below: not
concave), and a label's wall time is at least the largest floor of its peers. The unbounded least-carbon
problem goes first to the branch and bound over the wall time (intervals.py); this search continues
from its best plan when that one stops at its budget.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from prismn.placement.instance import ROLES
from prismn.placement.knapsack import solve_order_free
from prismn.placement.search import INF, Costs, cheapest_fill, relaxed_bounds, stage_and_fill, through_bounds

FASTEST_POPS, FASTEST_CELLS = 3_000, 2e8  # budget of the fastest-plan solve that gives the wall-time floor
MAX_CANDIDATES = 1_200  # peers the A* search takes (best lower bounds first); beyond: not proven
MAX_INTERVAL_CANDIDATES = 5_000  # peers the wall-time intervals take: their m x m work is compiled loops (at
#                                  100,000 peers with measured RTTs, 4,588 peers' lower bounds are below the optimum)
TIE_POPS = 500  # labels of the incumbent "least carbon among the fastest plans"
RESERVED_LABELS = 60_000  # labels one search may create (deterministic; bounds memory and dominance checks)
RESERVED_POPS = 2_000  # labels one search may expand (deterministic budget; ~10 ms each at 800 candidates)
OMEGA_GRID = 12  # wall-time grid points (Ω0 .. 8 Ω0, geometric) of the order-free cost-to-go tables
UB_OMEGAS = (1.0, 1.25, 1.6, 2.0, 3.0)  # knapsack incumbents at ω = Ω0 x these
FEW_PEERS = 48  # peers (best lower bounds first) whose plans of at most three stages are all priced (O(m^3))
UB_PEERS = 120  # most peers (best lower bounds first) the incumbent knapsacks look at


def _togo_orderfree(R: np.ndarray, Fm: np.ndarray, Fl: np.ndarray, capM: np.ndarray, capL: np.ndarray,
                    L: int) -> np.ndarray:
    """G[j]: least cost of placing layers j..L-1 as middle stages then one last stage (peers may repeat)."""
    G = np.full(L + 1, INF)
    for j in range(L - 1, 0, -1):
        n_last = L - j
        v = np.where(capL >= n_last, n_last * R + Fl, INF).min(initial=INF)
        nmax = L - 1 - j
        if nmax >= 1:
            ns = np.arange(1, nmax + 1)[:, None]
            cand = np.where(ns <= capM[None, :], Fm[None, :] + ns * R[None, :], INF) + G[j + 1:j + 1 + nmax, None]
            v = min(v, float(cand.min(initial=INF)))
        G[j] = v
    return G


class ReservedSearch:
    """min wl x latency + wc x f over elementary plans on candidates `idx`, with optional latency <= bl
    and f <= bf (f the reserved carbon per token)."""

    def __init__(self, inst, idx: np.ndarray, wl: float, wc: float, omega0: float,
                 bl: float | None = None, bf: float | None = None, wfloor: np.ndarray | None = None):
        self.inst, self.idx, self.L = inst, idx, inst.L
        self.wl, self.wc = wl, wc
        self.bl = INF if bl is None else bl * (1 + 1e-12)
        self.bf = INF if bf is None else bf * (1 + 1e-12)
        m = self.m = len(idx)
        self.caps = {r: inst.caps[r][idx] for r in ROLES}
        self.HL = inst.hop_time_matrix(idx)
        self.HW = self.HL if inst.batch == 1 else inst.hop_time_matrix(idx, inst.batch)
        self.Rl, self.Fl = inst.latency.per_layer[idx], {r: inst.latency.fixed[r][idx] for r in ROLES}
        self.Rw, self.Fw = inst.wall.per_layer[idx], {r: inst.wall.fixed[r][idx] for r in ROLES}
        self.Rb, self.Fb = inst.reserved.per_layer[idx], {r: inst.reserved.fixed[r][idx] for r in ROLES}
        self.alpha = inst.alpha[idx]
        self.omega0 = omega0
        # wfloor[q] <= the wall time of every plan that uses q (so a plan's W >= each of its peers' floors)
        self.wfloor = np.full(m, omega0) if wfloor is None else np.maximum(wfloor, omega0)
        bw = relaxed_bounds(Costs(self.Rw, self.Fw, self.HW), self.caps, self.L)
        self.hW = bw.dp
        if m:  # the relaxed fastest plan through q (a lower bound on the wall time of every plan using q)
            thr = through_bounds(Costs(self.Rw, self.Fw, self.HW), self.caps, self.L, bw)
            self.wfloor = np.maximum(self.wfloor, np.where(np.isfinite(thr), thr, INF))
        self.hL = bw.dp if inst.batch == 1 else relaxed_bounds(Costs(self.Rl, self.Fl, self.HL), self.caps, self.L).dp
        self.omegas = omega0 * np.geomspace(1.0, 8.0, OMEGA_GRID) if omega0 > 0 else np.zeros(1)
        capM, capL = self.caps["middle"], self.caps["last"]
        # G: every peer reserved for omega (concave in omega: interpolated); Gf: for max(omega, its floor)
        # (not concave: looked up at the grid point below)
        self.G = np.stack([_togo_orderfree(self.Rb, om * self.alpha + self.Fb["middle"],
                                           om * self.alpha + self.Fb["last"], capM, capL, self.L)
                           for om in self.omegas]) if m else np.zeros((1, self.L + 1))
        self.floors = bool(m) and bool((self.wfloor > omega0).any())
        self.Gf = np.stack([_togo_orderfree(self.Rb, self._res(om) + self.Fb["middle"],
                                            self._res(om) + self.Fb["last"], capM, capL, self.L)
                            for om in self.omegas]) if self.floors else self.G
        self.ns = np.arange(1, self.L + 1)
        self.a_grid = None
        self.gave_up = False  # run() stopped at its budget before it found any plan

    def _res(self, om: float) -> np.ndarray:
        """Each candidate's reservation when the plan's wall time is at least om: alpha x max(om, floor)."""
        return self.alpha * np.maximum(om, self.wfloor)

    def weighted_tables(self, a_hi: float) -> None:
        """T[a, ω, j] <= min over completions of a x ΔW + ω x ΔA + ΔB (see `_G2`): a fractional fill of
        the remaining layers where each peer's per-stage terms (its reservation ω x alpha, its fixed
        step time, its least incoming hop and B) are amortised over its capacity, plus the least last-
        stage extra and the least hop back to the client. O(grid x m log m)."""
        m, L = self.m, self.L
        if not m or not a_hi > 0:
            return
        capM = np.maximum(self.caps["middle"], 1).astype(float)
        H = self.HW[:m, :m]
        hin = np.min(np.where(np.isfinite(H), H, INF), axis=0) if m > 1 else np.full(m, INF)
        hin = np.where(np.isfinite(hin), hin, 0.0)
        to_client = float(self.HW[:m, m].min())
        okL = self.caps["last"] >= 1
        a_min = float(self.alpha.min())
        self.a_grid = np.concatenate([[0.0], np.geomspace(min(a_min, a_hi), a_hi, 5)])
        T = np.full((len(self.a_grid), len(self.omegas), L + 1), INF)
        Tf = np.full((len(self.a_grid), len(self.omegas), L + 1), INF) if self.floors else T
        for ia, a in enumerate(self.a_grid):
            extra = a * (self.Fw["last"] - self.Fw["middle"]) + self.Fb["last"] - self.Fb["middle"]
            last_extra = float(extra[okL].min()) if okL.any() else INF
            for iw, om in enumerate(self.omegas):
                for tab, res in ((T, om * self.alpha), (Tf, self._res(om))):
                    rate = a * self.Rw + self.Rb + (res + a * (self.Fw["middle"] + hin) + self.Fb["middle"]) / capM
                    fill = cheapest_fill(rate, self.caps["middle"], L)
                    js = np.arange(L + 1)
                    tab[ia, iw] = fill[L - js] + a * to_client + last_extra
                    if not self.floors:
                        break
        T[:, :, L] = INF
        Tf[:, :, L] = INF
        self.T, self.Tf = T, Tf

    def _G2(self, a: np.ndarray, w: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Lower bound from T (bilinear interpolation: concave in (a, omega), a minimum of linear
        functions) and from Tf (the omega grid point at or below, interpolated in a only)."""
        ag, om = self.a_grid, self.omegas
        a = np.clip(a, ag[0], ag[-1])
        w = np.clip(w, om[0], om[-1])
        ka = np.clip(np.searchsorted(ag, a, side="right") - 1, 0, len(ag) - 2)
        s = (a - ag[ka]) / (ag[ka + 1] - ag[ka])
        if len(om) > 1:
            kw = np.clip(np.searchsorted(om, w, side="right") - 1, 0, len(om) - 2)
            t = (w - om[kw]) / (om[kw + 1] - om[kw])
        else:
            kw, t = np.zeros_like(ka), np.zeros_like(a)
        kw1 = np.minimum(kw + 1, len(om) - 1)
        T = self.T
        v = ((1 - s) * (1 - t) * T[ka, kw, j] + s * (1 - t) * T[ka + 1, kw, j]
             + (1 - s) * t * T[ka, kw1, j] + s * t * T[ka + 1, kw1, j])
        if self.floors:
            kf = np.where(w >= om[kw1], kw1, kw)
            vf = (1 - s) * self.Tf[ka, kf, j] + s * self.Tf[ka + 1, kf, j]
            v = np.where(np.isfinite(vf), np.maximum(v, vf), v)
        return np.where(np.isfinite(v), v, -INF)

    def _G(self, what: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Lower bound on the least omega x dA + dB completion, elementwise: G interpolated (concave in
        omega), and Gf (per-peer floors) at the grid point at or below."""
        om = self.omegas
        if len(om) == 1:
            return self.G[0][j]
        w = np.clip(what, om[0], om[-1])
        k = np.clip(np.searchsorted(om, w, side="right") - 1, 0, len(om) - 2)
        t = (w - om[k]) / (om[k + 1] - om[k])
        g0, g1 = self.G[k, j], self.G[k + 1, j]
        g = np.where(np.isfinite(g0) & np.isfinite(g1), g0 + t * (g1 - g0), np.minimum(g0, g1))
        if self.floors:
            kf = np.clip(np.searchsorted(om, what, side="right") - 1, 0, len(om) - 1)
            g = np.maximum(g, self.Gf[kf, j])
        return g

    def cost(self, path: list[tuple[int, int, str]]) -> tuple[float, float, float]:
        """(latency s, wall s, f g) of a path over candidate indices, in route order."""
        m = self.m
        src, lat, W, A, B = m, 0.0, 0.0, 0.0, 0.0
        for q, n, r in path:
            lat += self.HL[src, q] + self.Fl[r][q] + n * self.Rl[q]
            W += self.HW[src, q] + self.Fw[r][q] + n * self.Rw[q]
            A += self.alpha[q]
            B += self.Fb[r][q] + n * self.Rb[q]
            src = q
        lat += self.HL[src, m]
        W += self.HW[src, m]
        return lat, W, A * W + B

    def run(self, incumbent: list[tuple[int, int, str]] | None, max_pops: int = RESERVED_POPS):
        """Returns (path, primary, proven, lower bound, pops) or None when no plan meets the bounds."""
        L, m, caps = self.L, self.m, self.caps
        wl, wc = self.wl, self.wc
        best_val, best_sec, best_path = INF, INF, None
        if incumbent is not None:
            lat, _, f = self.cost(incumbent)
            if lat <= self.bl and f <= self.bf:
                best_val, best_sec, best_path = wl * lat + wc * f, (lat if wc else f), list(incumbent)
        tol = 1e-12
        # label arrays
        J, Pp, V, LA, WA, AA, BA, PAR, N, ROLE = [0], [-1], [0], [0.0], [0.0], [0.0], [0.0], [-1], [0], [""]
        WF = [self.omega0]  # the largest wall-time floor of a label's peers: its plan's W is at least that
        buckets: dict[tuple[int, int], list[int]] = {}
        dead: set[int] = set()
        heap: list[tuple[float, float, int, int]] = [(-INF, 0.0, 0, 0)]
        counter, pops = 1, 0

        def path_of(lab: int) -> list[tuple[int, int, str]]:
            out = []
            while lab > 0:
                out.append((Pp[lab], N[lab], ROLE[lab]))
                lab = PAR[lab]
            return out[::-1]

        while heap:
            lbv, _, _, lab = heapq.heappop(heap)
            if lab in dead:
                continue
            if lbv >= best_val * (1 - tol) - 1e-300 and best_path is not None:
                return best_path, best_val, True, best_val, pops
            pops += 1
            if pops > max_pops or len(J) > RESERVED_LABELS:
                if best_path is None:  # the budget ran out before any plan: not a proof that none exists
                    self.gave_up = True
                    return None
                return best_path, best_val, False, max(lbv, 0.0), pops
            j, p, v = J[lab], Pp[lab], V[lab]
            src = m if p < 0 else p
            used = np.zeros(m, dtype=bool)
            if v:
                raw = np.frombuffer(v.to_bytes((m + 7) // 8, "little"), dtype=np.uint8)
                used = np.unpackbits(raw, bitorder="little")[:m].astype(bool)
            free = ~used
            la, wa, aa, ba = LA[lab], WA[lab], AA[lab], BA[lab]
            # ---- stages that end the plan ---------------------------------------------------------
            n_end = L - j
            role_end = "only" if p < 0 else "last"
            q = np.nonzero(free & (caps[role_end] >= n_end))[0]
            if len(q):
                lat = la + self.HL[src, q] + self.Fl[role_end][q] + n_end * self.Rl[q] + self.HL[q, m]
                W = wa + self.HW[src, q] + self.Fw[role_end][q] + n_end * self.Rw[q] + self.HW[q, m]
                f = (aa + self.alpha[q]) * W + ba + self.Fb[role_end][q] + n_end * self.Rb[q]
                val = (wl * lat if wl else 0.0) + (wc * f if wc else 0.0)
                sec = lat if wc else f
                ok = (lat <= self.bl) & (f <= self.bf)
                if ok.any():
                    k = int(np.argmin(np.where(ok, val + 0 * sec, INF)))
                    cands = np.nonzero(ok & (val <= val[k]))[0]
                    k = int(cands[np.argmin(sec[cands])])
                    if val[k] < best_val * (1 - tol) or (val[k] <= best_val * (1 + tol) and sec[k] < best_sec):
                        best_val, best_sec = float(val[k]), float(sec[k])
                        best_path = path_of(lab) + [(int(q[k]), n_end, role_end)]
            # ---- stages that continue -------------------------------------------------------------
            role = "first" if p < 0 else "middle"
            nmax = L - 1 - j
            if nmax < 1:
                continue
            capr = caps[role]
            q = np.nonzero(free & (capr >= 1))[0]
            if not len(q):
                continue
            ns = self.ns[:nmax][None, :]
            valid = ns <= capr[q][:, None]
            lat = la + (self.HL[src, q] + self.Fl[role][q])[:, None] + ns * self.Rl[q][:, None]
            W = wa + (self.HW[src, q] + self.Fw[role][q])[:, None] + ns * self.Rw[q][:, None]
            A = aa + self.alpha[q][:, None] + 0 * ns
            B = ba + self.Fb[role][q][:, None] + ns * self.Rb[q][:, None]
            jj = j + ns + 0 * q[:, None]
            qq = q[:, None] + 0 * ns
            lat_lb = lat + self.hL[jj, qq]
            w_hat = np.maximum(W + self.hW[jj, qq], np.maximum(WF[lab], self.wfloor[q])[:, None])
            # the completion bounds below are >= 0: children that A x Ŵ + B alone prunes skip them (same result)
            base = A * w_hat + B
            pre = valid & np.isfinite(lat_lb) & (lat_lb <= self.bl) & (base <= self.bf)
            if best_path is not None:
                pre &= ((wl * np.where(pre, lat_lb, 0.0) if wl else 0.0) + (wc * base if wc else 0.0)) < best_val * (1 - tol)
            f_lb = np.full(base.shape, INF)
            pi, pn = np.nonzero(pre)
            if len(pi):
                wh, jp = w_hat[pi, pn], jj[pi, pn]
                fl = base[pi, pn] + self._G(wh, jp)
                if self.a_grid is not None:  # f >= A W + B + min(A ΔW + Ŵ ΔA + ΔB): the completion's time costs A
                    fl = np.maximum(fl, A[pi, pn] * W[pi, pn] + B[pi, pn] + self._G2(A[pi, pn], wh, jp))
                f_lb[pi, pn] = fl
            prim = (wl * lat_lb if wl else 0.0) + (wc * f_lb if wc else 0.0)
            prim = np.where(np.isfinite(lat_lb) & np.isfinite(f_lb), prim, INF)
            keep = valid & np.isfinite(prim) & (lat_lb <= self.bl) & (f_lb <= self.bf)
            if best_path is not None:
                keep &= prim < best_val * (1 - tol)
            qi, ni = np.nonzero(keep)
            for a, b_ in zip(qi.tolist(), ni.tolist(), strict=True):
                qc, nc = int(q[a]), b_ + 1
                jn = j + nc
                g = (float(lat[a, b_]), float(W[a, b_]), float(A[a, b_]), float(B[a, b_]))
                vv = v | (1 << qc)
                key = (jn, qc)
                lst = buckets.get(key)
                if lst is None:
                    lst = buckets[key] = []
                dominated = False
                for o in lst:
                    if o in dead:
                        continue
                    if LA[o] <= g[0] and WA[o] <= g[1] and AA[o] <= g[2] and BA[o] <= g[3] and (V[o] & ~vv) == 0:
                        dominated = True
                        break
                if dominated:
                    continue
                for o in lst:
                    if o not in dead and g[0] <= LA[o] and g[1] <= WA[o] and g[2] <= AA[o] and g[3] <= BA[o] \
                            and (vv & ~V[o]) == 0:
                        dead.add(o)
                J.append(jn)
                Pp.append(qc)
                V.append(vv)
                LA.append(g[0])
                WA.append(g[1])
                AA.append(g[2])
                BA.append(g[3])
                PAR.append(lab)
                N.append(nc)
                ROLE.append(role)
                WF.append(max(WF[lab], float(self.wfloor[qc])))
                child = len(J) - 1
                lst.append(child)
                heapq.heappush(heap, (float(prim[a, b_]), float(lat_lb[a, b_] if wc else f_lb[a, b_]), counter, child))
                counter += 1
        if best_path is None:
            return None
        return best_path, best_val, True, best_val, pops


def peer_lower_bounds(engine, wl: float, wc: float, omega0: float) -> np.ndarray:
    """LB(q) <= wl x latency + wc x f of every plan that uses q (f the reserved carbon)."""
    inst, L, u = engine.inst, engine.L, engine.usable
    lb = np.full(inst.n, INF)
    if not len(u):
        return lb
    lat_lb = engine.peer_lower_bounds(1.0, 0.0)[u]  # no plan through q is faster (valid for W at any load)
    alpha = inst.alpha[u]
    R = wl * inst.latency.per_layer[u] + wc * inst.reserved.per_layer[u]
    F = {r: wl * inst.latency.fixed[r][u] + wc * inst.reserved.fixed[r][u] for r in ROLES}
    capM = inst.caps["middle"][u]
    # the fill of the other layers pays each peer's reservation amortised over its capacity: a stage of
    # n <= cap layers reserves alpha x W >= n x alpha x omega0 / cap (a valid per-layer lower bound)
    # at omega = the wall time every plan through q takes at least (a grid value below it)
    w_q = np.maximum(lat_lb, omega0)
    grid = omega0 * np.geomspace(1.0, 4.0, 8)
    gk = np.clip(np.searchsorted(grid, w_q, side="right") - 1, 0, len(grid) - 1)
    fills = np.full((len(grid), L + 1), INF)
    for k, om in enumerate(grid):
        Ra = R + wc * om * alpha / np.maximum(capM, 1)
        fills[k] = cheapest_fill(Ra, capM, L)
    fe = F["first"][inst.caps["first"][u] >= 1]
    fh = F["last"][inst.caps["last"][u] >= 1]
    fe_min = float(fe.min()) if len(fe) else INF
    fh_min = float(fh.min()) if len(fh) else INF
    d = engine.dist[u]
    best = np.full(len(u), INF)
    for k in np.unique(gk):  # each peer's fill at its own grid point
        at = gk == k
        best[at] = stage_and_fill(R[at], capM[at], fills[k], L)
    multi = best + fe_min + fh_min + wl * (2 * engine.tok_lb + engine.act_lb + 2 * d) + wc * alpha * w_q
    only = np.where(inst.caps["only"][u] >= L, L * R + F["only"] + wl * (2 * engine.tok_lb + 2 * d) + wc * alpha * w_q,
                    INF)
    lb[u] = np.minimum(multi, only)
    if wc:  # latency >= lat_lb and f >= the bound split by wall time: the sum of the two bounds holds too
        lb[u] = np.maximum(lb[u], (wl * lat_lb if wl else 0.0) + wc * split_lower_bounds(engine, u, w_q, omega0))
    return lb


SPLIT_RATIO, SPLIT_TOP = 1.05, 8.0  # wall-time intervals of the split peer bound: omega0 x 1.05^k up to 8 omega0


def split_lower_bounds(engine, u: np.ndarray, floor: np.ndarray, omega0: float) -> np.ndarray:
    """f of every plan that uses peer u[i] is at least the result's [i]: the per-peer bound above, split by
    wall time as the intervals are. A plan with W in [t, t') only uses peers whose floor (the least wall
    time of any plan through them) is below t', and reserves each of them for at least t: so the fill
    of the other layers draws only on peers fast enough for the interval, each at alpha x t spread over
    its capacity. The fast intervals admit few (dirty, fast) peers; the slow ones pay alpha x t on every
    stage. The least over the intervals that q itself fits bounds every plan through q."""
    inst, L = engine.inst, engine.L
    alpha, Rb = inst.alpha[u], inst.reserved.per_layer[u]
    Fb = {r: inst.reserved.fixed[r][u] for r in ROLES}
    caps = {r: inst.caps[r][u] for r in ROLES}
    capM = caps["middle"]
    grid = list(omega0 * SPLIT_RATIO ** np.arange(int(np.ceil(np.log(SPLIT_TOP) / np.log(SPLIT_RATIO))) + 1))
    only = np.where(caps["only"] >= L, L * Rb + Fb["only"], INF)  # q alone, whatever the interval
    out = np.full(len(u), INF)
    for k, t in enumerate(grid):
        t_next = grid[k + 1] if k + 1 < len(grid) else INF
        ok = floor < t_next * (1 + 1e-12)  # peers a plan with W < t_next can use
        if not ok.any():
            continue
        N = cheapest_fill(np.where(ok, Rb + t * alpha / np.maximum(capM, 1), INF), np.where(ok, capM, 0), L)
        fe = Fb["first"][ok & (caps["first"] >= 1)]
        fh = Fb["last"][ok & (caps["last"] >= 1)]
        ends = (float(fe.min()) if len(fe) else INF) + (float(fh.min()) if len(fh) else INF)
        own = alpha * np.maximum(t, floor)  # q itself is reserved for at least max(t, its own floor)
        best = stage_and_fill(Rb, capM, N, L)
        out = np.minimum(out, np.where(ok, np.minimum(best + ends, only) + own, INF))
    return out


def _head(cand: np.ndarray, lbq: np.ndarray, plan, limit: int) -> tuple[np.ndarray, float, int]:
    """The `limit` candidates of least lower bound (cand is sorted by it), always with the plan's own peers:
    (candidates, the least lower bound left out (INF if none), how many were left out)."""
    if len(cand) <= limit:
        return cand, INF, 0
    keep = set(int(p) for p, _, _ in plan) if plan is not None else set()
    rest = [int(p) for p in cand if int(p) not in keep]
    head = rest[:limit - len(keep)]
    return np.array(sorted(keep) + head, dtype=np.int64), float(min(lbq[p] for p in rest[len(head):])), len(rest) - len(head)


def _local(cand: np.ndarray, plan) -> list[tuple[int, int, str]] | None:
    """A plan over peer indices as one over positions in `cand` (which holds its peers), or None."""
    if plan is None:
        return None
    pos = {int(p): i for i, p in enumerate(cand)}
    return [(pos[int(p)], n, r) for p, n, r in plan]


def tie_candidates(engine, fastest) -> np.ndarray | None:
    """Peers that can take part in a plan as fast as `fastest` (proven): those through which the relaxed
    fastest plan (peers may repeat, a lower bound) is no slower, from the latency solve's relaxed filter,
    and the plan's own peers. None when the latency solve kept no such filter."""
    if not hasattr(engine, "_lat_through"):
        return None
    idx, through = engine._lat_through
    return np.union1d(idx[through <= fastest.latency_s * (1 + 1e-9)], [p for p, _, _ in fastest.stages])


def solve_reserved(engine, wl: float, wc: float, bl: float | None, bf: float | None, max_pops: int = RESERVED_POPS,
                   only: np.ndarray | None = None):
    """The exact minimum (within the label budget) of wl x latency + wc x reserved carbon; see module doc."""
    from prismn.placement.optimal import Solution, _sub_hops, best_order

    inst = engine.inst
    if not hasattr(engine, "_fastest"):
        # only a lower bound on every plan's wall time is needed (and a plan for the incumbent): a small
        # deterministic budget, its proven bound when it stops early
        engine._fastest = engine.solve_linear(1.0, 0.0, "carbon", None, max_pops=FASTEST_POPS, max_cells=FASTEST_CELLS)
    fastest = engine._fastest  # None: no plan at all, or none found within that small budget
    # no plan's wall time at any load is below the least latency of any plan
    omega0 = 0.0
    if fastest is not None:
        omega0 = fastest.latency_s if fastest.proven else max(fastest.stats.get("lower_bound", 0.0), 0.0)
    lat_lbq = engine.peer_lower_bounds(1.0, 0.0)
    finite = lat_lbq[engine.usable][np.isfinite(lat_lbq[engine.usable])]
    if not len(finite):
        return None
    omega0 = max(omega0, float(finite.min()))
    if bl is not None and omega0 > bl * (1 + 1e-12):
        return None
    cache = engine.__dict__.setdefault("_reserved_lbq", {})  # the tie-break's solve asks for the same
    key = (wl, wc, omega0)
    if key not in cache:
        cache[key] = peer_lower_bounds(engine, wl, wc, omega0)
    lbq = cache[key]
    alive = engine.usable[np.isfinite(lbq[engine.usable])]
    if only is not None:  # the caller knows every plan that can meet the bounds uses only these peers
        alive = np.intersect1d(alive, only)
    if bl is not None:
        alive = alive[lat_lbq[alive] <= bl * (1 + 1e-12)]
    order = alive[np.argsort(lbq[alive], kind="stable")]
    # incumbents: the fastest plan, and knapsacks of omega x A + B ordered for wall time
    plans: list[list[tuple[int, int, str]]] = [fastest.stages] if fastest is not None else []
    pool = order[:UB_PEERS]
    if len(pool) and not (bl is not None and bl <= omega0 * (1 + 1e-9)):  # at the fastest latency they never fit
        caps = {r: inst.caps[r][pool] for r in ROLES}
        HW = inst.hop_time_matrix(pool, inst.batch)
        for k in UB_OMEGAS:
            om = omega0 * k
            R = wl * inst.latency.per_layer[pool] + wc * inst.reserved.per_layer[pool]
            F = {r: wl * inst.latency.fixed[r][pool] + wc * (om * inst.alpha[pool] + inst.reserved.fixed[r][pool])
                 for r in ROLES}
            path, _ = solve_order_free(R, F, caps, inst.L)
            if path is None:
                continue
            path = [path[i] for i in best_order(_sub_hops(HW, path), len(path))]
            plans.append([(int(pool[q]), n, r) for q, n, r in path])
    shallow = False
    if wc and not wl and bf is None and (bl is None or inst.batch == 1) and len(order):
        # the best plan of at most three stages over the few peers of least lower bound: at 1,000 peers
        # the optimum's peers rank among the first 25 or so, so this is often the optimum itself, and a
        # good incumbent filters far more peers below
        from prismn.placement.intervals import IntervalSearch

        few = order[:FEW_PEERS]
        it = IntervalSearch(engine, few, omega0, lat_lbq[few], INF if bl is None else bl * (1 + 1e-12))
        it.price_few_stages()
        it.price_three_stages(np.arange(len(few)))
        if it.best is not None:
            plans.append([(int(few[q]), n, r) for q, n, r in it.best])
            shallow = True
    if wc and bl is None and bf is None and fastest is not None and fastest.proven and not shallow:
        # the least carbon among the fastest plans (a small search: only peers that fast take part)
        tied = solve_reserved(engine, 0.0, 1.0, fastest.latency_s * (1 + 1e-12), None, TIE_POPS,
                              tie_candidates(engine, fastest))
        if tied is not None:
            plans.append(tied.stages)
    if not plans and bf is None:
        # no incumbent: is there any plan at all? (the order-free knapsack is exact for feasibility)
        caps = {r: inst.caps[r][order] for r in ROLES}
        path, _ = solve_order_free(inst.latency.per_layer[order], {r: inst.latency.fixed[r][order] for r in ROLES},
                                   caps, inst.L)
        if path is None:
            return None
    best, best_val = None, INF
    for pl in plans:
        lat, car = engine._metrics(pl)
        if (bl is not None and lat > bl * (1 + 1e-12)) or (bf is not None and car > bf * (1 + 1e-12)):
            continue
        v = wl * lat + wc * car
        if v < best_val:
            best, best_val = pl, v
    stats: dict = {"method": "reserved A*", "peers": inst.n, "omega0_ms": omega0 * 1e3,
                   "omega0_is_fastest_plan": bool(fastest is not None and fastest.proven)}
    if best is not None:
        cand = order[lbq[order] <= best_val * (1 + 1e-9) + 1e-300]
        for p, _, _ in best:
            if p not in set(cand.tolist()):
                cand = np.append(cand, p)
        # dominance: each stage reserves a peer for at least omega0, so a plan costing <= best_val has at
        # most K stages; a peer K co-located others match or beat in every term is never needed
        if wc and not wl and bl is None and bf is None:
            a_min = float(inst.alpha[engine.usable].min())
            ratio = best_val / (wc * a_min * omega0) if a_min * omega0 > 0 else INF
            K = int(max(1, min(inst.L, math.floor(ratio + 1e-9)))) if math.isfinite(ratio) else inst.L
            keep = set(int(p) for p, _, _ in best)
            pruned = engine.dominance_prune(cand, K, reserved=True)
            cand = np.array(sorted(set(pruned.tolist()) | keep), dtype=np.int64)
            stats["stage_bound"] = K
    else:
        cand = order
    cand = cand[np.argsort(lbq[cand], kind="stable")]
    # least carbon, unbounded or (at batch 1, where the wall time is the latency) with a latency bound:
    # branch and bound over the wall time (intervals.py), each interval a linear problem
    intervals = wc and not wl and bf is None and (bl is None or inst.batch == 1) and (best is not None or bl is not None)
    # the least lower bound of a peer left out (too many candidates): above it, nothing is proven
    cand, dropped_lb, left = _head(cand, lbq, best, MAX_INTERVAL_CANDIDATES if intervals else MAX_CANDIDATES)
    if left:
        stats["left_out"] = left
    stats["candidates"] = len(cand)
    inc = _local(cand, best)
    interval_lower = -INF
    res = None  # (path, value, proven, lower bound, pops) over the candidates
    if intervals:
        from prismn.placement.intervals import IntervalSearch

        it = IntervalSearch(engine, cand, omega0, lat_lbq[cand], INF if bl is None else bl * (1 + 1e-12))
        path, val, proven, interval_lower = it.run(inc)
        stats.update({"method": "wall-time intervals", "subsolves": it.subsolves, "duals": it.duals,
                      "lagrangians": it.lagrangians, "interval_pops": it.pops,
                      "interval_labels": it.labels, "route_cuts": it.route_cuts})
        if proven and path is None:  # every interval closed without a plan: none meets the bound
            engine.gave_up = dropped_lb < INF  # ... among the candidates; a left-out peer proves nothing
            return None
        if proven:
            res = (path, val, True, val, 0)
        else:
            inc = path
            if len(cand) > MAX_CANDIDATES:  # the A* takes fewer peers than the intervals: the best ones
                glob = [(int(cand[q]), n, r) for q, n, r in path] if path is not None else best
                cand, more, left = _head(cand, lbq, glob, MAX_CANDIDATES)
                dropped_lb = min(dropped_lb, more)
                stats["search_candidates"], stats["left_out"] = len(cand), stats.get("left_out", 0) + left
                inc = _local(cand, glob)
    if res is None:
        s = ReservedSearch(inst, cand, wl, wc, omega0, bl, bf, lat_lbq[cand])
        if wc and best is not None:  # a plan costing <= best has A x omega0 <= f, so A <= best / (wc omega0)
            s.weighted_tables(best_val / (wc * omega0) if omega0 > 0 else 0.0)
        res = s.run(inc, max_pops)
        engine.gave_up = s.gave_up
    if res is None:
        return None
    path, val, proven, lower, pops = res
    lower = max(lower, interval_lower)
    if not proven and lower >= val * (1 - 1e-12):
        proven = True
    if val > dropped_lb * (1 + 1e-12):  # a peer left out might take part in a better plan
        proven, lower = False, min(lower, dropped_lb)
    stages = [(int(cand[q]), n, r) for q, n, r in path]
    lat, car = engine._metrics(stages)
    stats.update({"pops": pops})
    if not proven:
        stats["lower_bound"] = lower
        stats["note"] = "search budget exhausted: best plan found, optimality not proven"
    return Solution(stages, lat, car, proven, wl * lat + wc * car, stats)
