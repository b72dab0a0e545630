"""Swarm files: the documented shape loads; every invalid input is refused with one line naming the fix."""

import json

import pytest

from prismn.errors import SwarmError
from prismn.gpus import DEFAULT_GPU, lookup_gpu
from prismn.swarm import DEFAULT_PUE, load_swarm, parse_swarm

ISSUE_EXAMPLE = {
    "coordinator": {"lat": 42.36, "lon": -71.06},
    "peers": [{"id": "oslo-1", "lat": 59.91, "lon": 10.75, "free_vram_gb": 0.35, "gpu": "RTX 3060",
               "carbon_intensity": 18.0, "zone": "NO-NO1", "pue": 1.1},
              {"id": "paris-1", "lat": 48.86, "lon": 2.35, "free_vram_gb": 6}],
    "rtt_ms": {"oslo-1": {"paris-1": 31.0}},
}


def test_the_documented_shape_loads(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps(ISSUE_EXAMPLE))
    sw = load_swarm(f)
    oslo, paris = sw.peer("oslo-1"), sw.peer("paris-1")
    assert oslo.intensity.g_per_kwh == 18.0 and oslo.intensity.source == "swarm file (user-supplied)"
    assert oslo.pue == 1.1 and oslo.gpu.name == lookup_gpu("RTX 3060").name
    assert paris.gpu.name == lookup_gpu(DEFAULT_GPU).name and paris.gpu_assumed
    assert paris.pue == DEFAULT_PUE
    assert paris.zone == "FR" and "Electricity Maps" in paris.intensity.source and paris.intensity.year
    assert sw.rtt_ms("oslo-1", "paris-1") == 31.0


