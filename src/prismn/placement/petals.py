"""Strategy `petals`: a SIMULATION of what a Petals swarm would do with these peers.

Not Petals' code; its two rules (research/anchors.md §1), replayed on Prismn's cost model:
  1. Block selection, in join order (the swarm file's order): each server takes as many blocks as
     fit (Petals `_choose_num_blocks`) and picks the window whose *sorted* per-block throughput vector
     is lexicographically smallest (`_choose_best_start`), i.e. it fills the weakest part of the
     pipeline. Per-server throughput = min(compute rps, network rps), as in `server/throughput.py`,
     with rps = 1 / (seconds per block) and network rps = bandwidth / activation bytes. The periodic
     rebalancing (`should_choose_other_blocks`) is not simulated.
  2. The client's `min_latency` route: Dijkstra over spans, each server run to the end of its span
     before switching, edge weights = hop time + compute time. Here both come from Prismn's cost
     model with perfect knowledge (the strongest Petals client: real ones ping only a few servers).
Adaptation to Prismn's runtime: Petals clients hold the embedding and LM head; in Prismn the first
stage holds the embedding and the last the head, so a server sizes its span to leave room for both
(so that any route is memory-feasible), and the route pays their compute time.
"""

from __future__ import annotations

import math

import numpy as np

from prismn import geo
from prismn.model import ModelSpec
from prismn.placement.costmodel import CostOptions
from prismn.placement.instance import Instance
from prismn.placement.kernel import hop_seconds
from prismn.placement.plan import Plan, Stage
from prismn.swarm import Swarm

STRATEGY = "petals"


def block_selection(inst: Instance) -> tuple[np.ndarray, np.ndarray]:
    """Each server's span [start, end) in join order; servers that cannot hold a block get (-1, -1)."""
    L, n = inst.L, inst.n
    span = np.minimum.reduce([np.minimum(inst.caps[r], L) for r in ("only", "first", "middle", "last")])
    rps = 1.0 / inst.lt
    net = inst.bw * 1e6 / 8 / inst.act_bytes
    thr = np.minimum(rps, net)
    start = np.full(n, -1)
    end = np.full(n, -1)
    block_thr = np.zeros(L)
    from numpy.lib.stride_tricks import sliding_window_view

    for i in range(n):
        k = int(span[i])
        if k < 1:
            continue
        if k >= L:
            s = 0
        else:
            win = np.sort(sliding_window_view(block_thr, k), axis=1)  # (L-k+1, k)
            # lexicographically smallest sorted window; ties -> smallest start (min over (list, i))
            s = int(np.lexsort(win.T[::-1])[0])
        start[i], end[i] = s, s + k
        block_thr[s:s + k] += thr[i]
    return start, end


def route(inst: Instance, start: np.ndarray, end: np.ndarray) -> tuple[list[tuple[int, int, int]], float]:
    """Min-latency route over spans: [(server, first block, end block)], and its latency (s)."""
    L = inst.L
    serving = np.nonzero(start >= 0)[0]
    if not len(serving):
        return [], math.inf
    lt = inst.lt
    # arrival time at server q entering at block b; finish time of q's span
    best_finish = np.full(inst.n, math.inf)
    finish_from = {}  # q -> (entry block, predecessor or -1)
    ending_at: dict[int, list[int]] = {}
    for q in serving:
        ending_at.setdefault(int(end[q]), []).append(int(q))
    act = inst.act_bytes
    ovh_ms = inst.opt.hop_overhead_ms
    pruneable = not inst.any_measured
    for b in range(L):
        cover = serving[(start[serving] <= b) & (end[serving] > b)]
        if not len(cover):
            return [], math.inf
        if b == 0:
            H = inst.hop_time_matrix(cover)  # last row: from the client
            arrive = H[len(cover), :len(cover)] + inst.et[cover]
            pred = np.full(len(cover), -1)
        else:
            prev = [r for r in ending_at.get(b, []) if math.isfinite(best_finish[r])]
            if not prev:
                continue
            prev = np.array(sorted(prev, key=lambda r: best_finish[r]))
            if pruneable and len(prev) > 1:
                prev = _prune_predecessors(inst, prev, best_finish, act)
            rtt = inst.rtt_ms(prev, cover)
            bw = np.minimum(inst.bw[prev][:, None], inst.bw[cover][None, :])
            hop = hop_seconds(rtt, act, bw, ovh_ms)
            hop[prev[:, None] == cover[None, :]] = math.inf
            tot = best_finish[prev][:, None] + hop
            k = tot.argmin(axis=0)
            arrive = tot[k, np.arange(len(cover))]
            pred = prev[k]
        fin = arrive + (end[cover] - b) * lt[cover]
        better = fin < best_finish[cover]
        for q, f, pr in zip(cover[better], fin[better], pred[better], strict=False):
            best_finish[q] = f
            finish_from[int(q)] = (b, int(pr))
    last = np.array(ending_at.get(L, []))
    if not len(last):
        return [], math.inf
    last = last[np.isfinite(best_finish[last])]
    if not len(last):
        return [], math.inf
    H = inst.hop_time_matrix(last)
    total = best_finish[last] + inst.ht[last] + H[:len(last), len(last)]
    q = int(last[int(np.argmin(total))])
    lat = float(total.min())
    hops = []
    while q >= 0:
        b, pr = finish_from[q]
        hops.append((q, b, int(end[q])))
        q = pr
    return hops[::-1], lat


def _prune_predecessors(inst: Instance, prev: np.ndarray, finish: np.ndarray, act: float) -> np.ndarray:
    """Drop r if a kept r2 reaches every server no later: finish(r2) + slack(r2, r) <= finish(r)."""
    kept = [int(prev[0])]
    def wire_s(bw):  # the bandwidth-dependent part of a hop carrying activations
        return hop_seconds(0.0, act, bw, 0.0)

    for r in prev[1:]:
        k = np.array(kept)
        d = geo.haversine_matrix_km(inst.lat[[r]], inst.lon[[r]], inst.lat[k], inst.lon[k])[0]
        slack = geo.ROUTE_FACTOR * d / geo.V_FIBRE_KM_PER_MS / 1000.0
        slack += np.maximum(0.0, wire_s(inst.bw[k]) - wire_s(inst.bw[r]))
        if not np.any(finish[k] + slack <= finish[r]):
            kept.append(int(r))
    return np.array(kept)


def plan_petals(spec: ModelSpec, swarm: Swarm, options: CostOptions | None = None) -> Plan:
    inst = Instance(spec, swarm, options)
    start, end = block_selection(inst)
    hops, lat = route(inst, start, end)
    notes = {"simulation": "Petals block selection (join order) + min-latency Dijkstra route, on Prismn's "
                           "cost model; not Petals itself",
             "servers": int((start >= 0).sum()), "predicted_latency_ms": lat * 1e3}
    if not hops:
        covered = np.zeros(inst.L, dtype=bool)
        for s, e in zip(start, end, strict=False):
            if s >= 0:
                covered[s:e] = True
        missing = int((~covered).sum())
        why = (f"{missing} of {inst.L} blocks have no server" if missing else "no route covers every block")
        return Plan(STRATEGY, spec.name, [], notes, [f"petals: {why} (Petals would raise MissingBlocksError)"])
    stages = []
    for k, (q, b, e) in enumerate(hops):
        stages.append(Stage(swarm.peers[q].id, b, e, embedding=k == 0, head=k == len(hops) - 1))
    return Plan(STRATEGY, spec.name, stages, notes)
