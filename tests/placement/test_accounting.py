"""Energy at load checked by hand, the measured fixed per-stage term, visible proof status, documented
tie-breaks and the Pareto front's `complete` flag."""

from __future__ import annotations

import pytest
from rich.console import Console

from prismn.cli.render import print_plan
from prismn.model import load_model_spec
from prismn.placement import CostOptions, Plan, Stage, evaluate_plan, make_plan
from prismn.placement.costmodel import (
    ACTIVE_POWER_FRACTION,
    ETA_COMPUTE,
    ETA_MEM,
    HOST_OVERHEAD,
    IDLE_POWER_FRACTION,
    LAUNCH_S,
    CostModel,
)
from prismn.placement.instance import Instance
from prismn.placement.optimal import Engine, Objective, plan_optimal, proof_text
from prismn.placement.pareto import pareto_front

from .conftest import fast_sample, random_swarm
from .milp import solve_milp

SPEC = load_model_spec("meta-llama/Llama-3.1-8B", "bf16")
SPEC_1B = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")


def two_peers(swarm_factory, measurements=None):
    a = {"id": "a", "lat": 50, "lon": 8, "free_vram_gb": 24, "gpu": "RTX 4090", "carbon_intensity": 300.0,
         "pue": 1.2}
    if measurements:
        a["measurements"] = measurements
    return swarm_factory([a, {"id": "b", "lat": 48, "lon": 2, "free_vram_gb": 24, "gpu": "RTX 4090",
                              "carbon_intensity": 50.0}],
                         coordinator=(50, 8), rtt_ms={"a": {"b": 20.0}, "client": {"a": 2.0, "b": 10.0}})


def test_energy_at_load_by_hand(swarm_factory):
    sw = two_peers(swarm_factory)
    b = 8
    opt = CostOptions(prompt_tokens=64, hop_overhead_ms=0.0, concurrency=b)
    plan = Plan("t", SPEC.name, [Stage("a", 0, 12, embedding=True), Stage("b", 12, 32, head=True)])
    m = evaluate_plan(plan, SPEC, sw, opt).metrics
    g = sw.peer("a").gpu  # both RTX 4090
    bw, fl = ETA_MEM * g.mem_bw_gbps * 1e9, ETA_COMPUTE * g.fp16_tflops * 1e12
    kv = 64 * SPEC.kv_bytes_per_token_per_layer()
    layer = max((SPEC.layer_bytes + b * kv) / bw, b * SPEC.layer_flops_per_token(64) / fl) + LAUNCH_S
    head = max(SPEC.head_bytes / bw, b * SPEC.head_flops_per_token / fl) + LAUNCH_S
    t_a, t_b = 12 * layer + LAUNCH_S, 20 * layer + head  # embedding lookup: one launch
    act = SPEC.activation_bytes_per_token * b
    hops = (2.0 / 2 + (4 * b + 190) * 8 / 100e6 * 1e3) + (20.0 / 2 + (act + 190) * 8 / 100e6 * 1e3) + \
        (10.0 / 2 + (4 * b + 190) * 8 / 100e6 * 1e3)  # ms, 100 Mbit/s default links
    wall = t_a + t_b + hops / 1e3
    assert m["latency_ms_per_token_at_load"] == pytest.approx(wall * 1e3, rel=1e-9)
    assert m["tokens_per_s_at_load"] == pytest.approx(b / wall, rel=1e-9)
    active = g.tdp_w * ACTIVE_POWER_FRACTION * HOST_OVERHEAD
    idle = g.tdp_w * IDLE_POWER_FRACTION * HOST_OVERHEAD
    e_a = (idle * wall + (active - idle) * t_a) * 1.2 / b  # peer a: PUE 1.2
    e_b = (idle * wall + (active - idle) * t_b) * 1.0 / b
    assert m["energy_j_per_token_at_load"] == pytest.approx(e_a + e_b, rel=1e-9)
    assert m["gco2e_per_token_at_load"] == pytest.approx((e_a * 300 + e_b * 50) / 3.6e6, rel=1e-9)
    emb = 2 * CostModel.embodied_g_per_s(sw.peer("a")) * wall / b
    assert m["gco2e_embodied_per_token_at_load"] == pytest.approx(emb, rel=1e-9)
    assert m["gco2e_total_per_token_at_load"] == pytest.approx(
        m["gco2e_per_token_at_load"] + emb + m["gco2e_network_per_token"], rel=1e-9)
    # the interfaces receipts use keep their meaning: active wall power, embodied grams per second
    assert CostModel.power_w(sw.peer("a")) == pytest.approx(active * 1.2)


