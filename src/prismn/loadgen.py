"""A load generator for a deployment: N concurrent streaming chat requests through the `openai` client,
measured as a user sees them (time to first token, gaps between tokens, aggregate tokens/s) with the
carbon each receipt reports. Used by `prismn demo` and benchmarks/serving.py."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how a bicycle stays upright.",
    "Describe a walk through a forest in autumn.", "Tell me about the history of bread.",
    "Write a letter to a friend who moved abroad.", "Explain why the sky is blue.",
    "Describe a busy market in the morning.", "Tell me a story about a lost cat.",
]


@dataclass
class Result:
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)  # between consecutive content chunks
    tokens: int = 0
    receipt: dict[str, Any] | None = None
    error: str | None = None


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


async def _one(client: Any, model: str, prompt: str, max_tokens: int) -> Result:
    res = Result()
    t0 = time.perf_counter()
    last = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            seed=0, stream=True, stream_options={"include_usage": True})
        async for ch in stream:
            now = time.perf_counter()
            if ch.choices and ch.choices[0].delta.content:
                if res.ttft_s is None:
                    res.ttft_s = now - t0
                elif last is not None:
                    res.gaps_s.append(now - last)
                last = now
            if ch.usage is not None:
                res.tokens = ch.usage.completion_tokens
                res.receipt = (ch.usage.model_extra or {}).get("carbon")
    except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
        res.error = f"{e.__class__.__name__}: {str(e)[:200]}"
    return res


async def burst(base_url: str, model: str, concurrency: int, max_tokens: int = 32,
                api_key: str = "not-needed") -> dict[str, Any]:
    """``concurrency`` requests at once (fixed prompts, greedy); a summary of what users saw."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=900)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_one(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                                     for i in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in ok)
    grams = sum((r.receipt or {}).get("gco2e", 0.0) for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    batches = [(r.receipt or {}).get("batch", {}).get("mean") for r in ok]
    batches = [b for b in batches if b is not None]
    return {
        "concurrency": concurrency, "requests": len(results), "errors": [r.error for r in results if r.error],
        "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_p50_ms": _ms(_pct(ttft, 50)), "ttft_p99_ms": _ms(_pct(ttft, 99)),
        "itl_p50_ms": _ms(_pct(gaps, 50)), "itl_p99_ms": _ms(_pct(gaps, 99)),
        "mgco2e_per_token": grams / tokens * 1e3 if tokens else None,
        "mean_batch": statistics.fmean(batches) if batches else None,
    }


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1e3


def run_burst(base_url: str, model: str, concurrency: int, max_tokens: int = 32) -> dict[str, Any]:
    return asyncio.run(burst(base_url, model, concurrency, max_tokens))
