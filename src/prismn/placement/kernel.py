"""The cost kernel: the cost model's formulas (DESIGN.md), array-native, each written once.

`CostModel` answers questions about one peer (how long a layer takes on its GPU, what it draws, what
fits). This module combines those answers into the metrics of stages, hops and plans, on numpy arrays
(a scalar is a 0-d array), so that every consumer prices a plan with the same expressions in the same
floating-point order:

  * the evaluator (`evaluate_plan`), the one ruler, over the peers of one plan;
  * the solver's instance arrays (`Instance`), over every peer of a swarm;
  * the Petals simulation's route, the re-placement move cost and the request receipts.

A metric is additive over stages and hops; the intensity is just a vector over peers, so carbon at an
hour, at a forecast's mean or at any weighting of hours (`weighted_intensity`) is one more metric of
the same shape (carbon is linear in intensity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prismn.placement.costmodel import FRAME_HEADER_BYTES, TOKEN_ID_BYTES, CostModel

J_PER_KWH = 3.6e6
ROLES = ("only", "first", "middle", "last")  # only = one stage holds embedding, all layers and head
ROLE_PARTS = {"only": (True, True), "first": (True, False), "middle": (False, False), "last": (False, True)}


# ---- energy and carbon -------------------------------------------------------------------------
def grams(joules, g_per_kwh):
    """gCO2e of some joules at an intensity in g/kWh."""
    return joules * g_per_kwh / J_PER_KWH


def network_joules(nbytes, k_net_kwh_per_gb: float):
    """Marginal network energy of moving nbytes (k_net kWh per GB)."""
    return nbytes / 1e9 * k_net_kwh_per_gb * J_PER_KWH


def network_role_joules(j_tok: float, j_act: float) -> dict[str, float]:
    """Each peer's share of the loop's hop energy by its role: a hop's carbon is its joules x the mean of
    its two ends' intensities, and each peer of client -> p1 -> ... -> pk -> client ends exactly two
    hops, so network carbon splits exactly into per-peer terms that depend only on the role."""
    return {"only": 2 * j_tok, "first": j_tok + j_act / 2, "middle": j_act, "last": j_tok + j_act / 2}


def reserved_joules(idle_w, active_w, wall_s, compute_s):
    """Energy of a peer reserved for wall_s while computing compute_s: idle x wall + (active - idle) x compute."""
    return idle_w * wall_s + (active_w - idle_w) * compute_s


def weighted_intensity(hourly: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per peer, the weighted mean of its intensity over time steps (hourly: peers x steps). Carbon is linear
    in intensity, so planning on this vector minimises the same weighting of the per-step carbon."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or len(w) != hourly.shape[1] or not np.all(w >= 0) or not w.sum() > 0:
        raise ValueError("weights: one non-negative weight per time step, not all zero")
    return hourly @ (w / w.sum())


# ---- time --------------------------------------------------------------------------------------
def hop_seconds(rtt_ms, nbytes, bandwidth_mbps, overhead_ms: float):
    """One hop: half the round trip + serialisation of bytes and frame header + per-hop overhead."""
    return rtt_ms / 2000.0 + (nbytes + FRAME_HEADER_BYTES) * 8 / (bandwidth_mbps * 1e6) + overhead_ms / 1000.0


def hop_bytes(from_client, to_client, act_bytes: float, prompt_tokens: int = 1):
    """Bytes a hop carries per step: token ids to and from the client, activations between peers
    (x prompt_tokens during prefill, except the sampled token id going back)."""
    from_client, to_client = np.asarray(from_client), np.asarray(to_client)
    decode = np.where(from_client | to_client, float(TOKEN_ID_BYTES), float(act_bytes))
    if prompt_tokens == 1:
        return decode
    return np.where(to_client, float(TOKEN_ID_BYTES), decode * prompt_tokens)


@dataclass
class PeerCosts:
    """The CostModel's per-peer answers for a list of peers, as arrays (index i = peers[i])."""

    layer_s: np.ndarray  # one decode layer at batch 1 (measured, else datasheet)
    head_s: np.ndarray
    embed_s: np.ndarray
    fixed_s: np.ndarray  # per-stage step time whatever the layer count (measured s_step_fixed)
    prefill_layer_s: np.ndarray
    layer_factor: np.ndarray  # layer step time at the deployment's batch / at batch 1
    head_factor: np.ndarray
    active_w: np.ndarray  # wall power while computing (host and PUE included)
    idle_w: np.ndarray  # wall power reserved but waiting
    embodied_g_per_s: np.ndarray
    intensity: np.ndarray  # g/kWh
    bandwidth_mbps: np.ndarray
    measured: np.ndarray  # bool: the peer measured its own times

    @classmethod
    def of(cls, cm: CostModel, peers) -> PeerCosts:
        """Once per GPU type for datasheet peers, per peer where it reported measurements."""
        n, b = len(peers), cm.opt.concurrency
        cols = {k: np.empty(n) for k in ("layer_s", "head_s", "embed_s", "fixed_s", "prefill_layer_s", "layer_factor",
                                         "head_factor", "active_w", "idle_w", "embodied_g_per_s")}
        measured = np.zeros(n, dtype=bool)
        by_gpu: dict[str, tuple] = {}
        for i, p in enumerate(peers):
            m = cm._measured(p)
            measured[i] = m is not None
            row = None if measured[i] else by_gpu.get(p.gpu.name)
            if row is None:
                row = (cm.layer_time_s(p), cm.head_time_s(p), cm.embed_time_s(p), cm.stage_fixed_s(p),
                       cm.prefill_layer_time_s(p), cm.batch_factor(p, b), cm.head_batch_factor(p, b))
                if not measured[i]:
                    by_gpu[p.gpu.name] = row
            (cols["layer_s"][i], cols["head_s"][i], cols["embed_s"][i], cols["fixed_s"][i],
             cols["prefill_layer_s"][i], cols["layer_factor"][i], cols["head_factor"][i]) = row
            cols["active_w"][i], cols["idle_w"][i] = CostModel.power_w(p, m), CostModel.idle_power_w(p, m)
            cols["embodied_g_per_s"][i] = CostModel.embodied_g_per_s(p)
        return cls(**cols, intensity=np.array([p.intensity.g_per_kwh for p in peers], dtype=float),
                   bandwidth_mbps=np.array([p.bandwidth_mbps for p in peers], dtype=float), measured=measured)

    # ---- stages ------------------------------------------------------------------------------
    def stage_s(self, n_layers, embedding, head, at_load: bool = False):
        """Compute time of stages holding n_layers (+ embedding, + head): the decode step at batch 1, or at
        the deployment's batch (weights read once, KV and FLOPs per sequence)."""
        lt = self.layer_s * self.layer_factor if at_load else self.layer_s
        ht = self.head_s * self.head_factor if at_load else self.head_s
        return n_layers * lt + self.fixed_s + np.where(head, ht, 0.0) + np.where(embedding, self.embed_s, 0.0)

    def prefill_stage_s(self, n_layers, embedding, head):
        return (n_layers * self.prefill_layer_s + self.fixed_s + np.where(head, self.head_s, 0.0)
                + np.where(embedding, self.embed_s, 0.0))

    def role_fixed_s(self, at_load: bool = False) -> dict[str, np.ndarray]:
        """Per role, the part of a stage's time that does not grow with its layers."""
        ht = self.head_s * self.head_factor if at_load else self.head_s
        return {r: self.fixed_s + (self.embed_s if e else 0.0) + (ht if h else 0.0) for r, (e, h) in ROLE_PARTS.items()}

    # ---- carbon rates (grams per second) -------------------------------------------------------
    def active_rate(self, intensity=None):
        """gCO2e per second of compute (operational)."""
        return grams(self.active_w, self.intensity if intensity is None else intensity)

    def reservation_rate(self, batch: int, intensity=None):
        """gCO2e per second a peer is held (idle draw + embodied), per token at batch b: the A of reserved.py."""
        i = self.intensity if intensity is None else intensity
        return (grams(self.idle_w, i) + self.embodied_g_per_s) / batch

    def busy_extra_rate(self, batch: int, intensity=None):
        """gCO2e per second of compute on top of the reservation ((active - idle) draw), per token at batch b."""
        i = self.intensity if intensity is None else intensity
        return grams(self.active_w - self.idle_w, i) / batch


def reserved_at_load(pc: PeerCosts, compute_at_load: np.ndarray, wall_s: float, batch: int) -> dict[str, float]:
    """Per token at the deployment's load, every peer of pc reserved for the whole step (issue 9):

      energy_i  = (idle_i x W + (active_i - idle_i) x compute_i) / b
      embodied  = sum_i embodied rate_i x W / b
    """
    joules = reserved_joules(pc.idle_w, pc.active_w, wall_s, compute_at_load) / batch
    return {"energy_j": float(joules.sum()), "operational_g": float(grams(joules, pc.intensity).sum()),
            "embodied_g": float((pc.embodied_g_per_s * wall_s / batch).sum())}
