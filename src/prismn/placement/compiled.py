"""Compiled inner loops of the placement search (numba).

The decremental state-space relaxation fills tables of (T states) x (L+1 layer positions) x (m peers)
backwards over the layers. In numpy each layer position is ~25 array calls on small arrays, so a
1,000-peer latency solve spent most of its time on call overhead. Here the same recurrence runs as
plain loops, compiled once per machine (numba caches the machine code beside this file). Every
comparison is written so that ties resolve to the lowest index, as numpy's argmin does: the tables
are identical to the numpy formulation, which `search._dssr_tables` documents.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INF = np.inf


def as_f64(x) -> np.ndarray:
    """The compiled loops take contiguous typed arrays."""
    return np.ascontiguousarray(x, dtype=np.float64)


def as_i64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


@njit(cache=True)
def _effective(U, S, q, bit, fill):
    """U[S | bit(q), q]: q's value seen from state S (fill when S has already used q)."""
    b = bit[q]
    if b < 0:
        return U[S, q]
    if (S >> b) & 1:
        return fill
    return U[S | (1 << b), q]


@njit(cache=True)
def dssr_tables(R, Ff, Fm, Fl, Fo, W, capF, capM, capH, capO, L, bit, T, free_hops):
    """(h, h2, nxt, root_row): see search._dssr_tables for the recurrence and its meaning."""
    m = R.shape[0]
    h = np.full((T, L + 1, m), INF)
    h2 = np.full((T, L + 1, m), INF)
    nxt = np.full((T, L + 1, m), -1, dtype=np.int64)
    U1 = np.empty((T, m))
    U2 = np.empty((T, m))
    s1 = np.empty((T, m), dtype=np.int64)
    E1 = np.empty(m)
    E2 = np.empty(m)
    Es = np.empty(m, dtype=np.int64)
    for j in range(L - 1, 0, -1):
        n_last = L - j
        nmax = L - 1 - j
        for S in range(T):
            for q in range(m):
                last = n_last * R[q] + Fl[q] + W[q, m] if capH[q] >= n_last else INF
                u1 = last
                nx = -1
                if nmax >= 1:
                    top = min(nmax, capM[q])
                    best = INF
                    k = -1
                    for n in range(1, top + 1):
                        v = n * R[q] + h[S, j + n, q]
                        if v < best:
                            best, k = v, n
                    if k > 0:
                        mid = Fm[q] + best
                        if mid < u1:
                            u1 = mid
                            nx = nxt[S, j + k, q]
                    if nx >= 0:  # the best continuation whose next peer is not nx
                        best2 = INF
                        for n in range(1, top + 1):
                            hv = h[S, j + n, q] if nxt[S, j + n, q] != nx else h2[S, j + n, q]
                            v = n * R[q] + hv
                            if v < best2:
                                best2 = v
                        mid2 = Fm[q] + best2
                        U2[S, q] = last if last < mid2 else mid2
                    else:
                        U2[S, q] = u1
                else:
                    U2[S, q] = u1
                U1[S, q] = u1
                s1[S, q] = nx
        if m <= 1:
            continue
        for S in range(T):
            for q in range(m):
                E1[q] = _effective(U1, S, q, bit, INF)
                E2[q] = _effective(U2, S, q, bit, INF)
                Es[q] = _effective(s1, S, q, bit, -1)
            if free_hops:  # min over q != p: the best, or the second best where the best is p itself
                k1 = 0
                for q in range(1, m):
                    if E1[q] < E1[k1]:
                        k1 = q
                v2 = INF
                for q in range(m):
                    if q != k1 and E1[q] < v2:
                        v2 = E1[q]
                for p in range(m):
                    v = v2 if p == k1 else E1[k1]
                    h[S, j, p] = v
                    h2[S, j, p] = v  # no next peer is tracked here (nxt stays -1)
                continue
            for p in range(m):
                # one pass: the least W[p, q] + E(q) (lowest index on ties) and the least over the other q
                b1 = W[p, 0] + (E2[0] if Es[0] == p else E1[0])
                q1 = 0
                b2 = INF
                for q in range(1, m):
                    v = W[p, q] + (E2[q] if Es[q] == p else E1[q])
                    if v < b1:
                        b2 = b1
                        b1, q1 = v, q
                    elif v < b2:
                        b2 = v
                h[S, j, p] = b1
                nxt[S, j, p] = q1 if b1 < INF else -1
                h2[S, j, p] = b2
    # from the client (S = empty): first or only stage
    root_row = np.empty(m)
    for q in range(m):
        b = bit[q]
        S = (1 << b) if b >= 0 else 0
        first = INF
        if L >= 2:
            top = min(L - 1, capF[q])
            best = INF
            for n in range(1, top + 1):
                v = n * R[q] + h[S, n, q]
                if v < best:
                    best = v
            first = Ff[q] + best
        only = L * R[q] + Fo[q] + W[q, m] if capO[q] >= L else INF
        root_row[q] = W[m, q] + (first if first < only else only)
    return h, h2, nxt, root_row


