"""The cost kernel is the one place the formulas live: the evaluator, the solver's arrays and the
receipts must agree with it, and carbon must stay linear in intensity (time-weighted planning)."""

import numpy as np
import pytest

from prismn.coordinator.receipts import build_receipt
from prismn.model import load_model_spec
from prismn.placement import CostOptions, Plan, Stage, evaluate_plan
from prismn.placement.costmodel import CostModel
from prismn.placement.instance import Instance
from prismn.placement.kernel import hop_bytes, hop_seconds, weighted_intensity
from prismn.swarm import Swarm

SPEC = load_model_spec("meta-llama/Llama-3.1-8B", "bf16")


def three_peers(swarm_factory, ci=(100.0, 400.0, 30.0)):
    return swarm_factory([
        {"id": "a", "lat": 50, "lon": 8, "free_vram_gb": 24, "gpu": "RTX 4090", "carbon_intensity": ci[0]},
        {"id": "b", "lat": 48, "lon": 2, "free_vram_gb": 24, "gpu": "A100 80GB", "carbon_intensity": ci[1]},
        {"id": "c", "lat": 52, "lon": 13, "free_vram_gb": 48, "gpu": "L40S", "carbon_intensity": ci[2]},
    ], coordinator=(50, 8))


PLAN = Plan("test", SPEC.name, [Stage("a", 0, 10, embedding=True), Stage("b", 10, 20), Stage("c", 20, 32, head=True)])


def with_ci(sw: Swarm, values: dict[str, float]) -> Swarm:
    from dataclasses import replace

    peers = [replace(p, intensity=replace(p.intensity, g_per_kwh=float(values[p.id]))) for p in sw.peers]
    return Swarm(sw.coordinator, peers, sw.rtt_overrides)


def test_hop_bytes_follow_the_loop():
    # client -> peer: token ids (x prompt in prefill); peer -> peer: activations; peer -> client: one token id
    fc = np.array([True, False, False])
    tc = np.array([False, False, True])
    assert hop_bytes(fc, tc, 8192.0).tolist() == [4.0, 8192.0, 4.0]
    assert hop_bytes(fc, tc, 8192.0, prompt_tokens=10).tolist() == [40.0, 81920.0, 4.0]
    assert hop_seconds(20.0, 0.0, 1e300, 0.0) == pytest.approx(0.010)


@pytest.mark.parametrize("conc", [1, 4])
def test_instance_arrays_price_a_plan_as_the_evaluator_does(swarm_factory, conc):
    sw = three_peers(swarm_factory)
    opt = CostOptions(concurrency=conc)
    ev = evaluate_plan(PLAN, SPEC, sw, opt).metrics
    for scope, key in (("operational", "gco2e_per_token"), ("total", "gco2e_total_per_token")):
        inst = Instance(SPEC, sw, opt, scope)
        roles = ("first", "middle", "last")
        got = sum(n * inst.carbon.per_layer[i] + inst.carbon.fixed[r][i]
                  for i, (n, r) in enumerate(zip((10, 10, 12), roles, strict=True)))
        assert got == pytest.approx(ev[key], rel=1e-12)
    inst = Instance(SPEC, sw, opt, "reserved")
    H = inst.hop_time_matrix(np.arange(3), conc)
    wall = sum(n * inst.wall.per_layer[i] + inst.wall.fixed[r][i] for i, (n, r) in
               enumerate(zip((10, 10, 12), ("first", "middle", "last"), strict=True))) + H[3, 0] + H[0, 1] + H[1, 2] + H[2, 3]
    f = inst.alpha.sum() * wall + sum(n * inst.reserved.per_layer[i] + inst.reserved.fixed[r][i] for i, (n, r) in
                                      enumerate(zip((10, 10, 12), ("first", "middle", "last"), strict=True)))
    assert wall * 1e3 == pytest.approx(ev["latency_ms_per_token_at_load"], rel=1e-12)
    assert f == pytest.approx(ev["gco2e_total_per_token_at_load"], rel=1e-12)


def test_planning_on_a_weighted_intensity_prices_the_weighted_hours(swarm_factory):
    """Carbon is linear in intensity: a plan priced at the forecast-weighted intensity vector emits the
    weighted mean of what it emits hour by hour (operational and reserved scopes alike)."""
    sw = three_peers(swarm_factory)
    hours = np.array([[100.0, 300.0, 50.0], [400.0, 80.0, 90.0], [30.0, 35.0, 600.0]])  # peers x hours
    w = np.array([0.5, 0.3, 0.2])
    mean = weighted_intensity(hours, w)
    at = [evaluate_plan(PLAN, SPEC, with_ci(sw, dict(zip("abc", hours[:, h], strict=True)))).metrics for h in range(3)]
    blended = evaluate_plan(PLAN, SPEC, with_ci(sw, dict(zip("abc", mean, strict=True)))).metrics
    for key in ("gco2e_per_token", "gco2e_total_per_token_at_load", "gco2e_network_per_token"):
        assert blended[key] == pytest.approx(sum(wi * m[key] for wi, m in zip(w, at, strict=True)), rel=1e-12)
    with pytest.raises(ValueError, match="one non-negative weight per time step"):
        weighted_intensity(hours, np.array([1.0, -1.0, 0.0]))


