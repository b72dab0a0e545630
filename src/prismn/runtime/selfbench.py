"""Self-benchmark of a stage: seconds per decode token for one layer, the head and the embedding.

The result is the dict the swarm format accepts in a peer's ``measurements`` list and the evaluator
prefers over datasheet estimates::

    {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dtype": "fp32", "device": "cpu",
     "s_per_layer": 0.0021, "s_head": 0.0052, "s_embed": 2e-05, ...}

Parts this stage does not hold (the head on a first stage, ...) are estimated from the measured
per-layer time scaled by weight bytes (decode is memory-bound) and listed under ``"estimated"``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from prismn.runtime.stage import SHORT_DTYPE, Sampler, Stage


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def self_benchmark(stage: Stage, *, context: int = 32, tokens: int = 12, warmup: int = 3) -> dict[str, Any]:
    """Time ``tokens`` decode steps after a ``context``-token prefill; medians per token."""
    dev = stage.device
    g = torch.Generator(device="cpu").manual_seed(0)
    cache = stage.new_cache()
    ctx = max(1, min(context, (stage.max_positions or 10**9) - tokens - warmup - 1))
    with torch.inference_mode():
        if stage.first:
            ids = torch.randint(0, stage.vocab_size, (1, ctx), generator=g).to(dev)
            h = stage.embed(ids)
        else:
            h = (torch.randn(1, ctx, stage.hidden_size, generator=g) * 0.1).to(dev, stage.dtype)
        stage.layers(h, cache, 0)
        pos = ctx
        t_embed: list[float] = []
        t_layers: list[float] = []
        t_head: list[float] = []
        sampler = Sampler(0.0)
        for i in range(warmup + tokens):
            if stage.first:
                tok = torch.randint(0, stage.vocab_size, (1, 1), generator=g).to(dev)
                _sync(dev)
                t0 = time.perf_counter()
                x = stage.embed(tok)
                _sync(dev)
                t1 = time.perf_counter()
            else:
                x = (torch.randn(1, 1, stage.hidden_size, generator=g) * 0.1).to(dev, stage.dtype)
                _sync(dev)
                t0 = t1 = time.perf_counter()
            y = stage.layers(x, cache, pos)
            _sync(dev)
            t2 = time.perf_counter()
            if stage.last:
                sampler(stage.logits(y))
                _sync(dev)
            t3 = time.perf_counter()
            pos += 1
            if i >= warmup:
                t_embed.append(t1 - t0)
                t_layers.append(t2 - t1)
                t_head.append(t3 - t2)
    s_layer = statistics.median(t_layers) / stage.n_layers
    estimated: list[str] = []
    layer_bytes = stage.param_bytes / max(1, stage.n_layers)  # rough: includes embed/head on edge stages
    body_params = sum(p.numel() * p.element_size() for p in stage.body.parameters())
    if stage.first or stage.last:
        # exclude embedding / final norm from the per-layer weight bytes
        edge = 0
        for name, p in stage.body.named_parameters():
            if not (name.startswith("layers.") or name.startswith("h.")):
                edge += p.numel() * p.element_size()
        layer_bytes = (body_params - edge) / max(1, stage.n_layers)
    head_bytes = stage.vocab_size * stage.hidden_size * torch.finfo(stage.dtype).bits // 8
    if stage.last:
        s_head = statistics.median(t_head)
    else:
        s_head = s_layer * head_bytes / max(1.0, layer_bytes)
        estimated.append("s_head")
    if stage.first:
        s_embed = statistics.median(t_embed)
    else:
        table = torch.randn(1024, stage.hidden_size).to(dev, stage.dtype)
        ts = []
        for _ in range(warmup + tokens):
            idx = torch.randint(0, 1024, (1, 1), generator=g).to(dev)
            _sync(dev)
            t0 = time.perf_counter()
            torch.nn.functional.embedding(idx, table)
            _sync(dev)
            ts.append(time.perf_counter() - t0)
        s_embed = statistics.median(ts[warmup:])
        estimated.append("s_embed")
    return {
        "model": stage.model_name,
        "dtype": SHORT_DTYPE[stage.dtype_name],
        "device": "cuda" if dev.startswith("cuda") else dev,
        "s_per_layer": s_layer,
        "s_head": s_head,
        "s_embed": s_embed,
        "layers": [stage.start, stage.end],
        "context": ctx,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
        "estimated": estimated,
        "source": "prismn stage self-benchmark (decode, batch 1)",
    }
