"""Checks on the embedded data files in src/prismn/data (built by scripts/build_data.py)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prismn.geo import _in_ring
from prismn.gpus import (
    lookup_gpu,
    normalise,  # the lookup the product uses  # the point-in-polygon the product itself uses
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "prismn" / "data"
JSON_FILES = ["grid_zones.json", "grid_countries.json", "countries.json", "cities.json",
              "cloud_regions.json", "gpus.json", "models.json"]


def load(name):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def zones():
    return load("grid_zones.json")["zones"]


@pytest.fixture(scope="module")
def countries_grid():
    return load("grid_countries.json")


@pytest.fixture(scope="module")
def polygons():
    return load("countries.json")["countries"]


def test_all_files_load_and_are_small():
    total = 0
    for name in JSON_FILES:
        text = (DATA / name).read_text(encoding="utf-8")
        assert text.endswith("\n")
        json.loads(text)
        total += len(text.encode())
    assert (DATA / "countries.json").stat().st_size < 1_500_000
    assert total < 3_000_000
    lic = (DATA / "DATA_LICENSES.md").read_text(encoding="utf-8")
    for needle in ("ODbL", "CC BY 4.0", "Electricity Maps", "Ember", "GeoNames", "Natural Earth"):
        assert needle in lic


def test_grid_zones(zones):
    meta = load("grid_zones.json")["meta"]
    assert meta["licence"] == "ODbL-1.0" and meta["signal"] == "average"
    assert len(zones) > 300
    for key in ("FR", "DE", "PL", "NO-NO1", "SE-SE3", "US-CAL-CISO", "US-MIDA-PJM", "US-NY-NYIS",
                "US-TEX-ERCO", "IN-WE", "SG", "BR-CS", "JP-TK", "AU-NSW", "CA-QC", "DK-DK1"):
        assert key in zones, key
    for key, z in zones.items():
        assert 0 < z["g_per_kwh"] < 1500, key
        assert 2021 <= z["year"] <= 2030
        assert z["by_year"][str(z["year"])] == z["g_per_kwh"]
    assert zones["FR"]["g_per_kwh"] < 100
    assert zones["PL"]["g_per_kwh"] > 400
    assert zones["NO-NO1"]["g_per_kwh"] < 60
    assert zones["FR"]["g_per_kwh"] < zones["DE"]["g_per_kwh"] < zones["PL"]["g_per_kwh"]


def test_grid_countries(countries_grid):
    c = countries_grid["countries"]
    assert countries_grid["meta"]["licence"] == "CC-BY-4.0"
    assert len(c) > 200
    assert all(re.fullmatch(r"[A-Z]{2}", k) for k in c)
    assert c["FR"]["g_per_kwh"] < 100
    assert c["PL"]["g_per_kwh"] > 400
    assert 400 < countries_grid["world"]["g_per_kwh"] < 550


def _zone_rows():
    return [("city", r) for r in load("cities.json")] + [("region", r) for r in load("cloud_regions.json")]


def test_every_city_and_region_zone_exists(zones, countries_grid):
    rows = _zone_rows()
    assert len([r for k, r in rows if k == "city"]) >= 250
    for _kind, r in rows:
        assert -90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180
        if r["zone"] is None:
            assert r["country"] in countries_grid["countries"], r
        else:
            assert r["zone"] in zones, r
            assert r["zone"].split("-")[0] == r["country"], r


def test_cloud_regions():
    regions = load("cloud_regions.json")
    keys = [(r["provider"], r["region"]) for r in regions]
    assert len(keys) == len(set(keys))
    for p in ("aws", "gcp", "azure"):
        assert sum(r["provider"] == p for r in regions) >= 20, p
    by = {k: r for k, r in zip(keys, regions, strict=True)}
    assert by[("aws", "us-east-1")]["zone"] == "US-MIDA-PJM"
    assert by[("gcp", "europe-west9")]["zone"] == "FR"
    assert by[("azure", "norwayeast")]["zone"] == "NO-NO1"


def _in_country(lon, lat, c):
    x0, y0, x1, y1 = c["bbox"]
    if not (x0 <= lon <= x1 and y0 <= lat <= y1):
        return False
    return any(_in_ring(lon, lat, p[0]) and not any(_in_ring(lon, lat, h) for h in p[1:])
               for p in c["polygons"])


def _edge_km(lon, lat, c):
    k = math.cos(math.radians(lat))
    best = math.inf
    for p in c["polygons"]:
        for r in p:
            for (ax, ay), (bx, by) in zip(r, r[1:], strict=False):
                ax, bx, px = ax * k, bx * k, lon * k
                dx, dy = bx - ax, by - ay
                L = dx * dx + dy * dy
                t = 0.0 if L == 0 else max(0.0, min(1.0, ((px - ax) * dx + (lat - ay) * dy) / L))
                best = min(best, math.hypot(px - ax - t * dx, lat - ay - t * dy) * 111.2)
    return best


def test_country_polygons_resolve_places(polygons):
    assert len(polygons) > 200
    for cc, c in polygons.items():
        lat, lon = c["rep_point"]
        assert _in_country(lon, lat, c), cc
    inside = 0
    rows = _zone_rows()
    for _kind, r in rows:
        if _in_country(r["lon"], r["lat"], polygons[r["country"]]):
            inside += 1
        else:  # coastal / border-river places: the nearest edge must be close
            assert _edge_km(r["lon"], r["lat"], polygons[r["country"]]) < 10, r
    assert inside / len(rows) > 0.9
    # the antimeridian split: northern Sweden must not fall inside Russia
    assert not _in_country(22.15, 65.58, polygons["RU"])
    assert _in_country(175.0, 67.0, polygons["RU"])  # inland Chukotka, east of 180
    assert _in_country(-178.0, 66.0, polygons["RU"])  # Chukotka west of the antimeridian


def test_gpus():
    gpus = load("gpus.json")
    by_name = {g["name"]: g for g in gpus}
    owner = {}
    for g in gpus:
        for a in [g["name"], *g["aliases"]]:
            k = normalise(a)
            assert owner.get(k, g["name"]) == g["name"], (a, owner.get(k), g["name"])
            owner[k] = g["name"]
        for f in ("vram_gb", "mem_bw_gbps", "fp16_tflops", "tdp_w"):
            assert g[f] > 0, (g["name"], f)
        if g.get("idle_w"):  # a measured idle draw names its source and is below the board's TDP
            assert 0 < g["idle_w"] < g["tdp_w"] and len(g.get("idle_source", "")) > 20, g["name"]
    assert {g["name"] for g in gpus if g.get("idle_w")} >= {"H100 SXM", "A100 PCIe 80GB", "L40S"}
    assert lookup_gpu("L40S").idle_w == 102.1 and "Parking Tax" in lookup_gpu("L40S").idle_source
    for want in ("H200 SXM", "H100 SXM", "H100 PCIe", "A100 SXM 80GB", "A100 SXM 40GB", "A100 PCIe 80GB",
                 "A100 PCIe 40GB", "A10", "A10G", "A40", "L4", "L40", "L40S", "T4", "V100 SXM2 16GB",
                 "V100 SXM2 32GB", "RTX 3060", "RTX 3070", "RTX 3080", "RTX 3090", "RTX 4060 Ti 16GB",
                 "RTX 4070", "RTX 4080", "RTX 4090", "RTX 5090", "RTX A6000", "RTX 6000 Ada", "Apple M2 Ultra",
                 "Apple M3 Max", "Apple M4 Max", "MI250X", "MI300X", "RX 7900 XTX", "CPU"):
        assert want in by_name, want
    assert by_name["H100 SXM"]["mem_bw_gbps"] == 3350
    assert by_name["H100 SXM"]["fp16_tflops"] == 989
    for q, want in [("H100", "H100 SXM"), ("A100", "A100 SXM 80GB"), ("A100 40GB", "A100 SXM 40GB"),
                    ("a100-80gb", "A100 SXM 80GB"), ("RTX 3090", "RTX 3090"), ("rtx3090", "RTX 3090"),
                    ("GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
                    ("L40S", "L40S"), ("T4", "T4"), ("Tesla T4", "T4"), ("nvidia h100", "H100 SXM")]:
        assert owner.get(normalise(q)) == want, q


def test_models():
    m = load("models.json")
    models, aliases = m["models"], m["aliases"]
    for a, target in aliases.items():
        assert target in models, a
    assert aliases["gpt2"] == "openai-community/gpt2"
    c = models["meta-llama/Llama-3.2-1B"]
    assert (c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
            c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["tie_word_embeddings"]) == (
        128256, 2048, 8192, 16, 32, 8, 64, True)
    c = models["meta-llama/Llama-3.1-70B"]
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (8192, 28672, 80)
    c = models["Qwen/Qwen2.5-7B"]
    assert (c["vocab_size"], c["num_key_value_heads"], c["tie_word_embeddings"]) == (152064, 4, False)
    c = models["openai-community/gpt2"]
    assert (c["n_embd"], c["n_layer"], c["n_head"], c["n_positions"], c["n_inner"]) == (768, 12, 12, 1024, None)


@pytest.mark.slow
def test_build_script_reproduces_shipped_files():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_data.py"), "--check"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:
        pytest.skip("npm / pip registry unavailable: " + proc.stderr.strip()[-300:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
