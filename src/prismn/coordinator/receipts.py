"""Carbon receipts: what one request cost, stage by stage, measured beside the plan's prediction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from prismn.placement.costmodel import CostModel
from prismn.placement.kernel import grams, reserved_joules
from prismn.swarm import Swarm

ENERGY_BASIS = ("measured stage compute time x modelled power (the peer's measured board power, else TDP x 0.65; x 1.3 "
                "host x PUE), this request "
                "charged its share of every batched pass it was part of (pass time x its tokens / the pass's "
                "tokens); network: the plan's per-token decode-hop energy x tokens; grid intensity as named per "
                "stage; not counted here: the idle draw of stages between passes and of warm spares while they wait "
                "(see 'reserved')")
RESERVED_BASIS = ("the plan's default carbon scope, measured: each stage's peer held for the request's decode time "
                  "shared by the sequences decoding with it (sum over steps of mean step time / that step's batch): "
                  "idle draw x that time + (active - idle) draw x its measured compute + embodied carbon x that "
                  "time, plus network; compare with the plan's gco2e_total_per_token_at_load. After a recovery the "
                  "final plan's peers are charged for the whole request")


def _measured(plan: dict[str, Any], peer: Any) -> Any:
    opts = plan.get("assumptions") or {}
    if not opts.get("use_measurements", True):
        return None
    return peer.measurement_for(str(plan.get("model", "")), str(opts.get("dtype", "")))


def build_receipt(plan: dict[str, Any], swarm: Swarm, traces: list[list[Any]], prompt_tokens: int,
                  completion_tokens: int, stats: dict[str, Any], emulated: bool,
                  earlier: Sequence[tuple[dict[str, Any], Swarm | None]] = ()) -> dict[str, Any]:
    """Sum each peer's measured compute seconds over the request and price them with the cost model.

    traces[0] is the prefill step; the rest are decode steps, which is what the plan's per-token
    prediction describes, so the decode-only figure is reported beside the whole request's.
    """
    compute_s: dict[str, float] = defaultdict(float)
    decode_s: dict[str, float] = defaultdict(float)
    batches: list[int] = []  # per decode step, the largest batch this request shared on any stage
    for step, trace in enumerate(traces):
        step_batch = 1
        for entry in trace:
            try:
                peer_id, seconds = str(entry[0]), float(entry[1])
                step_batch = max(step_batch, int(entry[2]) if len(entry) > 2 else 1)
            except (TypeError, ValueError, IndexError):
                continue
            compute_s[peer_id] += seconds
            if step > 0:
                decode_s[peer_id] += seconds
        if step > 0:
            batches.append(step_batch)
    decode_steps = max(0, len(traces) - 1)
    stages: list[dict[str, Any]] = []
    # every stage the request ran on: the plan's, and those of plans it left after a peer failed
    seen: set[str] = set()
    runs: list[tuple[dict[str, Any], Any]] = []
    for p, sw in [(plan, swarm), *earlier]:
        for st in p["stages"]:
            if sw is not None and st["peer"] not in seen and st["peer"] in sw.index:
                seen.add(st["peer"])
                runs.append((st, sw.peer(st["peer"])))
    peers = [peer for _, peer in runs]
    t = np.array([compute_s.get(p.id, 0.0) for p in peers], dtype=float)
    measured = [_measured(plan, p) for p in peers]  # the peer's own power measurement, as the plan priced it
    active = np.array([CostModel.power_w(p, m) for p, m in zip(peers, measured, strict=True)], dtype=float)
    intensity = np.array([p.intensity.g_per_kwh for p in peers], dtype=float)
    emb_rate = np.array([CostModel.embodied_g_per_s(p) for p in peers], dtype=float)
    j_stage = t * active
    g_stage = grams(j_stage, intensity)
    joules, grams_total = float(j_stage.sum()), float(g_stage.sum())
    embodied = float((t * emb_rate).sum())
    decode_t = np.array([decode_s.get(p.id, 0.0) for p in peers], dtype=float)
    decode_g = float(grams(decode_t * active, intensity).sum())
    for (st, peer), ti, ji, gi in zip(runs, t, j_stage, g_stage, strict=True):
        stages.append({"peer": peer.id, "layers": st["layers"], "zone": peer.intensity.zone,
                       "intensity_g_per_kwh": peer.intensity.g_per_kwh, "intensity_source": peer.intensity.source,
                       "intensity_provider": peer.intensity.provider,
                       "intensity_fallback_from": list(peer.intensity.fallback_from), "basis": peer.intensity.basis,
                       "intensity_year": peer.intensity.year, "signal": peer.intensity.signal,
                       "compute_ms": float(ti) * 1e3, "joules": float(ji), "gco2e": float(gi)})
    m = plan.get("metrics", {})
    net_j = m.get("network_energy_j_per_token", 0.0) * completion_tokens  # decode hops, as the plan prices them
    net_g = m.get("gco2e_network_per_token", 0.0) * completion_tokens
    # the reserved scope, measured: the plan's peers held while this request decoded, shared by its batch
    final = [i for i, (st, _) in enumerate(runs) if st in plan["stages"]]
    step_s = stats.get("latency_ms_per_token")
    reserved = None
    if decode_steps and step_s is not None and final:
        held_s = step_s / 1e3 * sum(1.0 / b for b in batches) if batches else step_s / 1e3 * decode_steps
        k = np.array(final)
        idle = np.array([CostModel.idle_power_w(runs[i][1], measured[i]) for i in final], dtype=float)
        j_res = reserved_joules(idle, active[k], held_s, decode_t[k])
        op = float(grams(j_res, intensity[k]).sum())
        emb = float((emb_rate[k] * held_s).sum())
        net_tok = m.get("gco2e_network_per_token", 0.0)
        reserved = {"held_s": held_s, "joules": float(j_res.sum()), "gco2e_operational": op, "gco2e_embodied": emb,
                    "gco2e_per_token": (op + emb) / decode_steps + net_tok,
                    "predicted_gco2e_per_token": m.get("gco2e_total_per_token_at_load"),
                    "basis": RESERVED_BASIS}
    return {
        "gco2e": grams_total + net_g,
        "gco2e_compute": grams_total,
        "gco2e_network": net_g,
        "gco2e_embodied": embodied,
        "joules": joules + net_j,
        "gco2e_per_token": (grams_total + net_g) / completion_tokens if completion_tokens else 0.0,
        "decode_gco2e_per_token": (decode_g / decode_steps + m.get("gco2e_network_per_token", 0.0)
                                   if decode_steps else None),
        "energy_basis": ENERGY_BASIS,
        "reserved": reserved,
        "batch": {"mean": sum(batches) / len(batches) if batches else None, "max": max(batches, default=None),
                  "decode_steps": len(batches)},
        "measured": {
            "latency_ms_per_token": stats.get("latency_ms_per_token"),
            "ttft_ms": stats.get("ttft_ms"),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "network": "emulated wide-area delays (RTT/2 per link, from distance)" if emulated else "real links",
        },
        "predicted": {
            "latency_ms_per_token": m.get("latency_ms_per_token"),
            "ttft_ms": m.get("ttft_ms"),
            "gco2e_per_token": (m.get("gco2e_per_token", 0.0) + m.get("gco2e_network_per_token", 0.0)),
        },
        "stages": stages,
        "strategy": plan.get("strategy"),
    }
