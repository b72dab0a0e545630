"""`prismn swarm ...`: generate and check swarm files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from prismn.cli.render import short_source
from prismn.swarm import load_swarm
from prismn.swarmgen import generate_swarm


def register(app: typer.Typer) -> None:
    swarm_app = typer.Typer(help="Generate and check swarm files.", no_args_is_help=True)
    app.add_typer(swarm_app, name="swarm")

    @swarm_app.command("generate")
    def generate(
        peers: int = typer.Option(50, "--peers", min=1, max=1_000_000, help="Number of peers."),
        seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same swarm."),
        out: Path | None = typer.Option(None, "--out", help="Write here instead of stdout."),
    ) -> None:
        """A realistic synthetic swarm: peers at real cities and cloud regions with a realistic GPU mix."""
        text = json.dumps(generate_swarm(peers, seed), separators=(",", ":"))
        if out is None:
            print(text)
        else:
            out.write_text(text + "\n")
            Console(stderr=True).print(f"wrote {peers} peers to {out}")

    @swarm_app.command("check")
    def check(path: Path = typer.Argument(..., help="Swarm file (JSON or YAML).")) -> None:
        """Validate a swarm file and show how each peer was resolved."""
        swarm = load_swarm(path)
        console = Console()
        for p in swarm.peers:
            console.print(
                f"{p.id:<20} {p.gpu.name + (' (assumed)' if p.gpu_assumed else ''):<22} "
                f"{p.free_vram_gb:>7.2f} GiB  {p.intensity.g_per_kwh:>6.1f} g/kWh  {p.zone or '-':<12} "
                f"{short_source(p.intensity.source)} {p.intensity.year or ''}"
            )
        console.print(f"[green]ok[/green]: {len(swarm)} peers")