def test_carbon_per_token_falls_with_load_and_idle_is_counted(swarm_factory):
    sw = two_peers(swarm_factory)
    plan = Plan("t", SPEC.name, [Stage("a", 0, 12, embedding=True), Stage("b", 12, 32, head=True)])
    one = evaluate_plan(plan, SPEC, sw, CostOptions(concurrency=1)).metrics
    many = evaluate_plan(plan, SPEC, sw, CostOptions(concurrency=16)).metrics
    # waiting for the network costs idle draw: reserved energy exceeds compute-only energy at batch 1
    assert one["energy_j_per_token_at_load"] > one["energy_j_per_token"]
    assert many["gco2e_total_per_token_at_load"] < one["gco2e_total_per_token_at_load"] / 4
    assert many["latency_ms_per_token_at_load"] >= one["latency_ms_per_token_at_load"]


def test_concurrency_reserves_kv_for_every_sequence(swarm_factory):
    sw = two_peers(swarm_factory)
    plan = Plan("t", SPEC.name, [Stage("a", 0, 12, embedding=True), Stage("b", 12, 32, head=True)])
    assert evaluate_plan(plan, SPEC, sw, CostOptions(concurrency=1)).feasible
    ev = evaluate_plan(plan, SPEC, sw, CostOptions(concurrency=256))
    assert not ev.feasible and "short by" in ev.problems[0]


def test_measured_fixed_stage_term(swarm_factory):
    meas = [{"model": SPEC.name, "dtype": "bf16", "s_per_layer": 1e-3, "s_head": 4e-3, "s_embed": 1e-4,
             "s_step_fixed": 6e-3}]
    sw = two_peers(swarm_factory, meas)
    plan = Plan("t", SPEC.name, [Stage("a", 0, 10, embedding=True), Stage("b", 10, 32, head=True)])
    ev = evaluate_plan(plan, SPEC, sw, CostOptions(hop_overhead_ms=0.0))
    assert ev.stages[0]["compute_ms_per_token"] == pytest.approx(6.0 + 10 * 1.0 + 0.1)
    # without the field, the old meaning holds: n * s_per_layer + extras
    sw0 = two_peers(swarm_factory, [{k: v for k, v in meas[0].items() if k != "s_step_fixed"}])
    assert evaluate_plan(plan, SPEC, sw0).stages[0]["compute_ms_per_token"] == pytest.approx(10 * 1.0 + 0.1)


@pytest.mark.parametrize("seed", fast_sample(range(6), 2))
@pytest.mark.parametrize("kind", ["latency", "carbon"])
def test_fixed_stage_terms_match_milp(seed, kind):
    sw = random_swarm(900 + seed, 10)
    for i, p in enumerate(sw.peers):  # measured peers with a sizeable fixed step cost
        if i % 2 == 0:
            from prismn.swarm import Measurement
            p.measurements = [Measurement(model=SPEC_1B.name, dtype="bf16", s_per_layer=4e-4 * (1 + i % 3),
                                          s_head=2e-3, s_step_fixed=3e-3 * (1 + i % 4))]
    ours = plan_optimal(SPEC_1B, sw, Objective(kind, carbon_scope="operational"))
    ref = solve_milp(Instance(SPEC_1B, sw), (1.0, 0.0) if kind == "latency" else (0.0, 1.0))
    if ref is None:
        assert ours.problems
        return
    key = "latency_ms_per_token" if kind == "latency" else "gco2e_per_token"
    ev, ev_ref = evaluate_plan(ours, SPEC_1B, sw), evaluate_plan(ref, SPEC_1B, sw)
    assert ev.metrics[key] == pytest.approx(ev_ref.metrics[key], rel=1e-6)


def test_proof_status_is_in_the_table_and_the_json():
    sw = random_swarm(3, 12)
    ev = make_plan("prismn", SPEC_1B, sw)
    assert ev.to_json()["proof"] == "optimal" == ev.proof
    console = Console(record=True, width=200)
    print_plan(console, ev)
    assert "proof: optimal" in console.export_text()
    base = make_plan("tandemn", SPEC_1B, sw)
    assert base.to_json()["proof"].startswith("heuristic")
    assert proof_text(False, 0.0123) == "best found, within 1.23% of the proven bound"


