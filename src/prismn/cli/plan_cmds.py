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
        overhead_gb: float = typer.Option(0.0, "--overhead-gb", min=0.0, help="Fixed runtime overhead per peer (GiB)."),
        compare: bool = typer.Option(False, "--compare", help="Run every strategy side by side."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (a list with --compare)."),
    ) -> None:
        """Place MODEL on SWARM and show each stage and the plan's predicted latency and carbon."""
        if preference not in PREFERENCES:
            raise PlanError(f"--preference {preference!r} is unknown: use {' or '.join(PREFERENCES)}")
        spec = load_model_spec(model, dtype)
        sw = load_swarm(swarm)
        cost = CostOptions(prompt_tokens=prompt_tokens, context_tokens=context, safety_margin=margin,
                           overhead_gb=overhead_gb)
        names = strategy_names() if compare else [strategy or _default_strategy()]
        evs = []
        for name in names:
            prefs = PREFERENCES if (compare and name == "prismn-hackathon") else (preference,)
            for pref in prefs:
                evs.append(make_plan(name, spec, sw, PlanRequest(preference=pref, cost=cost)))
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
