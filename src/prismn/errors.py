"""User-facing errors: each carries one line that names the problem and the fix."""


class PrismnError(Exception):
    """An error a user can hit and fix; the CLI prints its message as one line, never a traceback."""


class SwarmError(PrismnError):
    """A swarm file is malformed or names something Prismn does not know."""


class ModelSpecError(PrismnError):
    """A model reference cannot be resolved to a config."""


class PlanError(PrismnError):
    """A plan or a strategy request is malformed."""
