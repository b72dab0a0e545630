"""The coordinator service: registry and leases, store, deployments, OpenAI-compatible API, metrics."""
