"""`python -m prismn.runtime ...`: the runtime commands alone (model prepare, stage serve, generate).

Same commands as `prismn ...`; it exists so tests and scripts can start stage servers without the
rest of the CLI.
"""

import sys

import typer

from prismn.cli.runtime_cmds import register
from prismn.errors import PrismnError

app = typer.Typer(name="prismn", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
register(app)

try:
    app()
except PrismnError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
