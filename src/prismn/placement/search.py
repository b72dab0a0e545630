"""Exact search over elementary plans: best-first (A*) with admissible bounds and dominance.

A plan is a loop client -> p1 -> ... -> pk -> client over distinct peers; stage i holds n_i >= 1
contiguous layers (sum = L), the first stage the embedding, the last the LM head (one stage: both).
Costs are additive: sum_i [F_role(p_i) + n_i * R(p_i)] + sum over hops W(a, b).

The search runs over labels (layers placed j, last peer p, set of used peers, cost so far). Its
lower bound on the cost to finish is the larger of two admissible bounds:
  * h_dp(j, p): the exact cost-to-go of the *relaxation* that forgets which peers were used
    (a shortest path over states (j, p), computed by backward dynamic programming);
  * h_fill(j, U): the cheapest way to hold the remaining layers on the still-unused peers U if
    hops were free (a greedy fill by per-layer cost, the LP bound of that knapsack).
With admissible bounds, best-first order and dominance that only drops a label when another label at
the same (j, p) costs no more in every metric and used a subset of its peers, the first complete
label taken from the queue is optimal. Two metrics are carried: the primary P (what is minimised)
and the secondary S (a bound S <= B, and the tie-break among plans of equal P).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

INF = math.inf


@dataclass
class Costs:
    """One additive metric restricted to m candidate peers; W's last row/column is the client."""

    R: np.ndarray  # (m,) per layer
    F: dict[str, np.ndarray]  # role -> (m,) fixed
    W: np.ndarray  # (m+1, m+1) hop costs, diagonal inf

    def combine(self, a: float, other: Costs, b: float) -> Costs:
        def lin(x, y):
            return a * x + b * y if b else a * x

        W = np.where(np.isfinite(self.W), lin(np.where(np.isfinite(self.W), self.W, 0.0),
                                              np.where(np.isfinite(other.W), other.W, 0.0)), INF)
        return Costs(lin(self.R, other.R), {r: lin(self.F[r], other.F[r]) for r in self.F}, W)


@dataclass
class Bounds:
    dp: np.ndarray  # (L+1, m) relaxed cost-to-go after closing a first/middle stage on p with j layers
    root: float  # relaxed optimum from the client
    order: np.ndarray  # peers by per-layer cost, for the fill bound
    fixed_last_min: float  # the least F_last any peer pays


def cheapest_fill(rate: np.ndarray, cap: np.ndarray, L: int) -> np.ndarray:
    """N[k] = the least sum of k per-layer rates when each peer gives at most cap of its layers (peers split
    freely: a relaxation, a lower bound); N[0] = 0, INF beyond the peers' total capacity."""
    cap = np.clip(cap, 0, L)
    order = np.argsort(rate, kind="stable")
    take = int(np.searchsorted(np.cumsum(cap[order]), L)) + 1  # the cheapest peers that hold L layers
    per_layer = np.repeat(rate[order[:take]], cap[order[:take]])[:L]
    N = np.full(L + 1, INF)
    N[0] = 0.0
    N[1:len(per_layer) + 1] = np.cumsum(per_layer)
    return N


def stage_and_fill(rate: np.ndarray, cap: np.ndarray, N: np.ndarray, L: int) -> np.ndarray:
    """min over 1 <= n <= min(cap, L - 1) of n x rate + N[L - n], elementwise: a peer's own stage of n
    layers plus the cheapest fill of the rest (N from cheapest_fill). N is convex (its marginal rates
    rise), so the best fill size is where the fill's next layer stops being cheaper than `rate`: one
    binary search per peer instead of a pass per n. INF where cap < 1 or nothing fits."""
    finite = np.isfinite(N)
    marg = np.where(finite[1:], N[1:] - np.where(finite[:-1], N[:-1], 0.0), INF)  # N[k+1] - N[k]
    k = np.searchsorted(marg, rate, side="left")  # the fill size past which its layers cost >= rate
    lo = L - np.clip(cap, 1, max(L - 1, 1))  # n <= cap and n <= L - 1  <=>  k >= lo, k <= L - 1
    k = np.clip(k, lo, L - 1)
    with np.errstate(invalid="ignore"):
        val = (L - k) * rate + N[k]
    return np.where((cap >= 1) & (L >= 2) & np.isfinite(val), val, INF)


