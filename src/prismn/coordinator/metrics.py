"""Prometheus metrics of one coordinator (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("prismn_requests_total", "Completion requests", ["model", "status"], registry=r)
        self.tokens = Counter("prismn_tokens_total", "Tokens", ["model", "kind"], registry=r)
        self.gco2e = Counter("prismn_gco2e_total", "Grams of CO2e spent serving requests", ["model"], registry=r)
        self.joules = Counter("prismn_joules_total", "Joules spent serving requests", ["model"], registry=r)
        self.latency = Histogram("prismn_latency_seconds_per_token", "Measured decode latency per token",
                                 ["model"], registry=r,
                                 buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
        self.ttft = Histogram("prismn_ttft_seconds", "Measured time to first token", ["model"], registry=r,
                              buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
        self.batch = Histogram("prismn_decode_batch_size", "Mean batch a request's decode steps shared", ["model"],
                               registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.peers_online = Gauge("prismn_peers_online", "Peers with a live lease", registry=r)
        self.deployments_ready = Gauge("prismn_deployments_ready", "Deployments ready to serve", registry=r)
        self.replans = Counter("prismn_replans_total", "Re-plans after a peer loss", registry=r)
        self.recoveries = Counter("prismn_recoveries_total", "Requests that went on after a peer failed mid-answer",
                                  registry=r)