def test_latency_ties_are_broken_by_carbon(swarm_factory):
    # two identical co-located peers, one on a dirtier grid: the same latency, less carbon on "clean"
    peers = [{"id": name, "lat": 48.0, "lon": 2.0, "free_vram_gb": 24, "gpu": "RTX 4090", "carbon_intensity": ci}
             for name, ci in (("dirty", 700.0), ("clean", 20.0))]
    sw = swarm_factory(peers, coordinator=(48.0, 2.0))
    ev = evaluate_plan(plan_optimal(SPEC, sw, Objective("latency")), SPEC, sw)
    assert [s["peer"] for s in ev.stages] == ["clean"]


@pytest.mark.parametrize("seed", fast_sample(range(3)))
def test_pareto_complete_is_true_exactly_when_no_point_is_left_out(seed):
    sw = random_swarm(700 + seed, 14)
    full = pareto_front(SPEC_1B, sw, max_points=10_000)
    if len(full.plans) < 3:
        pytest.skip("too small a front")
    assert full.complete
    few = pareto_front(SPEC_1B, sw, max_points=2)
    pts = {round(e.metrics["latency_ms_per_token"], 9) for e in full.plans}
    got = {round(e.metrics["latency_ms_per_token"], 9) for e in few.plans}
    assert got <= pts
    assert few.complete == (got == pts)


def test_pareto_is_not_complete_when_a_point_search_stops_at_its_budget(monkeypatch):
    """A point whose bounded search ends at its label budget (unproven, or with no plan at all) leaves the
    front unproven: `complete` is false, never a claim that the walk reached every point."""
    from prismn.placement import pareto

    sw = random_swarm(700, 14)
    assert len(pareto_front(SPEC_1B, sw, max_points=10_000).plans) >= 3
    monkeypatch.setattr(pareto, "PARETO_POPS", 0)
    assert not pareto_front(SPEC_1B, sw, max_points=10_000).complete
    # the next point's search ends at its budget with no plan found at all: still not a proof
    real = Engine.solve

    def gives_up(self, wl, wc, s_metric, bound_s=None, **kw):
        if bound_s is None:
            return real(self, wl, wc, s_metric, **kw)
        self.gave_up = True
        return None

    monkeypatch.setattr(Engine, "solve", gives_up)
    front = pareto_front(SPEC_1B, sw, max_points=10_000)
    assert len(front.plans) == 2 and not front.complete


@pytest.mark.slow
def test_plan_cli_concurrency_reports_the_load_and_the_proof():
    import json
    import subprocess
    import sys
    from pathlib import Path

    swarm = Path(__file__).resolve().parents[2] / "examples" / "swarms" / "global.json"
    args = [sys.executable, "-m", "prismn", "plan", "--swarm", str(swarm), "--model", "meta-llama/Llama-3.1-8B"]
    out = json.loads(subprocess.run([*args, "--concurrency", "8", "--json"], capture_output=True, text=True,
                                    timeout=120, check=True).stdout)
    m = out["metrics"]
    assert out["proof"] == "optimal" and m["concurrency"] == 8
    assert m["tokens_per_s_at_load"] == pytest.approx(8 / (m["latency_ms_per_token_at_load"] / 1e3))
    text = subprocess.run([*args, "--concurrency", "8"], capture_output=True, text=True, timeout=120,
                          check=True).stdout
    assert "proof: optimal" in text and "at load (8 sequences per step" in text


@pytest.mark.parametrize("scope", ["operational", "reserved"])
def test_latency_ties_are_broken_by_carbon_exactly(swarm_factory, scope):
    # two identical GPUs in different places whose measured RTTs to the client are equal: the same
    # latency, but not interchangeable by place (the swap tie-break cannot see it); the exact one can
    peers = [{"id": "dirty", "lat": 48.0, "lon": 2.0, "free_vram_gb": 24, "gpu": "RTX 4090", "carbon_intensity": 700.0},
             {"id": "clean", "lat": 59.9, "lon": 10.7, "free_vram_gb": 24, "gpu": "RTX 4090",
              "carbon_intensity": 20.0}]
    sw = swarm_factory(peers, coordinator=(52.0, 5.0), rtt_ms={"client": {"dirty": 12.0, "clean": 12.0},
                                                                "dirty": {"clean": 30.0}})
    plan = plan_optimal(SPEC, sw, Objective("latency", carbon_scope=scope))
    assert [s.peer for s in plan.stages] == ["clean"]
    assert plan.notes["tie_break"] == "least carbon among equally fast plans (exact)"
