"""The two hackathon-era strategies, reproduced faithfully, flaws included (research/seed-algorithm.md).

Never "fix" these: they are the ruler's zero. Each decides with the hackathon estimator; the shared
evaluator then judges the result, so a plan that does not fit is reported as infeasible.
"""

from __future__ import annotations

import math

from prismn.geo import haversine_km
from prismn.model import ModelSpec, catalog, resolve_catalog_id
from prismn.placement.hackathon_estimator import (
    SAFETY_MARGIN,
    HackathonEstimate,
    capacity,
    estimate,
    proportional_split,
)
from prismn.placement.plan import Plan, Stage
from prismn.swarm import Swarm

WEIGHTS = {"low-carbon": (0.7, 0.2, 0.1), "low-latency": (0.1, 0.2, 0.7)}
BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4}


def _estimate_for(spec: ModelSpec) -> HackathonEstimate:
    cid = resolve_catalog_id(spec.name)
    if cid is not None:
        config = catalog()[cid]
    else:  # rebuild the fields the estimator reads from the spec
        config = {
            "vocab_size": spec.vocab, "hidden_size": spec.hidden, "num_hidden_layers": spec.n_layers,
            "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim,
            "intermediate_size": spec.intermediate, "tie_word_embeddings": spec.tied,
        }
    return estimate(config, BITS[spec.dtype])


def _stages(split: list[tuple[str, int]], embedding_peer: str) -> list[Stage]:
    """Layer ranges in pipeline order; embedding and LM head both live on the embedding peer.

    The hackathon estimator counts the LM head inside the embedding peer's budget, so that peer holds
    both; when it sits mid-pipeline the evaluator's route pays the detour to it and back.
    """
    stages, start = [], 0
    for pid, n in split:
        stages.append(Stage(pid, start, start + n, embedding=pid == embedding_peer, head=pid == embedding_peer))
        start += n
    return stages


def _estimator_notes(est: HackathonEstimate) -> dict:
    return {"estimator": {"per_layer_gb": est.per_layer_gb, "embedding_gb": est.embedding_gb,
                          "total_gb": est.total_gb}}


def tandemn(spec: ModelSpec, swarm: Swarm) -> Plan:
    """VRAM-proportional split over every peer, capacity-descending order, with the rebalance step."""
    est = _estimate_for(spec)
    peers = swarm.peers
    L = spec.n_layers
    emb = max(peers, key=lambda p: p.free_vram_gb).id  # max() keeps the first on a tie
    caps = {p.id: capacity(p.free_vram_gb, est, p.id == emb) for p in peers}
    order = sorted((p.id for p in peers), key=lambda pid: -caps[pid])  # stable
    split = proportional_split(order, caps, L)

    notes = _estimator_notes(est)
    vram = {p.id: p.free_vram_gb for p in peers}

    def used(pid: str, n: int) -> float:
        return n * est.per_layer_gb + (est.embedding_gb if pid == emb else 0.0)

    utils = [round(used(pid, n) / vram[pid] * 100, 1) for pid, n in split if vram[pid] > 0]
    if utils and max(utils) - min(utils) > 20:
        target = sum(utils) / len(utils)
        remaining, rebalanced = L, []
        for p in sorted(peers, key=lambda p: -p.free_vram_gb):
            budget = p.free_vram_gb * target / 100 * (1 - SAFETY_MARGIN)
            if p.id == emb:
                budget -= est.embedding_gb
            n = min(max(0, int(budget / est.per_layer_gb)), remaining)
            remaining -= n
            if n > 0 or p.id == emb:
                rebalanced.append((p.id, n))
        notes["rebalance"] = {"spread_pct": round(max(utils) - min(utils), 1), "target_pct": round(target, 1),
                              "used": remaining == 0}
        if remaining == 0:
            split = rebalanced
    placed = sum(n for _, n in split)
    problems = [] if placed == L else [f"tandemn placed only {placed} of {L} layers (its own estimator)"]
    if emb not in {pid for pid, _ in split}:
        problems.append(f"tandemn dropped its embedding peer {emb!r} (no room for a layer): the embedding has no home")
    return Plan("tandemn", spec.name, _stages(split, emb), notes, problems)


