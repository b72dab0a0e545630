"""Prismn runtime: run a slice of a transformer's layers as a stage, pass activations peer to peer.

Only this package (and the runtime CLI command bodies) import torch and transformers; importing
``prismn.runtime`` itself is cheap — submodules load torch when they are used:

- :mod:`prismn.runtime.checkpoint` — config + safetensors read by tensor name (no torch needed to index)
- :mod:`prismn.runtime.stage` — a stage module built from transformers' own layer classes
- :mod:`prismn.runtime.sessions` — bounded per-session KV caches
- :mod:`prismn.runtime.server` — the stage server (``prismn stage serve``)
- :mod:`prismn.runtime.client` — the pipeline client with streaming ``generate()``
- :mod:`prismn.runtime.selfbench` — the per-layer decode self-benchmark
- :mod:`prismn.runtime.prepare` — ``prismn model prepare smollm2-135m``
"""

from prismn.errors import PrismnError


class RuntimeStageError(PrismnError):
    """A stage cannot be built, loaded or run as asked (the message names the fix)."""


__all__ = ["RuntimeStageError"]
