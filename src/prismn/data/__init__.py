"""Embedded data files (see DATA_LICENSES.md for sources and licences).

Regenerate them with `python3 scripts/build_data.py`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load(name: str) -> Any:
    """Parse one of the shipped JSON files once per process."""
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))
