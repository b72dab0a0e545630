"""Evaluator invariants and hand-checked numbers for the shared cost model."""

import random

import pytest

from prismn.model import GIB, load_model_spec
from prismn.placement import CostOptions, Plan, Stage, evaluate_plan, route
from prismn.placement.costmodel import ACTIVE_POWER_FRACTION, ETA_MEM, HOST_OVERHEAD, LAUNCH_S, CostModel
from prismn.swarm import CLIENT

SPEC = load_model_spec("meta-llama/Llama-3.1-8B", "bf16")


def two_stage(swarm_factory, gpu_a="RTX 4090", gpu_b="RTX 4090", ci_a=100.0, ci_b=100.0, rtt=None):
    return swarm_factory([
        {"id": "a", "lat": 50, "lon": 8, "free_vram_gb": 24, "gpu": gpu_a, "carbon_intensity": ci_a},
        {"id": "b", "lat": 48, "lon": 2, "free_vram_gb": 24, "gpu": gpu_b, "carbon_intensity": ci_b},
    ], coordinator=(50, 8), rtt_ms=rtt)


def plan_ab(k):
    return Plan("test", SPEC.name, [Stage("a", 0, k, embedding=True), Stage("b", k, 32, head=True)])


def test_hand_checked_latency_energy_and_carbon(swarm_factory):
    sw = two_stage(swarm_factory, rtt={"a": {"b": 20.0}, "client": {"a": 2.0, "b": 10.0}})
    opt = CostOptions(prompt_tokens=1, hop_overhead_ms=0.0)
    ev = evaluate_plan(plan_ab(16), SPEC, sw, opt)
    cm = CostModel(SPEC, opt)
    gpu = sw.peer("a").gpu
    t_layer = (SPEC.layer_bytes + SPEC.kv_bytes_per_token_per_layer()) / (ETA_MEM * gpu.mem_bw_gbps * 1e9) + LAUNCH_S
    assert cm.layer_time_s(sw.peer("a")) == pytest.approx(t_layer)
    compute = 32 * t_layer + cm.head_time_s(sw.peer("b")) + cm.embed_time_s(sw.peer("a"))
    assert ev.metrics["compute_ms_per_token"] == pytest.approx(compute * 1e3)
    # hops: client->a (1 ms), a->b (10 ms), b->client (5 ms), plus bytes on 100 Mbit/s links
    assert ev.metrics["network_ms_per_token"] == pytest.approx(16.0, abs=0.8)
    power = gpu.tdp_w * ACTIVE_POWER_FRACTION * HOST_OVERHEAD * 1.0
    assert ev.metrics["energy_j_per_token"] == pytest.approx(compute * power)
    assert ev.metrics["gco2e_per_token"] == pytest.approx(compute * power * 100.0 / 3.6e6)
    assert [h["from"] for h in ev.hops] == [CLIENT, "a", "b"]
    assert ev.feasible


def test_more_layers_on_a_slower_gpu_never_lowers_latency(swarm_factory):
    sw = two_stage(swarm_factory, gpu_a="RTX 4090", gpu_b="RTX 3060")  # b is slower
    lat = [evaluate_plan(plan_ab(k), SPEC, sw).metrics["latency_ms_per_token"] for k in range(1, 32)]
    # moving a layer from a (fast) to b (slow) = lowering k: latency must not drop as k falls
    assert all(lat[i] <= lat[i - 1] + 1e-12 for i in range(1, len(lat)))


def test_a_dirtier_grid_never_lowers_carbon(swarm_factory):
    rng = random.Random(7)
    for _ in range(20):
        ci_a, ci_b = rng.uniform(10, 800), rng.uniform(10, 800)
        k = rng.randint(1, 31)
        base = evaluate_plan(plan_ab(k), SPEC, two_stage(swarm_factory, ci_a=ci_a, ci_b=ci_b)).metrics
        dirtier = evaluate_plan(plan_ab(k), SPEC, two_stage(swarm_factory, ci_a=ci_a + 50, ci_b=ci_b)).metrics
        assert dirtier["gco2e_per_token"] > base["gco2e_per_token"]
        assert dirtier["gco2e_total_per_token"] > base["gco2e_total_per_token"]
        assert dirtier["latency_ms_per_token"] == base["latency_ms_per_token"]