def test_yaml_swarm(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("coordinator: {lat: 0, lon: 0}\npeers:\n  - {id: a, lat: 1, lon: 1, free_vram_gb: 4}\n")
    assert load_swarm(f).peer("a").free_vram_gb == 4


def test_missing_intensity_is_looked_up_by_zone_then_location():
    sw = parse_swarm({"coordinator": {"lat": 0, "lon": 0}, "peers": [
        {"id": "z", "lat": 0, "lon": 0, "free_vram_gb": 1, "zone": "PL"},
        {"id": "loc", "lat": 52.23, "lon": 21.01, "free_vram_gb": 1},  # Warsaw
    ]})
    assert sw.peer("z").intensity.zone == "PL" and sw.peer("z").intensity.g_per_kwh > 400
    assert sw.peer("loc").intensity.g_per_kwh == sw.peer("z").intensity.g_per_kwh


def _err(data) -> str:
    with pytest.raises(SwarmError) as e:
        parse_swarm(data)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _with_peer(**kw):
    peer = {"id": "x", "lat": 1, "lon": 1, "free_vram_gb": 1, **kw}
    return {"coordinator": {"lat": 0, "lon": 0}, "peers": [peer]}


def test_latitude_out_of_range():
    msg = _err(_with_peer(lat=142))
    assert "peers[0] (id 'x').lat = 142" in msg and "<= 90" in msg


def test_negative_vram():
    msg = _err(_with_peer(free_vram_gb=-2))
    assert "free_vram_gb = -2" in msg and ">= 0" in msg


def test_duplicate_ids():
    data = {"coordinator": {"lat": 0, "lon": 0},
            "peers": [{"id": "a", "lat": 1, "lon": 1, "free_vram_gb": 1}] * 2}
    msg = _err(data)
    assert "'a' is used twice" in msg and "unique" in msg


def test_unknown_gpu_name():
    msg = _err(_with_peer(gpu="RTX 9999"))
    assert "peers[0] (id 'x').gpu" in msg and "unknown GPU 'RTX 9999'" in msg and "leave gpu out" in msg


def test_missing_required_field():
    data = _with_peer()
    del data["peers"][0]["lat"]
    assert "peers[0] (id 'x').lat" in _err(data) and "add 'lat'" in _err(data)


def test_unknown_field_and_unknown_zone_and_rtt_peer():
    assert "vram" in _err(_with_peer(vram=3))
    assert "zone 'XX-NOPE'" in _err(_with_peer(zone="XX-NOPE"))
    data = _with_peer()
    data["rtt_ms"] = {"x": {"ghost": 10}}
    assert "unknown peer 'ghost'" in _err(data)


def test_bad_file_syntax(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("{ not json")
    with pytest.raises(SwarmError, match="not valid JSON"):
        load_swarm(f)
    with pytest.raises(SwarmError, match="does not exist"):
        load_swarm(tmp_path / "nope.json")


@pytest.mark.parametrize("name", ["H100", "A100", "A10", "L4", "L40S", "T4", "RTX 3090", "RTX 4090", "A100 40GB",
                                  "a100-80gb", "rtx3090", "GeForce RTX 4090", "NVIDIA H100", "Tesla T4"])
def test_gpu_names_people_write(name):
    assert lookup_gpu(name).vram_gb > 0


def test_gpu_variants_are_distinct():
    assert lookup_gpu("A100 40GB").vram_gb == 40
    assert lookup_gpu("A100").vram_gb == 80


@pytest.mark.parametrize("reported,expected", [
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"), ("CPU", "CPU"),
])
def test_driver_reported_gpu_names_match_the_catalog(reported, expected):
    from prismn.gpus import match_gpu

    assert match_gpu(reported) == lookup_gpu(expected)


def test_unknown_driver_name_is_none():
    from prismn.gpus import match_gpu

    assert match_gpu("Voodoo5 6000") is None


MULTI = {"coordinator": {"lat": 48.1, "lon": 11.6},
         "peers": [{"id": "rig-1", "lat": 48.1, "lon": 11.6, "carbon_intensity": 100.0,
                    "gpus": [{"gpu": "RTX 4090", "free_vram_gb": 22}, {"gpu": "RTX 3090", "free_vram_gb": 23}]},
                   {"id": "far", "lat": 40.4, "lon": -3.7, "free_vram_gb": 20, "gpu": "RTX 4090"}],
         "rtt_ms": {"rig-1": {"far": 45.0}}}


def test_a_peer_with_several_gpus_plans_one_stage_per_gpu():
    from prismn.model import load_model_spec
    from prismn.placement import make_plan
    from prismn.swarm import INTRA_HOST_RTT_MS

    sw = parse_swarm(MULTI)
    assert [p.id for p in sw.peers] == ["rig-1.gpu0", "rig-1.gpu1", "far"]
    g0, g1 = sw.peer("rig-1.gpu0"), sw.peer("rig-1.gpu1")
    assert g0.gpu.name == lookup_gpu("RTX 4090").name and g1.gpu.name == lookup_gpu("RTX 3090").name
    assert (g0.free_vram_gb, g1.free_vram_gb, g0.host, sw.peer("far").host) == (22, 23, "rig-1", None)
    assert g0.intensity.g_per_kwh == g1.intensity.g_per_kwh == 100.0
    assert sw.rtt_ms("rig-1.gpu0", "rig-1.gpu1") == INTRA_HOST_RTT_MS
    assert sw.rtt_ms("rig-1.gpu1", "far") == sw.rtt_ms("far", "rig-1.gpu0") == 45.0
    # 32 GB of fp32 weights fit on neither GPU alone: the plan takes both GPUs of the rig, one stage each
    spec = load_model_spec("meta-llama/Llama-3.1-8B", "fp32")
    ev = make_plan("prismn", spec, sw)
    assert ev.feasible
    peers = [s["peer"] for s in ev.stages]
    assert sorted(peers) == ["rig-1.gpu0", "rig-1.gpu1"]
    assert [h["rtt_ms"] for h in ev.hops][1] == INTRA_HOST_RTT_MS


@pytest.mark.parametrize("peer,fix", [
    ({"id": "x", "lat": 0, "lon": 0, "free_vram_gb": 4, "gpus": [{"free_vram_gb": 4}]}, "not beside 'gpus'"),
    ({"id": "x", "lat": 0, "lon": 0}, "add 'free_vram_gb'"),
    ({"id": "x", "lat": 0, "lon": 0, "gpus": [{"gpu": "RTX 9999", "free_vram_gb": 4}]}, "unknown GPU"),
    ({"id": "x", "lat": 0, "lon": 0, "gpus": []}, "gpus"),
])
def test_bad_gpu_lists_are_one_line(peer, fix):
    with pytest.raises(SwarmError) as e:
        parse_swarm({"coordinator": {"lat": 0, "lon": 0}, "peers": [peer]})
    assert fix in str(e.value) and "\n" not in str(e.value)


def test_split_gpu_ids_must_stay_unique():
    with pytest.raises(SwarmError, match="rename"):
        parse_swarm({"coordinator": {"lat": 0, "lon": 0}, "peers": [
            {"id": "r", "lat": 0, "lon": 0, "gpus": [{"free_vram_gb": 4}, {"free_vram_gb": 4}]},
            {"id": "r.gpu1", "lat": 0, "lon": 0, "free_vram_gb": 4}]})
