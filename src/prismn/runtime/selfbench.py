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
from collections.abc import Callable
from typing import Any

import torch

from prismn.runtime.stage import SHORT_DTYPE, Sampler, Stage


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def power_reader(device: str) -> Callable[[], float] | None:
    """The GPU's board power in W (NVML, through torch.cuda.power_draw), or None off CUDA or without NVML."""
    if not device.startswith("cuda"):
        return None
    try:
        idx = torch.device(device).index
        idx = torch.cuda.current_device() if idx is None else idx
        torch.cuda.power_draw(idx)  # needs the NVML bindings (nvidia-ml-py) and a driver that reports power
    except Exception:  # noqa: BLE001 - no NVML, no sensor: the cost model's datasheet figures apply
        return None
    return lambda: torch.cuda.power_draw(idx) / 1000.0


def measure_power(step: Callable[[], None], read: Callable[[], float], *, active_s: float = 3.0,
                  idle_s: float = 3.0, settle_s: float = 1.0, interval_s: float = 0.05,
                  clock: Callable[[], float] = time.monotonic) -> dict[str, float]:
    """Board power while ``step`` (one decode step) runs back to back for ``active_s``, then while the stage
    stays loaded with nothing to run for ``idle_s``: the mean of the samples taken after ``settle_s`` of
    each phase (NVML's reading averages over about a second, so the first samples mix both states)."""
    def phase(duration: float, busy: bool) -> float:
        t0 = last = clock()
        samples: list[float] = []
        while (now := clock()) - t0 < duration:
            if busy:
                step()
            else:
                time.sleep(interval_s)
            if now - t0 >= settle_s and (not samples or now - last >= interval_s):
                samples.append(float(read()))
                last = now
        if not samples:
            samples.append(float(read()))
        return statistics.fmean(samples)

    active = phase(active_s, True)
    idle = phase(idle_s, False)
    return {"active_w": round(active, 1), "idle_w": round(idle, 1)}


def self_benchmark(stage: Stage, *, context: int = 32, tokens: int = 12, warmup: int = 3,
                   power: Callable[[], float] | None | bool = True, power_s: float = 3.0) -> dict[str, Any]:
    """Time ``tokens`` decode steps after a ``context``-token prefill; medians per token. With a power
    reader (by default NVML on a CUDA device; ``power`` may pass one, or False for none), also the board
    power while decoding and while holding the stage idle (``measure_power``)."""
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
    out: dict[str, Any] = {}
    read = power_reader(dev) if power is True else (power or None)
    if read is not None:
        out = _decode_power(stage, read, active_s=power_s, idle_s=power_s, settle_s=min(1.0, power_s / 3))
    return {
        **out,
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


def _decode_power(stage: Stage, read: Callable[[], float], **kw: float) -> dict[str, Any]:
    """measure_power over real decode steps of this stage (a fresh cache whenever the positions run out)."""
    dev = stage.device
    limit = max(2, min(stage.max_positions or 4096, 4096) - 1)
    state: dict[str, Any] = {"pos": limit}
    g = torch.Generator(device="cpu").manual_seed(1)
    x = (torch.randn(1, 1, stage.hidden_size, generator=g) * 0.1).to(dev, stage.dtype)

    def step() -> None:
        if state["pos"] >= limit:
            state["cache"], state["pos"] = stage.new_cache(), 0
        with torch.inference_mode():
            y = stage.layers(x, state["cache"], state["pos"])
            if stage.last:
                stage.logits(y)
        _sync(dev)
        state["pos"] += 1

    p = measure_power(step, read, **kw)
    return {**p, "power_source": f"board power (NVML): decode back to back, then the stage held idle "
                                 f"({kw.get('active_s', 3.0):g} s each)"}
