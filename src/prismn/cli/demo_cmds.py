"""`prismn demo`: Prismn's main job on embedded defaults (see prismn.demo)."""

from __future__ import annotations

import typer

from prismn.cli.render import make_console


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        max_tokens: int = typer.Option(24, "--max-tokens", min=1, max=256, help="Tokens each answer may take."),
    ) -> None:
        """Run a local swarm of six peers, deploy SmolLM2-135M twice (seed plan vs Prismn), compare MEASURED cost."""
        from prismn.demo import run_demo

        run_demo(make_console(), max_tokens)
