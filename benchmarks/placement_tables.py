"""Markdown tables of docs/placement.md's benchmark section, from the JSON benchmarks/placement.py wrote.

    python benchmarks/placement_tables.py [docs/bench/placement.json]

Prints the tables (solve times, the default plan's emissions, measured RTTs, deep plans, the 1,000-peer
target) so that the docs quote the run, never a hand copy of it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SOLVE_COLUMNS = ["prismn (latency)", "prismn (carbon)", "prismn (carbon, operational)",
                 "prismn (carbon, latency <= 1.15x fastest)", "prismn-hackathon (low-carbon)", "petals", "tandemn"]
HEADERS = ["latency", "carbon (reserved, default)", "carbon (operational)", "carbon, latency <= 1.15x fastest",
           "hackathon (low-carbon)", "petals", "tandemn"]


def _g(x: float) -> str:
    return f"{x:.3g}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def solve_times(d: dict) -> list[str]:
    """Median (max) seconds per size and strategy; unproven prismn plans with their gaps."""
    out = [_row(["peers", *HEADERS]), "|---:|" + "---:|" * len(HEADERS)]
    sizes = sorted({r["peers"] for r in d["results"]})
    for n in sizes:
        runs = [r for r in d["results"] if r["peers"] == n]
        cells = [f"{n:,}"]
        for col in SOLVE_COLUMNS:
            ts = [r["strategies"][col]["solve_s"] for r in runs if col in r["strategies"]]
            if not ts:
                cells.append("")
                continue
            cell = _g(statistics.median(ts)) + (f" ({_g(max(ts))})" if len(ts) > 1 else "")
            gaps = [r["strategies"][col].get("proof", "") for r in runs if col in r["strategies"]]
            unproven = [p.split("within ")[1].split(" of")[0] for p in gaps if p.startswith("best found")]
            if unproven:
                cell += ", unproven: " + ", ".join(unproven)
            if any(r["strategies"][col].get("timed_out") for r in runs if col in r["strategies"]):
                cell += ", timed out"
            cells.append(cell)
        out.append(_row(cells))
    return out


def default_emissions(d: dict, n: int = 200) -> list[str]:
    """Reserved carbon at load of each strategy's plan on the n-peer swarms (mg per token)."""
    cols = [("prismn (carbon)", "default (reserved)"), ("prismn (carbon, operational)", "compute-time optimum"),
            ("prismn (latency)", "fastest plan"), ("prismn-hackathon (low-carbon)", "hackathon (low-carbon)"),
            ("petals", "petals")]
    out = [_row(["seed", *(h for _, h in cols)]), "|---:|" + "---|" * len(cols)]
    for r in (r for r in d["results"] if r["peers"] == n):
        cells = [str(r["seed"])]
        for key, _ in cols:
            s = r["strategies"].get(key, {})
            if not s.get("feasible"):
                cells.append("infeasible")
                continue
            mg = s["reserved"]["gco2e_total_per_token_at_load"] * 1e3
            cell = f"{mg:.1f} mg, {s['latency_ms_per_token']:.0f} ms, {s['peers_used']} peer{'s' * (s['peers_used'] != 1)}"
            if key == "prismn (carbon)":
                cell += f" ({s.get('proof', '')})"
            cells.append(cell)
        out.append(_row(cells))
    return out


def measured(d: dict) -> list[str]:
    out = [_row(["peers", "measured", "latency", "carbon (operational)", "carbon (reserved, default)"]),
           "|---:|---|---:|---:|---:|"]
    for r in d["measured_rtts"]:
        by = {(c["objective"], c["carbon_scope"]): c for c in r["solves"]}
        cells = [f"{r['peers']:,}", r["measured"]]
        for key in (("latency", "reserved"), ("carbon", "operational"), ("carbon", "reserved")):
            c = by.get(key)
            if c is None:
                cells.append("not run")
                continue
            cell = f"{c['solve_s']:.2f} s"
            if c.get("peak_mib") is not None:
                cell += f", {c['peak_mib']:.0f} MiB"
            if c["proof"] != "optimal":
                cell += f", {c['proof']}"
            cells.append(cell)
        out.append(_row(cells))
    return out


def deep(d: dict) -> list[str]:
    names = ("operational", "total", "reserved", "latency")
    out = [_row(["case", "seed", "carbon (operational)", "carbon (total)", "carbon (reserved, default)", "latency"]),
           "|---|---:|---|---|---|---|"]
    for r in d["summary"]["deep_plans"]:  # each solve keyed by benchmarks/placement.deep_key
        out.append(_row([r["case"], str(r["seed"])] + [
            f"{r[s]['stages']} stages, {r[s]['solve_s']:.2f} s, {r[s]['proof']}" if s in r else "not run"
            for s in names]))
    return out


def target(d: dict, key: str = "thousand_peers") -> list[str]:
    t = d["summary"].get(key) or {}
    out = [_row(["objective", "runs", "median", "max", "proven", "worst gap"]), "|---|---:|---:|---:|---:|---:|"]
    for k, v in t.items():
        if isinstance(v, dict):
            out.append(_row([k, str(v["runs"]), f"{v['median_s']:.3f} s", f"{v['max_s']:.3f} s",
                             f"{v['proven']} of {v['runs']}", f"{v['max_gap'] * 100:.2f}%"]))
    if "seeds" in t:
        out.append(f"\nSeeds: {t['seeds']}.")
    return out


def main(argv: list[str]) -> int:
    d = json.loads(Path(argv[0] if argv else "docs/bench/placement.json").read_text())
    for title, lines in (("Solve time (median (max) seconds)", solve_times(d)),
                         ("Reserved carbon at load, 200 peers", default_emissions(d)),
                         ("Measured RTTs", measured(d)), ("Deep plans", deep(d)),
                         ("1,000 peers, solve-time target", target(d)),
                         ("1,000 peers, held-out seeds (never tuned on)", target(d, "thousand_peers_held_out"))):
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
