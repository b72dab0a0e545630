"""`prismn plan`: place a model on a swarm with one strategy, or compare them all."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prismn.cli.render import comparison_table, make_console, print_plan
from prismn.errors import PlanError
from prismn.model import load_model_spec
from prismn.placement import PREFERENCES, CostOptions, PlanRequest, make_plan, strategy_names
from prismn.swarm import load_swarm


def _default_strategy() -> str:
    return "prismn" if "prismn" in strategy_names() else "prismn-hackathon"


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan(
        swarm: Path = typer.Option(..., "--swarm", help="Swarm file (JSON or YAML)."),
        model: str = typer.Option(..., "--model", help="Hub id, catalog alias, checkpoint folder or config.json."),
        strategy: str = typer.Option(None, "--strategy", help="Strategy name (see --help of `prismn strategies`)."),
        preference: str = typer.Option("low-carbon", "--preference", help="low-carbon or low-latency."),
        dtype: str = typer.Option(None, "--dtype", help="fp32, bf16, fp16, int8, int4 (default: the config's)."),
        prompt_tokens: int = typer.Option(256, "--prompt-tokens", min=1, help="Prompt length for TTFT."),
        context: int = typer.Option(2048, "--context", min=1, help="Context each stage reserves KV cache for."),
        margin: float = typer.Option(0.10, "--margin", min=0.0, max=0.9, help="Fraction of free VRAM left unused."),
        overhead_gb: float = typer.Option(None, "--overhead-gb", min=0.0,
                                          help="Fixed runtime overhead per peer (GiB); default: the GPU runtime's "
                                               "context, 0.7 GiB on CUDA/ROCm GPUs, 0 on CPU and Apple peers."),
        concurrency: int = typer.Option(1, "--concurrency", min=1, max=4096,
                                        help="Sequences decoding together: KV for each; latency and carbon per "
                                             "token reported at that load."),
        compare: bool = typer.Option(False, "--compare", help="Run every strategy side by side."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (a list with --compare)."),
        objective: str = typer.Option(None, "--objective",
                                      help="prismn: latency, carbon or balanced (default: from --preference)."),
        weight: float = typer.Option(0.5, "--weight", min=0.0, max=1.0,
                                     help="balanced: share of carbon, 0 = all latency, 1 = all carbon."),
        max_latency_ms: float = typer.Option(None, "--max-latency-ms", help="Least carbon within this latency."),
        max_gco2e: float = typer.Option(None, "--max-gco2e", help="Least latency within this gCO2e per token."),
        carbon_scope: str = typer.Option("reserved", "--carbon-scope",
                                         help="Carbon the objective counts: reserved (default: every used peer held "
                                              "for the whole step at --concurrency, idle draw and embodied by wall "
                                              "time, + network), operational (compute time only) or total "
                                              "(compute-time operational + embodied + network)."),
        pareto: bool = typer.Option(False, "--pareto", help="The latency/carbon Pareto front of exact plans."),
        plot: Path = typer.Option(None, "--plot", help="With --pareto: draw the front (and the baselines) to PNG."),
        max_points: int = typer.Option(40, "--max-points", min=2, help="With --pareto: most points on the front."),
    ) -> None:
        """Place MODEL on SWARM and show each stage and the plan's predicted latency and carbon."""
        if preference not in PREFERENCES:
            raise PlanError(f"--preference {preference!r} is unknown: use {' or '.join(PREFERENCES)}")
        if objective is not None and objective not in ("latency", "carbon", "balanced"):
            raise PlanError(f"--objective {objective!r} is unknown: use latency, carbon or balanced")
        if carbon_scope not in ("reserved", "operational", "total"):
            raise PlanError(f"--carbon-scope {carbon_scope!r} is unknown: use reserved, operational or total")
        if plot is not None and not pareto:
            raise PlanError("--plot draws the Pareto front: add --pareto")
        spec = load_model_spec(model, dtype)
        sw = load_swarm(swarm)
        cost = CostOptions(prompt_tokens=prompt_tokens, context_tokens=context, safety_margin=margin,
                           overhead_gb=overhead_gb, concurrency=concurrency)
        if pareto:
            _pareto(spec, sw, swarm, cost, preference, carbon_scope, max_points, plot, as_json)
            return
        names = strategy_names() if compare else [strategy or _default_strategy()]
        evs = []
        for name in names:
            # compare each preference of the seed project, and prismn's two matching objectives
            both = compare and (name == "prismn-hackathon" or (name == "prismn" and objective is None
                                                               and max_latency_ms is None and max_gco2e is None))
            prefs = PREFERENCES if both else (preference,)
            for pref in prefs:
                req = PlanRequest(preference=pref, cost=cost, objective=objective, weight=weight,
                                  max_latency_ms=max_latency_ms, max_gco2e=max_gco2e, carbon_scope=carbon_scope)
                evs.append(make_plan(name, spec, sw, req))
        if as_json:
            out = [e.to_json() for e in evs]
            print(json.dumps(out if compare else out[0], indent=1))
            return
        console = make_console()
        console.print(f"[bold]{spec.name}[/bold] ({spec.n_layers} layers, {spec.dtype}) on {swarm} "
                      f"({len(sw)} peers); carbon data: embedded yearly averages unless a peer gave its own")
        for ev in evs:
            print_plan(console, ev)
        if compare:
            console.print(comparison_table(evs))


def _pareto(spec, sw, swarm_path, cost, preference, carbon_scope, max_points, plot, as_json) -> None:
    from prismn.cli.render import pareto_table, plot_pareto
    from prismn.placement.pareto import pareto_front

    try:
        front = pareto_front(spec, sw, cost, carbon_scope, max_points)
    except MemoryError:
        raise PlanError(f"the Pareto front of {len(sw)} peers ran out of memory: plan on a machine with more "
                        f"memory, or give fewer peers") from None
    if not front.plans:
        raise PlanError("no plan fits this swarm, so there is no Pareto front: see `prismn plan` for what is missing")
    baselines = [make_plan(name, spec, sw, PlanRequest(preference=pref, cost=cost))
                 for name in strategy_names() if name != "prismn"
                 for pref in (PREFERENCES if name == "prismn-hackathon" else (preference,))]
    if plot is not None:
        plot_pareto(front, baselines, plot, title=f"{spec.name} on {swarm_path.name} ({len(sw)} peers)")
    if as_json:
        print(json.dumps({"complete": front.complete, "carbon_metric": front.carbon_metric,
                          "front": [e.to_json() for e in front.plans],
                          "baselines": [e.to_json() for e in baselines]}, indent=1))
        return
    console = make_console()
    console.print(pareto_table(front, baselines))
    for i, ev in enumerate(front.plans, 1):
        stages = ", ".join(f"{s['peer']}[{s['layers'][0]},{s['layers'][1]})" for s in ev.stages)
        console.print(f"  {i}: {stages}")
    if plot is not None:
        console.print(f"wrote {plot}")
