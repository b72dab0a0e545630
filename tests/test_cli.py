"""`prismn plan` and `prismn swarm generate` as a user runs them (separate processes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLOBAL = ROOT / "examples" / "swarms" / "global.json"


def prismn(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "prismn", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


def test_plan_json_has_the_stable_fields():
    out = json.loads(prismn("plan", "--swarm", str(GLOBAL), "--model", "meta-llama/Llama-3.1-8B",
                            "--strategy", "prismn-hackathon", "--json").stdout)
    assert {"strategy", "feasible", "problems", "stages", "metrics"} <= out.keys()
    for s in out["stages"]:
        assert {"peer", "layers", "embedding", "head", "vram_used_gb"} <= s.keys()
        assert len(s["layers"]) == 2
    assert {"latency_ms_per_token", "ttft_ms", "energy_j_per_token", "gco2e_per_token"} <= out["metrics"].keys()
    for s in out["stages"]:
        assert s["intensity"]["source"] and s["intensity"]["year"]  # every intensity names its origin


def test_compare_runs_every_strategy_offline():
    r = prismn("plan", "--compare", "--swarm", str(GLOBAL), "--model", "meta-llama/Llama-3.1-8B", "--json")
    plans = json.loads(r.stdout)
    names = {p["strategy"] for p in plans}
    assert {"tandemn", "prismn-hackathon"} <= names
    prefs = {p["notes"].get("preference") for p in plans if p["strategy"] == "prismn-hackathon"}
    assert prefs == {"low-carbon", "low-latency"}
    table = prismn("plan", "--compare", "--swarm", str(GLOBAL), "--model", "meta-llama/Llama-3.1-8B").stdout
    assert "strategies compared" in table and "tandemn" in table


@pytest.mark.parametrize("args,needle", [
    (["--model", "nonsense"], "not in the embedded catalog"),
    (["--model", "gpt2", "--strategy", "nope"], "unknown strategy 'nope'"),
    (["--model", "gpt2", "--preference", "fast"], "--preference 'fast' is unknown"),
])
def test_bad_input_is_one_line(args, needle):
    r = prismn("plan", "--swarm", str(GLOBAL), *args, check=False)
    assert r.returncode == 2
    assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_bad_swarm_file_is_one_line(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"coordinator": {"lat": 0, "lon": 0},
                             "peers": [{"id": "a", "lat": 142, "lon": 0, "free_vram_gb": 1}]}))
    r = prismn("plan", "--swarm", str(f), "--model", "gpt2", check=False)
    assert r.returncode == 2 and "lat = 142" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow  # > 2 s: subprocesses
def test_swarm_generate_is_reproducible(tmp_path):
    a = prismn("swarm", "generate", "--peers", "200", "--seed", "3").stdout
    b = prismn("swarm", "generate", "--peers", "200", "--seed", "3").stdout
    c = prismn("swarm", "generate", "--peers", "200", "--seed", "4").stdout
    assert a == b and a != c
    data = json.loads(a)
    assert len(data["peers"]) == 200 and len({p["id"] for p in data["peers"]}) == 200
    out = tmp_path / "s.json"
    prismn("swarm", "generate", "--peers", "30", "--seed", "1", "--out", str(out))
    assert prismn("swarm", "check", str(out)).stdout.strip().endswith("ok: 30 peers")


def test_generated_swarm_is_realistic():
    from prismn.swarm import parse_swarm
    from prismn.swarmgen import generate_swarm

    sw = parse_swarm(generate_swarm(2000, seed=11))
    gpus = {p.gpu.name for p in sw.peers}
    assert len(gpus) >= 12  # a real mix, not one card
    cis = sorted(p.intensity.g_per_kwh for p in sw.peers)
    assert cis[len(cis) // 10] < 150 and cis[-len(cis) // 10] > 450  # clean and dirty grids both present
    clean_share = sum(c < 100 for c in cis) / len(cis)
    assert 0.05 < clean_share < 0.6  # low-carbon peers are a minority, as in the world
