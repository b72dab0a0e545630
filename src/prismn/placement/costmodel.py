"""The cost model: the contract every strategy, the evaluator and every measurement share.

This module answers per-peer questions (a layer's time on a GPU, its power, what fits); the formulas
that combine them into stage, hop and plan metrics live once, array-native, in `kernel.py`.

For a route client -> p1 -> ... -> pk -> client, per generated token at batch 1 (DESIGN.md):
  compute_i  = [s_step_fixed(p_i)] + n_i * t_layer(p_i) [+ t_head on the stage holding the LM head] [+ t_embed]
  t_layer    = max((layer_bytes + context * kv_bytes) / (ETA_MEM * BW), flops / (ETA_COMPUTE * FLOPS))
               + LAUNCH_S, unless the peer measured its own s_per_layer for this model and dtype
  hop        = RTT/2 + bytes / bandwidth + HOP_OVERHEAD_MS, for every hop of the loop
  energy_i   = compute_i * P_active(p_i) * PUE(p_i); P_active = TDP * ACTIVE_POWER_FRACTION * HOST_OVERHEAD
  gCO2e_i    = energy_i * intensity(zone_i) / 3.6e6 (operational); embodied and network shown apart
  memory_i   = weights + KV for the promised context + workspace <= free * (1 - margin) - overhead

The runtime (prismn.runtime) follows the same loop: the client sends token ids to the first stage,
activations go stage to stage, the last stage samples and returns the token id to the client.
"""

from __future__ import annotations

from dataclasses import dataclass

from prismn.model import GIB, ModelSpec
from prismn.swarm import Measurement, Peer

ETA_MEM = 0.7  # achieved fraction of peak memory bandwidth in batch-1 decode (research §6/§7.3)
ETA_COMPUTE = 0.5  # achieved fraction of dense fp16 peak FLOP/s
# Per-layer CPU/launch overhead of eager (no CUDA graphs) batch-1 decode, added to the memory/compute
# bound of every datasheet layer. Measured: Llama-3.1-8B on an H100 SXM5 takes 8.4 ms per decode step
# eager and 5.1 ms captured as a CUDA graph, (8.4 - 5.1) / 32 layers = 103 us per layer (cloudai.pt,
# "CUDA Graphs + torch.compile: 1.65x LLM Decode Speedup"); a naive eager loop is slower still:
# Llama-2-7B on an A100-80GB runs 25.5 tok/s eager vs 107 tok/s compiled, (39.2 - 9.3) ms / 32 = 0.93 ms
# per layer (PyTorch blog "Accelerating Generative AI with PyTorch II: GPT, Fast", 2023). We take the
# lower, tuned figure; a peer's own measurement (s_per_layer, s_step_fixed) replaces it.
LAUNCH_S = 100e-6
# GPU memory a stage process loses to its CUDA context before any weight is loaded. Measured: 723 MiB
# after the first CUDA tensor in PyTorch ("What is the reason for pytorch's GPU memory floor?", PyTorch
# forums, 2020), "~700+ MB depending on the CUDA version and device" (PyTorch forums, "High gpu memory
# overhead", 2020). Peers report free VRAM from NVML before their stage process starts
# (prismn.peer.hardware), so the context comes out of it. Applied to CUDA/ROCm GPUs, not to CPU or Apple peers.
CUDA_CONTEXT_GB = 0.7
CONTEXT_VENDORS = ("nvidia", "amd")
ACTIVE_POWER_FRACTION = 0.65  # decode draws well below TDP (research §6: 0.6-0.8 when loaded)
IDLE_POWER_FRACTION = 0.2  # a GPU holding a stage, clocks up, waiting: ~20% of TDP (issue 9 audit; see
# docs/placement.md for the range, 0.1-0.4 of TDP) unless the catalog gives the GPU's own idle_w
HOST_OVERHEAD = 1.3  # CPU, DRAM, fans and PSU on top of the GPU (Google 2025: accelerators ~58-75%)
EMBODIED_SERVER_SHARE_KG = 712.5  # EcoLogits: 5,700 kgCO2e per 8-GPU server
EMBODIED_LIFETIME_H = 3 * 8760.0  # EcoLogits: 3-year life
TOKEN_ID_BYTES = 4  # a sampled token id on the client hops
FRAME_HEADER_BYTES = 190  # wire header per message incl. session id and timing trace (prismn.wire)


