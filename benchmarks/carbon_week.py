"""A simulated week (issue 13 §6): peers in zones with recorded hourly intensity replay real weeks.

    python benchmarks/carbon_week.py [--data ../shared/data/carbon_intensity/electricitymaps_hourly]
                                     [--year 2023] [--weeks 8] [--out docs/bench/carbon_week.json]

Swarm: 3 peers in each zone that has a recorded Electricity Maps hourly export for the year (DE, GB,
US-CAL-CISO, US-TEX-ERCO, SG, KR, AU-NSW, ZA, BR-CS for 2023), at a real city of the zone, each with
6-14 GiB free on a consumer/datacentre GPU, so Llama-3.1-8B (bf16) needs 2-3 stages; the client is in
New York. Weeks: `--weeks` Monday-to-Monday weeks spread evenly over the year (never chosen by result);
a zone whose recorded hours do not cover a week (plus a day before, for the persistence forecast, and
the forecast horizon after) is left out of that week, never filled in.

Each hour every peer gets its zone's recorded intensity (lifecycle, g/kWh) by building the swarm with
a provider that answers that hour. Plans come from `prismn.placement.make_plan` and are judged by
`evaluate_plan` (the shared evaluator). Strategies, all priced at the real recorded hour:
  fastest          prismn, least latency (carbon-blind reference; static)
  static-yearly    prismn, least carbon within 1.15x the fastest latency, planned once on the zones'
                   yearly averages (Electricity Maps, same year; what Prismn ships)        <- baseline
  static-yearly-1.1x  static-yearly's objective on yearly averages, but with re-placement's latency bound
                   (1.1x static-yearly): what the looser bound alone gives
  static-oracle    least carbon within 1.1x static-yearly's latency, planned once on the week's mean
                   recorded values (hindsight: what knowing the week, not the hours, gives)
  hourly           every hour, prismn least carbon within 1.1x static-yearly's latency on the hour's
                   live value; moves only past the threshold and the hysteresis below
  forecast-persist the same on the mean of a 24 h persistence forecast of the next H hours (the value
                   the same hour yesterday: uses only the past)
  forecast-perfect the same on the mean of the recorded next H hours (a perfect forecast: an UPPER BOUND)
  hourly-free      hourly without threshold or hysteresis (takes every better plan; moving carbon counted):
                   what following the hours could give if moving were free to decide
  hourly-cached    hourly, but every peer already keeps the model's weights on local disk (a long-running
                   swarm): a move reads them at --disk-gbps instead of downloading
  seed-low-carbon  the seed project's 'prismn-hackathon' low-carbon plan on yearly averages (static)

Moving (a change of peer set or layer split): each peer downloads the weights it did not hold over its
own link; energy = bytes x k_net (CostOptions.k_net_kwh_per_gb) + download time x P_active(peer)
(an upper bound: a GPU waiting for weights draws less), carbon at the peer zone's intensity that hour.
The old plan serves while the new one loads (drain), so a move decided in hour t serves from hour t+1.
Whether to move is decided by the coordinator's own policy (`prismn.coordinator.replacement`: `Policy`,
`move_cost`, `decide`, the same code `prismn coordinator --replace` runs): a move happens only if
(1) at least --dwell hours have passed since the last move (hysteresis), (2) the candidate beats the
running plan by >= --threshold on the signal, and (3) the saving over the hold time (--dwell hours, or
the forecast horizon) at --tokens-per-hour exceeds the moving carbon.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from prismn.carbon import EmbeddedProvider, Intensity
from prismn.carbon.replay import Series, load_series
from prismn.coordinator.replacement import Policy, decide, plan_beside
from prismn.coordinator.replacement import move_cost as policy_move_cost
from prismn.model import ModelSpec, load_model_spec
from prismn.placement import CostOptions, EvaluatedPlan, PlanRequest, evaluate_plan, make_plan
from prismn.placement.plan import Plan
from prismn.swarm import Swarm, parse_swarm

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "carbon_intensity" / "electricitymaps_hourly"
MODEL = "meta-llama/Llama-3.1-8B"
CITIES = {  # zone -> a real city in it (lat, lon)
    "DE": ("Frankfurt", 50.11, 8.68), "GB": ("London", 51.51, -0.13),
    "US-CAL-CISO": ("Los Angeles", 34.05, -118.24), "US-TEX-ERCO": ("Dallas", 32.78, -96.80),
    "SG": ("Singapore", 1.29, 103.85), "KR": ("Seoul", 37.57, 126.98), "AU-NSW": ("Sydney", -33.87, 151.21),
    "ZA": ("Johannesburg", -26.20, 28.05), "BR-CS": ("Sao Paulo", -23.55, -46.63),
    "US-MIDA-PJM": ("Washington", 38.90, -77.04), "US-NY-NYIS": ("New York", 40.71, -74.01),
    "CA-ON": ("Toronto", 43.65, -79.38), "JP-TK": ("Tokyo", 35.68, 139.69), "IN-WE": ("Mumbai", 19.08, 72.88),
    "CL-SEN": ("Santiago", -33.45, -70.67),
}
GPUS = [("RTX 4090", 24), ("RTX 3090", 24), ("L4", 24), ("A10", 24), ("RTX 4080", 16), ("T4", 16)]
SCOPE = "operational"  # plans minimise, and every row reports, compute-time gCO2e/token (gco2e_per_token)
CLIENTS = {"New York": {"lat": 40.71, "lon": -74.01}, "Frankfurt": {"lat": 50.11, "lon": 8.68},
           "Singapore": {"lat": 1.29, "lon": 103.85}}


# ---- data --------------------------------------------------------------------------------------
def week_starts(year: int, n: int) -> list[datetime]:
    """n Mondays spread evenly over the year (the first Monday, then every 52/n weeks)."""
    first = datetime(year, 1, 1, tzinfo=UTC)
    first += timedelta(days=(7 - first.weekday()) % 7)
    return [first + timedelta(weeks=round(k * 51 / max(n, 1))) for k in range(n)]


def window(s: Series, start: datetime, hours: int) -> np.ndarray | None:
    """The zone's values for `hours` consecutive hours from `start`, or None if any hour is missing."""
    t0 = int(start.timestamp())
    i = int(np.searchsorted(s.times, t0))
    if i + hours > len(s.times) or s.times[i] != t0 or s.times[i + hours - 1] != t0 + 3600 * (hours - 1):
        return None
    return s.values[i:i + hours]


