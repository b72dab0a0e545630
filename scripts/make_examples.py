"""Regenerate examples/swarms/global.json (50 peers, reproducible) from the swarm generator."""

from __future__ import annotations

import json
from pathlib import Path

from prismn.swarmgen import generate_swarm

ROOT = Path(__file__).resolve().parent.parent
BOSTON = (42.36, -71.06)

if __name__ == "__main__":
    out = ROOT / "examples" / "swarms" / "global.json"
    out.write_text(json.dumps(generate_swarm(50, seed=2026, coordinator=BOSTON), indent=1) + "\n")
    print(f"wrote {out}")
