"""The one evaluator: every strategy's plan is judged here, on the same ruler (DESIGN.md cost model)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from prismn.model import GIB, ModelSpec
from prismn.placement.costmodel import CostModel, CostOptions
from prismn.placement.kernel import (
    J_PER_KWH,
    PeerCosts,
    grams,
    hop_bytes,
    hop_seconds,
    network_joules,
    reserved_at_load,
)
from prismn.placement.plan import EvaluatedPlan, Plan, Stage
from prismn.swarm import CLIENT, Swarm


def route(stages: list[Stage]) -> list[str]:
    """The loop a token takes: client -> embedding holder -> stages in order -> head holder -> client.

    Plans from Prismn hold the embedding on the first stage and the head on the last; a baseline that
    put them elsewhere pays the detour, so the route visits that peer again.
    """
    peers = [s.peer for s in stages]
    emb = next((s.peer for s in stages if s.embedding), None)
    head = next((s.peer for s in stages if s.head), None)
    path = [CLIENT]
    if emb is not None and (not peers or peers[0] != emb):
        path.append(emb)
    path.extend(peers)
    if head is not None and path[-1] != head:
        path.append(head)
    path.append(CLIENT)
    return [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]


def check_structure(stages: list[Stage], swarm: Swarm, n_layers: int) -> list[str]:
    problems: list[str] = []
    if not stages:
        return ["the plan has no stages"]
    seen: set[str] = set()
    for i, s in enumerate(stages):
        if s.peer not in swarm.index:
            problems.append(f"stage {i + 1} names unknown peer {s.peer!r}")
        if s.peer in seen:
            problems.append(f"peer {s.peer!r} holds more than one stage")
        seen.add(s.peer)
        if s.start > s.end or s.start < 0 or s.end > n_layers:
            problems.append(f"stage {i + 1} on {s.peer!r} has an invalid layer range [{s.start}, {s.end})")
    expected = 0
    for i, s in enumerate(stages):
        if s.n_layers == 0:
            continue
        if s.start != expected:
            problems.append(
                f"layers are not contiguous: stage {i + 1} on {s.peer!r} starts at {s.start}, expected {expected}"
            )
        expected = s.end
    if expected != n_layers:
        problems.append(f"only {expected} of {n_layers} layers are placed: {n_layers - expected} missing")
    for what, flag in (("embedding", "embedding"), ("LM head", "head")):
        n = sum(getattr(s, flag) for s in stages)
        if n != 1:
            problems.append(f"the {what} is held by {n} stages, expected exactly 1")
    return problems


def evaluate_plan(
    plan: Plan, spec: ModelSpec, swarm: Swarm, options: CostOptions | None = None
) -> EvaluatedPlan:
    """Feasibility (with reasons) and predicted metrics of a plan under the shared cost model."""
    cm = CostModel(spec, options)
    opt = cm.opt
    problems = list(plan.problems) + check_structure(plan.stages, swarm, spec.n_layers)
    known = [s for s in plan.stages if s.peer in swarm.index]

    stage_rows = []
    batch = opt.concurrency
    peers = [swarm.peer(s.peer) for s in known]
    pc = PeerCosts.of(cm, peers)
    n = np.array([s.n_layers for s in known], dtype=float)
    emb = np.array([s.embedding for s in known], dtype=bool)
    head = np.array([s.head for s in known], dtype=bool)
    t = pc.stage_s(n, emb, head)  # decode step, batch 1
    tp = pc.prefill_stage_s(n, emb, head)
    t_load = pc.stage_s(n, emb, head, at_load=True)  # the same step at the deployment's load (batch b)
    e = t * pc.active_w
    g = grams(e, pc.intensity)
    for i, (s, peer) in enumerate(zip(known, peers, strict=True)):
        need = cm.stage_bytes(s.n_layers, s.embedding, s.head)
        usable = cm.usable_bytes(peer)
        if need > usable:
            problems.append(
                f"stage {i + 1} on {peer.id!r} needs {need / GIB:.2f} GiB but only {usable / GIB:.2f} GiB is usable "
                f"({peer.free_vram_gb:.2f} free x (1 - {opt.safety_margin:g})"
                + (f" - {cm.overhead_gb(peer):g} runtime overhead" if cm.overhead_gb(peer) else "")
                + f"): short by {(need - usable) / GIB:.2f} GiB"
            )
        stage_rows.append(
            {
                "peer": peer.id,
                "layers": [s.start, s.end],
                "embedding": s.embedding,
                "head": s.head,
                "gpu": peer.gpu.name + (" (assumed)" if peer.gpu_assumed else ""),
                "vram_used_gb": round(need / GIB, 4),
                "vram_free_gb": peer.free_vram_gb,
                "vram_usable_gb": round(usable / GIB, 4),
                "fits": need <= usable,
                "compute_ms_per_token": float(t[i]) * 1e3,
                "time_source": cm.time_source(peer),
                "power_source": cm.power_source(peer),
                "energy_j_per_token": float(e[i]),
                "gco2e_per_token": float(g[i]),
                "intensity": peer.intensity.to_json(),
                "pue": peer.pue,
            }
        )
    compute_s, prefill_s, energy_j, gco2e = float(t.sum()), float(tp.sum()), float(e.sum()), float(g.sum())
    embodied = float((t * pc.embodied_g_per_s).sum())

    path = route(known)
    hop_pairs = list(zip(path, path[1:], strict=False))
    from_client = np.array([a == CLIENT for a, _ in hop_pairs], dtype=bool)
    to_client = np.array([b == CLIENT for _, b in hop_pairs], dtype=bool)
    rtt = np.array([swarm.rtt_ms(a, b) for a, b in hop_pairs], dtype=float)
    bw = np.array([min(swarm.peer(p).bandwidth_mbps for p in (a, b) if p != CLIENT) for a, b in hop_pairs],
                  dtype=float)
    ends_g = np.array([np.mean([swarm.peer(p).intensity.g_per_kwh for p in (a, b) if p != CLIENT])
                       for a, b in hop_pairs], dtype=float)
    nbytes = hop_bytes(from_client, to_client, spec.activation_bytes_per_token)
    h = hop_seconds(rtt, nbytes, bw, opt.hop_overhead_ms)
    net_s = float(h.sum())
    net_load_s = float(hop_seconds(rtt, nbytes * batch, bw, opt.hop_overhead_ms).sum())
    net_prefill_s = float(hop_seconds(rtt, hop_bytes(from_client, to_client, spec.activation_bytes_per_token,
                                                     opt.prompt_tokens), bw, opt.hop_overhead_ms).sum())
    hop_j = network_joules(nbytes, opt.k_net_kwh_per_gb)
    net_j, net_g = float(hop_j.sum()), float(grams(hop_j, ends_g).sum())
    hops = [{"from": a, "to": b, "rtt_ms": float(rtt[k]), "rtt_source": swarm.rtt_source(a, b),
             "bytes_per_token": float(nbytes[k]), "ms_per_token": float(h[k]) * 1e3}
            for k, (a, b) in enumerate(hop_pairs)]

    latency_s = compute_s + net_s
    feasible = not problems
    load = at_load_metrics(pc, t_load, net_load_s, batch, net_g)
    metrics = {
        "latency_ms_per_token": latency_s * 1e3,
        "compute_ms_per_token": compute_s * 1e3,
        "network_ms_per_token": net_s * 1e3,
        "tokens_per_s": 1.0 / latency_s if latency_s > 0 else 0.0,
        "ttft_ms": (prefill_s + net_prefill_s) * 1e3,
        "energy_j_per_token": energy_j,
        "network_energy_j_per_token": net_j,
        "gco2e_per_token": gco2e,
        "gco2e_network_per_token": net_g,
        "gco2e_embodied_per_token": embodied,
        "gco2e_total_per_token": gco2e + net_g + embodied,
        "mean_intensity_g_per_kwh": (gco2e * J_PER_KWH / energy_j) if energy_j else 0.0,
        "peers_used": len(known),
        "vram_used_gb": sum(r["vram_used_gb"] for r in stage_rows),
        **load,
    }
    return EvaluatedPlan(plan, feasible, problems, metrics, stage_rows, hops,
                         {**asdict(opt), "context_tokens": cm.context, "dtype": spec.dtype})


def at_load_metrics(pc: PeerCosts, t_load: np.ndarray, net_load_s: float, b: int, net_g: float) -> dict[str, float]:
    """Per token at the deployment's load, every peer reserved for the whole step (kernel.reserved_at_load):
    wall W = sum of stage step times at batch b + every hop with b activations (one micro-batch).
    Network energy per token does not change with b (bytes per token are the same)."""
    wall = float(t_load.sum()) + net_load_s
    r = reserved_at_load(pc, t_load, wall, b)
    return {
        "concurrency": b,
        "latency_ms_per_token_at_load": wall * 1e3,
        "tokens_per_s_at_load": b / wall if wall > 0 else 0.0,
        "energy_j_per_token_at_load": r["energy_j"],
        "gco2e_per_token_at_load": r["operational_g"],
        "gco2e_embodied_per_token_at_load": r["embodied_g"],
        "gco2e_network_per_token_at_load": net_g,
        "gco2e_total_per_token_at_load": r["operational_g"] + r["embodied_g"] + net_g,
    }
