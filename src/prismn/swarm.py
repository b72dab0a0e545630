"""Swarm: peers as data, validated at the boundary, then resolved against the embedded data.

A swarm file (JSON or YAML) looks like:
    {"coordinator": {"lat": 42.36, "lon": -71.06},
     "peers": [{"id": "oslo-1", "lat": 59.91, "lon": 10.75, "free_vram_gb": 0.35,
                "gpu": "RTX 3060", "carbon_intensity": 18.0, "zone": "NO-NO1", "pue": 1.1}],
     "rtt_ms": {"oslo-1": {"paris-1": 31.0}}}
A peer with several GPUs lists them instead of gpu and free_vram_gb:
    {"id": "rig-1", "lat": 48.1, "lon": 11.6, "gpus": [{"gpu": "RTX 4090", "free_vram_gb": 22},
                                                        {"gpu": "RTX 3090", "free_vram_gb": 23}]}
Each GPU holds at most one pipeline stage (one stage process per GPU, the way the runtime serves
stages): it becomes its own placement peer "rig-1.gpu0", "rig-1.gpu1" at the same place, zone and
link, with a measured intra-host RTT of INTRA_HOST_RTT_MS between siblings; rtt_ms given for "rig-1"
applies to every one of its GPUs. Tensor parallelism across the GPUs of a host is not modelled.
Only id, lat, lon and free_vram_gb (or gpus) are required per peer. Defaults: gpu -> gpus.DEFAULT_GPU;
carbon_intensity -> embedded data by zone, else by location; pue -> DEFAULT_PUE;
bandwidth_mbps -> DEFAULT_BANDWIDTH_MBPS. A measured rtt_ms wins over the distance estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prismn import geo
from prismn.carbon import CarbonProvider, EmbeddedProvider, Intensity, default_provider, user_supplied
from prismn.errors import SwarmError
from prismn.gpus import GPU, lookup_gpu

DEFAULT_PUE = 1.56  # Uptime Institute 2024 industry average; hyperscale sites are ~1.1, home rigs ~1.0
DEFAULT_BANDWIDTH_MBPS = 100.0  # a typical well-connected peer's uplink
CLIENT = "client"  # the coordinator/client node in RTT matrices and routes
# RTT between two GPUs of one host (two stage processes over loopback): the kernel's loopback round trip
# is tens of microseconds; serialisation per hop is CostOptions.hop_overhead_ms (benchmarks/runtime.py)
INTRA_HOST_RTT_MS = 0.1
GPU_SEP = ".gpu"  # "rig-1" with two GPUs plans as "rig-1.gpu0" and "rig-1.gpu1"


class Measurement(BaseModel):
    """A peer's own timing of a model's layers (seconds per decode token), from `prismn stage serve`."""

    model_config = ConfigDict(extra="ignore")
    model: str
    dtype: str = "fp32"
    device: str = "cpu"
    s_per_layer: float = Field(gt=0)
    s_head: float = Field(default=0.0, ge=0)
    s_embed: float = Field(default=0.0, ge=0)
    # time of a decode step that does not grow with the stage's layers (launches, framework, frames):
    # stage time = s_step_fixed + n * s_per_layer, so a small stage's observed step time does not
    # inflate s_per_layer
    s_step_fixed: float = Field(default=0.0, ge=0)
    source: str | None = Field(default=None, max_length=200)  # e.g. "observed: median of 40 decode steps served"
    # board power (W, GPU alone: host overhead and PUE are added by the cost model), e.g. from NVML during
    # the self-benchmark: while decoding, and while holding the stage with nothing to run
    active_w: float | None = Field(default=None, gt=0, le=5000, allow_inf_nan=False)
    idle_w: float | None = Field(default=None, gt=0, le=5000, allow_inf_nan=False)
    power_source: str | None = Field(default=None, max_length=200)


def _check_gpu_name(v: str | None) -> str | None:
    if v is not None:
        try:
            lookup_gpu(v)
        except SwarmError as e:
            raise ValueError(str(e)) from None
    return v


class GpuIn(BaseModel):
    """One GPU of a peer with several: its model and its own free VRAM."""

    model_config = ConfigDict(extra="forbid")
    gpu: str | None = None
    free_vram_gb: float = Field(ge=0)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str | None) -> str | None:
        return _check_gpu_name(v)


class PeerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    free_vram_gb: float | None = Field(default=None, ge=0)
    gpu: str | None = None
    gpus: list[GpuIn] | None = Field(default=None, min_length=1, max_length=64)
    carbon_intensity: float | None = Field(default=None, ge=0, le=3000)
    zone: str | None = None
    pue: float | None = Field(default=None, ge=1.0, le=3.0)
    bandwidth_mbps: float | None = Field(default=None, gt=0)
    city: str | None = None
    measurements: list[Measurement] = []

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str | None) -> str | None:
        return _check_gpu_name(v)

    @model_validator(mode="after")
    def _one_way_to_give_gpus(self) -> PeerIn:
        if self.gpus is None and self.free_vram_gb is None:
            raise ValueError("add 'free_vram_gb' (or 'gpus': a list of {gpu, free_vram_gb} for several GPUs)")
        if self.gpus is not None and (self.free_vram_gb is not None or self.gpu is not None):
            raise ValueError("give 'gpu' and 'free_vram_gb' inside each 'gpus' entry, not beside 'gpus'")
        return self


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class SwarmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    coordinator: Location
    peers: list[PeerIn] = Field(min_length=1)
    rtt_ms: dict[str, dict[str, float]] = {}


@dataclass
class Peer:
    """A validated peer with everything the cost model needs resolved."""

    id: str
    lat: float
    lon: float
    free_vram_gb: float
    gpu: GPU
    gpu_assumed: bool
    intensity: Intensity
    pue: float
    bandwidth_mbps: float
    zone: str | None
    measurements: list[Measurement] = field(default_factory=list)
    host: str | None = None  # the swarm file's peer id when this is one GPU of a peer with several

    def measurement_for(self, model: str, dtype: str) -> Measurement | None:
        for m in self.measurements:
            if m.model.lower() == model.lower() and m.dtype == dtype:
                return m
        return None


class Swarm:
    def __init__(self, coordinator: Location, peers: list[Peer], rtt_overrides: dict[tuple[str, str], float]):
        self.coordinator = coordinator
        self.peers = peers
        self.index = {p.id: i for i, p in enumerate(peers)}
        self.rtt_overrides = rtt_overrides
        self._rtt: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.peers)

    def peer(self, peer_id: str) -> Peer:
        return self.peers[self.index[peer_id]]

    @property
    def rtt_matrix_ms(self) -> np.ndarray:
        """(n+1) x (n+1) RTTs; index n is the client. Built lazily: O(n^2) memory."""
        if self._rtt is None:
            lat = np.array([p.lat for p in self.peers] + [self.coordinator.lat])
            lon = np.array([p.lon for p in self.peers] + [self.coordinator.lon])
            m = geo.estimate_rtt_ms(geo.haversine_matrix_km(lat, lon, lat, lon))
            np.fill_diagonal(m, 0.0)
            n = len(self.peers)
            for (a, b), v in self.rtt_overrides.items():
                i = n if a == CLIENT else self.index[a]
                j = n if b == CLIENT else self.index[b]
                m[i, j] = m[j, i] = v
            self._rtt = m
        return self._rtt

    def rtt_ms(self, a: str, b: str) -> float:
        if a == b:
            return 0.0
        v = self.rtt_overrides.get((a, b))
        if v is not None:
            return v
        pa = self.coordinator if a == CLIENT else self.peer(a)
        pb = self.coordinator if b == CLIENT else self.peer(b)
        return float(geo.estimate_rtt_ms(geo.haversine_km(pa.lat, pa.lon, pb.lat, pb.lon)))

    def rtt_source(self, a: str, b: str) -> str:
        return "measured" if (a, b) in self.rtt_overrides else "estimated from distance"


def _one_line(e: ValidationError, data: Any) -> str:
    err = e.errors()[0]
    loc = err["loc"]
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
            if loc[:i] == ("peers",) and isinstance(data, dict):
                try:
                    pid = data["peers"][part].get("id")
                    if pid:
                        parts[-1] += f" (id {pid!r})"
                except (AttributeError, IndexError, KeyError, TypeError):
                    pass
        else:
            parts.append(str(part))
    where = ".".join(parts) or "swarm"
    value = err.get("input")
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "missing":
        fix = f"add {loc[-1]!r}"
    elif kind == "extra_forbidden":
        fix = "remove it or check its spelling (see `prismn swarm --help` for the fields)"
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bounds = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
        limit = next(iter(ctx.values())) if ctx else "?"
        fix = f"it must be {bounds[kind]} {limit}"
    else:
        fix = err["msg"].removeprefix("Value error, ")
    shown = "" if kind in ("missing", "value_error") else f" = {value!r}"
    if kind == "value_error":
        return f"{where}: {fix}"
    return f"{where}{shown}: {fix}"


def parse_swarm(data: Any, provider: CarbonProvider | None = None) -> Swarm:
    """Validate raw swarm data and resolve GPUs, grid intensities and RTTs. Raises SwarmError."""
    try:
        raw = SwarmIn.model_validate(data)
    except ValidationError as e:
        raise SwarmError(_one_line(e, data)) from None

    seen: set[str] = set()
    for i, p in enumerate(raw.peers):
        if p.id in seen:
            raise SwarmError(f"peers[{i}].id {p.id!r} is used twice: give every peer a unique id")
        if p.id == CLIENT:
            raise SwarmError(f"peers[{i}].id {CLIENT!r} is reserved for the coordinator: rename the peer")
        seen.add(p.id)

    provider = provider or default_provider()
    embedded = EmbeddedProvider()
    peers: list[Peer] = []
    members: dict[str, list[str]] = {}  # swarm-file id -> placement peer ids (one per GPU)
    for i, p in enumerate(raw.peers):
        if p.gpus is None:
            peers.append(_resolve_peer(i, p, provider, embedded))
            members[p.id] = [p.id]
            continue
        ids = []
        for k, g in enumerate(p.gpus):
            one = p.model_copy(update={"id": f"{p.id}{GPU_SEP}{k}", "gpu": g.gpu, "free_vram_gb": g.free_vram_gb,
                                       "gpus": None})
            peer = _resolve_peer(i, one, provider, embedded)
            peer.host = p.id
            peers.append(peer)
            ids.append(one.id)
        members[p.id] = ids
    all_ids = [p.id for p in peers]
    if len(set(all_ids)) != len(all_ids):
        dup = next(x for x in all_ids if all_ids.count(x) > 1)
        raise SwarmError(f"peer id {dup!r} is used twice once GPUs are split ('<id>{GPU_SEP}<k>'): rename that peer")

    split_ids = set(all_ids)
    overrides: dict[tuple[str, str], float] = {}
    for ids in members.values():  # the GPUs of one host reach each other over loopback
        for x in ids:
            for y in ids:
                if x != y:
                    overrides[(x, y)] = INTRA_HOST_RTT_MS
    for a, row in raw.rtt_ms.items():
        for b, v in row.items():
            for end in (a, b):
                if end not in seen and end not in split_ids and end != CLIENT:
                    raise SwarmError(f"rtt_ms names unknown peer {end!r}: use ids from peers (or {CLIENT!r})")
            if not (v >= 0 and v < 10_000):
                raise SwarmError(f"rtt_ms[{a!r}][{b!r}] = {v}: an RTT must be between 0 and 10000 ms")
            for x in members.get(a, [a]):
                for y in members.get(b, [b]):
                    overrides[(x, y)] = overrides[(y, x)] = float(v)
    return Swarm(raw.coordinator, peers, overrides)


def _resolve_peer(i: int, p: PeerIn, provider: CarbonProvider, embedded: EmbeddedProvider) -> Peer:
    zone = p.zone
    if p.carbon_intensity is not None:
        intensity = user_supplied(p.carbon_intensity, zone)
    else:
        if zone is not None and not embedded.known_zone(zone):
            raise SwarmError(
                f"peers[{i}] (id {p.id!r}).zone {zone!r} is not an Electricity Maps zone Prismn knows: "
                f"fix it (e.g. 'DE', 'US-CAL-CISO'), give carbon_intensity, or leave zone out"
            )
        if zone is None:
            place = geo.locate(p.lat, p.lon)
            zone = place.zone or place.country
        found = provider.zone_intensity(zone) if zone else None
        if found is None and zone:
            found = embedded.country_intensity(zone.split("-")[0])
        intensity = found or embedded.world_intensity()
    gpu = lookup_gpu(p.gpu)
    return Peer(
        id=p.id, lat=p.lat, lon=p.lon, free_vram_gb=p.free_vram_gb, gpu=gpu, gpu_assumed=p.gpu is None,
        intensity=intensity, pue=p.pue if p.pue is not None else DEFAULT_PUE,
        bandwidth_mbps=p.bandwidth_mbps or DEFAULT_BANDWIDTH_MBPS, zone=zone, measurements=list(p.measurements),
    )


def load_swarm(path: str | Path, provider: CarbonProvider | None = None) -> Swarm:
    """Read a swarm file (.json, .yaml or .yml). Raises SwarmError with one line naming the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SwarmError(f"swarm file {path} does not exist: check the path") from None
    except OSError as e:
        raise SwarmError(f"swarm file {path} cannot be read ({e.strerror}): check its permissions") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as e:
        raise SwarmError(f"swarm file {path} is not valid JSON ({e.msg} at line {e.lineno}): fix the syntax") from None
    except yaml.YAMLError as e:
        raise SwarmError(f"swarm file {path} is not valid YAML ({str(e).splitlines()[0]}): fix the syntax") from None
    if not isinstance(data, dict):
        raise SwarmError(f"swarm file {path} must hold an object with 'coordinator' and 'peers'")
    return parse_swarm(data, provider)
