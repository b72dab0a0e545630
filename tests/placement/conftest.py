"""Random swarms for the placement tests (small VRAM so that plans need several stages)."""

from __future__ import annotations

import random

from prismn.placement.costmodel import CUDA_CONTEXT_GB
from prismn.swarm import parse_swarm

GPUS = ["RTX 3060", "RTX 3090", "RTX 4090", "A100 SXM 80GB", "H100 SXM", "T4", "L4", "A10G"]


def random_swarm(seed: int, n: int, vram=(0.3, 2.0), measured: int = 0, spread: float = 25.0,
                 intensity=(10, 800)):
    """n peers over a region (some far away), random GPUs, grids, PUE and links; `measured` random
    measured RTTs (which need not obey the triangle inequality). `vram` is what is left after the
    stage process's CUDA context (free VRAM = that + CUDA_CONTEXT_GB)."""
    rng = random.Random(seed)
    peers = []
    for i in range(n):
        far = rng.random() < 0.15
        peers.append({
            "id": f"p{i}", "lat": rng.uniform(35, 35 + spread) - (60 if far else 0),
            "lon": rng.uniform(-10, -10 + spread * 1.5) + (100 if far else 0),
            "free_vram_gb": round(rng.uniform(*vram) + CUDA_CONTEXT_GB, 2), "gpu": rng.choice(GPUS),
            "carbon_intensity": round(rng.uniform(*intensity), 1), "pue": round(rng.uniform(1.0, 1.6), 2),
            "bandwidth_mbps": rng.choice([20.0, 100.0, 1000.0, 10000.0]),
        })
    rtt: dict = {}
    ids = [p["id"] for p in peers] + ["client"]
    for _ in range(measured):
        a, b = rng.sample(ids, 2)
        rtt.setdefault(a, {})[b] = round(rng.uniform(0.5, 120.0), 2)
    return parse_swarm({"coordinator": {"lat": rng.uniform(35, 60), "lon": rng.uniform(-10, 30)}, "peers": peers,
                        "rtt_ms": rtt})


def fast_sample(values, keep: int = 1) -> list:
    """The first `keep` values run in the fast tier (`pytest -m "not slow"`); the rest of the grid is
    marked slow (make test and CI still run all of it). Tuples become several arguments."""
    import pytest

    out = []
    for i, v in enumerate(values):
        args = v if isinstance(v, tuple) else (v,)
        out.append(pytest.param(*args, marks=() if i < keep else pytest.mark.slow))
    return out
