"""Serving many users at once: a coordinator + 3 local SmolLM2-135M peers driven through the `openai`
client at several concurrencies, with wide-area delay EMULATED from real cities and with none.

In the same run, the same deployment (same route, same peers) is measured with its admission limited
to ONE session at a time (what Prismn did before batching: requests served one after another, queued
as long as it takes), and the 32-stream figures are reported as ratios to it.
Results: docs/bench/serving.json.

    python benchmarks/serving.py [--levels 1,4,16,32] [--tokens 32] [--wan both|emulated|none]

Everything runs on this one machine: stages share its cores, so absolute numbers are this machine's;
the ratios are the claim. Energy is measured compute time x modelled power (no power meter here).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from rich.console import Console

from prismn.demo import MODEL, Demo
from prismn.loadgen import run_burst

# three peers in real cities; each holds part of the model (none holds all of it)
PEERS = [("Oslo", 0.4), ("Paris", 0.4), ("Madrid", 0.4)]
OUT = Path(__file__).resolve().parent.parent / "docs" / "bench" / "serving.json"


def deploy(demo: Demo, name: str, **extra) -> dict:
    r = demo.api("POST", "/v1/deployments", json={"model": MODEL, "name": name, "strategy": "prismn",
                                                  "objective": "latency", **extra})
    dep = r.json()
    if dep.get("state") != "ready":
        raise SystemExit(f"deployment {name} failed: {dep.get('error') or dep}")
    return dep


def limit(demo: Demo, dep_id: str, max_sessions: int | None) -> None:
    r = demo.api("PATCH", f"/v1/deployments/{dep_id}", json={"max_sessions": max_sessions})
    if r.status_code != 200:
        raise SystemExit(f"could not set the deployment's admission: {r.text}")


def measure(console: Console, wan: bool, levels: list[int], tokens: int) -> dict:
    demo = Demo(console)
    try:
        from prismn.runtime.prepare import prepare_model

        prepare_model(MODEL)
        # one-at-a-time requests queue for as long as it takes, as they did before batching
        demo.start_coordinator(wan=wan, extra=["--queue-timeout-s", "3600"])
        demo.start_peers(PEERS)
        base = demo.url + "/v1"
        out: dict = {"wan": "emulated from city distances (RTT/2 per link)" if wan else "none (loopback)"}

        # ONE deployment (one route, the same peers and grids) measured both ways: its admission is
        # limited to one request at a time, then opened to what its stages hold
        dep = deploy(demo, "smollm2")
        out["route"] = [s["peer"] for s in dep["plan"]["stages"]]
        out["serving"] = dep["plan"].get("serving")
        run_burst(base, "smollm2", 2, tokens)  # warm-up
        limit(demo, dep["id"], 1)
        top = max(levels)
        console.print(f"one session at a time, {top} streams offered ...")
        out["one_at_a_time"] = run_burst(base, "smollm2", top, tokens)
        limit(demo, dep["id"], None)
        out["batched"] = []
        for c in levels:
            console.print(f"batched, {c} streams ...")
            out["batched"].append(run_burst(base, "smollm2", c, tokens))
        b, a = out["batched"][-1], out["one_at_a_time"]

        def ratio(k: str) -> float | None:
            return b[k] / a[k] if (a.get(k) and b.get(k) is not None) else None

        out["ratios_at_max_concurrency"] = {"tokens_per_s": ratio("tokens_per_s"), "ttft_p99": ratio("ttft_p99_ms"),
                                            "mgco2e_per_token": ratio("mgco2e_per_token")}
        return out
    finally:
        demo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,4,16,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--wan", choices=["both", "emulated", "none"], default="both")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    console = Console()
    t0 = time.time()
    runs = {}
    for wan in ([True, False] if args.wan == "both" else [args.wan == "emulated"]):
        runs["emulated_wan" if wan else "no_wan"] = measure(console, wan, levels, args.tokens)
    result = {
        "benchmark": "serving", "model": MODEL, "peers": PEERS, "levels": levels, "new_tokens": args.tokens,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cores": _cores()},
        "targets_at_32_streams": {"tokens_per_s_vs_one_at_a_time": ">= 10x with emulated WAN, >= 4x without",
                                  "ttft_p99": "<= 0.25x", "mgco2e_per_token": "<= 0.25x"},
        "energy_basis": "measured stage compute time x modelled CPU power; each request charged its share of "
                        "every batched pass", "runs": runs, "took_s": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, r in runs.items():
        console.print(f"[bold]{name}[/bold] ({r['wan']}), route {' > '.join(r['route'])}")
        for row in [r["one_at_a_time"], *r["batched"]]:
            console.print(f"  c={row['concurrency']:>2}  {row['tokens_per_s'] or 0:7.1f} tok/s  TTFT p50/p99 "
                          f"{_f(row['ttft_p50_ms'])}/{_f(row['ttft_p99_ms'])} ms  ITL p50/p99 "
                          f"{_f(row['itl_p50_ms'])}/{_f(row['itl_p99_ms'])} ms  {_f(row['mgco2e_per_token'], 4)} "
                          f"mgCO2e/token  batch {_f(row['mean_batch'], 1)}  errors {len(row['errors'])}")
        console.print(f"  ratios at {max(levels)} streams vs one at a time: {r['ratios_at_max_concurrency']}")
    console.print(f"wrote {args.out}")


def _f(x: float | None, nd: int = 0) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
