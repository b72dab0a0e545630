"""Carbon receipts: what one request cost, stage by stage, measured beside the plan's prediction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from prismn.placement.costmodel import CostModel
from prismn.swarm import Swarm

ENERGY_BASIS = ("measured stage compute time x modelled power (TDP x 0.65 active x 1.3 host x PUE), this request "
                "charged its share of every batched pass it was part of (pass time x its tokens / the pass's "
                "tokens); network: the plan's per-token decode-hop energy x tokens; grid intensity as named per "
                "stage; not counted: the idle draw of stages between passes and of warm spares while they wait")


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
    stages, joules, grams, embodied, decode_g = [], 0.0, 0.0, 0.0, 0.0
    # every stage the request ran on: the plan's, and those of plans it left after a peer failed
    seen: set[str] = set()
    runs: list[tuple[dict[str, Any], Any]] = []
    for p, sw in [(plan, swarm), *earlier]:
        for st in p["stages"]:
            if sw is not None and st["peer"] not in seen and st["peer"] in sw.index:
                seen.add(st["peer"])
                runs.append((st, sw.peer(st["peer"])))
    for st, peer in runs:
        t = compute_s.get(peer.id, 0.0)
        j = t * CostModel.power_w(peer)
        g = j * peer.intensity.g_per_kwh / 3.6e6
        joules += j
        grams += g
        embodied += t * CostModel.embodied_g_per_s(peer)
        decode_g += decode_s.get(peer.id, 0.0) * CostModel.power_w(peer) * peer.intensity.g_per_kwh / 3.6e6
        stages.append({"peer": peer.id, "layers": st["layers"], "zone": peer.intensity.zone,
                       "intensity_g_per_kwh": peer.intensity.g_per_kwh, "intensity_source": peer.intensity.source,
                       "intensity_provider": peer.intensity.provider,
                       "intensity_fallback_from": list(peer.intensity.fallback_from), "basis": peer.intensity.basis,
                       "intensity_year": peer.intensity.year, "signal": peer.intensity.signal,
                       "compute_ms": t * 1e3, "joules": j, "gco2e": g})
    m = plan.get("metrics", {})
    net_j = m.get("network_energy_j_per_token", 0.0) * completion_tokens  # decode hops, as the plan prices them
    net_g = m.get("gco2e_network_per_token", 0.0) * completion_tokens
    return {
        "gco2e": grams + net_g,
        "gco2e_compute": grams,
        "gco2e_network": net_g,
        "gco2e_embodied": embodied,
        "joules": joules + net_j,
        "gco2e_per_token": (grams + net_g) / completion_tokens if completion_tokens else 0.0,
        "decode_gco2e_per_token": (decode_g / decode_steps + m.get("gco2e_network_per_token", 0.0)
                                   if decode_steps else None),
        "energy_basis": ENERGY_BASIS,
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
