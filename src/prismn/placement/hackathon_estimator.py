"""The hackathon memory estimator, reproduced faithfully (research/seed-algorithm.md).

It is what both baselines use to decide; Prismn's evaluator then judges what they decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
SAFETY_MARGIN = 0.1
SEQ_LEN = 2048
BATCH = 1


@dataclass(frozen=True)
class HackathonEstimate:
    per_layer_gb: float
    embedding_gb: float
    total_gb: float
    n_layers: int


def _config_value(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def estimate(config: dict[str, Any], bits: int = 16) -> HackathonEstimate:
    """Per-layer, embedding and total GB (GiB) for a Hugging Face config, as the hackathon code did."""
    v = int(_config_value(config, "vocab_size"))
    h = int(_config_value(config, "hidden_size", "n_embd"))
    n_layers = int(_config_value(config, "num_hidden_layers", "n_layer"))
    a = int(_config_value(config, "num_attention_heads", "n_head"))
    k = int(_config_value(config, "num_key_value_heads", default=a))
    d = int(_config_value(config, "head_dim", default=h // a))
    i = int(_config_value(config, "intermediate_size", "n_inner", default=4 * h) or 4 * h)
    tied = bool(config.get("tie_word_embeddings", False))
    q = bits / 8

    embedding_params = v * h + (0 if tied else v * h)
    layer_params = h * (a * d) + 2 * h * (k * d) + (a * d) * h + 3 * h * i + 2 * h
    per_layer = layer_params * q / GIB + (BATCH * SEQ_LEN * h * 12 * q) / GIB
    embedding = embedding_params * q / GIB
    total = embedding + n_layers * per_layer + h * q / GIB
    return HackathonEstimate(round(per_layer, 6), round(embedding, 6), round(total, 6), n_layers)


def capacity(free_vram_gb: float, est: HackathonEstimate, embedding_peer: bool) -> int:
    usable = free_vram_gb * (1 - SAFETY_MARGIN)
    if est.per_layer_gb <= 0:
        return 0
    if embedding_peer:
        return max(0, int((usable - est.embedding_gb) / est.per_layer_gb))
    return int(usable / est.per_layer_gb)


def proportional_split(order: list[str], caps: dict[str, int], n_layers: int) -> list[tuple[str, int]]:
    """Walk peers in order giving each a share of the remaining layers proportional to its capacity."""
    out: list[tuple[str, int]] = []
    remaining = n_layers
    for idx, pid in enumerate(order):
        cap = caps[pid]
        if idx == len(order) - 1:
            n = min(cap, remaining)
        else:
            rest = sum(caps[q] for q in order[idx:])
            n = min(cap, int(remaining * cap / rest) if rest else 0, remaining)
            if n == 0 and cap > 0 and remaining > 0:
                n = 1
        if n > 0:
            out.append((pid, n))
            remaining -= n
    return out
