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


_SRC_DST = {  # role -> (source states, destination states); in this order, ties keep the earlier role
    "middle": ((NONE, FIRST, LAST, BOTH), (NONE, FIRST, LAST, BOTH)),
    "first": ((NONE, LAST), (FIRST, BOTH)),
    "last": ((NONE, FIRST), (LAST, BOTH)),
}


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

    # multi-stage: DP over peers; C[p + 1][s, j] = least cost over peers 0..p with j layers placed and end
    # roles s taken (compiled loops, placement/compiled.py). The choices are recovered afterwards.
    from prismn.placement.compiled import as_f64, as_i64, knapsack_table

    capr = {role: np.minimum(caps[role], L).astype(np.int64) for role in _SRC_DST}
    C = knapsack_table(as_f64(R), as_f64(F["middle"]), as_f64(F["first"]), as_f64(F["last"]),
                       as_i64(capr["middle"]), as_i64(capr["first"]), as_i64(capr["last"]), int(L))
    multi_best = float(C[m, BOTH, L])
    if not math.isfinite(multi_best) and not math.isfinite(only_best):
        return None, INF
    if only_best <= multi_best:
        return [(best_only, L, "only")], only_best
    # backtrack from the last peer to the first: unused where the value did not change; else the first
    # role (in _SRC_DST's order) and the fewest layers that give it, as the forward pass chose
    stages: list[tuple[int, int, str]] = []
    s, j = BOTH, L
    for p in range(m - 1, -1, -1):
        target, prev = C[p + 1, s, j], C[p]
        if target == prev[s, j]:
            continue
        for role, (src, dst) in _SRC_DST.items():
            cap = min(int(capr[role][p]), j)
            if cap < 1 or s not in dst:
                continue
            s0 = src[dst.index(s)]
            n = np.arange(1, cap + 1)
            vals = prev[s0, j - n] + (float(F[role][p]) + n * float(R[p]))
            hit = np.nonzero(vals == target)[0]
            if len(hit):
                stages.append((p, int(n[hit[0]]), role))
                s, j = s0, j - int(n[hit[0]])
                break
        else:
            raise AssertionError("knapsack backtrack found no stage that gives the table's value")
    assert j == 0 and s == NONE, "knapsack backtrack did not reach the empty state"
    first = [st for st in stages if st[2] == "first"]
    last = [st for st in stages if st[2] == "last"]
    mid = sorted(st for st in stages if st[2] == "middle")
    return first + mid + last, multi_best
