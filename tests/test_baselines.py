"""Both baselines on small hand-checked swarms (numbers worked by hand in the comments)."""

from prismn.model import load_model_spec
from prismn.placement import PlanRequest, make_plan
from prismn.placement.baselines import prismn_hackathon, tandemn, two_opt

SPEC = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")  # 0.207039 GB/layer, 0.489258 GB embedding


def layers(plan):
    return [(s.peer, s.start, s.end, s.embedding, s.head) for s in plan.stages]


def test_tandemn_capacity_order_and_split(swarm_factory):
    sw = swarm_factory([
        {"id": "a", "lat": 0, "lon": 1, "free_vram_gb": 2.0},
        {"id": "b", "lat": 0, "lon": 2, "free_vram_gb": 1.0},
        {"id": "c", "lat": 0, "lon": 3, "free_vram_gb": 4.0},
    ])
    plan = tandemn(SPEC, sw)
    # embedding peer c (most VRAM); caps c=15, a=8, b=4; split 8/5/3; utilisation spread 10.3 <= 20
    assert layers(plan) == [("c", 0, 8, True, True), ("a", 8, 13, False, False), ("b", 13, 16, False, False)]
    assert plan.problems == []
    assert "rebalance" not in plan.notes


def test_tandemn_rebalances_a_lopsided_split(swarm_factory):
    sw = swarm_factory([
        {"id": "big", "lat": 0, "lon": 1, "free_vram_gb": 10.0},
        {"id": "tiny", "lat": 0, "lon": 2, "free_vram_gb": 0.25},
    ])
    plan = tandemn(SPEC, sw)
    # first split 15/1 -> utilisation 35.9% vs 82.8%; target 59.35% puts all 16 layers on big
    assert plan.notes["rebalance"] == {"spread_pct": 46.9, "target_pct": 59.3, "used": True}  # 59.35 in binary
    assert layers(plan) == [("big", 0, 16, True, True)]


def test_tandemn_that_cannot_place_every_layer_is_infeasible(swarm_factory):
    sw = swarm_factory([
        {"id": "a", "lat": 0, "lon": 1, "free_vram_gb": 1.0},
        {"id": "b", "lat": 0, "lon": 2, "free_vram_gb": 1.0},
    ])
    ev = make_plan("tandemn", SPEC, sw)
    assert not ev.feasible
    assert any("placed only" in p for p in ev.problems)


HACK_PEERS = [
    {"id": "p1", "lat": 0, "lon": 10, "free_vram_gb": 4.0, "carbon_intensity": 50.0},
    {"id": "p2", "lat": 0, "lon": 20, "free_vram_gb": 4.0, "carbon_intensity": 100.0},
    {"id": "p3", "lat": 0, "lon": 5, "free_vram_gb": 8.0, "carbon_intensity": 500.0},
    {"id": "p4", "lat": 0, "lon": 30, "free_vram_gb": 2.0, "carbon_intensity": 20.0},
]


def test_hackathon_low_carbon_selection_order_and_split(swarm_factory):
    sw = swarm_factory(HACK_PEERS)
    plan = prismn_hackathon(SPEC, sw, "low-carbon")
    # scores p4 .298 < p1 .303 < p2 .346 < p3 .603; p4 (1.8) + p1 (3.6) >= 3.80 GB
    # tour starts at p1 (nearest the server); embedding on p1 (most VRAM): caps p1=15, p4=8 -> 10/6
    assert layers(plan) == [("p1", 0, 10, True, True), ("p4", 10, 16, False, False)]
    assert plan.notes["mean_carbon_intensity"] == 35.0
    assert abs(plan.notes["path_km"] - 2223.9) < 1.0


def test_hackathon_low_latency_prefers_the_near_peer(swarm_factory):
    sw = swarm_factory(HACK_PEERS)
    plan = prismn_hackathon(SPEC, sw, "low-latency")
    # p3 scores best (0.7145) and alone offers 7.2 >= 3.80 GB
    assert layers(plan) == [("p3", 0, 16, True, True)]
    ev = make_plan("prismn-hackathon", SPEC, sw, PlanRequest(preference="low-latency"))
    assert ev.feasible and ev.plan.notes["preference"] == "low-latency"


def test_hackathon_gb_check_is_not_a_fit_check(swarm_factory):
    # 5 peers of 0.8 GB offer 3.6 GB: selection stops short, and no peer can take the embedding
    sw = swarm_factory([{"id": f"s{i}", "lat": 0, "lon": i, "free_vram_gb": 0.8} for i in range(5)])
    ev = make_plan("prismn-hackathon", SPEC, sw)
    assert not ev.feasible
    assert any("does not fit" in p or "offer" in p for p in ev.problems)


def test_two_opt_first_improvement_on_a_line():
    xs = [0, 3, 1, 2]
    dist = [[abs(a - b) for b in xs] for a in xs]
    assert two_opt([0, 1, 2, 3], dist) == [0, 2, 3, 1]
    assert two_opt([0, 1, 2], dist) == [0, 1, 2]  # n <= 3: untouched
