"""Coordinator settings (from the CLI, or set directly in tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    db_url: str = "sqlite:///prismn.db"
    # secrets come from the environment (PRISMN_ADMIN_KEY, PRISMN_JOIN_TOKEN, PRISMN_API_KEY) or, made at
    # first start, from owner-only files in secrets_dir; the store keeps only their hashes
    join_token: str | None = None  # registered as a join token (never expires unless revoked)
    api_key: str | None = None  # registered as an API key: the OpenAI API then requires one
    admin_key: str | None = None  # registered as an admin key
    secrets_dir: str | None = None  # admin.key, join.token, coordinator.key (default: beside a SQLite store)
    require_api_key: bool = False  # the OpenAI API refuses calls without an API key (set beyond loopback)
    peer_retention_s: float = 7 * 86400.0  # peers offline longer than this are removed
    min_heartbeat_interval_s: float = 0.05  # a peer's heartbeats closer than this are refused (429)
    assignment_ttl_s: float = 300.0  # a signed stage assignment must be loaded within this
    # dialling Iroh peers (made on first need): n0's public relays, a self-hosted one, or none (LAN, tests)
    iroh_relay: bool = True
    iroh_relay_url: str | None = None
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
    max_queue: int = 64  # requests per deployment waiting for a session beyond what it holds; then 429
    queue_timeout_s: float = 60.0  # longest wait in that queue before a 429
    request_timeout_s: float = 600.0  # a generation running longer is stopped (504)
    max_body_bytes: int = 1 << 20  # request bodies above this are refused (413) before they are parsed
    # failures: a request waits this long for its deployment to be re-planned (or restored) and goes on
    recovery_wait_s: float = 60.0
    max_recoveries: int = 3  # failures one request survives
    # a stage that misses 3x its predicted step time is probed and, if silent, routed around; the floors
    # keep a busy 2-core CI box (decode steps up to ~0.3 s under load seen here) from false alarms
    step_deadline_floor_s: float = 2.0
    first_token_deadline_floor_s: float = 10.0
    default_max_tokens: int = 128
    public_url: str = "http://127.0.0.1:8000"
    # grid intensity over time (issue 13): the provider (chain) peers are priced with (None: default_provider()),
    # and the re-placement policy (a prismn.coordinator.replacement.Policy; None: deployments never move for carbon)
    carbon: object | None = None
    replacement: object | None = None