def hackathon_score(ci: float, vram: float, d_km: float, preference: str) -> float:
    wc, wv, wd = WEIGHTS[preference]
    return wc * ci / 1000 + wv * (1 - min(vram / 100, 1)) + wd * math.log1p(min(d_km, 10000)) / math.log1p(10000)


def _path_km(order: list[int], dist: list[list[float]]) -> float:
    return sum(dist[a][b] for a, b in zip(order, order[1:], strict=False))


def two_opt(order: list[int], dist: list[list[float]]) -> list[int]:
    """First-improvement 2-opt on an open path with position 0 fixed; restarts the scan on improvement."""
    n = len(order)
    if n <= 3:
        return order
    best = _path_km(order, dist)
    improved = True
    while improved:
        improved = False
        for i in range(1, n - 1):
            for j in range(i + 1, n):
                cand = order[:i] + order[i : j + 1][::-1] + order[j + 1 :]
                length = _path_km(cand, dist)  # the seed recomputes every leg: O(n) per candidate
                if length < best - 1e-12:
                    order, best, improved = cand, length, True
                    break
            if improved:
                break
    return order


def prismn_hackathon(spec: ModelSpec, swarm: Swarm, preference: str = "low-carbon") -> Plan:
    """Weighted score -> greedy selection -> nearest-neighbour tour + 2-opt -> proportional split."""
    if preference not in WEIGHTS:
        raise ValueError(f"preference must be one of {', '.join(WEIGHTS)}")
    est = _estimate_for(spec)
    c = swarm.coordinator
    cands = [p for p in swarm.peers if p.free_vram_gb > 0]
    d_server = {p.id: haversine_km(c.lat, c.lon, p.lat, p.lon) for p in cands}
    scored = sorted(
        cands, key=lambda p: hackathon_score(p.intensity.g_per_kwh, p.free_vram_gb, d_server[p.id], preference)
    )
    selected, total = [], 0.0
    for p in scored:
        if total >= est.total_gb:
            break
        selected.append(p)
        total += p.free_vram_gb * (1 - SAFETY_MARGIN)

    notes = _estimator_notes(est)
    notes["preference"] = preference
    if not selected:
        return Plan("prismn-hackathon", spec.name, [], notes, ["no peer has free VRAM"])

    n = len(selected)
    dist = [[haversine_km(a.lat, a.lon, b.lat, b.lon) for b in selected] for a in selected]
    start = min(range(n), key=lambda i: d_server[selected[i].id])
    order, left = [start], set(range(n)) - {start}
    while left:
        last = order[-1]
        nxt = min(sorted(left), key=lambda j: dist[last][j])
        order.append(nxt)
        left.remove(nxt)
    order = two_opt(order, dist)

    emb = max(selected, key=lambda p: p.free_vram_gb).id
    caps = {p.id: capacity(p.free_vram_gb, est, p.id == emb) for p in selected}
    ordered_ids = [selected[i].id for i in order]
    split = proportional_split(ordered_ids, caps, spec.n_layers)
    placed = sum(k for _, k in split)
    used = {pid for pid, _ in split}
    notes["mean_carbon_intensity"] = sum(p.intensity.g_per_kwh for p in selected if p.id in used) / max(1, len(used))
    notes["path_km"] = _path_km(order, dist)
    problems = []
    if total < est.total_gb:
        problems.append(f"selected peers offer {total:.2f} GB < the {est.total_gb:.2f} GB the model needs")
    if placed < spec.n_layers:
        problems.append(f"prismn-hackathon placed only {placed} of {spec.n_layers} layers: the model does not fit")
    stages = _stages(split, emb)
    if emb not in used:  # its estimator reserved the embedding there, so it holds embedding and head only
        stages.append(Stage(emb, placed, placed, embedding=True, head=True))
    return Plan("prismn-hackathon", spec.name, stages, notes, problems)