@dataclass(frozen=True)
class CostOptions:
    prompt_tokens: int = 256  # prompt length for time-to-first-token and the decode context
    context_tokens: int = 2048  # KV cache each stage reserves (the context the plan promises)
    safety_margin: float = 0.10  # fraction of free VRAM left unused
    # fixed per-peer runtime overhead in GiB; None: the GPU's runtime context (CUDA_CONTEXT_GB on CUDA/ROCm
    # GPUs, 0 on CPU and Apple peers)
    overhead_gb: float | None = None
    hop_overhead_ms: float = 0.8  # per hop inside the real pipeline on CPU (benchmarks/runtime.py: ~0.7-0.9)
    k_net_kwh_per_gb: float = 0.002  # marginal network energy (research §6); 0.059 is the allocational figure
    use_measurements: bool = True  # prefer a peer's measured layer time over datasheet estimates
    concurrency: int = 1  # sequences decoding together (batch b): KV for each, energy shared by b tokens

    def __post_init__(self) -> None:
        if not 0 <= self.safety_margin < 1:
            raise ValueError("safety_margin must be in [0, 1)")
        if self.prompt_tokens < 1 or self.context_tokens < 1:
            raise ValueError("prompt_tokens and context_tokens must be >= 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.overhead_gb is not None and self.overhead_gb < 0:
            raise ValueError("overhead_gb must be >= 0")


class CostModel:
    """Per-peer and per-hop costs of one model under one set of options."""

    def __init__(self, spec: ModelSpec, options: CostOptions | None = None):
        self.spec = spec
        self.opt = options or CostOptions()
        self.context = min(self.opt.context_tokens, spec.max_positions)
        # KV cache every layer reserves: the promised context for each concurrent sequence
        self.kv_layer_bytes = self.opt.concurrency * self.context * spec.kv_bytes_per_token_per_layer()

    # ---- time ----------------------------------------------------------------------------
    def _measured(self, peer: Peer):
        if not self.opt.use_measurements or not peer.measurements:
            return None
        return peer.measurement_for(self.spec.name, self.spec.dtype)

    def layer_time_s(self, peer: Peer) -> float:
        m = self._measured(peer)
        if m is not None:
            return m.s_per_layer
        return self._layer_time_at(peer, 1)

    def _layer_time_at(self, peer: Peer, b: int) -> float:
        """Datasheet decode step of one layer at batch b: weights read once, KV and FLOPs per sequence."""
        s, ctx = self.spec, self.opt.prompt_tokens
        mem = (s.layer_bytes + b * ctx * s.kv_bytes_per_token_per_layer()) / (ETA_MEM * peer.gpu.mem_bw_gbps * 1e9)
        comp = b * s.layer_flops_per_token(ctx) / (ETA_COMPUTE * peer.gpu.fp16_tflops * 1e12)
        return max(mem, comp) + LAUNCH_S

    def _head_time_at(self, peer: Peer, b: int) -> float:
        s = self.spec
        mem = s.head_bytes / (ETA_MEM * peer.gpu.mem_bw_gbps * 1e9)
        comp = b * s.head_flops_per_token / (ETA_COMPUTE * peer.gpu.fp16_tflops * 1e12)
        return max(mem, comp) + LAUNCH_S

    def batch_factor(self, peer: Peer, b: int) -> float:
        """Layer step time at batch b over batch 1 (datasheet model); scales measured times too."""
        return 1.0 if b == 1 else self._layer_time_at(peer, b) / self._layer_time_at(peer, 1)

    def head_batch_factor(self, peer: Peer, b: int) -> float:
        return 1.0 if b == 1 else self._head_time_at(peer, b) / self._head_time_at(peer, 1)

    def head_time_s(self, peer: Peer) -> float:
        m = self._measured(peer)
        if m is not None:
            return m.s_head
        return self._head_time_at(peer, 1)

    def stage_fixed_s(self, peer: Peer) -> float:
        """Per-step time of a stage that does not depend on its layer count (measured s_step_fixed)."""
        m = self._measured(peer)
        return m.s_step_fixed if m is not None else 0.0

    def embed_time_s(self, peer: Peer) -> float:
        m = self._measured(peer)
        return m.s_embed if m is not None else LAUNCH_S

    def prefill_layer_time_s(self, peer: Peer) -> float:
        """One layer over the whole prompt: compute-bound unless the prompt is tiny."""
        s, p = self.spec, self.opt.prompt_tokens
        comp = p * s.layer_flops_per_token(p // 2) / (ETA_COMPUTE * peer.gpu.fp16_tflops * 1e12)
        return max(self.layer_time_s(peer), comp + LAUNCH_S)

    def time_source(self, peer: Peer) -> str:
        m = self._measured(peer)
        if m is None:
            return "datasheet"
        return f"measured ({m.source})" if m.source else "measured"

    # ---- power, energy, carbon ---------------------------------------------------------
    @staticmethod
    def power_w(peer: Peer, measured: Measurement | None = None) -> float:
        """Wall power while computing, including host overhead and the site's PUE: the board power the
        peer measured while decoding (``measured.active_w``) when it did, else TDP x ACTIVE_POWER_FRACTION."""
        board = measured.active_w if measured is not None and measured.active_w else peer.gpu.tdp_w * ACTIVE_POWER_FRACTION
        return board * HOST_OVERHEAD * peer.pue

    @staticmethod
    def idle_power_w(peer: Peer, measured: Measurement | None = None) -> float:
        """Wall power of a GPU held for a deployment but waiting (network, other stages), with host and PUE:
        the board power the peer measured holding its stage idle, else the catalog's idle_w for its GPU,
        else IDLE_POWER_FRACTION x TDP. Never above the active draw (a reservation cannot cost more than work)."""
        if measured is not None and measured.idle_w:
            board = measured.idle_w
        else:
            board = peer.gpu.idle_w if peer.gpu.idle_w else peer.gpu.tdp_w * IDLE_POWER_FRACTION
        return min(board * HOST_OVERHEAD * peer.pue, CostModel.power_w(peer, measured))

    def peer_power_w(self, peer: Peer) -> tuple[float, float]:
        """(active, idle) wall power of this peer for this model: its own measurement when it has one."""
        m = self._measured(peer)
        return self.power_w(peer, m), self.idle_power_w(peer, m)

    def power_source(self, peer: Peer) -> str:
        m = self._measured(peer)
        if m is not None and (m.active_w or m.idle_w):
            return f"measured ({m.power_source or m.source or 'peer'})"
        return f"datasheet ({'catalog idle_w' if peer.gpu.idle_w else f'idle {IDLE_POWER_FRACTION:g} x TDP'})"

    @staticmethod
    def embodied_g_per_s(peer: Peer) -> float:
        return (peer.gpu.embodied_kgco2e + EMBODIED_SERVER_SHARE_KG) * 1000.0 / (EMBODIED_LIFETIME_H * 3600.0)

    # ---- memory ------------------------------------------------------------------------
    def stage_bytes(self, n_layers: int, embedding: bool, head: bool) -> float:
        """Weights + KV cache for the promised context + prefill workspace of one stage."""
        s = self.spec
        weights = n_layers * s.layer_bytes
        if embedding:
            weights += s.embed_bytes
        if head:
            # a tied head shares the embedding's weights when both live on the same peer
            weights += s.norm_params * s.weight_bytes if (embedding and s.tied) else s.head_bytes
        kv = n_layers * self.kv_layer_bytes
        workspace = self.opt.prompt_tokens * (s.hidden + s.intermediate) * 2 * s.act_bytes if n_layers else 0.0
        if head:
            workspace += s.vocab * 4.0  # last-position logits in fp32
        return weights + kv + workspace

    def overhead_gb(self, peer: Peer) -> float:
        """Fixed runtime overhead of a stage process on this peer (GiB): the option, else its GPU's context."""
        if self.opt.overhead_gb is not None:
            return self.opt.overhead_gb
        return CUDA_CONTEXT_GB if peer.gpu.vendor in CONTEXT_VENDORS else 0.0

    def usable_bytes(self, peer: Peer) -> float:
        return max(0.0, (peer.free_vram_gb * (1 - self.opt.safety_margin) - self.overhead_gb(peer)) * GIB)

    def max_layers(self, peer: Peer, embedding: bool, head: bool) -> int:
        """Most whole layers this peer can hold with the given extras (-1: not even the extras fit)."""
        usable = self.usable_bytes(peer)
        base = self.stage_bytes(0, embedding, head)
        if base > usable:
            return -1
        first = self.stage_bytes(1, embedding, head)
        if first > usable:
            return 0
        per_layer = self.spec.layer_bytes + self.kv_layer_bytes
        return min(self.spec.n_layers, 1 + int((usable - first) // per_layer))
