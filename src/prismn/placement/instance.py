"""Per-peer costs of one (model, swarm, options) as numpy arrays, from the same kernel as the evaluator.

The placement engine optimises the evaluator's own metrics: the per-peer arrays are `kernel.PeerCosts`
(the CostModel's answers, once per GPU type or per peer when it measured itself) and every metric is
built with the kernel's formulas, exactly as `evaluate_plan` prices a plan. Each is additive over
stages and hops, per layer plus a fixed part by role, which is what makes a shortest-path exact:

  latency  = sum_i [n_i * t_layer(p_i)] + t_embed(p_1) + t_head(p_k) + sum over hops of hop_time
  carbon   = sum_i t_i * P(p_i) * I(p_i) / 3.6e6                    (scope "operational")
  total    = carbon + embodied (t_i * e(p_i)) + network carbon      (scope "total")
  reserved = A(set) x W(plan) + B(plan)                             (scope "reserved", the default: reserved.py)

Network carbon splits exactly into per-peer terms by role (kernel.network_role_joules), so only
latency and wall time depend on the order of the stages; carbon depends on the set and layer counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prismn import geo
from prismn.model import GIB, ModelSpec
from prismn.placement.costmodel import TOKEN_ID_BYTES, CostModel, CostOptions
from prismn.placement.kernel import (
    ROLES,
    PeerCosts,
    grams,
    hop_bytes,
    hop_seconds,
    network_joules,
    network_role_joules,
)
from prismn.swarm import CLIENT, Swarm

CARBON_SCOPES = ("reserved", "operational", "total")  # reserved: the default, see docs/placement.md
HOP_CHUNK = 1 << 22  # elements per block of the hop matrix's temporaries (32 MiB of float64 each)


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

        # ---- the CostModel's per-peer answers as arrays (kernel.PeerCosts, shared with the evaluator) -----
        self.pc = pc = PeerCosts.of(cm, peers)
        self.lt, self.ht, self.et, self.fx = pc.layer_s, pc.head_s, pc.embed_s, pc.fixed_s
        self.measured_time = pc.measured
        self.power, self.idle_power, self.embodied = pc.active_w, pc.idle_w, pc.embodied_g_per_s
        self.intensity = pc.intensity
        self.bw = pc.bandwidth_mbps
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

        # ---- metrics: per layer and per role (kernel formulas) ----------------------------------------
        act = spec.activation_bytes_per_token
        self.act_bytes = act
        self.latency = Metric("latency", pc.layer_s.copy(), pc.role_fixed_s(), 1.0)
        # network carbon, split exactly into per-peer terms by role (kernel.network_role_joules)
        net_j = network_role_joules(network_joules(TOKEN_ID_BYTES, self.opt.k_net_kwh_per_gb),
                                    network_joules(act, self.opt.k_net_kwh_per_gb))
        net_all = {r: grams(net_j[r], pc.intensity) for r in ROLES}
        rate = pc.active_rate()  # grams per second of compute (operational)
        if carbon_scope == "total":
            rate = rate + pc.embodied_g_per_s
        net = net_all if carbon_scope == "total" else {r: np.zeros(n) for r in ROLES}
        fixed = pc.role_fixed_s()
        self.carbon = Metric("carbon", pc.layer_s * rate, {r: fixed[r] * rate + net[r] for r in ROLES}, 0.0)

        # ---- reserved energy at the deployment's load (the default carbon scope, evaluator.at_load_metrics):
        # per token, f = A(set) x W(plan) + B(plan) with W the wall time of one step at batch b,
        #   A = sum_i reservation rate_i (idle draw + embodied) / b   (every used peer is reserved for W)
        #   B = sum_i busy extra rate_i ((active - idle) draw) x t_i(b) / b + network carbon (per-role terms)
        b = self.opt.concurrency
        self.batch = b
        self.wall = Metric("wall", pc.layer_s * pc.layer_factor, pc.role_fixed_s(at_load=True), 1.0)
        self.alpha = pc.reservation_rate(b)
        rate_b = pc.busy_extra_rate(b)
        self.reserved = Metric("reserved", self.wall.per_layer * rate_b,
                               {r: self.wall.fixed[r] * rate_b + net_all[r] for r in ROLES}, 0.0)

    # ------------------------------------------------------------------------------------------------
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

        kernel.hop_seconds and kernel.hop_bytes, as the evaluator prices a route; `batch`
        sequences' bytes per hop (the wall time at the deployment's load).
        """
        full = np.concatenate([idx, [-1]])
        n = len(full)
        bw = np.concatenate([self.bw[idx], [np.inf]])
        is_client = np.arange(n) == n - 1
        h = np.empty((n, n))
        step = max(1, HOP_CHUNK // n)  # rows at a time: the temporaries stay small, only h is n x n
        for a in range(0, n, step):
            rows = slice(a, a + step)
            nbytes = hop_bytes(is_client[rows, None], is_client[None, :], self.act_bytes)
            if batch != 1:
                nbytes = nbytes * batch
            h[rows] = hop_seconds(self.rtt_ms(full[rows], full), nbytes, np.minimum(bw[rows, None], bw[None, :]),
                                  self.opt.hop_overhead_ms)
        np.fill_diagonal(h, np.inf)  # a peer never hands over to itself; client -> client is no plan
        return h

    def hop_lower_bounds(self) -> tuple[float, float]:
        """Smallest possible client hop and peer-to-peer hop (seconds), for any pair of peers."""
        rtt_min = self.rtt_min_ms
        bw_max = float(self.bw.max()) if self.n else 1.0
        tok = float(hop_seconds(rtt_min, TOKEN_ID_BYTES, bw_max, self.opt.hop_overhead_ms))
        act = float(hop_seconds(rtt_min, self.act_bytes, bw_max, self.opt.hop_overhead_ms))
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
