"""benchmarks/carbon_week.py: its move model and a short run on the recorded data."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from prismn.carbon.replay import Series
from prismn.model import load_model_spec
from prismn.placement import CostOptions, PlanRequest, make_plan
from prismn.placement.plan import Plan, Stage
from prismn.swarm import parse_swarm

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data" / "carbon_intensity" / "electricitymaps_hourly"


def bench():
    """benchmarks/ is not a package: load the script by path (registered, as dataclasses need)."""
    if "prismn_bench_carbon_week" in sys.modules:
        return sys.modules["prismn_bench_carbon_week"]
    spec = importlib.util.spec_from_file_location("prismn_bench_carbon_week", ROOT / "benchmarks" / "carbon_week.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_weeks_are_spread_over_the_year_and_gaps_are_not_filled():
    cw = bench()
    starts = cw.week_starts(2023, 4)
    assert [s.weekday() for s in starts] == [0] * 4 and starts[0] == datetime(2023, 1, 2, tzinfo=UTC)
    assert starts[-1].month >= 9
    t0 = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
    times = np.array([t0 + 3600 * i for i in range(10) if i != 5], dtype=np.int64)
    s = Series(times, np.arange(9.0), np.zeros(9, bool), ["x"])
    assert cw.window(s, datetime(2023, 1, 1, tzinfo=UTC), 4) is not None
    assert cw.window(s, datetime(2023, 1, 1, 3, tzinfo=UTC), 4) is None  # hour 5 is missing


def test_move_cost_counts_only_weights_a_peer_lacks():
    cw = bench()
    spec = load_model_spec(cw.MODEL)
    sw = parse_swarm(cw.swarm_data(["DE", "GB"], cw.CLIENTS["Frankfurt"]))
    a = Plan("x", cw.MODEL, [Stage("DE-0", 0, 16, embedding=True), Stage("DE-1", 16, 32, head=True)])
    same = cw.move_cost(spec, sw, a, a, CostOptions())
    assert same["bytes"] == 0 and same["gco2e"] == 0
    shift = Plan("x", cw.MODEL, [Stage("DE-0", 0, 18, embedding=True), Stage("DE-1", 18, 32, head=True)])
    assert cw.move_cost(spec, sw, a, shift, CostOptions())["bytes"] == pytest.approx(2 * spec.layer_bytes)
    away = Plan("x", cw.MODEL, [Stage("GB-0", 0, 16, embedding=True), Stage("GB-1", 16, 32, head=True)])
    full = cw.move_cost(spec, sw, a, away, CostOptions())
    assert full["bytes"] == pytest.approx(32 * spec.layer_bytes + spec.embed_bytes + spec.head_bytes)
    disk = cw.move_cost(spec, sw, a, away, CostOptions(), disk_gbps=2.0)
    assert 0 < disk["gco2e"] < full["gco2e"] and disk["load_s"] < full["load_s"]
    # the model is real: make_plan places it on this swarm
    assert make_plan("prismn", spec, sw, PlanRequest(objective="latency")).feasible


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (recorded Electricity Maps exports) is absent")
def test_a_short_run_keeps_its_promises(tmp_path):
    cw = bench()
    out = tmp_path / "cw.json"
    cw.main(["--data", str(DATA), "--weeks", "1", "--hours", "12", "--clients", "Frankfurt", "--out", str(out),
             "--png", ""])
    r = json.loads(out.read_text())
    w = r["weeks"][0]
    assert set(w["zones"]) >= {"DE", "GB", "SG"} and w["client"] == "Frankfurt"
    s = w["strategies"]
    assert s["static-yearly"]["carbon_vs_static"] == 1.0
    for n in ("hourly", "hourly-free", "hourly-cached", "forecast-persist", "forecast-perfect"):
        assert s[n]["latency_vs_static"] <= 1.1 + 1e-9  # re-placement never breaks the latency bound
        if s[n]["moves"] == 0:
            assert s[n]["gco2e_per_token"] == pytest.approx(s["static-yearly"]["gco2e_per_token"])
    assert len(w["hourly_g_per_token"]["hourly"]) == 12
    assert r["summary"]["all"]["weeks_run"] == 1
