"""Shared helpers: small hand-written swarms that do not depend on location lookups."""

from __future__ import annotations

import pytest

from prismn.swarm import Swarm, parse_swarm


def make_swarm(peers: list[dict], coordinator=(0.0, 0.0), rtt_ms: dict | None = None) -> Swarm:
    rows = []
    for p in peers:
        row = {"gpu": "RTX 3090", "carbon_intensity": 100.0, "pue": 1.0, **p}
        rows.append(row)
    return parse_swarm({"coordinator": {"lat": coordinator[0], "lon": coordinator[1]}, "peers": rows,
                        "rtt_ms": rtt_ms or {}})


@pytest.fixture
def swarm_factory():
    return make_swarm
