"""Order-free objectives (carbon) solved exactly as what they are: a multiple-choice knapsack.

When hops cost nothing (carbon, in either scope: network carbon splits into per-role peer terms, see
instance.py), a plan's cost is sum over used peers of F_role(p) + n_p * R(p), whatever the order.
So the problem is to pick, per peer, "unused" or a (role, n) with 1 <= n <= cap_role(p), with exactly
one `first` and one `last` (two distinct peers) or a single `only` peer, and sum n = L. A dynamic
programme over peers with state (layers placed, first taken?, last taken?) finds the exact minimum
in O(m * L^2) with no search budget at all; the order of the stages is chosen afterwards for latency.
"""

from __future__ import annotations

import math

import numpy as np

INF = math.inf
# DP states: which of the two end roles are already taken
NONE, FIRST, LAST, BOTH = 0, 1, 2, 3
_ROLE_CODE = {"middle": 0, "first": 1, "last": 2, "only": 3}
_ROLE_NAME = {v: k for k, v in _ROLE_CODE.items()}


def _shift_min(row: np.ndarray, R: float, F: float, cap: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """out[j] = min over 1 <= n <= cap of row[j - n] + F + n * R, and the best n (0 where none)."""
    cap = min(cap, L)
    out = np.full(L + 1, INF)
    arg = np.zeros(L + 1, dtype=np.int64)
    if cap < 1:
        return out, arg
    n = np.arange(1, cap + 1)
    j = np.arange(L + 1)[:, None] - n[None, :]  # (L+1, cap): index of the state before this stage
    vals = np.where(j >= 0, row[np.maximum(j, 0)], INF) + (F + n * R)[None, :]
    k = vals.argmin(axis=1)
    out = vals[np.arange(L + 1), k]
    arg = np.where(np.isfinite(out), k + 1, 0)
    return out, arg


def solve_order_free(R: np.ndarray, F: dict[str, np.ndarray], caps: dict[str, np.ndarray],
                     L: int) -> tuple[list[tuple[int, int, str]] | None, float]:
    """Exact minimum of sum F_role(p) + n_p R(p) over valid stage sets.

    Returns (stages as (peer index, layers, role) with the first stage first, the last stage last and
    the middle ones in index order; value), or (None, inf) when no set fits.
    """
    m = len(R)
    # best single-stage plan
    only_ok = caps["only"] >= L
    only_val = np.where(only_ok, L * R + F["only"], INF)
    best_only = int(np.argmin(only_val)) if m else -1
    only_best = float(only_val[best_only]) if m else INF

    # multi-stage: DP over peers; C[s, j] = least cost with j layers placed and end roles s taken
    C = np.full((4, L + 1), INF)
    C[NONE, 0] = 0.0
    choice_role = np.full((m, 4, L + 1), -1, dtype=np.int8)  # -1: peer unused in the best state
    choice_n = np.zeros((m, 4, L + 1), dtype=np.int16)
    for p in range(m):
        new = C.copy()
        r = float(R[p])
        for role, src, dst in (("middle", NONE, NONE), ("middle", FIRST, FIRST), ("middle", LAST, LAST),
                               ("middle", BOTH, BOTH), ("first", NONE, FIRST), ("first", LAST, BOTH),
                               ("last", NONE, LAST), ("last", FIRST, BOTH)):
            cap = int(caps[role][p])
            if cap < 1 or not np.isfinite(C[src]).any():
                continue
            val, n = _shift_min(C[src], r, float(F[role][p]), cap, L)
            better = val < new[dst]
            if better.any():
                new[dst] = np.where(better, val, new[dst])
                choice_role[p, dst] = np.where(better, _ROLE_CODE[role], choice_role[p, dst])
                choice_n[p, dst] = np.where(better, n, choice_n[p, dst])
                # remember the source state through the role (first/last change it, middle keeps it)
        C = new
    multi_best = float(C[BOTH, L])
    if not math.isfinite(multi_best) and not math.isfinite(only_best):
        return None, INF
    if only_best <= multi_best:
        return [(best_only, L, "only")], only_best
    # backtrack from the last peer to the first
    stages: list[tuple[int, int, str]] = []
    s, j = BOTH, L
    for p in range(m - 1, -1, -1):
        code = int(choice_role[p, s, j])
        if code < 0:
            continue
        role, n = _ROLE_NAME[code], int(choice_n[p, s, j])
        stages.append((p, n, role))
        j -= n
        if role == "first":
            s &= ~FIRST
        elif role == "last":
            s &= ~LAST
    assert j == 0 and s == NONE, "knapsack backtrack did not reach the empty state"
    first = [st for st in stages if st[2] == "first"]
    last = [st for st in stages if st[2] == "last"]
    mid = sorted(st for st in stages if st[2] == "middle")
    return first + mid + last, multi_best