class Fixed:
    """A provider that answers one given value per zone (how a swarm is built for one hour)."""

    name = "fixed"
    signal = "average"

    def __init__(self, values: dict[str, float], source: str, when: datetime | None = None):
        self.values, self.source, self.when = values, source, when

    def zone_intensity(self, zone: str) -> Intensity | None:
        v = self.values.get(zone)
        if v is None:
            return None
        return Intensity(float(v), self.source, self.when.year if self.when else None, "average", "lifecycle",
                         zone, None, time=self.when, duration_s=3600, provider=self.name)


def swarm_data(zones: list[str], client: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    peers = []
    for z in zones:
        _, lat, lon = CITIES[z]
        for k in range(3):
            gpu, vram = GPUS[int(rng.integers(len(GPUS)))]
            peers.append({"id": f"{z}-{k}", "lat": round(lat + rng.uniform(-0.3, 0.3), 4),
                          "lon": round(lon + rng.uniform(-0.3, 0.3), 4), "zone": z, "gpu": gpu,
                          "free_vram_gb": round(float(rng.uniform(6, min(14, vram))), 2), "pue": 1.2})
    return {"coordinator": client, "peers": peers}


# ---- plans and moves ---------------------------------------------------------------------------
def key(plan: Plan) -> tuple:
    return tuple((s.peer, s.start, s.end, s.embedding, s.head) for s in plan.stages)


def move_cost(spec: ModelSpec, swarm: Swarm, old: Plan, new: Plan, cost: CostOptions,
              disk_gbps: float | None = None) -> dict:
    """The coordinator's move cost (`prismn.coordinator.replacement.move_cost`) of going from `old` to `new`:
    the weights each peer lacks, downloaded over its link, or with `disk_gbps` read from a local copy."""
    mc = policy_move_cost(spec, swarm, old.stages, new.stages, cost, weights="disk" if disk_gbps else "download",
                          disk_gbps=disk_gbps or 2.0)
    return {"bytes": mc.bytes, "joules": mc.joules, "gco2e": mc.gco2e, "load_s": mc.load_s}


def g_per_token(ev: EvaluatedPlan) -> float:
    return ev.metrics["gco2e_per_token"]


@dataclass
class Run:
    name: str
    g_tokens: list[float] = field(default_factory=list)  # g/token served each hour (real intensity)
    latency_ms: list[float] = field(default_factory=list)
    moves: int = 0
    move_g: float = 0.0
    move_j: float = 0.0
    move_bytes: float = 0.0
    max_load_s: float = 0.0
    plans: set = field(default_factory=set)
    # better plans not taken, by the rule that held them (no_room: the better plans all need a peer of the
    # running plan to take another stage, which cannot load while that plan serves)
    rejected: dict = field(default_factory=lambda: {"threshold": 0, "move_cost": 0, "dwell": 0, "no_room": 0})

    def summary(self, tokens_per_hour: float) -> dict:
        served = sum(self.g_tokens) * tokens_per_hour
        tokens = tokens_per_hour * len(self.g_tokens)
        return {
            "gco2e_per_token": (served + self.move_g) / tokens,
            "gco2e_per_token_excl_moves": served / tokens,
            "latency_ms_per_token_mean": statistics.fmean(self.latency_ms),
            "moves": self.moves, "move_kwh": self.move_j / 3.6e6, "move_gco2e": self.move_g,
            "move_gb": self.move_bytes / 1e9, "max_load_s": self.max_load_s, "distinct_plans": len(self.plans),
            "better_plans_not_taken": self.rejected,
        }


# ---- one week ----------------------------------------------------------------------------------
def run_week(series: dict[str, Series], start: datetime, client: str, args: argparse.Namespace,
             spec: ModelSpec) -> dict:
    hours, horizon = args.hours, args.horizon
    pre = 24  # the persistence forecast looks one day back
    zones, skipped = [], {}
    vals: dict[str, np.ndarray] = {}
    for z in sorted(series):
        if z not in CITIES:
            skipped[z] = "no city mapped for this zone in the benchmark"
            continue
        w = window(series[z], start - timedelta(hours=pre), pre + hours + horizon)
        if w is None:
            skipped[z] = "recorded hours do not cover the week"
            continue
        zones.append(z)
        vals[z] = w
    if len(zones) < 2:
        return {"start": start.isoformat(), "client": client, "skipped": "fewer than two zones have recorded data for this week",
                "zones_left_out": skipped}
    data = swarm_data(zones, CLIENTS[client], args.seed)
    cost = CostOptions()
    embedded = EmbeddedProvider()
    yearly = {z: embedded.yearly(z, start.year) for z in zones}
    missing = [z for z, v in yearly.items() if v is None]
    if missing:
        raise SystemExit(f"no {start.year} yearly average embedded for {missing}: use another --year")

    def at(h: int) -> dict[str, float]:  # recorded value of week hour h (h may be negative: the day before)
        return {z: float(vals[z][pre + h]) for z in zones}

    def build(values: dict[str, float], source: str, when: datetime | None = None) -> Swarm:
        return parse_swarm(data, provider=Fixed(values, source, when))

    def best(sw: Swarm, bound_ms: float | None) -> EvaluatedPlan:
        req = PlanRequest(objective="carbon", max_latency_ms=bound_ms, cost=cost, carbon_scope=SCOPE)
        return make_plan("prismn", spec, sw, req)

    yearly_sw = build(yearly, f"Electricity Maps yearly average {start.year}")
    fastest = make_plan("prismn", spec, yearly_sw, PlanRequest(objective="latency", cost=cost, carbon_scope=SCOPE))
    static = best(yearly_sw, args.static_slack * fastest.metrics["latency_ms_per_token"])
    bound = args.latency_bound * static.metrics["latency_ms_per_token"]
    week_mean = {z: float(vals[z][pre:pre + hours].mean()) for z in zones}
    # the same latency bound as re-placement, so oracle vs hourly isolates following the hours
    oracle = best(build(week_mean, "mean of the recorded week (hindsight)"), bound)
    slack = best(yearly_sw, bound)  # yearly averages again, with re-placement's latency bound
    seed = make_plan("prismn-hackathon", spec, yearly_sw, PlanRequest(preference="low-carbon", cost=cost,
                                                                     carbon_scope=SCOPE))
    for ev in (fastest, static, slack, oracle, seed):
        if not ev.feasible:
            raise SystemExit(f"a static plan is infeasible for the week of {start:%Y-%m-%d}: {ev.problems[:1]}")

    statics = {"fastest": fastest, "static-yearly": static, "static-yearly-1.1x": slack, "static-oracle": oracle,
               "seed-low-carbon": seed}
    # the coordinator's policy for each re-placing run (hourly-free: every better plan, no hysteresis, and
    # the move cost counted in the result but never weighed against the saving)
    live_policy = Policy(every_s=3600, threshold=args.threshold, dwell_s=args.dwell * 3600.0,
                         tokens_per_hour=args.tokens_per_hour)
    policies = {"hourly": live_policy, "hourly-cached": replace(live_policy, weights="disk", disk_gbps=args.disk_gbps),
                "forecast-persist": replace(live_policy, forecast_h=float(horizon)),
                "forecast-perfect": replace(live_policy, forecast_h=float(horizon)),
                "hourly-free": Policy(every_s=3600, threshold=0.0, dwell_s=0.0, tokens_per_hour=1e15)}
    movers = ("hourly", "forecast-persist", "forecast-perfect", "hourly-free", "hourly-cached")
    runs = {n: Run(n) for n in [*statics, *movers]}
    current = dict.fromkeys(movers, static)
    last_move: dict[str, int | None] = dict.fromkeys(current)
    for h in range(hours):
        when = start + timedelta(hours=h)
        real = build(at(h), "Electricity Maps hourly export (replayed)", when)
        for n, ev in statics.items():
            runs[n].g_tokens.append(g_per_token(evaluate_plan(ev.plan, spec, real, cost)))
            runs[n].latency_ms.append(ev.metrics["latency_ms_per_token"])
            runs[n].plans.add(key(ev.plan))
        live_best = best(real, bound)
        signals = {
            "hourly": real, "hourly-free": real, "hourly-cached": real,
            # forecast-aware: each zone's mean over the next `horizon` hours (persistence: yesterday's hours)
            "forecast-persist": build({z: float(np.mean([vals[z][pre + h + k - 24] for k in range(1, horizon + 1)]))
                                       for z in zones}, "24 h persistence forecast, mean of next hours"),
            "forecast-perfect": build({z: float(vals[z][pre + h + 1:pre + h + 1 + horizon].mean()) for z in zones},
                                      "recorded next hours (perfect forecast, upper bound)"),
        }
        for n, sig in signals.items():
            run, cur, policy = runs[n], current[n], policies[n]
            served = evaluate_plan(cur.plan, spec, real, cost)  # this hour is served by the running plan
            run.g_tokens.append(g_per_token(served))
            run.latency_ms.append(served.metrics["latency_ms_per_token"])
            run.plans.add(key(cur.plan))
            since = None if last_move[n] is None else (h - last_move[n]) * 3600.0
            if policy.in_dwell(since):  # decide() would answer "dwell": skip planning on the signal
                run.rejected["dwell"] += key(live_best.plan) != key(cur.plan)
                continue
            # the coordinator's rule: the new plan loads while the old one serves, so an old peer keeps its
            # own stage or is left out (live_best is the plan on all peers: reused when it respects that)
            old_peers = {s.peer for s in cur.plan.stages}
            cand = plan_beside(lambda sw, sig=sig: best(sw, bound), sig,
                               [p.id for p in sig.peers if p.id not in old_peers], cur.plan.stages,
                               first=live_best if sig is real else None)
            if cand is None or not cand.feasible:
                run.rejected["no_room"] += key(live_best.plan) != key(cur.plan)
                continue
            mv = policy_move_cost(spec, real, cur.plan.stages, cand.plan.stages, cost, weights=policy.weights,
                                  disk_gbps=policy.disk_gbps)  # at the real hour's intensity
            d = decide(policy, g_per_token(evaluate_plan(cur.plan, spec, sig, cost)), g_per_token(cand), mv, since,
                       same=key(cand.plan) == key(cur.plan))
            if d.rule in run.rejected:
                run.rejected[d.rule] += 1
            if not d.move:
                continue
            current[n] = cand
            last_move[n] = h
            run.moves += 1
            run.move_g += mv.gco2e
            run.move_j += mv.joules
            run.move_bytes += mv.bytes
            run.max_load_s = max(run.max_load_s, mv.load_s)

    out = {n: r.summary(args.tokens_per_hour) for n, r in runs.items()}
    base = out["static-yearly"]
    for r in out.values():
        r["carbon_vs_static"] = r["gco2e_per_token"] / base["gco2e_per_token"]
        r["latency_vs_static"] = r["latency_ms_per_token_mean"] / base["latency_ms_per_token_mean"]
    f, s, s11, o, hr = (out[n]["gco2e_per_token"]
                        for n in ("fastest", "static-yearly", "static-yearly-1.1x", "static-oracle", "hourly"))
    return {
        "start": start.isoformat(), "client": client, "zones": zones, "zones_left_out": skipped,
        "static_yearly_believed_gco2e_per_token": g_per_token(static),
        "recorded_week_mean_vs_yearly": {z: week_mean[z] / yearly[z] for z in zones},
        "latency_bound_ms": bound,
        "plans": {n: [[s.peer, s.start, s.end] for s in ev.plan.stages] for n, ev in statics.items()},
        "strategies": out,
        "decomposition": {  # shares of the static-yearly plan's real carbon; the last three add up
            "place_static_vs_fastest": 1 - s / f,
            "hourly_vs_static": 1 - hr / s,
            "of_which_latency_slack_static_1.1x_vs_static": 1 - s11 / s,
            "of_which_knowing_the_week_static_oracle_vs_static_1.1x": (s11 - o) / s,
            "of_which_following_the_hours_hourly_vs_static_oracle": (o - hr) / s,
        },
        "hourly_g_per_token": {n: r.g_tokens for n, r in runs.items() if n in ("static-yearly", "hourly",
                                                                               "hourly-free", "forecast-perfect")},
    }


# ---- report ------------------------------------------------------------------------------------
def summarise(weeks: list[dict]) -> dict:
    done = [w for w in weeks if "strategies" in w]
    names = list(done[0]["strategies"]) if done else []
    per = {n: {"carbon_vs_static": [w["strategies"][n]["carbon_vs_static"] for w in done],
               "latency_vs_static": [w["strategies"][n]["latency_vs_static"] for w in done],
               "moves": [w["strategies"][n]["moves"] for w in done]} for n in names}
    summ = {n: {"carbon_vs_static_mean": statistics.fmean(v["carbon_vs_static"]),
                "carbon_vs_static_min": min(v["carbon_vs_static"]), "carbon_vs_static_max": max(v["carbon_vs_static"]),
                "latency_vs_static_mean": statistics.fmean(v["latency_vs_static"]),
                "moves_per_week_mean": statistics.fmean(v["moves"])} for n, v in per.items()}
    dec = {k: statistics.fmean(w["decomposition"][k] for w in done) for k in done[0]["decomposition"]} if done else {}
    hourly = summ.get("hourly", {})
    return {
        "weeks_run": len(done), "weeks_skipped": len(weeks) - len(done), "per_strategy": summ,
        "decomposition_mean": dec,
        "target": "hourly re-placement cuts gCO2e/token >= 20% vs static-yearly at <= 1.1x its mean latency",
        "target_met": bool(hourly) and hourly["carbon_vs_static_mean"] <= 0.8 and hourly["latency_vs_static_mean"] <= 1.1,
    }


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    weeks = [w for w in result["weeks"] if "strategies" in w]
    names = [n for n in weeks[0]["strategies"] if n != "static-yearly"]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        a1.bar(np.arange(len(weeks)) + i * width, [w["strategies"][n]["carbon_vs_static"] for w in weeks], width,
               label=n)
    a1.axhline(1.0, color="k", lw=0.8)
    a1.axhline(0.8, color="grey", ls="--", lw=0.8, label="target (-20%)")
    a1.set_xticks(np.arange(len(weeks)) + 0.4, [f"{w['client']}\n{w['start'][:10]}" for w in weeks], fontsize=7)
    a1.set_ylabel("gCO2e/token vs static-yearly")
    a1.set_title(f"{MODEL}, {len(weeks[0]['zones'])} zones, recorded hourly intensity (Electricity Maps exports)")
    a1.legend(fontsize=7, ncol=4)
    w0 = weeks[0]
    for n, series in w0["hourly_g_per_token"].items():
        a2.plot(np.array(series) * 1e3, label=n, lw=1)
    a2.set_xlabel(f"hour of the week from {w0['start'][:10]}")
    a2.set_ylabel("mgCO2e/token served (moving carbon not shown)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder (or file) of hourly exports")
    ap.add_argument("--year", type=int, default=2023)
    ap.add_argument("--weeks", type=int, default=5, help="weeks per client, spread evenly over the year")
    ap.add_argument("--hours", type=int, default=168, help="hours per week (shorter only for tests)")
    ap.add_argument("--horizon", type=int, default=6, help="forecast hours averaged by the forecast-aware runs")
    ap.add_argument("--threshold", type=float, default=0.05, help="least relative gain that justifies a move")
    ap.add_argument("--dwell", type=int, default=3, help="hysteresis: hours between moves, and the hold time")
    ap.add_argument("--latency-bound", type=float, default=1.1, help="re-placement latency bound vs static")
    ap.add_argument("--static-slack", type=float, default=1.15, help="static plan latency bound vs fastest")
    ap.add_argument("--tokens-per-hour", type=float, default=20_000.0, help="demand the moves amortise over")
    ap.add_argument("--clients", default="New York,Frankfurt", help=f"client cities: {', '.join(CLIENTS)}")
    ap.add_argument("--disk-gbps", type=float, default=2.0, help="hourly-cached: local weight read GB/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "carbon_week.json")
    ap.add_argument("--png", default=str(ROOT / "docs" / "bench" / "carbon_week.png"), help="chart ('' for none)")
    args = ap.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: point --data at Electricity Maps hourly exports "
                         f"(../shared/data/carbon_intensity/electricitymaps_hourly in a checkout)")
    files = [args.data] if args.data.is_file() else sorted(args.data.glob(f"*_{args.year}_hourly.csv"))
    if not files:
        raise SystemExit(f"no *_{args.year}_hourly.csv in {args.data}: pick a --year the data covers")
    t0 = time.perf_counter()
    series = load_series(files, "lifecycle")
    spec = load_model_spec(MODEL)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        raise SystemExit(f"unknown client {unknown[0]!r}: use {', '.join(CLIENTS)}")
    weeks = []
    for client in clients:
        for start in week_starts(args.year, args.weeks):
            t = time.perf_counter()
            weeks.append(run_week(series, start, client, args, spec))
            w = weeks[-1]
            if "strategies" in w:
                s = w["strategies"]
                print(f"{client} {start:%Y-%m-%d}: hourly {s['hourly']['carbon_vs_static']:.3f}x carbon "
                      f"{s['hourly']['latency_vs_static']:.3f}x latency, {s['hourly']['moves']} moves; "
                      f"forecast-perfect {s['forecast-perfect']['carbon_vs_static']:.3f}x; "
                      f"static-oracle {s['static-oracle']['carbon_vs_static']:.3f}x ({time.perf_counter() - t:.0f} s)",
                      flush=True)
    result = {
        "benchmark": "carbon_week", "model": MODEL, "year": args.year, "clients": {c: CLIENTS[c] for c in clients},
        "data": [f.name for f in files],
        "data_licence": "Electricity Maps hourly exports (HewlettPackard/green-dcc copy; ODbL at best): read at "
                        "run time, not embedded",
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "move_model": "bytes of weights a peer lacks x k_net + download time at the peer's bandwidth x P_active "
                      "(upper bound), at the peer zone's intensity; new plan serves from the next hour; "
                      "hourly-cached: read from local disk at --disk-gbps x P_active",
        "forecasts": {"forecast-persist": "each hour forecast by the same hour of the previous day (past only)",
                      "forecast-perfect": "the recorded future (perfect forecast): an upper bound, not achievable"},
        "machine": platform.platform(), "python": platform.python_version(),
        "seconds": None, "summary": None, "weeks": weeks,
    }
    result["summary"] = {"all": summarise(weeks),
                         **{c: summarise([w for w in weeks if w["client"] == c]) for c in clients}}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.png and weeks and any("strategies" in w for w in weeks):
        plot(result, Path(args.png))
    s = result["summary"]
    print(json.dumps({"summary": s, "seconds": result["seconds"]}, indent=1))
    return result


if __name__ == "__main__":
    main()