@njit(cache=True)
def _stage_role(role, p, capM, capF, capL, Fm, Ff, Fl, L):
    """(cap, F) of a stage on peer p in role 0 (middle), 1 (first) or 2 (last), the cap at most L."""
    if role == 0:
        return min(capM[p], L), Fm[p]
    if role == 1:
        return min(capF[p], L), Ff[p]
    return min(capL[p], L), Fl[p]


@njit(cache=True)
def _end_roles(role, s):
    """The end roles taken (0 none, 1 first, 2 last, 3 both) after a stage of `role` from state s, or -1
    when its role is taken already: a middle keeps the state, first and last add their own."""
    if role == 0:
        return s
    bit = 1 if role == 1 else 2
    return -1 if s & bit else s | bit


@njit(cache=True)
def knapsack_table(R, Fm, Ff, Fl, capM, capF, capL, L):
    """C[p + 1, s, j]: the least cost over peers 0..p with j layers placed and end roles s taken (0 none,
    1 first, 2 last, 3 both); see knapsack.solve_order_free. A stage of n layers on p costs F + n R."""
    m = R.shape[0]
    C = np.full((m + 1, 4, L + 1), INF)
    C[0, 0, 0] = 0.0
    for p in range(m):
        for s in range(4):
            for j in range(L + 1):
                C[p + 1, s, j] = C[p, s, j]
        for role in range(3):
            cap, F = _stage_role(role, p, capM, capF, capL, Fm, Ff, Fl, L)
            if cap < 1:
                continue
            for s in range(4):
                d = _end_roles(role, s)
                if d < 0:
                    continue
                for j in range(1, L + 1):
                    best = INF
                    for n in range(1, min(cap, j) + 1):
                        v = C[p, s, j - n] + (F + n * R[p])
                        if v < best:
                            best = v
                    if best < C[p + 1, d, j]:
                        C[p + 1, d, j] = best
    return C


@njit(cache=True)
def relaxed_dp(R, Fm, Fl, W, capM, capH, L):
    """h[j, p] of search.relaxed_bounds: the relaxed cost-to-go (peers may repeat, never twice in a row)
    after a first or middle stage on p that closes with j layers placed."""
    m = R.shape[0]
    h = np.full((L + 1, m), INF)
    U = np.empty(m)
    for j in range(L - 1, 0, -1):
        n_last = L - j
        nmax = L - 1 - j
        for q in range(m):
            u = n_last * R[q] + Fl[q] + W[q, m] if capH[q] >= n_last else INF
            if nmax >= 1:
                best = INF
                for n in range(1, min(nmax, capM[q]) + 1):
                    v = n * R[q] + h[j + n, q]
                    if v < best:
                        best = v
                mid = Fm[q] + best
                if mid < u:
                    u = mid
            U[q] = u
        if m <= 1:
            continue
        for p in range(m):
            best = INF
            for q in range(m):
                v = W[p, q] + U[q]
                if v < best:
                    best = v
            h[j, p] = best
    return h


