"""Prismn: carbon- and latency-aware pipeline-parallel LLM inference over a swarm of GPU peers."""

__version__ = "0.1.0"
