"""`prismn bench placement`: every strategy on the same generated swarms, written as JSON."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from prismn.errors import PrismnError


def _load_benchmark():
    """benchmarks/placement.py lives beside the package in a checkout; import it by path."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "benchmarks" / "placement.py"
        if cand.exists():
            spec = importlib.util.spec_from_file_location("prismn_bench_placement", cand)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            return mod
    raise PrismnError("benchmarks/placement.py was not found: run this from a Prismn source checkout")


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help="Benchmarks that compare strategies side by side.", no_args_is_help=True)
    app.add_typer(bench_app, name="bench")

    @bench_app.command("placement")
    def placement(
        sizes: str = typer.Option("15,50,200,1000,10000", "--sizes", help="Swarm sizes, comma-separated."),
        seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per size (sizes >= 10,000 use one)."),
        out: Path = typer.Option(Path("docs/bench/placement.json"), "--out", help="Where to write the JSON."),
        pareto_png: Path = typer.Option(Path("docs/bench/pareto.png"), "--pareto-png",
                                        help="Pareto chart of one 200-peer swarm (when 200 is among the sizes)."),
        baseline_limit: float = typer.Option(300.0, "--baseline-limit", help="Seconds per baseline run."),
    ) -> None:
        """Run prismn, tandemn, prismn-hackathon and petals on generated swarms; write JSON with ratios."""
        bench = _load_benchmark()
        bench.main(["--sizes", sizes, "--seeds", str(seeds), "--out", str(out), "--pareto-png", str(pareto_png),
                    "--baseline-limit", str(baseline_limit)])
