"""Per-peer costs of one (model, swarm, options) as numpy arrays, computed exactly as the evaluator does.

The placement engine optimises the evaluator's own metrics, so every number here is produced by the
same CostModel methods (once per GPU type, or per peer when it reported measurements) and combined
in the same floating-point order as `evaluate_plan`. Everything the evaluator sums is additive over
stages and hops, which is what makes a shortest-path formulation exact:

  latency  = sum_i [n_i * t_layer(p_i)] + t_embed(p_1) + t_head(p_k) + sum over hops of hop_time
  carbon   = sum_i t_i * P(p_i) * I(p_i) / 3.6e6                         (operational, the default)
  total    = carbon + embodied (t_i * e(p_i)) + network carbon

Network carbon is per hop j_bytes * mean(intensity of the hop's peer ends) / 3.6e6. Because each
peer of the loop client -> p1 -> ... -> pk -> client touches exactly two hops, it splits exactly into
per-peer terms that depend only on the peer's role (first, middle, last, only), never on the order.
So only latency depends on the order of the stages; carbon depends on the set and the layer counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prismn import geo
from prismn.model import GIB, ModelSpec
from prismn.placement.costmodel import (
    FRAME_HEADER_BYTES,
    TOKEN_ID_BYTES,
    CostModel,
    CostOptions,
)
from prismn.swarm import CLIENT, Swarm

ROLES = ("only", "first", "middle", "last")  # only = one stage holds embedding, all layers and head
CARBON_SCOPES = ("reserved", "operational", "total")  # reserved: the default, see docs/placement.md


def haversine_pairs_km(lat_a: np.ndarray, lon_a: np.ndarray, lat_b: np.ndarray, lon_b: np.ndarray) -> np.ndarray:
    """Great-circle distance of each pair (a[i], b[i]): geo.haversine_matrix_km's formula, elementwise."""
    p1, p2 = np.radians(lat_a), np.radians(lat_b)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon_b - lon_a) / 2) ** 2
    return 2 * geo.EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(h)))


@dataclass
class Metric:
    """One additive metric (seconds of latency, or grams of CO2e) of a stage and of a hop."""

    name: str
    per_layer: np.ndarray  # cost of one layer on each peer
    fixed: dict[str, np.ndarray]  # per role: extras (embedding/head compute, network-carbon share)
    hop_weight: float  # 1.0 when the metric pays hop time (latency), 0.0 otherwise