@njit(cache=True)
def forward_dp(R, Ff, Fm, W, capE, capM, L):
    """(F, A) of search.through_bounds: F[j, q] the relaxed cost client -> ... -> q's stage closed with j
    layers placed, A[j, q] that of arriving at q with j layers placed before it."""
    m = R.shape[0]
    F = np.full((L + 1, m), INF)
    A = np.full((L + 1, m), INF)
    for q in range(m):
        A[0, q] = W[m, q]
    for j in range(1, L):
        for q in range(m):
            f = A[0, q] + Ff[q] + j * R[q] if capE[q] >= j else INF
            if j >= 2:
                best = INF
                for n in range(1, min(j - 1, capM[q]) + 1):
                    v = A[j - n, q] + n * R[q]
                    if v < best:
                        best = v
                mid = Fm[q] + best
                if mid < f:
                    f = mid
            F[j, q] = f
        if m <= 1:
            continue
        for p in range(m):  # A[j, q] = min over p of F[j, p] + W[p, q], row by row (W is row-major)
            f = F[j, p]
            if f == INF:
                continue
            for q in range(m):
                v = f + W[p, q]
                if v < A[j, q]:
                    A[j, q] = v
    return F, A


@njit(cache=True)
def _two_stage_f(HW, Rw, FwF, FwL, Rb, FbF, FbL, a, p, q, n, L):
    """(W, f) of the plan client -> p (first, n layers) -> q (last, L - n) -> client, summed in the order
    intervals.IntervalSearch.evaluate sums them."""
    m = Rw.shape[0]
    W = 0.0
    W += HW[m, p] + FwF[p] + n * Rw[p]
    W += HW[p, q] + FwL[q] + (L - n) * Rw[q]
    W += HW[q, m]
    B = 0.0
    B += FbF[p] + n * Rb[p]
    B += FbL[q] + (L - n) * Rb[q]
    return W, a * W + B


@njit(cache=True)
def best_two_stage(HW, Rw, FwF, FwL, Rb, FbF, FbL, alpha, capF, capL, L, w_max):
    """The least f = A W + B over every two-stage plan (p first, q last, p != q) with W <= w_max:
    (f, p, q, n), p = -1 when there is none. W and f are linear in p's layer count n, so over the n its
    caps allow, and W <= w_max leaves an interval of them, the least f lies at one of that interval's
    ends: only those are priced."""
    m = Rw.shape[0]
    best, bp, bq, bn = INF, -1, -1, -1
    for p in range(m):
        if capF[p] < 1:
            continue
        for q in range(m):
            if q == p or capL[q] < 1:
                continue
            lo = max(1, L - capL[q])
            hi = min(capF[p], L - 1)
            if lo > hi:
                continue
            a = alpha[p] + alpha[q]
            w_lo, f_lo = _two_stage_f(HW, Rw, FwF, FwL, Rb, FbF, FbL, a, p, q, lo, L)
            w_hi, f_hi = _two_stage_f(HW, Rw, FwF, FwL, Rb, FbF, FbL, a, p, q, hi, L)
            ok_lo, ok_hi = w_lo <= w_max, w_hi <= w_max
            if not ok_lo and not ok_hi:
                continue  # W is linear in n: above w_max at both ends, above it everywhere between
            if not (ok_lo and ok_hi):  # the feasible n run from the feasible end to the last n that meets w_max
                n0, n1 = (lo, hi) if ok_lo else (hi, lo)
                while n0 != n1:  # bisection on the integer n: n0 meets w_max, n1 does not
                    mid = (n0 + n1) // 2 if ok_lo else (n0 + n1 + 1) // 2
                    if mid == n0:
                        break
                    w_m, _ = _two_stage_f(HW, Rw, FwF, FwL, Rb, FbF, FbL, a, p, q, mid, L)
                    if w_m <= w_max:
                        n0 = mid
                    else:
                        n1 = mid
                if ok_lo:
                    hi = n0
                    w_hi, f_hi = _two_stage_f(HW, Rw, FwF, FwL, Rb, FbF, FbL, a, p, q, hi, L)
                else:
                    lo = n0
                    w_lo, f_lo = _two_stage_f(HW, Rw, FwF, FwL, Rb, FbF, FbL, a, p, q, lo, L)
            if f_lo <= f_hi:
                f, n = f_lo, lo
            else:
                f, n = f_hi, hi
            if f < best:
                best, bp, bq, bn = f, p, q, n
    return best, bp, bq, bn