def test_receipt_prices_measured_seconds_and_the_reserved_hold(swarm_factory):
    sw = three_peers(swarm_factory)
    ev = evaluate_plan(PLAN, SPEC, sw)
    plan = ev.to_json()
    # prefill, then 4 decode steps; peer c's pass was shared with one other sequence on the last two steps
    traces = [[["a", 0.02, 1], ["b", 0.02, 1], ["c", 0.03, 1]]] + \
             [[["a", 0.002, 1], ["b", 0.002, 1], ["c", 0.003, 1]]] * 2 + \
             [[["a", 0.002, 1], ["b", 0.002, 1], ["c", 0.0015, 2]]] * 2
    r = build_receipt(plan, sw, traces, prompt_tokens=5, completion_tokens=5,
                      stats={"latency_ms_per_token": 50.0}, emulated=True)
    pa, pb, pc = (sw.peer(x) for x in "abc")
    comp = {"a": 0.028, "b": 0.028, "c": 0.039}
    g = sum(comp[p.id] * CostModel.power_w(p) * p.intensity.g_per_kwh / 3.6e6 for p in (pa, pb, pc))
    assert r["gco2e_compute"] == pytest.approx(g)
    # held: 50 ms per step x (1 + 1 + 1/2 + 1/2) steps' shares
    held = 0.05 * 3.0
    res = r["reserved"]
    assert res["held_s"] == pytest.approx(held)
    dec = {"a": 0.008, "b": 0.008, "c": 0.009}
    op = sum((CostModel.idle_power_w(p) * held + (CostModel.power_w(p) - CostModel.idle_power_w(p)) * dec[p.id])
             * p.intensity.g_per_kwh / 3.6e6 for p in (pa, pb, pc))
    emb = sum(CostModel.embodied_g_per_s(p) * held for p in (pa, pb, pc))
    assert res["gco2e_operational"] == pytest.approx(op)
    assert res["gco2e_embodied"] == pytest.approx(emb)
    assert res["gco2e_per_token"] == pytest.approx((op + emb) / 4 + plan["metrics"]["gco2e_network_per_token"])
    assert res["predicted_gco2e_per_token"] == plan["metrics"]["gco2e_total_per_token_at_load"]


def test_measured_board_power_wins_over_the_datasheet(swarm_factory):
    """A peer that measured its board power (self-benchmark, NVML) is priced on it: active and idle, x host
    overhead and PUE; the stage row names the source; idle is never priced above active."""
    from prismn.placement.costmodel import HOST_OVERHEAD

    m = {"model": SPEC.name, "dtype": "bf16", "s_per_layer": 0.001, "active_w": 200.0, "idle_w": 70.0,
         "power_source": "NVML test"}
    sw = swarm_factory([
        {"id": "a", "lat": 50, "lon": 8, "free_vram_gb": 24, "gpu": "RTX 4090", "carbon_intensity": 100.0,
         "pue": 1.1, "measurements": [m]},
        {"id": "b", "lat": 48, "lon": 2, "free_vram_gb": 24, "gpu": "RTX 4090", "carbon_intensity": 100.0},
    ], coordinator=(50, 8))
    cm = CostModel(SPEC)
    assert cm.peer_power_w(sw.peer("a")) == pytest.approx((200.0 * HOST_OVERHEAD * 1.1, 70.0 * HOST_OVERHEAD * 1.1))
    assert cm.peer_power_w(sw.peer("b"))[0] == pytest.approx(CostModel.power_w(sw.peer("b")))
    ev = evaluate_plan(Plan("t", SPEC.name, [Stage("a", 0, 16, embedding=True), Stage("b", 16, 32, head=True)]),
                       SPEC, sw)
    row = ev.stages[0]
    assert row["power_source"] == "measured (NVML test)" and ev.stages[1]["power_source"].startswith("datasheet")
    assert row["energy_j_per_token"] == pytest.approx(row["compute_ms_per_token"] / 1e3 * 200.0 * HOST_OVERHEAD * 1.1)
    hot = {**m, "idle_w": 400.0}
    peer = swarm_factory([{"id": "c", "lat": 50, "lon": 8, "free_vram_gb": 24, "gpu": "RTX 4090",
                           "measurements": [hot]}], coordinator=(50, 8)).peer("c")
    active, idle = cm.peer_power_w(peer)
    assert idle == active
