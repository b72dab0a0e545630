"""Placement benchmark: every strategy on the same generated swarms, in one process, one ruler.

    python benchmarks/placement.py [--sizes 15,50,200,1000,10000] [--seeds 3] [--measured 200:all,10000:knn]
                                   [--deep-seeds 2] [--target-seeds 20] [--out docs/bench/placement.json]

For each swarm (prismn.swarmgen.generate_swarm, the generator behind `prismn swarm generate`) and
an 80-layer model (Llama-3.1-70B, bf16), it runs:
  prismn (latency), prismn (carbon: the default scope, reserved carbon at load), prismn (carbon,
  operational: compute time only, the old default), prismn (least carbon within 1.15x the fastest
  plan's latency), prismn (least carbon within the hackathon low-carbon plan's latency), tandemn,
  prismn-hackathon (low-carbon and low-latency) and petals (simulation),
and records solve time, feasibility, latency and gCO2e per token (operational and total) of each,
judged by the shared evaluator, plus the ratios of prismn to each baseline. Baselines are time-boxed
(a timeout is recorded as such). Then: swarms whose peers report measured RTTs (5 nearest neighbours up
to 100,000 peers, all pairs up to 2,000), deep plans (>= 20 stages), and the 1,000-peer solve-time
target over 20 seeds. The JSON's summary sets each figure beside the issue's target.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import signal
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from prismn.model import load_model_spec
from prismn.placement import PlanRequest, evaluate_plan, make_plan
from prismn.placement.optimal import Engine, Objective, plan_optimal
from prismn.swarm import parse_swarm
from prismn.swarmgen import generate_swarm

MODEL = "meta-llama/Llama-3.1-70B"
DEFAULT_SIZES = [15, 50, 200, 1000, 10_000]
MEASURED = [(200, "all"), (2000, "all"), (1000, "knn"), (10_000, "knn"), (100_000, "knn")]


def add_measured_rtts(data: dict, mode: str, seed: int = 0, factor: tuple[float, float] = (0.8, 1.6),
                      k: int = 5) -> dict:
    """Give a generated swarm measured RTTs, as real peers report them: `knn` (each peer's k nearest
    neighbours, found with a k-d tree on the unit sphere) or `all` (every pair, client included), each
    the distance estimate times a random factor (some below 1: measured links can beat the estimate).
    """
    from scipy.spatial import cKDTree

    from prismn import geo
    from prismn.placement.instance import haversine_pairs_km

    rng = np.random.default_rng(10_000 + seed)
    peers = data["peers"]
    lat = np.array([p["lat"] for p in peers] + [data["coordinator"]["lat"]])
    lon = np.array([p["lon"] for p in peers] + [data["coordinator"]["lon"]])
    ids = [p["id"] for p in peers] + ["client"]
    n = len(peers)
    if mode == "all":
        a, b = np.triu_indices(n + 1, k=1)
    elif mode == "knn":
        la, lo = np.radians(lat[:n]), np.radians(lon[:n])
        xyz = np.c_[np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)]
        _, nb = cKDTree(xyz).query(xyz, k=min(k + 1, n))
        a = np.repeat(np.arange(n), nb.shape[1] - 1)
        b = nb[:, 1:].ravel()
    else:
        raise ValueError(f"unknown measured-RTT mode {mode!r}: use knn or all")
    est = np.empty(len(a))
    for s in range(0, len(a), 1_000_000):  # the same estimate the planner uses, pair by pair
        sl = slice(s, s + 1_000_000)
        est[sl] = geo.estimate_rtt_ms(haversine_pairs_km(lat[a[sl]], lon[a[sl]], lat[b[sl]], lon[b[sl]]))
    v = np.round(est * rng.uniform(*factor, size=len(a)), 3)
    rtt: dict[str, dict[str, float]] = {}
    for x, y, val in zip(a.tolist(), b.tolist(), v.tolist(), strict=True):
        rtt.setdefault(ids[x], {})[ids[y]] = val
    return {**data, "rtt_ms": rtt}


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout


def timed(fn, limit_s: float | None):
    """(result, seconds, timed_out)."""
    if limit_s:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    t0 = time.perf_counter()
    try:
        out = fn()
        return out, time.perf_counter() - t0, False
    except Timeout:
        return None, time.perf_counter() - t0, True
    finally:
        if limit_s:
            signal.setitimer(signal.ITIMER_REAL, 0)


def row(ev, seconds, timed_out=False) -> dict:
    if ev is None:
        return {"feasible": False, "timed_out": timed_out, "solve_s": seconds}
    m = ev.metrics
    out = {"feasible": ev.feasible, "timed_out": False, "solve_s": seconds,
           "latency_ms_per_token": m["latency_ms_per_token"], "gco2e_per_token": m["gco2e_per_token"],
           "gco2e_total_per_token": m["gco2e_total_per_token"], "peers_used": m["peers_used"],
           # the honest accounting: every peer reserved for the whole step (idle draw, embodied by wall time)
           "reserved": {k: m[k] for k in ("gco2e_per_token_at_load", "gco2e_embodied_per_token_at_load",
                                          "gco2e_network_per_token_at_load", "gco2e_total_per_token_at_load")},
           "proof": ev.proof}
    if not ev.feasible:
        out["problems"] = ev.problems[:3]
    notes = ev.plan.notes
    if "optimal" in notes:
        out["optimal"] = notes["optimal"]
        out["search"] = {k: v for k, v in notes.get("search", {}).items() if k != "dssr"}
    return out


def run_swarm(n: int, seed: int, spec, baseline_limit_s: float, prismn_limit_s: float) -> dict:
    sw = parse_swarm(generate_swarm(n, seed))
    res: dict = {"peers": n, "seed": seed}
    strategies: dict[str, dict] = {}

    def prismn(obj: Objective):
        def go():
            eng = Engine(spec, sw, None, obj.carbon_scope)
            return evaluate_plan(plan_optimal(spec, sw, obj, engine=eng), spec, sw)
        ev, s, to = timed(go, prismn_limit_s)
        return ev, row(ev, s, to)

    ev_fast, strategies["prismn (latency)"] = prismn(Objective("latency"))
    _, strategies["prismn (carbon)"] = prismn(Objective("carbon"))
    _, strategies["prismn (carbon, operational)"] = prismn(Objective("carbon", carbon_scope="operational"))
    if ev_fast is not None and ev_fast.feasible:
        budget = ev_fast.metrics["latency_ms_per_token"] * 1.15
        _, strategies["prismn (carbon, latency <= 1.15x fastest)"] = prismn(Objective("carbon", max_latency_ms=budget))
    for name, pref in (("tandemn", "low-carbon"), ("prismn-hackathon", "low-carbon"),
                       ("prismn-hackathon", "low-latency"), ("petals", "low-latency")):
        label = name + (f" ({pref})" if name == "prismn-hackathon" else "")
        ev, s, to = timed(lambda name=name, pref=pref: make_plan(name, spec, sw, PlanRequest(preference=pref)),
                          baseline_limit_s)
        strategies[label] = row(ev, s, to)
    hack = strategies["prismn-hackathon (low-carbon)"]
    if hack.get("feasible"):
        _, strategies["prismn (carbon, latency <= hackathon low-carbon)"] = prismn(
            Objective("carbon", max_latency_ms=hack["latency_ms_per_token"]))
    res["strategies"] = strategies
    # ratios of prismn to each baseline (feasible pairs only)
    ratios = {}
    for ours in ("prismn (latency)", "prismn (carbon)"):
        a = strategies[ours]
        if not a.get("feasible"):
            continue
        for base in ("tandemn", "prismn-hackathon (low-carbon)", "prismn-hackathon (low-latency)", "petals"):
            b = strategies[base]
            if b.get("feasible"):
                ratios[f"{ours} / {base}"] = {
                    "latency": a["latency_ms_per_token"] / b["latency_ms_per_token"],
                    "gco2e": a["gco2e_per_token"] / b["gco2e_per_token"],
                    "reserved_total": a["reserved"]["gco2e_total_per_token_at_load"] /
                    b["reserved"]["gco2e_total_per_token_at_load"]}
    res["ratios"] = ratios
    return res


def summarise(results: list[dict]) -> dict:
    s: dict = {}
    by = lambda n: [r for r in results if r["peers"] == n]  # noqa: E731
    # feasibility
    s["prismn_infeasible_when_a_baseline_is_feasible"] = sum(
        1 for r in results for k in ("prismn (latency)", "prismn (carbon)")
        if not r["strategies"][k].get("feasible") and not r["strategies"][k].get("timed_out")
        and any(v.get("feasible") for kk, v in r["strategies"].items() if not kk.startswith("prismn (")))
    s["baseline_infeasible_plans"] = {k: sum(1 for r in results if k in r["strategies"] and not r["strategies"][k].get("feasible"))
                                      for k in ("tandemn", "prismn-hackathon (low-carbon)", "prismn-hackathon (low-latency)", "petals")}
    # carbon vs hackathon (200 peers)
    rows200 = [r for r in by(200) if r["strategies"]["prismn-hackathon (low-carbon)"].get("feasible")
               and r["strategies"]["prismn (carbon)"].get("feasible")]
    if rows200:
        def tot(x):
            return x["reserved"]["gco2e_total_per_token_at_load"]

        cr = [tot(r["strategies"]["prismn (carbon)"]) / tot(r["strategies"]["prismn-hackathon (low-carbon)"])
              for r in rows200]
        lr = [r["strategies"]["prismn (carbon)"]["latency_ms_per_token"] /
              r["strategies"]["prismn-hackathon (low-carbon)"]["latency_ms_per_token"] for r in rows200]
        bounded = [r["strategies"].get("prismn (carbon, latency <= hackathon low-carbon)", {}) for r in rows200]
        bcr = [tot(b) / tot(r["strategies"]["prismn-hackathon (low-carbon)"])
               for b, r in zip(bounded, rows200, strict=False) if b.get("feasible")]
        s["carbon_vs_hackathon_200"] = {
            "metric": "gco2e_total_per_token_at_load (reserved at load: operational + embodied + network)",
            "swarms": len(rows200), "mean_gco2e_ratio": statistics.fmean(cr), "gco2e_ratios": cr,
            "latency_ratios": lr, "latency_no_worse_on": sum(x <= 1 + 1e-9 for x in lr),
            "with_latency_bound_mean_gco2e_ratio": statistics.fmean(bcr) if bcr else None,
            "target": "mean gCO2e ratio <= 0.5 with latency no worse"}
    # latency vs petals
    pairs = [(r["peers"], r["seed"], r["strategies"]["prismn (latency)"], r["strategies"]["petals"]) for r in results]
    s["latency_vs_petals"] = {
        "swarms_compared": sum(1 for *_, a, b in pairs if a.get("feasible") and b.get("feasible")),
        "prismn_no_worse_on": sum(1 for *_, a, b in pairs if a.get("feasible") and b.get("feasible")
                                  and a["latency_ms_per_token"] <= b["latency_ms_per_token"] * (1 + 1e-9)),
        "ratios": [(n, sd, a["latency_ms_per_token"] / b["latency_ms_per_token"]) for n, sd, a, b in pairs
                   if a.get("feasible") and b.get("feasible")]}
    # 1.15x budget
    red = []
    for r in by(200):
        a, b = r["strategies"]["prismn (latency)"], r["strategies"].get("prismn (carbon, latency <= 1.15x fastest)", {})
        if a.get("feasible") and b.get("feasible"):
            red.append(1 - b["reserved"]["gco2e_total_per_token_at_load"] / a["reserved"]["gco2e_total_per_token_at_load"])
    if red:
        s["carbon_saved_within_1.15x_latency_200"] = {"median": statistics.median(red), "all": red,
                                                      "metric": "gco2e_total_per_token_at_load",
                                                      "target": "median >= 0.40"}
    # solve times
    times = {}
    for n in sorted({r["peers"] for r in results}):
        t = {}
        for k in ("prismn (latency)", "prismn (carbon)", "prismn (carbon, operational)",
                  "prismn (carbon, latency <= 1.15x fastest)",
                  "prismn-hackathon (low-carbon)", "petals", "tandemn"):
            v = [r["strategies"][k]["solve_s"] for r in by(n) if k in r["strategies"]]
            if v:
                t[k] = {"median_s": statistics.median(v), "max_s": max(v),
                        "timeouts": sum(r["strategies"][k].get("timed_out", False) for r in by(n) if k in r["strategies"])}
        times[n] = t
    # the same comparison under the reserved-time energy model (idle draw x wall time, embodied by wall time)
    pairs = [(r["strategies"].get("prismn (carbon, latency <= hackathon low-carbon)", {}),
              r["strategies"]["prismn-hackathon (low-carbon)"]) for r in by(200)]
    pairs = [(a, b) for a, b in pairs if a.get("feasible") and b.get("feasible")]
    if pairs:
        R = "reserved"
        s["carbon_vs_hackathon_200_equal_latency"] = {
            "swarms": len(pairs),
            "reserved_total_ratios": [a[R]["gco2e_total_per_token_at_load"] / b[R]["gco2e_total_per_token_at_load"]
                                      for a, b in pairs],
            "reserved_operational_ratios": [a[R]["gco2e_per_token_at_load"] / b[R]["gco2e_per_token_at_load"]
                                            for a, b in pairs],
            "reserved_embodied_ratios": [a[R]["gco2e_embodied_per_token_at_load"] /
                                         b[R]["gco2e_embodied_per_token_at_load"] for a, b in pairs],
            "reserved_network_ratios": [a[R]["gco2e_network_per_token_at_load"] /
                                        b[R]["gco2e_network_per_token_at_load"] for a, b in pairs],
            "compute_only_operational_ratios": [a["gco2e_per_token"] / b["gco2e_per_token"] for a, b in pairs],
            "latency_ratios": [a["latency_ms_per_token"] / b["latency_ms_per_token"] for a, b in pairs],
            "proofs": [a["proof"] for a, _ in pairs],
            "prismn_mg": [{k: a[R][k] * 1e3 for k in a[R]} for a, _ in pairs],
            "hackathon_mg": [{k: b[R][k] * 1e3 for k in b[R]} for _, b in pairs],
            "note": "prismn minimises the default carbon (reserved at load: idle draw x wall time + (active - idle) x "
                    "compute time, x PUE, embodied by wall time, + network) within the hackathon low-carbon plan's "
                    "latency; both plans judged by the same evaluator"}
    s["solve_times"] = times
    s["time_targets"] = {"1000": "<= 0.05 s", "10000": "<= 1 s", "100000": "<= 10 s"}
    return s


def solve_case(spec, sw, kind: str, scope: str = "operational", memory: bool = True) -> dict:
    """One prismn solve: its time (untraced), its proof, and with `memory` its peak traced memory from a
    second, identical solve under tracemalloc (numpy arrays included; tracing slows Python-heavy solves
    several times, so it never times one)."""
    t0 = time.perf_counter()
    plan = plan_optimal(spec, sw, Objective(kind, carbon_scope=scope))
    seconds = time.perf_counter() - t0
    peak = None
    if memory:
        tracemalloc.start()
        try:
            plan_optimal(spec, sw, Objective(kind, carbon_scope=scope))
            peak = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    ev = evaluate_plan(plan, spec, sw)
    return {"objective": kind, "carbon_scope": scope, "solve_s": seconds, "peak_mib": peak,
            "feasible": ev.feasible, "optimal": plan.notes.get("optimal"), "proof": ev.proof,
            "stages": len(plan.stages), "latency_ms_per_token": ev.metrics["latency_ms_per_token"],
            "gco2e_per_token": ev.metrics["gco2e_per_token"],
            "gco2e_total_per_token_at_load": ev.metrics["gco2e_total_per_token_at_load"]}


def measured_rtt_cases(spec, cases: list[tuple[int, str]], reserved_max: int = 100_000) -> list[dict]:
    """Generated swarms whose peers report measured RTTs (k nearest neighbours, or all pairs)."""
    out = []
    for n, mode in cases:
        data = add_measured_rtts(generate_swarm(n, 0), mode)
        t0 = time.perf_counter()
        sw = parse_swarm(data)
        parse_s = time.perf_counter() - t0
        row_ = {"peers": n, "measured": "5 nearest neighbours" if mode == "knn" else "all pairs",
                "measured_pairs": len(sw.rtt_overrides) // 2, "parse_s": parse_s,
                "solves": [solve_case(spec, sw, k, sc) for k, sc in
                           (("latency", "reserved"), ("carbon", "operational"), ("carbon", "reserved"))
                           if not (sc == "reserved" and k == "carbon" and n > reserved_max)]}
        out.append(row_)
        print(f"{n:>7} peers, {row_['measured']}: " + "; ".join(
            f"{c['objective']}/{c['carbon_scope']} {c['solve_s']:.3f}s {c['peak_mib']:.0f} MiB {c['proof']}"
            for c in row_["solves"]),
            flush=True)
    return out


def small_peer_swarm(n: int, seed: int, max_gb: float) -> dict:
    """A generated swarm whose peers offer at most max_gb of VRAM each (many small peers: deep plans)."""
    data = generate_swarm(n, seed)
    for p in data["peers"]:
        p["free_vram_gb"] = min(p["free_vram_gb"], max_gb)
    return data


def deep_key(solve: dict) -> str:
    """A deep case's solves by name: latency, or the carbon objective's scope."""
    return "latency" if solve["objective"] == "latency" else solve["carbon_scope"]


def deep_cases(seeds: int) -> list[dict]:
    """Plans of >= 20 stages: Llama-3.1-405B on 64 generated peers; 70B on many peers of <= 6 GB."""
    out = []
    for label, model, n, max_gb in (("405B on 64 peers", "meta-llama/Llama-3.1-405B", 64, 1e9),
                                    ("70B on 60 peers of <= 6 GB", MODEL, 60, 6.0)):
        spec = load_model_spec(model, "bf16")
        for seed in range(seeds):
            sw = parse_swarm(small_peer_swarm(n, seed, max_gb))
            solves = [solve_case(spec, sw, "carbon", scope, memory=False) for scope in ("operational", "total", "reserved")]
            solves.append(solve_case(spec, sw, "latency", "reserved", memory=False))
            out.append({"case": label, "seed": seed, "solves": solves})
            print(f"deep {label} seed {seed}: " + "; ".join(
                f"{deep_key(c)} {c['stages']} stages {c['solve_s']:.3f}s {c['proof']}" for c in solves), flush=True)
    return out


def thousand_peer_target(spec, seeds: int, reserved_seeds: int, first_seed: int = 100) -> dict:
    """Issue 9 item 6: 1,000 peers, median <= 50 ms and max <= 200 ms over 20 seeds, latency and carbon.
    The target's seeds are generate_swarm(1000, 100 + s); the held-out run (first_seed 1000) is the same
    measurement on swarms no change was ever tuned on, reported apart."""
    objectives = {"latency": Objective("latency"), "carbon": Objective("carbon"),
                  "carbon (operational)": Objective("carbon", carbon_scope="operational")}
    times: dict[str, list[float]] = {k: [] for k in objectives}
    proven = {k: 0 for k in objectives}
    gaps: dict[str, list[float]] = {k: [] for k in objectives}
    for seed in range(seeds):
        sw = parse_swarm(generate_swarm(1000, first_seed + seed))
        for kind, obj in objectives.items():
            if kind == "carbon" and seed >= reserved_seeds:
                continue
            t0 = time.perf_counter()
            plan = plan_optimal(spec, sw, obj)
            times[kind].append(time.perf_counter() - t0)
            proven[kind] += bool(plan.notes.get("optimal"))
            gaps[kind].append(plan.notes.get("gap", 0.0))
    out = {k: {"median_s": statistics.median(v), "max_s": max(v), "all_s": v, "proven": proven[k], "runs": len(v),
               "max_gap": max(gaps[k])} for k, v in times.items() if v}
    out["target"] = "median <= 0.05 s, max <= 0.2 s"
    out["seeds"] = f"generate_swarm(1000, {first_seed} + s), s = 0..{seeds - 1}"
    print("1000 peers x", seeds, f"seeds from {first_seed}:", {k: (round(v["median_s"], 3), round(v["max_s"], 3))
                                           for k, v in out.items() if isinstance(v, dict)}, flush=True)
    return out


def compiled_first_use(spec) -> dict:
    """The one-time cost of the compiled loops (placement/compiled.py) in a fresh process: importing numba
    and loading the machine code from its on-disk cache, or compiling it on a fresh checkout. Every later
    solve in the process is timed without it, so it is reported here, apart."""
    from prismn.placement import compiled

    sw = parse_swarm(generate_swarm(20, 0))
    t0 = time.perf_counter()
    plan_optimal(spec, sw, Objective("latency"))
    plan_optimal(spec, sw, Objective("carbon", carbon_scope="operational"))
    seconds = time.perf_counter() - t0
    kernels = [getattr(compiled, k) for k in ("dssr_tables", "knapsack_table", "relaxed_dp", "forward_dp")]
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    out = {"seconds": seconds, "cache_hits": hits, "compiled": misses,
           "what": "first two solves of a 20-peer swarm in this process: numba import + cache load or compile"}
    print(f"compiled loops, first use: {seconds:.2f} s ({hits} loaded from cache, {misses} compiled)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--seeds", type=int, default=3, help="seeds per size (sizes >= 10,000 use 1)")
    ap.add_argument("--baseline-limit", type=float, default=300.0, help="seconds per baseline run")
    ap.add_argument("--prismn-limit", type=float, default=600.0, help="seconds per prismn run")
    ap.add_argument("--measured", default=",".join(f"{n}:{m}" for n, m in MEASURED),
                    help="measured-RTT swarms as size:mode (mode knn = 5 nearest neighbours, all = every pair)")
    ap.add_argument("--deep-seeds", type=int, default=2, help="seeds per deep-plan case")
    ap.add_argument("--target-seeds", type=int, default=20, help="seeds of the 1,000-peer solve-time target")
    ap.add_argument("--target-reserved-seeds", type=int, default=20,
                    help="of those, seeds the default (reserved) carbon objective runs on (each up to ~1 s here)")
    ap.add_argument("--held-out-seeds", type=int, default=20,
                    help="the same 1,000-peer measurement on seeds 1000.. (never tuned on), reported apart")
    ap.add_argument("--out", default="docs/bench/placement.json")
    ap.add_argument("--pareto-png", default="docs/bench/pareto.png", help="Pareto chart of one 200-peer swarm")
    args = ap.parse_args(argv)
    spec = load_model_spec(MODEL, "bf16")
    first_use = compiled_first_use(spec)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    results = []
    for n in sizes:
        for seed in range(args.seeds if n < 10_000 else 1):
            t0 = time.perf_counter()
            r = run_swarm(n, seed, spec, args.baseline_limit, args.prismn_limit)
            results.append(r)
            st = r["strategies"]
            print(f"{n:>7} peers seed {seed}: " + "; ".join(
                f"{k} {v.get('latency_ms_per_token', float('nan')):.1f} ms "
                f"{v.get('reserved', {}).get('gco2e_total_per_token_at_load', float('nan')) * 1e3:.3f} mg "
                f"{v['solve_s']:.3f}s{'' if v.get('feasible') else ' INFEASIBLE'}{' TIMEOUT' if v.get('timed_out') else ''}"
                for k, v in st.items()) + f"  [{time.perf_counter() - t0:.1f}s]", flush=True)
    measured = measured_rtt_cases(spec, [(int(a), b) for a, b in (x.split(":") for x in args.measured.split(",") if x)])
    deep = deep_cases(args.deep_seeds)
    target = thousand_peer_target(spec, args.target_seeds, args.target_reserved_seeds) if args.target_seeds else None
    summary = summarise(results)
    summary["measured_rtts"] = [{"peers": r["peers"], "measured": r["measured"], **{
        c["objective"] + ("" if c["objective"] == "latency" else f" ({c['carbon_scope']})"):
            {"solve_s": c["solve_s"], "peak_mib": c["peak_mib"], "proof": c["proof"]}
        for c in r["solves"]}} for r in measured]
    summary["measured_rtt_targets"] = "10,000 peers: <= 2 s and <= 1 GiB; 100,000 peers: <= 20 s; every case proven"
    summary["deep_plans"] = [{"case": d["case"], "seed": d["seed"], **{
        deep_key(c): {"stages": c["stages"], "solve_s": c["solve_s"], "proof": c["proof"]}
        for c in d["solves"]}} for d in deep]
    summary["thousand_peers"] = target
    summary["thousand_peers_held_out"] = thousand_peer_target(spec, args.held_out_seeds, args.held_out_seeds, 1000) \
        if args.held_out_seeds else None
    summary["compiled_first_use"] = first_use
    out = {"model": MODEL, "dtype": "bf16", "layers": spec.n_layers, "machine": {
        "python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__,
        "numba": importlib.metadata.version("numba")},
        "summary": summary, "results": results, "measured_rtts": measured, "deep_plans": deep}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(json.dumps(out["summary"], indent=1, default=float))
    if args.pareto_png and 200 in sizes:
        from prismn.cli.render import plot_pareto
        from prismn.placement.pareto import pareto_front
        sw = parse_swarm(generate_swarm(200, 0))
        front = pareto_front(spec, sw, max_points=30)
        base = [make_plan(n_, spec, sw, PlanRequest(preference=p)) for n_, p in
                (("tandemn", "low-carbon"), ("prismn-hackathon", "low-carbon"), ("prismn-hackathon", "low-latency"),
                 ("petals", "low-latency"))]
        plot_pareto(front, base, args.pareto_png, title=f"{MODEL} (bf16) on generated swarm, 200 peers, seed 0")
        print(f"wrote {args.pareto_png} ({len(front.plans)} points, complete={front.complete})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