class Instance:
    """Everything the solvers need about every peer, vectorised. Index i is swarm.peers[i]."""

    def __init__(self, spec: ModelSpec, swarm: Swarm, options: CostOptions | None = None,
                 carbon_scope: str = "operational"):
        if carbon_scope not in CARBON_SCOPES:
            raise ValueError(f"carbon_scope must be one of {', '.join(CARBON_SCOPES)}")
        self.spec, self.swarm = spec, swarm
        self.cm = cm = CostModel(spec, options)
        self.opt = cm.opt
        self.carbon_scope = carbon_scope
        self.L = spec.n_layers
        peers = swarm.peers
        n = self.n = len(peers)

        # ---- times: once per GPU for datasheet peers, per peer where it measured itself ----------
        lt, ht, et = np.empty(n), np.empty(n), np.empty(n)
        fx = np.zeros(n)  # per-stage fixed step time (measured s_step_fixed), whatever the layer count
        by_gpu: dict[str, tuple[float, float, float]] = {}
        self.measured_time = np.zeros(n, dtype=bool)
        for i, p in enumerate(peers):
            if cm._measured(p) is not None:
                lt[i], ht[i], et[i] = cm.layer_time_s(p), cm.head_time_s(p), cm.embed_time_s(p)
                fx[i] = cm.stage_fixed_s(p)
                self.measured_time[i] = True
                continue
            t = by_gpu.get(p.gpu.name)
            if t is None:
                t = by_gpu[p.gpu.name] = (cm.layer_time_s(p), cm.head_time_s(p), cm.embed_time_s(p))
            lt[i], ht[i], et[i] = t
        self.lt, self.ht, self.et, self.fx = lt, ht, et, fx

        self.power = self._power(peers)
        self.intensity = np.array([p.intensity.g_per_kwh for p in peers])
        self.embodied = self._embodied(peers)
        self.bw = np.array([p.bandwidth_mbps for p in peers])
        self.lat = np.array([p.lat for p in peers])
        self.lon = np.array([p.lon for p in peers])
        self.free = np.array([p.free_vram_gb for p in peers])
        self.overhead = np.array([cm.overhead_gb(p) for p in peers]) if n else np.zeros(0)

        # ---- memory: the most whole layers a peer holds in each role (CostModel.max_layers) -------
        self.caps = {role: self._caps(*flags) for role, flags in
                     (("only", (True, True)), ("first", (True, False)), ("middle", (False, False)),
                      ("last", (False, True)))}

        # ---- measured RTTs as index arrays (client = n): sub-matrices cost O(#measured), no Python loop
        ov = swarm.rtt_overrides
        self.any_measured = bool(ov)
        ids = swarm.index
        self.ovr_a = np.fromiter((n if a == CLIENT else ids[a] for a, _ in ov), dtype=np.int64, count=len(ov))
        self.ovr_b = np.fromiter((n if b == CLIENT else ids[b] for _, b in ov), dtype=np.int64, count=len(ov))
        self.ovr_v = np.fromiter(ov.values(), dtype=float, count=len(ov))
        self.rtt_measured = np.zeros(n + 1, dtype=bool)
        self.rtt_measured[self.ovr_a] = True
        self.client_measured = bool(self.rtt_measured[n])
        self.rtt_measured = self.rtt_measured[:n]
        self.rtt_min_ms = min(geo.FIXED_MS, float(self.ovr_v.min())) if self.any_measured else geo.FIXED_MS

        # ---- metrics --------------------------------------------------------------------------------
        act = spec.activation_bytes_per_token
        self.act_bytes = act
        self.latency = Metric("latency", lt.copy(), {"only": fx + et + ht, "first": fx + et, "middle": fx.copy(),
                                                     "last": fx + ht}, 1.0)
        rate = self.power * self.intensity / 3.6e6  # grams per second of compute (operational)
        if carbon_scope == "total":
            rate = rate + self.embodied
        j_tok = cm.network_joules(TOKEN_ID_BYTES)
        j_act = cm.network_joules(act)
        if carbon_scope == "total":
            net = {"only": 2 * j_tok * self.intensity / 3.6e6,
                   "first": (j_tok + j_act / 2) * self.intensity / 3.6e6,
                   "middle": j_act * self.intensity / 3.6e6,
                   "last": (j_tok + j_act / 2) * self.intensity / 3.6e6}
        else:
            net = {r: np.zeros(n) for r in ROLES}
        self.carbon = Metric(
            "carbon", lt * rate,
            {"only": (fx + et + ht) * rate + net["only"], "first": (fx + et) * rate + net["first"],
             "middle": fx * rate + net["middle"], "last": (fx + ht) * rate + net["last"]}, 0.0)

        # ---- reserved energy at the deployment's load (the default carbon scope, evaluator.at_load_metrics):
        # per token, f = A(set) x W(plan) + B(plan) with W the wall time of one step at batch b,
        #   A = sum_i (idle_i x I_i / 3.6e6 + embodied_i) / b   (every used peer is reserved for W)
        #   B = sum_i (active_i - idle_i) x t_i(b) x I_i / 3.6e6 / b + network carbon (per-role terms)
        b = self.opt.concurrency
        self.batch = b
        bf, hbf = np.ones(n), np.ones(n)
        if b > 1:
            fac: dict[str, tuple[float, float]] = {}
            for i, p in enumerate(peers):
                f = fac.get(p.gpu.name)
                if f is None:
                    f = fac[p.gpu.name] = (cm.batch_factor(p, b), cm.head_batch_factor(p, b))
                bf[i], hbf[i] = f
        lw, hw = lt * bf, ht * hbf
        self.wall = Metric("wall", lw, {"only": fx + et + hw, "first": fx + et, "middle": fx.copy(),
                                        "last": fx + hw}, 1.0)
        self.idle_power = self._idle_power(peers)
        self.alpha = (self.idle_power * self.intensity / 3.6e6 + self.embodied) / b
        rate_b = (self.power - self.idle_power) * self.intensity / 3.6e6 / b
        net_all = {"only": 2 * j_tok * self.intensity / 3.6e6,
                   "first": (j_tok + j_act / 2) * self.intensity / 3.6e6,
                   "middle": j_act * self.intensity / 3.6e6,
                   "last": (j_tok + j_act / 2) * self.intensity / 3.6e6}
        self.reserved = Metric("reserved", lw * rate_b, {r: self.wall.fixed[r] * rate_b + net_all[r] for r in ROLES},
                               0.0)

    # ------------------------------------------------------------------------------------------------
    def _power(self, peers) -> np.ndarray:
        # same expression and order as CostModel.power_w: tdp * ACTIVE * HOST * pue
        from prismn.placement.costmodel import ACTIVE_POWER_FRACTION, HOST_OVERHEAD

        tdp = np.array([p.gpu.tdp_w for p in peers])
        pue = np.array([p.pue for p in peers])
        return tdp * ACTIVE_POWER_FRACTION * HOST_OVERHEAD * pue

    def _idle_power(self, peers) -> np.ndarray:
        out = np.empty(len(peers))
        for i, p in enumerate(peers):
            out[i] = CostModel.idle_power_w(p)
        return out

    def _embodied(self, peers) -> np.ndarray:
        cache: dict[str, float] = {}
        out = np.empty(len(peers))
        for i, p in enumerate(peers):
            v = cache.get(p.gpu.name)
            if v is None:
                v = cache[p.gpu.name] = self.cm.embodied_g_per_s(p)
            out[i] = v
        return out

    def _caps(self, embedding: bool, head: bool) -> np.ndarray:
        """Vectorised CostModel.max_layers, checked against stage_bytes exactly as the evaluator checks."""
        cm, s = self.cm, self.spec
        usable = np.maximum(0.0, (self.free * (1 - self.opt.safety_margin) - self.overhead) * GIB)
        base = cm.stage_bytes(0, embedding, head)
        first = cm.stage_bytes(1, embedding, head)
        per_layer = s.layer_bytes + cm.kv_layer_bytes
        extra = np.floor_divide(np.maximum(usable - first, 0.0), per_layer)
        cap = np.minimum(self.L, 1 + extra).astype(np.int64)
        cap = np.where(first > usable, 0, cap)
        cap = np.where(base > usable, -1, cap)
        # guard the floating-point edge: the evaluator recomputes stage_bytes(n) and compares it
        bad = np.nonzero((cap >= 1) & (self._stage_bytes_vec(cap, embedding, head) > usable))[0]
        for i in bad:
            c = int(cap[i])
            while c >= 1 and cm.stage_bytes(c, embedding, head) > usable[i]:
                c -= 1
            cap[i] = c
        self.usable = usable
        return cap

    def _stage_bytes_vec(self, n: np.ndarray, embedding: bool, head: bool) -> np.ndarray:
        """CostModel.stage_bytes for n >= 1, elementwise, in the same floating-point order."""
        s, cm = self.spec, self.cm
        nf = n.astype(float)
        weights = nf * s.layer_bytes
        if embedding:
            weights = weights + s.embed_bytes
        if head:
            weights = weights + (s.norm_params * s.weight_bytes if (embedding and s.tied) else s.head_bytes)
        kv = nf * cm.kv_layer_bytes
        workspace = self.opt.prompt_tokens * (s.hidden + s.intermediate) * 2 * s.act_bytes
        if head:
            workspace += s.vocab * 4.0
        return weights + kv + workspace

    # ------------------------------------------------------------------------------------------------
    def rtt_ms(self, idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
        """RTT matrix between two index lists; index -1 is the client. Measured values win."""
        def coords(idx):
            lat = np.where(idx < 0, self.swarm.coordinator.lat, self.lat[np.maximum(idx, 0)])
            lon = np.where(idx < 0, self.swarm.coordinator.lon, self.lon[np.maximum(idx, 0)])
            return lat, lon

        la, oa = coords(idx_a)
        lb, ob = coords(idx_b)
        m = np.asarray(geo.estimate_rtt_ms(geo.haversine_matrix_km(la, oa, lb, ob)), dtype=float)
        same = idx_a[:, None] == idx_b[None, :]
        m[same] = 0.0
        if self.any_measured:
            n = self.n
            pos_a = np.full(n + 1, -1)
            pos_b = np.full(n + 1, -1)
            pos_a[np.where(idx_a < 0, n, idx_a)] = np.arange(len(idx_a))
            pos_b[np.where(idx_b < 0, n, idx_b)] = np.arange(len(idx_b))
            ra, rb = pos_a[self.ovr_a], pos_b[self.ovr_b]
            hit = (ra >= 0) & (rb >= 0)
            m[ra[hit], rb[hit]] = self.ovr_v[hit]
        return m

    def hop_time_matrix(self, idx: np.ndarray, batch: int = 1) -> np.ndarray:
        """(m+1) x (m+1) hop times in seconds among peers `idx`; the last row/column is the client.

        Same expression as CostModel.hop_time_s with the evaluator's bytes and bandwidth rules; `batch`
        sequences' bytes per hop (the wall time at the deployment's load).
        """
        full = np.concatenate([idx, [-1]])
        rtt = self.rtt_ms(full, full)
        bw = np.concatenate([self.bw[idx], [np.inf]])
        pair_bw = np.minimum(bw[:, None], bw[None, :])
        m = len(idx)
        nbytes = np.full((m + 1, m + 1), float(self.act_bytes))
        nbytes[m, :] = TOKEN_ID_BYTES
        nbytes[:, m] = TOKEN_ID_BYTES
        if batch != 1:
            nbytes = nbytes * batch
        h = rtt / 2000.0 + (nbytes + FRAME_HEADER_BYTES) * 8 / (pair_bw * 1e6) + self.opt.hop_overhead_ms / 1000.0
        np.fill_diagonal(h, np.inf)  # a peer never hands over to itself; client -> client is no plan
        return h

    def hop_lower_bounds(self) -> tuple[float, float]:
        """Smallest possible client hop and peer-to-peer hop (seconds), for any pair of peers."""
        rtt_min = self.rtt_min_ms
        bw_max = float(self.bw.max()) if self.n else 1.0
        ovh = self.opt.hop_overhead_ms / 1000.0
        tok = rtt_min / 2000.0 + (TOKEN_ID_BYTES + FRAME_HEADER_BYTES) * 8 / (bw_max * 1e6) + ovh
        act = rtt_min / 2000.0 + (self.act_bytes + FRAME_HEADER_BYTES) * 8 / (bw_max * 1e6) + ovh
        return tok, act

    def _delta_s(self, lat_a, lon_a, lat_b, lon_b) -> np.ndarray:
        """Distance part of the estimated one-way delay (s): ROUTE_FACTOR * d / V_FIBRE. A metric."""
        return geo.ROUTE_FACTOR * geo.haversine_matrix_km(lat_a, lon_a, lat_b, lon_b) / geo.V_FIBRE_KM_PER_MS / 1000.0

    def client_path_bound_s(self, max_shortcuts: int = 64) -> np.ndarray:
        """pi(q) <= the one-way delay in excess of rtt_min/2 of ANY path client -> ... -> q (seconds).

        A loop through q holds two edge-disjoint such paths (there and back), so it pays >= 2 pi(q)
        on top of rtt_min/2 per hop. Unmeasured hops pay at least delta (the distance part, a metric).
        A measured hop pays (rtt - rtt_min)/2; call alpha the largest factor with measured >= alpha *
        delta on all but the `max_shortcuts` most optimistic measured pairs (the shortcuts). Then every
        hop pays >= alpha * delta except the shortcuts, and the best path is at least the shortest path
        on the small graph {client, shortcut ends} with alpha * delta between any two nodes plus the
        shortcuts (Floyd-Warshall), extended to q by alpha * delta. Without measurements: pi = delta.
        """
        c = self.swarm.coordinator
        clat, clon = np.array([c.lat]), np.array([c.lon])
        direct = self._delta_s(clat, clon, self.lat, self.lon)[0]
        if not self.any_measured:
            return direct
        n = self.n
        a, b, v = self.ovr_a, self.ovr_b, self.ovr_v
        keep = a < b  # each pair once (the overrides hold both directions; the client is index n)
        a, b, v = a[keep], b[keep], v[keep]
        lat = np.append(self.lat, c.lat)
        lon = np.append(self.lon, c.lon)
        dist = haversine_pairs_km(lat[a], lon[a], lat[b], lon[b])
        delta = geo.ROUTE_FACTOR * dist / geo.V_FIBRE_KM_PER_MS / 1000.0
        excess = np.maximum((v - self.rtt_min_ms) / 2000.0, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(delta > 0, excess / delta, np.inf)
        short = np.nonzero(ratio < 1.0)[0]
        alpha = 1.0
        if len(short) > max_shortcuts:
            order = short[np.argsort(ratio[short], kind="stable")]
            alpha = float(ratio[order[max_shortcuts]])
            short = order[:max_shortcuts]
        if not len(short):
            return alpha * direct
        hubs = np.unique(np.concatenate([a[short], b[short], [n]]))
        k = len(hubs)
        D = alpha * self._delta_s(lat[hubs], lon[hubs], lat[hubs], lon[hubs])
        pos = {int(x): i for i, x in enumerate(hubs)}
        for e in short:
            i, j = pos[int(a[e])], pos[int(b[e])]
            D[i, j] = D[j, i] = min(D[i, j], excess[e])
        for m in range(k):  # Floyd-Warshall on <= 2 * max_shortcuts + 1 nodes
            D = np.minimum(D, D[:, m:m + 1] + D[m:m + 1, :])
        from_client = D[pos[n]]
        out = alpha * direct
        for i, hub in enumerate(hubs):
            if hub == n:
                continue
            out = np.minimum(out, from_client[i] + alpha * self._delta_s(lat[hub:hub + 1], lon[hub:hub + 1],
                                                                         self.lat, self.lon)[0])
        return out
