"""A local search that improves a plan the exact search could not prove (deep plans), never claiming more.

When a search stops at its budget it returns its best plan and a proven lower bound. On deep plans
(20-40 stages) that plan is often a few moves from a better one: a peer swapped for an unused one, a
stage dropped or added, a stretch of the route reversed or moved. This module tries those moves with
the objective priced exactly (the same arrays as the engine's) and keeps the best plan it meets. The
proven bound does not change, so the plan's `within X%` can only shrink. For a fixed route the
objective is linear in the layer counts (latency, additive carbon, and reserved carbon A x W + B with
A fixed by the set), so each route's layers are split optimally by filling the cheapest rate first.
"""

from __future__ import annotations

import math

import numpy as np

from prismn.placement.instance import ROLES
from prismn.placement.search import Costs, path_cost

MAX_PEERS = 256  # swarms with more usable peers are not polished (each round prices k x m moves in Python)
MAX_ROUNDS = 40  # best-improvement rounds (a deterministic budget)


def _roles(k: int) -> list[str]:
    return ["only"] if k == 1 else ["first"] + ["middle"] * (k - 2) + ["last"]


class Polisher:
    """Prices routes over the engine's usable peers for wl x latency + wc x carbon (the engine's scope)."""

    def __init__(self, engine, wl: float, wc: float):
        inst = self.inst = engine.inst
        self.wl, self.wc = wl, wc
        self.L = inst.L
        self.peers = engine.usable
        self.pos = {int(p): i for i, p in enumerate(self.peers)}
        idx = self.peers
        self.caps = {r: np.minimum(inst.caps[r][idx], inst.L) for r in ROLES}
        H = inst.hop_time_matrix(idx)  # client last; the diagonal (inf) is never a hop of a plan
        wH = wl * np.where(np.isfinite(H), H, 0.0)
        self.reserved = inst.carbon_scope == "reserved"
        lat_R, lat_F = inst.latency.per_layer[idx], {r: inst.latency.fixed[r][idx] for r in ROLES}
        if self.reserved:  # f = A x W + B: the latency term is additive, the carbon term priced per route
            self.P = Costs(wl * lat_R, {r: wl * lat_F[r] for r in ROLES}, wH)
            self.wall = Costs(inst.wall.per_layer[idx], {r: inst.wall.fixed[r][idx] for r in ROLES},
                              inst.hop_time_matrix(idx, inst.batch))
            self.B = Costs(inst.reserved.per_layer[idx], {r: inst.reserved.fixed[r][idx] for r in ROLES},
                           np.zeros_like(H))
            self.alpha = inst.alpha[idx]
        else:
            self.P = Costs(wl * lat_R + wc * inst.carbon.per_layer[idx],
                           {r: wl * lat_F[r] + wc * inst.carbon.fixed[r][idx] for r in ROLES}, wH)

    def price(self, order: list[int]) -> tuple[float, list[tuple[int, int, str]] | None]:
        """The least objective of a route (positions in self.peers) over its layer splits, and that plan."""
        k, L = len(order), self.L
        roles = _roles(k)
        cap = np.array([self.caps[r][q] for q, r in zip(order, roles, strict=True)])
        if (cap < (L if k == 1 else 1)).any() or cap.sum() < L or k > L:
            return math.inf, None
        o = np.array(order)
        rate = self.P.R[o] + (self.wc * (self.alpha[o].sum() * self.wall.R[o] + self.B.R[o]) if self.reserved else 0.0)
        n = np.ones(k, dtype=np.int64)
        left = L - k
        for i in np.argsort(rate, kind="stable"):  # linear in n: the cheapest rate first, up to each cap
            take = min(int(cap[i]) - 1, left)
            n[i] += take
            left -= take
        path = [(q, int(x), r) for q, x, r in zip(order, n, roles, strict=True)]
        return self.value(path), path

    def value(self, path: list[tuple[int, int, str]]) -> float:
        v = path_cost(self.P, path)
        if self.reserved:
            A = sum(float(self.alpha[q]) for q, _, _ in path)
            v += self.wc * (A * path_cost(self.wall, path) + path_cost(self.B, path))
        return v

    def moves(self, order: list[int]):
        """Every route one move away: swap a peer for an unused one, drop a stage, add an unused peer
        anywhere, reverse a stretch (2-opt), move one stage elsewhere (or-opt)."""
        k = len(order)
        used = set(order)
        unused = [u for u in range(len(self.peers)) if u not in used]
        for i in range(k):
            for u in unused:
                yield order[:i] + [u] + order[i + 1:]
        if k > 1:
            for i in range(k):
                yield order[:i] + order[i + 1:]
        for u in unused:
            for i in range(k + 1):
                yield order[:i] + [u] + order[i:]
        for i in range(k):
            for j in range(i + 2, k + 1):
                yield order[:i] + order[i:j][::-1] + order[j:]
        for i in range(k):
            rest = order[:i] + order[i + 1:]
            for j in range(k):
                if j != i:
                    yield rest[:j] + [order[i]] + rest[j:]

    def run(self, stages: list[tuple[int, int, str]]) -> tuple[list[tuple[int, int, str]], int]:
        """Best-improvement local search from a plan (peer indices in the swarm): (the best plan met, in
        swarm indices; the rounds that improved it)."""
        order = [self.pos[int(p)] for p, _, _ in stages]
        best, path = self.price(order)  # the route's optimal split: never worse than the search's own
        rounds = 0
        while rounds < MAX_ROUNDS:
            top, top_path = best, None
            for o in self.moves(order):
                v, p = self.price(o)
                if v < top * (1 - 1e-12):
                    top, top_path = v, p
            if top_path is None:
                break
            best, path, order = top, top_path, [q for q, _, _ in top_path]
            rounds += 1
        return [(int(self.peers[q]), n, r) for q, n, r in path], rounds


def polish(engine, sol, wl: float, wc: float):
    """sol improved by the local search when it is unproven (its bound kept), else sol itself."""
    from prismn.placement.optimal import Solution

    if sol is None or sol.proven or len(engine.usable) > MAX_PEERS:
        return sol
    stages, rounds = Polisher(engine, wl, wc).run(sol.stages)
    if not rounds:
        return sol
    lat, car = engine._metrics(stages)
    value = wl * lat + wc * car
    if value >= sol.value * (1 - 1e-12):
        return sol
    stats = {**sol.stats, "polished": {"from": sol.value, "rounds": rounds}}
    return Solution(stages, lat, car, False, value, stats)
