"""The one evaluator: every strategy's plan is judged here, on the same ruler (DESIGN.md cost model)."""

from __future__ import annotations

from dataclasses import asdict

from prismn.model import GIB, ModelSpec
from prismn.placement.costmodel import TOKEN_ID_BYTES, CostModel, CostOptions
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
    at_load: list = []  # (peer, step compute time at batch b)
    compute_s = prefill_s = energy_j = gco2e = embodied = 0.0
    for i, s in enumerate(known):
        peer = swarm.peer(s.peer)
        need = cm.stage_bytes(s.n_layers, s.embedding, s.head)
        usable = cm.usable_bytes(peer)
        if need > usable:
            problems.append(
                f"stage {i + 1} on {peer.id!r} needs {need / GIB:.2f} GiB but only {usable / GIB:.2f} GiB is usable "
                f"({peer.free_vram_gb:.2f} free x (1 - {opt.safety_margin:g})"
                + (f" - {cm.overhead_gb(peer):g} runtime overhead" if cm.overhead_gb(peer) else "")
                + f"): short by {(need - usable) / GIB:.2f} GiB"
            )
        t = s.n_layers * cm.layer_time_s(peer) + cm.stage_fixed_s(peer)
        tp = s.n_layers * cm.prefill_layer_time_s(peer) + cm.stage_fixed_s(peer)
        if s.head:
            t += cm.head_time_s(peer)
            tp += cm.head_time_s(peer)
        if s.embedding:
            t += cm.embed_time_s(peer)
            tp += cm.embed_time_s(peer)
        # the same step at the deployment's load (batch b): weights read once, KV and FLOPs per sequence
        t_load = (s.n_layers * cm.layer_time_s(peer) * cm.batch_factor(peer, batch) + cm.stage_fixed_s(peer)
                  + (cm.head_time_s(peer) * cm.head_batch_factor(peer, batch) if s.head else 0.0)
                  + (cm.embed_time_s(peer) if s.embedding else 0.0))
        at_load.append((peer, t_load))
        e = t * cm.power_w(peer)
        g = e * peer.intensity.g_per_kwh / 3.6e6
        compute_s += t
        prefill_s += tp
        energy_j += e
        gco2e += g
        embodied += t * cm.embodied_g_per_s(peer)
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
                "compute_ms_per_token": t * 1e3,
                "time_source": cm.time_source(peer),
                "energy_j_per_token": e,
                "gco2e_per_token": g,
                "intensity": peer.intensity.to_json(),
                "pue": peer.pue,
            }
        )

    hops = []
    net_s = net_prefill_s = net_j = net_g = net_load_s = 0.0
    path = route(known)
    act = spec.activation_bytes_per_token
    for a, b in zip(path, path[1:], strict=False):
        nbytes = TOKEN_ID_BYTES if a == CLIENT or b == CLIENT else act
        if b == CLIENT:
            prefill_bytes = TOKEN_ID_BYTES
        elif a == CLIENT:
            prefill_bytes = TOKEN_ID_BYTES * opt.prompt_tokens
        else:
            prefill_bytes = act * opt.prompt_tokens
        bw = min(swarm.peer(p).bandwidth_mbps for p in (a, b) if p != CLIENT)
        rtt = swarm.rtt_ms(a, b)
        h = cm.hop_time_s(rtt, nbytes, bw, opt.hop_overhead_ms)
        net_s += h
        net_load_s += cm.hop_time_s(rtt, nbytes * batch, bw, opt.hop_overhead_ms)
        net_prefill_s += cm.hop_time_s(rtt, prefill_bytes, bw, opt.hop_overhead_ms)
        j = cm.network_joules(nbytes)
        ends = [swarm.peer(p).intensity.g_per_kwh for p in (a, b) if p != CLIENT]
        net_j += j
        net_g += j * sum(ends) / len(ends) / 3.6e6
        hops.append({"from": a, "to": b, "rtt_ms": rtt, "rtt_source": swarm.rtt_source(a, b),
                     "bytes_per_token": nbytes, "ms_per_token": h * 1e3})

    latency_s = compute_s + net_s
    feasible = not problems
    load = at_load_metrics(cm, at_load, net_load_s, batch, net_g)
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
        "mean_intensity_g_per_kwh": (gco2e * 3.6e6 / energy_j) if energy_j else 0.0,
        "peers_used": len(known),
        "vram_used_gb": sum(r["vram_used_gb"] for r in stage_rows),
        **load,
    }
    return EvaluatedPlan(plan, feasible, problems, metrics, stage_rows, hops,
                         {**asdict(opt), "context_tokens": cm.context, "dtype": spec.dtype})


def at_load_metrics(cm: CostModel, at_load: list, net_load_s: float, b: int, net_g: float) -> dict[str, float]:
    """Per token at the deployment's load, every peer reserved for the whole step (DESIGN.md, issue 9):

      wall W    = sum of stage step times at batch b + every hop with b activations (one micro-batch)
      energy_i  = (idle_i x W + (active_i - idle_i) x compute_i) / b   (power with host and PUE)
      embodied  = sum_i embodied rate_i x W / b                        (by reserved wall time)
    Network energy per token does not change with b (bytes per token are the same)."""
    wall = sum(t for _, t in at_load) + net_load_s
    energy = op = emb = 0.0
    for peer, t in at_load:
        e = cm.reserved_joules(peer, wall, t) / b
        energy += e
        op += e * peer.intensity.g_per_kwh / 3.6e6
        emb += cm.embodied_g_per_s(peer) * wall / b
    return {
        "concurrency": b,
        "latency_ms_per_token_at_load": wall * 1e3,
        "tokens_per_s_at_load": b / wall if wall > 0 else 0.0,
        "energy_j_per_token_at_load": energy,
        "gco2e_per_token_at_load": op,
        "gco2e_embodied_per_token_at_load": emb,
        "gco2e_network_per_token_at_load": net_g,
        "gco2e_total_per_token_at_load": op + emb + net_g,
    }
