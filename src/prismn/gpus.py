"""GPU catalog: datasheet numbers for the GPUs people write in swarm files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from prismn.data import load
from prismn.errors import SwarmError

# A peer that names no GPU is taken to be this one: the most common card in volunteer swarms.
DEFAULT_GPU = "RTX 3090"


@dataclass(frozen=True)
class GPU:
    name: str
    vram_gb: float
    mem_bw_gbps: float  # GB/s (1e9 bytes)
    fp16_tflops: float  # dense
    tdp_w: float
    embodied_kgco2e: float
    source: str
    idle_w: float = 0.0  # draw while holding a stage and waiting (0: unknown, the cost model's default applies)
    idle_source: str = ""  # where idle_w was measured (required with it)
    vendor: str = ""  # nvidia | amd | apple | generic: nvidia and amd GPUs lose a runtime context's VRAM


def normalise(name: str) -> str:
    """'NVIDIA GeForce RTX-3090' -> 'rtx3090': case, spaces, dashes and vendor prefixes aside."""
    s = name.strip().lower()
    s = re.sub(r"^(nvidia|amd|apple)\s+", "", s)
    s = re.sub(r"^(geforce|tesla|radeon|quadro)\s+", "", s)
    return re.sub(r"[\s_\-]+", "", s)


@cache
def _catalog() -> tuple[dict[str, GPU], list[str]]:
    by_key: dict[str, GPU] = {}
    names: list[str] = []
    for row in load("gpus.json"):
        gpu = GPU(
            name=row["name"],
            vram_gb=float(row["vram_gb"]),
            mem_bw_gbps=float(row["mem_bw_gbps"]),
            fp16_tflops=float(row["fp16_tflops"]),
            tdp_w=float(row["tdp_w"]),
            embodied_kgco2e=float(row.get("embodied_kgco2e") or 0.0),
            source=row.get("source", ""),
            idle_w=float(row.get("idle_w") or 0.0),
            idle_source=row.get("idle_source", ""),
            vendor=row.get("vendor", ""),
        )
        names.append(gpu.name)
        for alias in [gpu.name, *row.get("aliases", [])]:
            by_key[normalise(alias)] = gpu
    return by_key, names


def lookup_gpu(name: str | None) -> GPU:
    """The catalog entry for a name as people write it; None gives DEFAULT_GPU."""
    by_key, names = _catalog()
    gpu = by_key.get(normalise(name if name is not None else DEFAULT_GPU))
    if gpu is None:
        raise SwarmError(
            f"unknown GPU {name!r}: use a catalog name such as {', '.join(names[:8])} "
            f"(see `prismn gpus`), or leave gpu out to assume {DEFAULT_GPU}"
        )
    return gpu


def match_gpu(reported: str) -> GPU | None:
    """The catalog entry for a name a driver reports ('NVIDIA A100-SXM4-80GB', 'NVIDIA H100 80GB HBM3').

    Tries the whole name, then drops trailing words (memory size, memory type, form factor) one at a time.
    """
    by_key, _ = _catalog()
    words = [w for w in re.split(r"[\s\-_]+", reported.strip()) if w]
    for n in range(len(words), 0, -1):
        gpu = by_key.get(normalise(" ".join(words[:n])))
        if gpu is not None:
            return gpu
    return None
