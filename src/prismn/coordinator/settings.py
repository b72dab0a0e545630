"""Coordinator settings (from the CLI, or set directly in tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    db_url: str = "sqlite:///prismn.db"
    join_token: str | None = None  # None: the stored one, or a new one
    api_key: str | None = None  # when set, the OpenAI API requires it as a Bearer token
    lat: float = 0.0  # where the coordinator (the pipeline's client) stands
    lon: float = 0.0
    lease_s: float = 15.0
    # after a restart, peers retry with capped back-off (10 s by default, `prismn peer`): their
    # leases are renewed for one lease plus that cap, so a peer that is fine is not marked offline
    # (and its deployments re-planned) only because its next retry had not come yet
    rejoin_grace_s: float = 10.0
    heartbeat_s: float = 5.0
    sweep_s: float = 1.0
    emulate_wan: bool = False  # delay every link by RTT/2 estimated from the peers' locations
    max_tokens_limit: int = 1024
    default_max_tokens: int = 128
    public_url: str = "http://127.0.0.1:8000"
