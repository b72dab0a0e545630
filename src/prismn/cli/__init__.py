"""The `prismn` command line. Each group of commands lives in its own module and registers itself."""

from __future__ import annotations

import sys

import typer

from prismn.errors import PrismnError

app = typer.Typer(
    name="prismn",
    help="Carbon- and latency-aware LLM inference over a swarm of GPU peers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from prismn.cli import bench_cmds, carbon_cmds, catalog_cmds, demo_cmds, plan_cmds, swarm_cmds

    plan_cmds.register(app)
    bench_cmds.register(app)
    demo_cmds.register(app)
    swarm_cmds.register(app)
    catalog_cmds.register(app)
    carbon_cmds.register(app)
    try:  # these need torch / the server extras only when they run, not to be listed
        from prismn.cli import admin_cmds, runtime_cmds, server_cmds
    except ImportError:
        return
    runtime_cmds.register(app)
    server_cmds.register(app)
    admin_cmds.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except PrismnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