def test_a_plan_that_does_not_fit_says_where_and_by_how_much(swarm_factory):
    sw = swarm_factory([
        {"id": "a", "lat": 0, "lon": 0, "free_vram_gb": 24, "gpu": "RTX 4090"},
        {"id": "b", "lat": 0, "lon": 1, "free_vram_gb": 4, "gpu": "RTX 4090"},
    ])
    ev = evaluate_plan(Plan("t", SPEC.name, [Stage("a", 0, 16, embedding=True), Stage("b", 16, 32, head=True)]),
                       SPEC, sw)
    assert not ev.feasible
    (msg,) = [p for p in ev.problems if "'b'" in p]
    assert "usable" in msg and "short by" in msg
    need = CostModel(SPEC).stage_bytes(16, False, True)
    assert ev.stages[1]["vram_used_gb"] == pytest.approx(need / GIB, abs=1e-3)


def test_structural_problems(swarm_factory):
    sw = two_stage(swarm_factory)
    gap = Plan("t", SPEC.name, [Stage("a", 0, 10, embedding=True), Stage("b", 12, 32, head=True)])
    assert any("not contiguous" in p for p in evaluate_plan(gap, SPEC, sw).problems)
    short = Plan("t", SPEC.name, [Stage("a", 0, 10, embedding=True, head=True)])
    assert any("22 missing" in p for p in evaluate_plan(short, SPEC, sw).problems)
    twice = Plan("t", SPEC.name, [Stage("a", 0, 10, embedding=True), Stage("a", 10, 32, head=True)])
    assert any("more than one stage" in p for p in evaluate_plan(twice, SPEC, sw).problems)
    ghost = Plan("t", SPEC.name, [Stage("zz", 0, 32, embedding=True, head=True)])
    assert any("unknown peer" in p for p in evaluate_plan(ghost, SPEC, sw).problems)


def test_route_pays_the_detour_to_a_mid_pipeline_embedding_holder():
    stages = [Stage("x", 0, 5), Stage("e", 5, 10, embedding=True, head=True), Stage("y", 10, 16)]
    assert route(stages) == [CLIENT, "e", "x", "e", "y", "e", CLIENT]
    assert route([Stage("a", 0, 8, embedding=True), Stage("b", 8, 16, head=True)]) == [CLIENT, "a", "b", CLIENT]


def test_measured_layer_time_is_preferred(swarm_factory):
    sw = swarm_factory([{"id": "cpu", "lat": 0, "lon": 0, "free_vram_gb": 64, "gpu": "CPU",
                         "measurements": [{"model": SPEC.name, "dtype": "bf16", "s_per_layer": 0.01, "s_head": 0.02}]}])
    ev = evaluate_plan(Plan("t", SPEC.name, [Stage("cpu", 0, 32, embedding=True, head=True)]), SPEC, sw)
    assert ev.stages[0]["time_source"] == "measured"
    assert ev.metrics["compute_ms_per_token"] == pytest.approx(32 * 10 + 20 + 0.0)
    # a measurement that says where it came from carries that into the plan
    sw.peers[0].measurements[0] = sw.peers[0].measurements[0].model_copy(
        update={"source": "prismn stage self-benchmark (decode, batch 1)"})
    ev = evaluate_plan(Plan("t", SPEC.name, [Stage("cpu", 0, 32, embedding=True, head=True)]), SPEC, sw)
    assert ev.stages[0]["time_source"] == "measured (prismn stage self-benchmark (decode, batch 1))"
