"""`prismn demo`: Prismn's main job on embedded defaults."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from prismn.cli.render import comparison_table, make_console, print_plan
from prismn.model import load_model_spec
from prismn.placement import PREFERENCES, PlanRequest, make_plan, strategy_names
from prismn.swarm import parse_swarm
from prismn.swarmgen import generate_swarm

DEMO_MODEL = "meta-llama/Llama-3.1-8B"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        model: str = typer.Option(DEMO_MODEL, "--model", help="Model to place."),
        swarm: Path | None = typer.Option(None, "--swarm", help="Swarm file (default: the bundled global swarm)."),
    ) -> None:
        """Place a model on the bundled 50-peer global swarm with every strategy and compare them."""
        console = make_console()
        from prismn.swarm import load_swarm

        if swarm is None:
            bundled = Path(str(resources.files("prismn"))).parent.parent / "examples" / "swarms" / "global.json"
            sw = load_swarm(bundled) if bundled.exists() else parse_swarm(generate_swarm(50, seed=2026))
            where = bundled.name if bundled.exists() else "a generated 50-peer swarm (seed 2026)"
        else:
            sw, where = load_swarm(swarm), str(swarm)
        spec = load_model_spec(model)
        console.print(f"[bold]Prismn demo[/bold]: placing {spec.name} ({spec.n_layers} layers, {spec.dtype}) on "
                      f"{where} ({len(sw)} peers). Predictions from the shared cost model; grid intensities from "
                      f"embedded Electricity Maps yearly averages; RTTs estimated from distance.")
        evs = []
        for name in strategy_names():
            for pref in PREFERENCES if name == "prismn-hackathon" else ("low-carbon",):
                evs.append(make_plan(name, spec, sw, PlanRequest(preference=pref)))
        for ev in evs:
            print_plan(console, ev)
        console.print(comparison_table(evs))
