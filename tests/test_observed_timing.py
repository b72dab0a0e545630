"""Planning from decode steps really served: a stage splits its observed step into the benchmark's
per-layer time and a fixed per-stage term, and the coordinator prefers it once there are enough steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")


def _server(measurement):
    from prismn.runtime.server import StageServer

    srv = StageServer(None, bench=False)
    srv.stage = SimpleNamespace(n_layers=10, first=True, last=False, model_name="m", dtype_name="float32",
                                device="cpu")
    srv.measurement = measurement
    return srv


def test_observed_step_keeps_the_layer_time_and_moves_the_rest_to_a_fixed_term():
    srv = _server({"model": "m", "dtype": "fp32", "device": "cpu", "s_per_layer": 0.002, "s_embed": 0.001,
                   "s_head": 0.0})
    assert srv.observed() is None  # too few steps to say anything
    srv._decode_s.extend([0.030, 0.031, 0.029, 0.030, 0.030])
    obs = srv.observed()
    assert obs["s_per_layer"] == 0.002 and obs["steps"] == 5
    assert obs["s_step_fixed"] == pytest.approx(0.030 - 0.001 - 10 * 0.002)
    # the cost model rebuilds the observed step from the two parts
    from prismn.swarm import Measurement

    m = Measurement.model_validate(obs)
    assert m.s_step_fixed + 10 * m.s_per_layer + m.s_embed == pytest.approx(0.030)


def test_the_planner_believes_observed_timings_once_there_are_enough():
    from prismn.coordinator.registry import OBSERVED_MIN_STEPS, planning_measurements

    bench = [{"model": "m", "dtype": "fp32", "s_per_layer": 0.002}]
    few = {"observed": {"model": "m", "dtype": "fp32", "s_per_layer": 0.002, "s_step_fixed": 0.005, "steps": 4}}
    many = {"observed": {**few["observed"], "steps": OBSERVED_MIN_STEPS}}
    assert planning_measurements(bench, few) == bench
    assert planning_measurements(bench, many)[0] is many["observed"]
    assert planning_measurements(bench, None) == bench
