"""Reproducible synthetic swarms for examples and benchmarks.

Realism over convenience: peers stand in real cities (home and edge rigs with consumer GPUs, on the
local grid) and in real cloud regions (datacentre GPUs, low PUE, fat links); free VRAM is what is left
after other work; intensities come from the embedded zone data. Nothing is tuned to make Prismn win.
"""

from __future__ import annotations

import math
import re

import numpy as np

from prismn.data import load
from prismn.gpus import lookup_gpu

CLOUD_SHARE = 0.35
# (GPU, share) mixes, loosely following public cloud inventories and the Steam hardware survey.
CLOUD_GPUS = [("H100", 0.12), ("A100", 0.15), ("A100 40GB", 0.10), ("L40S", 0.10), ("A10G", 0.18),
              ("L4", 0.20), ("T4", 0.15)]
HOME_GPUS = [("RTX 3060", 0.20), ("RTX 3070", 0.10), ("RTX 3080", 0.12), ("RTX 3090", 0.16),
             ("RTX 4060 Ti", 0.08), ("RTX 4070", 0.08), ("RTX 4080", 0.08), ("RTX 4090", 0.13),
             ("RTX 5090", 0.03), ("M2 Ultra", 0.02)]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _pick(rng: np.random.Generator, mix: list[tuple[str, float]], n: int) -> list[str]:
    names = [lookup_gpu(g).name for g, _ in mix]
    w = np.array([s for _, s in mix])
    return [names[i] for i in rng.choice(len(names), size=n, p=w / w.sum())]


def generate_swarm(n_peers: int, seed: int = 0, coordinator: tuple[float, float] | None = None) -> dict:
    """A swarm file (as a dict) with `n_peers` peers; the same seed gives the same swarm.

    The coordinator stands in a random known city unless `coordinator` (lat, lon) is given.
    """
    rng = np.random.default_rng(seed)
    cities = load("cities.json")
    regions = load("cloud_regions.json")
    n_cloud = int(round(n_peers * CLOUD_SHARE))
    n_home = n_peers - n_cloud
    pick = cities[int(rng.integers(len(cities)))]
    coord = {"lat": pick["lat"], "lon": pick["lon"]} if coordinator is None else \
        {"lat": coordinator[0], "lon": coordinator[1]}

    peers: list[dict] = []
    counts: dict[str, int] = {}

    def new_id(place: str) -> str:
        k = counts.get(place, 0) + 1
        counts[place] = k
        return f"{place}-{k}"

    gpus = _pick(rng, CLOUD_GPUS, n_cloud)
    for i, r_idx in enumerate(rng.integers(len(regions), size=n_cloud)):
        r = regions[int(r_idx)]
        g = lookup_gpu(gpus[i])
        peers.append({
            "id": new_id(f"{r['provider']}-{r['region']}"),
            "lat": round(r["lat"], 4), "lon": round(r["lon"], 4),
            "free_vram_gb": round(g.vram_gb * float(rng.uniform(0.3, 0.95)), 2),
            "gpu": g.name, "zone": r["zone"], "pue": round(float(rng.uniform(1.08, 1.25)), 2),
            "bandwidth_mbps": float(rng.choice([1000.0, 2500.0, 10000.0])),
        })

    gpus = _pick(rng, HOME_GPUS, n_home)
    # home rigs follow people: weight cities by the square root of their population
    w = np.sqrt(np.array([float(c.get("population") or 1e5) for c in cities]))
    for i, c_idx in enumerate(rng.choice(len(cities), size=n_home, p=w / w.sum())):
        c = cities[int(c_idx)]
        g = lookup_gpu(gpus[i])
        # up to ~40 km from the city centre
        dlat = float(rng.uniform(-0.35, 0.35))
        dlon = float(rng.uniform(-0.35, 0.35)) / max(0.2, math.cos(math.radians(c["lat"])))
        peers.append({
            "id": new_id(_slug(c["name"])),
            "lat": round(min(89.9, max(-89.9, c["lat"] + dlat)), 4),
            "lon": round(((c["lon"] + dlon + 180) % 360) - 180, 4),
            "free_vram_gb": round(g.vram_gb * float(rng.uniform(0.4, 0.95)), 2),
            "gpu": g.name, "zone": c["zone"], "pue": round(float(rng.uniform(1.0, 1.1)), 2),
            "bandwidth_mbps": round(float(np.exp(rng.uniform(math.log(20), math.log(1000)))), 1),
        })
    order = rng.permutation(len(peers))  # join order mixes cloud and home peers
    return {"coordinator": coord, "peers": [peers[i] for i in order],
            "rtt_ms": {}}