@njit(cache=True)
def best_three_stage(HW, Rw, FwF, FwM, FwL, Rb, FbF, FbM, FbL, alpha, capF, capM, capL, L, w_max):
    """A good three-stage plan (p first, q middle, r last, distinct) for f = A W + B with W <= w_max, over
    every ordered triple of the (few) peers given: (f, p, q, r, n_p, n_q), p = -1 when none fits. For a
    fixed route A is fixed and f is linear in the layer counts, so each route's layers go to the lowest
    rate A Rw + Rb first, up to each cap (the least f of the route); a route whose split exceeds w_max is
    skipped (this prices incumbents: the split is not re-optimised under the cap). O(m^3)."""
    m = Rw.shape[0]
    best, bp, bq, br, b1, b2 = INF, -1, -1, -1, -1, -1
    if L < 3:
        return best, bp, bq, br, b1, b2
    cap = np.empty(3, dtype=np.int64)
    rate = np.empty(3)
    n = np.empty(3, dtype=np.int64)
    for p in range(m):
        if capF[p] < 1:
            continue
        for q in range(m):
            if q == p or capM[q] < 1:
                continue
            for r in range(m):
                if r == p or r == q or capL[r] < 1:
                    continue
                cap[0], cap[1], cap[2] = min(capF[p], L), min(capM[q], L), min(capL[r], L)
                if cap[0] + cap[1] + cap[2] < L:
                    continue
                a = alpha[p] + alpha[q] + alpha[r]
                rate[0], rate[1], rate[2] = a * Rw[p] + Rb[p], a * Rw[q] + Rb[q], a * Rw[r] + Rb[r]
                n[0], n[1], n[2] = 1, 1, 1
                left = L - 3
                for _ in range(3):  # the lowest remaining rate first (lowest position on ties)
                    k = -1
                    for i in range(3):
                        if cap[i] > 0 and (k < 0 or rate[i] < rate[k]):
                            k = i
                    take = min(cap[k] - 1, left)
                    n[k] += take
                    left -= take
                    cap[k] = -cap[k]  # taken
                W = (HW[m, p] + FwF[p] + n[0] * Rw[p] + HW[p, q] + FwM[q] + n[1] * Rw[q]
                     + HW[q, r] + FwL[r] + n[2] * Rw[r] + HW[r, m])
                if W > w_max:
                    continue
                f = a * W + FbF[p] + n[0] * Rb[p] + FbM[q] + n[1] * Rb[q] + FbL[r] + n[2] * Rb[r]
                if f < best:
                    best, bp, bq, br, b1, b2 = f, p, q, r, n[0], n[1]
    return best, bp, bq, br, b1, b2


@njit(cache=True)
def knapsack_min_stages(R, Fm, Ff, Fl, capM, capF, capL, L, K):
    """The least cost of an order-free stage set (one first, one last, middles; see knapsack_table) with at
    least K >= 2 stages: the knapsack's DP with the stage count (capped at K) in its state. Value only."""
    m = R.shape[0]
    C = np.full((4, K + 1, L + 1), INF)
    C[0, 0, 0] = 0.0
    for p in range(m):
        N = C.copy()
        for role in range(3):
            cap, F = _stage_role(role, p, capM, capF, capL, Fm, Ff, Fl, L)
            if cap < 1:
                continue
            for s in range(4):
                d = _end_roles(role, s)
                if d < 0:
                    continue
                for c in range(K + 1):
                    c2 = min(c + 1, K)
                    for j in range(1, L + 1):
                        best = INF
                        for n in range(1, min(cap, j) + 1):
                            v = C[s, c, j - n] + (F + n * R[p])
                            if v < best:
                                best = v
                        if best < N[d, c2, j]:
                            N[d, c2, j] = best
        C = N
    return C[3, K, L]