def relaxed_bounds(c: Costs, caps: dict[str, np.ndarray], L: int) -> Bounds:
    """Backward DP of the relaxation (peers may repeat, never twice in a row). O(L*m^2 + L^2*m)."""
    from prismn.placement.compiled import as_f64, as_i64, relaxed_dp

    m = len(c.R)
    to_client = c.W[:m, m]
    h = relaxed_dp(as_f64(c.R), as_f64(c.F["middle"]), as_f64(c.F["last"]), as_f64(c.W), as_i64(caps["middle"]),
                   as_i64(caps["last"]), int(L))
    root = INF
    if m:
        first = np.full(m, INF)
        if L >= 2:
            ns = np.arange(1, L)[:, None]
            cand = np.where(ns <= caps["first"][None, :], ns * c.R[None, :] + h[1:L, :], INF)
            first = c.F["first"] + cand.min(axis=0)
        only = np.where(caps["only"] >= L, L * c.R + c.F["only"] + to_client, INF)
        root = float((c.W[m, :m] + np.minimum(first, only)).min())
    fl = c.F["last"][caps["last"] >= 1]
    return Bounds(h, root, np.argsort(c.R, kind="stable"), float(fl.min()) if len(fl) else INF)


def through_bounds(c: Costs, caps: dict[str, np.ndarray], L: int, b: Bounds) -> np.ndarray:
    """LB(q): the relaxed optimum over plans that give q a stage (forward DP + backward DP `b`)."""
    m = len(c.R)
    if not m:
        return np.zeros(0)
    from prismn.placement.compiled import as_f64, as_i64, forward_dp

    # F[j, q]: relaxed cost client -> ... -> q's stage closed with j layers placed; A[j, q]: of arriving
    # at q with j layers placed before it
    F, A = forward_dp(as_f64(c.R), as_f64(c.F["first"]), as_f64(c.F["middle"]), as_f64(c.W), as_i64(caps["first"]),
                      as_i64(caps["middle"]), int(L))
    through = (F[1:L] + b.dp[1:L]).min(axis=0) if L >= 2 else np.full(m, INF)
    js = np.arange(0, L)[:, None]
    last = np.where((L - js >= 1) & (L - js <= caps["last"][None, :]) & (js >= 1),
                    A[:L] + c.F["last"] + (L - js) * c.R + c.W[:m, m], INF).min(axis=0)
    only = np.where(caps["only"] >= L, A[0] + c.F["only"] + L * c.R + c.W[:m, m], INF)
    return np.minimum(np.minimum(through, last), only)


def stage_shares(HW: np.ndarray, Fw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per role, a lower bound on each peer's share of an additive metric whose hops are HW (client last) and
    fixed parts Fw: its fixed part, its own client hops, and half of each hop between two peers (one half
    to each end). A middle peer's two hops come from and go to two different peers, so its share is at
    least half the least such pair (in + out), far above the least single hop when a peer has one close
    neighbour and no second. Any plan's hops and fixed parts sum to at least its stages' shares: an
    order-free bound (a knapsack over these, plus n x R, bounds the whole metric)."""
    m = HW.shape[0] - 1
    H = HW[:m, :m]
    c_in, c_out = HW[m, :m], HW[:m, m]
    if m > 1:
        rows = np.arange(m)
        a1, b1 = np.argmin(H, axis=0), np.argmin(H, axis=1)  # the closest peer into q, out of q
        in1, out1 = H[a1, rows], H[rows, b1]
        H2 = H.copy()
        H2[a1, rows] = INF
        in2 = H2.min(axis=0)  # the second closest peer into q
        H2[a1, rows] = in1
        H2[rows, b1] = INF
        out2 = H2.min(axis=1)
        # in + out through two different peers: the two closest, or one of them with the other's second
        pair = np.where(a1 != b1, in1 + out1, np.minimum(in1 + out2, in2 + out1))
    else:
        in1 = out1 = pair = np.full(m, INF)
    return {"only": Fw["only"] + c_in + c_out, "first": Fw["first"] + c_in + 0.5 * out1,
            "middle": Fw["middle"] + 0.5 * pair, "last": Fw["last"] + 0.5 * in1 + c_out}


def _fill_bound(c: Costs, b: Bounds, capM: np.ndarray, used: np.ndarray, L: int) -> np.ndarray:
    """N_U(x), x = 0..L: least per-layer cost of x layers on unused peers (hops free, caps kept)."""
    order = b.order[~used[b.order]]
    caps = np.maximum(capM[order], 0)
    rates = c.R[order]
    out = np.full(L + 1, INF)
    out[0] = 0.0
    if not len(order):
        return out
    cum = np.cumsum(caps)
    k = int(np.searchsorted(cum, L, side="left"))  # peers needed to reach L
    take = min(k + 1, len(order))
    cum, caps, rates = cum[:take], caps[:take], rates[:take]
    # marginal rate of the x-th cheapest layer
    per_layer = np.repeat(rates, caps)[:L]
    out[1:len(per_layer) + 1] = np.cumsum(per_layer)
    return out


def _unpack(v: int, m: int) -> np.ndarray:
    """Bitmask of used candidates -> bool array of length m."""
    if not v:
        return np.zeros(m, dtype=bool)
    raw = np.frombuffer(v.to_bytes((m + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:m].astype(bool)


@dataclass
class Result:
    stages: list[tuple[int, int, str]]  # (candidate index, layers, role) in route order
    P: float
    S: float
    proven: bool  # the search finished: the plan is optimal (P exact; S the best among equal P)
    pops: int
    lower_bound: float  # the best bound on P left open (== P when proven)
    note: str = ""
    stats: dict = field(default_factory=dict)


class Search:
    """Lexicographic (P, S) minimum over elementary plans, with optional S <= bound."""

    def __init__(self, P: Costs, S: Costs, caps: dict[str, np.ndarray], L: int,
                 bound_S: float | None = None, tie_rel: float = 1e-12, tables_P=None, tables_S=None,
                 amortise: bool = False, min_stages: int = 1):
        self.P, self.S, self.caps, self.L = P, S, caps, L
        self.min_stages = min_stages  # plans of fewer stages are not solutions (a bound for a class of plans)
        self.m = len(P.R)
        self.bound = INF if bound_S is None else bound_S * (1 + 1e-12)
        self.bP = relaxed_bounds(P, caps, L)
        self.bS = relaxed_bounds(S, caps, L)
        self.quantum = max(abs(self.bP.root), 1e-300) * tie_rel if math.isfinite(self.bP.root) else 1.0
        self.ns = np.arange(1, L + 1)
        self.tP, self.tS = tables_P, tables_S  # DSSR tables (h[S, j, p], bit): elementary on theta
        self.lagr = None  # (lam, DSSR tables of P + lam * S): a bound for S-bounded problems
        self.amortised = None
        self.gave_up = False  # run() stopped at its budget
        self.n_labels = 0  # labels the last run() created
        if amortise:  # a stage of n <= cap layers pays F + n R >= n (R + F_min / cap): P's fill per layer
            capx = np.maximum(caps["middle"], caps["last"])
            fmin = np.minimum(np.where(caps["middle"] >= 1, P.F["middle"], INF),
                              np.where(caps["last"] >= 1, P.F["last"], INF))
            rate = np.where(capx >= 1, P.R + fmin / np.maximum(capx, 1), INF)
            self.amortised = (Costs(rate, P.F, P.W), Bounds(None, 0.0, np.argsort(rate, kind="stable"), 0.0), capx)

    def _q(self, x: float) -> float:
        return math.floor(x / self.quantum)

    # -------------------------------------------------------------------------------------------
    def _children(self, j: int, p: int, used: np.ndarray, gP: float, gS: float, depth: int = 0):
        """Vectorised successors: (q, n, role, gP', gS', fP', fS', complete) for the label (of `depth` stages)."""
        L, m, caps = self.L, self.m, self.caps
        P, S = self.P, self.S
        out = []
        src = m if p < 0 else p
        free = ~used
        fillP = _fill_bound(P, self.bP, caps["middle"], used, L)
        fillS = _fill_bound(S, self.bS, caps["middle"], used, L)
        # ---- stages that end the plan: `only` from the client, `last` after a stage ------------
        n_end = L - j
        role_end = "only" if p < 0 else "last"
        ok = free & (caps[role_end] >= n_end)
        if ok.any() and depth + 1 >= self.min_stages:
            q = np.nonzero(ok)[0]
            gp = gP + P.W[src, q] + P.F[role_end][q] + n_end * P.R[q] + P.W[q, m]
            gs = gS + S.W[src, q] + S.F[role_end][q] + n_end * S.R[q] + S.W[q, m]
            out.append((q, np.full(len(q), n_end), role_end, gp, gs, gp, gs, True))
        # ---- stages that continue: `first` from the client, `middle` after a stage -------------
        role = "first" if p < 0 else "middle"
        nmax = L - 1 - j
        if nmax >= 1:
            capr = caps[role]
            ok = free & (capr >= 1)
            q = np.nonzero(ok)[0]
            if len(q):
                ns = self.ns[:nmax][None, :]  # (1, nmax)
                valid = ns <= capr[q][:, None]
                baseP = gP + P.W[src, q] + P.F[role][q]
                baseS = gS + S.W[src, q] + S.F[role][q]
                gp = baseP[:, None] + ns * P.R[q][:, None]
                gs = baseS[:, None] + ns * S.R[q][:, None]
                rest = L - j - ns  # layers still to place after this stage (>= 1)
                hP = np.maximum(self.bP.dp[j + ns, q[:, None]], fillP[rest] + self.bP.fixed_last_min)
                if self.amortised is not None:  # the rest on unused peers, each stage's F amortised
                    ca, ba, capx = self.amortised
                    hP = np.maximum(hP, _fill_bound(ca, ba, capx, used, L)[rest])
                hS = np.maximum(self.bS.dp[j + ns, q[:, None]], fillS[rest] + self.bS.fixed_last_min)
                tabs = [(self.tP, "P"), (self.tS, "S")]
                if self.lagr is not None and math.isfinite(self.bound):
                    tabs.append((self.lagr[1], "L"))
                for tab, which in tabs:
                    if tab is None:
                        continue
                    h_t, bit = tab
                    sv = 0
                    for b in np.nonzero(used & (bit >= 0))[0]:
                        sv |= 1 << int(bit[b])
                    bq = bit[q]
                    sq = np.where(bq >= 0, sv | (1 << np.maximum(bq, 0)), sv)
                    ht = h_t[sq[:, None], j + ns, q[:, None]]
                    if which == "P":
                        hP = np.maximum(hP, ht)
                    elif which == "S":
                        hS = np.maximum(hS, ht)
                    else:  # P-to-go >= h_lam - lam * (S budget left after this stage)
                        lam = self.lagr[0]
                        hP = np.maximum(hP, ht - lam * (self.bound - gs))
                fp = np.where(valid, gp + hP, INF)
                fs = np.where(valid, gs + hS, INF)
                qi, ni = np.nonzero(np.isfinite(fp) & (fs <= self.bound))
                if len(qi):
                    out.append((q[qi], ni + 1, role, gp[qi, ni], gs[qi, ni], fp[qi, ni], fs[qi, ni], False))
        return out

    # -------------------------------------------------------------------------------------------
    def run(self, incumbent: list[tuple[int, int, str]] | None = None, max_pops: int = 200_000,
            max_labels: int | None = None) -> Result | None:
        """Best-first search; the budget is in labels expanded and created (deterministic, never wall-clock)."""
        t0 = time.perf_counter()
        L, m = self.L, self.m
        if not math.isfinite(self.bP.root) or self.bS.root > self.bound:
            return None
        # label storage
        J: list[int] = [0]
        Pp: list[int] = [-1]
        V: list[int] = [0]  # bitmask of used candidates
        GP: list[float] = [0.0]
        GS: list[float] = [0.0]
        PAR: list[int] = [-1]
        D: list[int] = [0]  # stages so far
        N: list[int] = [0]
        ROLE: list[str] = [""]
        DONE: list[bool] = [False]
        dead: set[int] = set()
        buckets: dict[tuple[int, int], list[int]] = {}
        heap: list[tuple] = []
        counter = 0
        best_key: tuple | None = None

        def new_label(j, p, v, gp, gs, par, n, role, done) -> int:
            J.append(j)
            Pp.append(p)
            V.append(v)
            GP.append(gp)
            GS.append(gs)
            PAR.append(par)
            D.append(D[par] + 1 if par >= 0 else 0)
            N.append(n)
            ROLE.append(role)
            DONE.append(done)
            return len(J) - 1

        if incumbent and len(incumbent) >= self.min_stages:
            # cost it with the same arrays and seed the queue with it as a complete label
            lab, j, src, v, gp, gs = 0, 0, m, 0, 0.0, 0.0
            ok = True
            for q, n, role in incumbent:
                gp += self.P.W[src, q] + self.P.F[role][q] + n * self.P.R[q]
                gs += self.S.W[src, q] + self.S.F[role][q] + n * self.S.R[q]
                if n > self.caps[role][q] or (v >> q) & 1:
                    ok = False
                j += n
                v |= 1 << int(q)
                src = q
                lab = new_label(j, int(q), v, gp, gs, lab, n, role, False)
            gp += self.P.W[src, m]
            gs += self.S.W[src, m]
            if ok and j == L and gs <= self.bound:
                DONE[lab] = True
                GP[lab], GS[lab] = gp, gs
                best_key = (self._q(gp), gs)
                heapq.heappush(heap, (best_key[0], gs, 0, counter, lab))
                counter += 1

        heapq.heappush(heap, (self._q(self.bP.root), self.bS.root, 0, counter, 0))
        counter += 1
        pops = 0
        k_min = self.min_stages  # a label of fewer stages dominates one only when it has as many, up to k_min
        while heap:
            kq, ks, _, _, lab = heapq.heappop(heap)
            if lab in dead:
                continue
            if DONE[lab]:
                self.n_labels = len(J)
                return Result(self._path(lab, J, Pp, PAR, N, ROLE), GP[lab], GS[lab], True, pops, GP[lab],
                              stats={"labels": len(J), "seconds": time.perf_counter() - t0})
            pops += 1
            if pops > max_pops or (max_labels is not None and len(J) > max_labels):
                return self._give_up(heap, best_key, J, Pp, PAR, N, ROLE, DONE, GP, GS, pops, t0)
            j, p, v = J[lab], Pp[lab], V[lab]
            used_mask = _unpack(v, m)
            depth = D[lab]
            for q, n, role, gp, gs, fp, fs, complete in self._children(j, p, used_mask, GP[lab], GS[lab], depth):
                kp = np.floor(fp / self.quantum)
                keep = fs <= self.bound
                if best_key is not None:
                    keep &= (kp < best_key[0]) | ((kp == best_key[0]) & (fs < best_key[1]))
                sel = np.nonzero(keep)[0]
                for k in sel:
                    key = (float(kp[k]), float(fs[k]))
                    if best_key is not None and key >= best_key:
                        continue
                    qq, nn = int(q[k]), int(n[k])
                    jj = j + nn
                    vv = v | (1 << qq)
                    g1, g2 = float(gp[k]), float(gs[k])
                    if not complete:
                        bk = (jj, qq)
                        lst = buckets.get(bk)
                        if lst is None:
                            lst = buckets[bk] = []
                        dominated = False
                        for other in lst:
                            if other in dead:
                                continue
                            if GP[other] <= g1 and GS[other] <= g2 and (V[other] & ~vv) == 0 and \
                                    min(D[other], k_min) >= min(depth + 1, k_min):
                                dominated = True
                                break
                        if dominated:
                            continue
                        child = new_label(jj, qq, vv, g1, g2, lab, nn, role, False)
                        # drop labels the new one dominates
                        for other in lst:
                            if other not in dead and g1 <= GP[other] and g2 <= GS[other] and (vv & ~V[other]) == 0 \
                                    and min(depth + 1, k_min) >= min(D[other], k_min):
                                dead.add(other)
                        lst.append(child)
                    else:
                        child = new_label(jj, qq, vv, g1, g2, lab, nn, role, True)
                        best_key = key
                    heapq.heappush(heap, (key[0], key[1], -jj, counter, child))
                    counter += 1
        self.n_labels = len(J)
        if best_key is None:
            return None
        raise AssertionError("the queue emptied with an incumbent that was never popped")

    def _path(self, lab, J, Pp, PAR, N, ROLE) -> list[tuple[int, int, str]]:
        out = []
        while lab > 0:
            out.append((Pp[lab], N[lab], ROLE[lab]))
            lab = PAR[lab]
        return out[::-1]

    def _give_up(self, heap, best_key, J, Pp, PAR, N, ROLE, DONE, GP, GS, pops, t0) -> Result | None:
        self.gave_up = True
        self.n_labels = len(J)
        lb = min((k[0] for k in heap), default=INF) * self.quantum
        done = [lab for *_, lab in heap if DONE[lab]]
        if not done:
            return None
        lab = min(done, key=lambda x: (self._q(GP[x]), GS[x]))
        return Result(self._path(lab, J, Pp, PAR, N, ROLE), GP[lab], GS[lab], False, pops, lb,
                      note="search budget exhausted: best plan found, optimality not proven",
                      stats={"labels": len(J), "seconds": time.perf_counter() - t0})

    # -------------------------------------------------------------------------------------------
    def dive(self) -> list[tuple[int, int, str]] | None:
        """A quick elementary plan: follow the best child by (P bound, S bound) until complete."""
        j, p, v, gP, gS = 0, -1, 0, 0.0, 0.0
        used = np.zeros(self.m, dtype=bool)
        path: list[tuple[int, int, str]] = []
        while True:
            best = None
            for q, n, role, gp, gs, fp, fs, complete in self._children(j, p, used, gP, gS):
                ok = fs <= self.bound
                if not ok.any():
                    continue
                k = int(np.argmin(np.where(ok, fp, INF)))
                cand = (float(fp[k]), float(fs[k]), complete, int(q[k]), int(n[k]), role, float(gp[k]), float(gs[k]))
                if best is None or cand[:2] < best[:2]:
                    best = cand
            if best is None or not math.isfinite(best[0]):
                return None
            _, _, complete, q, n, role, gP, gS = best
            path.append((q, n, role))
            if complete:
                return path
            j += n
            p = q
            used[q] = True
            v |= 1 << q


# ---------------------------------------------------------------------------------------------------
# Decremental state-space relaxation (Righini & Salani): scalar objectives
# ---------------------------------------------------------------------------------------------------
def _dssr_tables(c: Costs, caps: dict[str, np.ndarray], L: int, theta: list[int]):
    """Backward DP over (S, j, p): S = which peers of `theta` are already used. Peers in theta are
    elementary, the others may repeat (the relaxation), but never as p -> q -> p: the relaxation also
    forbids 2-cycles (Houck et al.), which removes the typical repeat (a capped peer reused through a
    one-layer detour to a neighbour) without growing theta. For that each (S, j, p) keeps its best
    cost-to-go h1 with its next peer `nxt` and the best h2 whose next peer differs; a predecessor o of p
    reads h1 unless nxt is o itself, then h2.
    Returns (h1, h2, nxt) each (T, L+1, m), the client row, and theta's bit per peer."""
    from prismn.placement.compiled import as_f64, as_i64, dssr_tables  # compiled on first use, then cached

    m = len(c.R)
    bit = np.full(m, -1, dtype=np.int64)
    for k, q in enumerate(theta):
        bit[q] = k
    to_client = c.W[:m, m]
    off = ~np.eye(m, dtype=bool)
    free_hops = m > 1 and not np.any(c.W[:m, :m][off]) and not np.any(c.W[m, :m]) and not np.any(to_client)
    h, h2, nxt, root_row = dssr_tables(
        as_f64(c.R), as_f64(c.F["first"]), as_f64(c.F["middle"]), as_f64(c.F["last"]), as_f64(c.F["only"]), as_f64(c.W),
        as_i64(caps["first"]), as_i64(caps["middle"]), as_i64(caps["last"]), as_i64(caps["only"]), int(L), bit,
        1 << len(theta), bool(free_hops))
    return (h, h2, nxt), root_row, bit


def _dssr_path(c: Costs, caps, L, tables, root_row, bit) -> list[tuple[int, int, str]]:
    """One optimal path of the DSSR relaxation, following the tables forward (never p -> q -> p)."""
    h, h2, nxt = tables
    m = len(c.R)
    path: list[tuple[int, int, str]] = []
    S, src, prev, j = 0, m, -1, 0
    while True:
        first = src == m
        best, choice = INF, None
        end_role = "only" if first else "last"
        allowed = np.ones(m, dtype=bool)
        if not first:
            allowed[src] = False
        if prev >= 0:
            allowed[prev] = False  # src's predecessor: no 2-cycle
        tb = np.where(bit >= 0, (S >> np.maximum(bit, 0)) & 1, 0)
        allowed &= tb == 0
        v = np.where(allowed & (caps[end_role] >= L - j),
                     c.W[src, :m] + c.F[end_role] + (L - j) * c.R + c.W[:m, m], INF)
        q = int(np.argmin(v))
        if v[q] < best:
            best, choice = float(v[q]), (q, L - j, end_role, True)
        nmax = L - 1 - j
        if nmax >= 1:
            role = "first" if first else "middle"
            S2 = np.where(bit >= 0, S | (1 << np.maximum(bit, 0)), S)  # state after using q
            ns = np.arange(1, nmax + 1)[:, None]
            cols = np.arange(m)[None, :]
            hv = h[S2[None, :], j + ns, cols]
            if not first:  # q's continuation may not return to src
                hv = np.where(nxt[S2[None, :], j + ns, cols] == src, h2[S2[None, :], j + ns, cols], hv)
            cand = np.where(ns <= caps[role][None, :], ns * c.R[None, :] + hv, INF)
            tot = np.where(allowed[None, :], c.W[src, :m][None, :] + c.F[role][None, :] + cand, INF)
            k = int(np.argmin(tot))
            n_i, q = divmod(k, m)
            if tot[n_i, q] < best:
                best, choice = float(tot[n_i, q]), (q, n_i + 1, role, False)
        if choice is None or not math.isfinite(best):
            return path
        q, n, role, done = choice
        path.append((q, n, role))
        if done:
            return path
        if bit[q] >= 0:
            S |= 1 << int(bit[q])
        prev = -1 if first else src
        src, j = q, j + n


def path_cost(c: Costs, path: list[tuple[int, int, str]]) -> float:
    """One additive metric of a path in route order (client -> stages -> client)."""
    m = len(c.R)
    src, total = m, 0.0
    for q, n, role in path:
        total += c.W[src, q] + c.F[role][q] + n * c.R[q]
        src = q
    return total + c.W[src, m]


def best_three_stage_plan(W: Costs, caps: dict[str, np.ndarray], L: int, B: Costs | None = None,
                          alpha: np.ndarray | None = None, w_max: float = INF) -> list[tuple[int, int, str]] | None:
    """The least f = A x W + B over plans of exactly three stages of the (few) peers given, every ordered
    triple with its layers split optimally (compiled.best_three_stage, O(m^3)); A sums alpha over the
    route. Without B and alpha, f is the additive cost W itself (A = 1, B = 0). Under a cap w_max on W a
    route whose best split exceeds it is skipped. None when no three stages hold the model."""
    from prismn.placement.compiled import as_f64, as_i64, best_three_stage

    m = len(W.R)
    if L < 3 or m < 3:
        return None
    roles = ("first", "middle", "last")  # the compiled loop's argument order
    zero = np.zeros(m)
    Rb, Fb = (zero, {r: zero for r in roles}) if B is None else (B.R, B.F)
    alpha = np.full(m, 1.0 / 3.0) if alpha is None else alpha  # A = 1 over any three peers
    cap = {r: as_i64(np.minimum(caps[r], L)) for r in roles}
    f, p, q, r, n1, n2 = best_three_stage(as_f64(W.W), as_f64(W.R), *(as_f64(W.F[x]) for x in roles),
                                          as_f64(Rb), *(as_f64(Fb[x]) for x in roles), as_f64(alpha),
                                          *(cap[x] for x in roles), int(L), float(w_max))
    if p < 0:
        return None
    return [(int(p), int(n1), "first"), (int(q), int(n2), "middle"), (int(r), L - int(n1) - int(n2), "last")]


@dataclass
class Lagrangian:
    dual: float  # the best min(P + lam S) - lam bound found: a lower bound on min P subject to S <= bound
    lam: float  # the lam that gave it
    tables: tuple | None  # DSSR tables of P + lam S at that lam (a bound for the search), or None
    best: tuple[float, list[tuple[int, int, str]]]  # the least-P plan met that meets the bound: (P, path)


def lagrangian(P: Costs, S: Costs, caps: dict[str, np.ndarray], L: int, bound: float,
               path_p: list[tuple[int, int, str]], path_s: list[tuple[int, int, str]], max_theta: int,
               max_cells: float, steps: int = 8) -> Lagrangian:
    """The Lagrangian dual of min P subject to S <= bound: for lam >= 0, min(P + lam S) - lam bound is a lower
    bound (over the DSSR relaxation too), and every minimiser of P + lam S that meets the bound is a feasible
    plan (a supported Pareto point). path_p minimises P (and misses the bound), path_s minimises S (and meets
    it). lam starts where their two lines cross and is bisected in log space for the best bound and plan."""
    p1, s1 = path_cost(P, path_p), path_cost(S, path_p)
    p2, s2 = path_cost(P, path_s), path_cost(S, path_s)
    lam = (p2 - p1) / (s1 - s2) if s1 > s2 and p2 > p1 else 0.0
    out = Lagrangian(-INF, 0.0, None, (p2, path_s))
    lo = hi = None
    for _ in range(steps if lam > 0 else 0):
        pl, vl, info = dssr(P.combine(1.0, S, lam), caps, L, max_theta, max_cells=max_cells)
        tab = info.pop("tables", None)
        if pl is None:
            break
        if vl - lam * bound > out.dual:
            out.dual, out.lam, out.tables = vl - lam * bound, lam, tab
        if path_cost(S, pl) <= bound:
            pv = path_cost(P, pl)
            if pv < out.best[0]:
                out.best = (pv, pl)
            hi = lam
        else:
            lo = lam
        lam = math.sqrt(lo * hi) if (lo and hi) else (lam / 4 if hi else lam * 4)
    return out


PENALTY_STEPS = 300  # subgradient steps of visit_penalties (deterministic)


@dataclass
class Penalties:
    bound: float  # the best min over walks of [cost + sum of pi over visits] - sum pi: a lower bound
    best: tuple[float, list[tuple[int, int, str]]] | None  # the cheapest elementary walk met: (cost, path)


def visit_penalties(c: Costs, caps: dict[str, np.ndarray], L: int, ub: float,
                    steps: int = PENALTY_STEPS) -> Penalties:
    """The Lagrangian relaxation of 'each peer at most once' over the DSSR relaxation (peers may repeat,
    never p -> q -> p): for pi >= 0, every elementary plan costs at least min over walks of
    [cost + sum of pi_q over the walk's visits] - sum_q pi_q (it visits each peer at most once, so its
    penalties are at most sum pi). Each evaluation is one table of the relaxation with pi_q added to every
    stage on q. pi follows the subgradient (visits - 1, held at 0 where pi is 0 and q unvisited) with a
    Polyak step toward ub, halved after 15 steps without a better bound: a fixed number of steps, so
    the bound is the same on any machine. Deep plans, where the relaxation reuses the fastest peers
    dozens of times and DSSR cannot make them all elementary, are what it is for. (Its tables can also
    bound each label of a search, cost-to-go >= h_pi - the penalties of the peers still unused; measured
    on deep plans that raised the bound little and slowed the search by about 80 s, so it is not used.)"""
    m = len(c.R)
    pi = np.zeros(m)
    best = Penalties(-INF, None)
    theta, stall = 1.0, 0
    for _ in range(steps):
        pc = Costs(c.R, {r: c.F[r] + pi for r in c.F}, c.W)
        tabs, root_row, bit = _dssr_tables(pc, caps, L, [])
        root = float(root_row.min()) if m else INF
        if not math.isfinite(root):
            break
        path = _dssr_path(pc, caps, L, tabs, root_row, bit)
        visits = np.bincount([q for q, _, _ in path], minlength=m).astype(float)
        value = root - float(pi.sum())
        if (visits <= 1).all():  # an elementary walk: a plan
            cost = path_cost(c, path)
            if best.best is None or cost < best.best[0]:
                best.best = (cost, path)
        if value > best.bound:
            best.bound, stall = value, 0
        else:
            stall += 1
            if stall >= 15:
                theta, stall = theta / 2, 0
        g = np.where((pi <= 0) & (visits < 1), 0.0, visits - 1.0)
        norm = float((g * g).sum())
        if norm == 0 or not math.isfinite(ub) or ub <= value:
            break  # elementary at these penalties with no slack (the bound is the walk's cost), or no target
        pi = np.maximum(0.0, pi + theta * (ub - value) / norm * g)
    return best


def dssr(c: Costs, caps: dict[str, np.ndarray], L: int, max_theta: int = 14,
         max_cells: float = 2e9) -> tuple[list[tuple[int, int, str]] | None, float, dict]:
    """Exact minimum of a scalar cost over elementary plans, or (None, bound, info) when the state
    space would grow past the limits (the bound is then still a valid lower bound)."""
    m = len(c.R)
    theta: list[int] = []
    bound = -INF
    info: dict = {"iterations": 0}
    while True:
        info["iterations"] += 1
        tabs, root_row, bit = _dssr_tables(c, caps, L, theta)
        info["tables"] = (tabs[0], bit)
        root = float(root_row.min()) if m else INF
        bound = max(bound, root)
        if not math.isfinite(root):
            info["theta"] = len(theta)
            return None, INF, info
        path = _dssr_path(c, caps, L, tabs, root_row, bit)
        seen: dict[int, int] = {}
        for q, _, _ in path:
            seen[q] = seen.get(q, 0) + 1
        repeated = [q for q, k in seen.items() if k > 1 and q not in theta]
        info["theta"] = len(theta)
        if not repeated:
            return path, root, info
        theta = theta + repeated
        if len(theta) > max_theta or (1 << len(theta)) * L * m * m > max_cells:
            info["theta"] = len(theta)
            info["gave_up"] = True
            return None, bound, info
