"""Grid carbon intensity with provenance, behind one provider interface.

Every value Prismn uses carries where it came from (source, year, signal, basis, licence) so that
every gram it prints can name its origin. Providers:
- EmbeddedProvider (default, offline): Electricity Maps yearly zone averages, then the Ember/OWID
  per-country average, then the world average.
- ElectricityMapsProvider (live, needs ELECTRICITYMAPS_API_TOKEN): latest zone intensity.
- ChainProvider: the first provider that answers wins (live first, embedded as fallback).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import httpx

from prismn.data import load
from prismn.errors import PrismnError


@dataclass(frozen=True)
class Intensity:
    g_per_kwh: float
    source: str
    year: int | None
    signal: str  # "average" or "marginal"
    basis: str  # "lifecycle", "direct" or "unknown"
    zone: str | None = None
    licence: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


class CarbonProvider(Protocol):
    name: str

    def zone_intensity(self, zone: str) -> Intensity | None: ...


class EmbeddedProvider:
    """Yearly averages shipped with Prismn; never touches the network."""

    name = "embedded"

    def zone_intensity(self, zone: str) -> Intensity | None:
        data = load("grid_zones.json")
        row = data["zones"].get(zone)
        if row is None:
            return None
        meta = data["meta"]
        return Intensity(
            float(row["g_per_kwh"]), meta["source"], row.get("year"), meta["signal"], meta["basis"], zone,
            meta["licence"],
        )

    def country_intensity(self, iso2: str) -> Intensity | None:
        data = load("grid_countries.json")
        row = data["countries"].get(iso2.upper())
        if row is None:
            return None
        meta = data["meta"]
        return Intensity(
            float(row["g_per_kwh"]), meta["source"], row.get("year"), meta["signal"], meta["basis"],
            iso2.upper(), meta["licence"],
        )

    def world_intensity(self) -> Intensity:
        data = load("grid_countries.json")
        w, meta = data["world"], data["meta"]
        return Intensity(
            float(w["g_per_kwh"]), w.get("source", meta["source"]), w.get("year"), meta["signal"],
            meta["basis"], "WORLD", meta["licence"],
        )

    def known_zone(self, zone: str) -> bool:
        return zone in load("grid_zones.json")["zones"]


class ElectricityMapsProvider:
    """Live zone intensity from the Electricity Maps v3 API (cached for `ttl_s`)."""

    name = "electricitymaps"
    BASE_URL = "https://api.electricitymaps.com/v3"

    def __init__(self, token: str | None = None, client: httpx.Client | None = None, ttl_s: float = 3600.0):
        self.token = token or os.environ.get("ELECTRICITYMAPS_API_TOKEN")
        if not self.token:
            raise PrismnError("Electricity Maps needs a key: set ELECTRICITYMAPS_API_TOKEN in the environment")
        self.client = client or httpx.Client(timeout=5.0)
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Intensity | None]] = {}

    def zone_intensity(self, zone: str) -> Intensity | None:
        hit = self._cache.get(zone)
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        try:
            r = self.client.get(
                f"{self.BASE_URL}/carbon-intensity/latest",
                params={"zone": zone, "disableCallerLookup": "true"},
                headers={"auth-token": self.token},
            )
        except httpx.HTTPError:
            return None  # the chain falls back to embedded data
        value = None
        if r.status_code == 200:
            body = r.json()
            year = int(str(body.get("datetime", ""))[:4] or 0) or None
            value = Intensity(
                float(body["carbonIntensity"]), "Electricity Maps live", year, "average",
                body.get("emissionFactorType", "lifecycle"), zone, "Electricity Maps API terms",
            )
        self._cache[zone] = (time.monotonic(), value)
        return value


class ChainProvider:
    """Ask providers in order; the first value wins."""

    name = "chain"

    def __init__(self, providers: list[CarbonProvider]):
        self.providers = providers

    def zone_intensity(self, zone: str) -> Intensity | None:
        for p in self.providers:
            value = p.zone_intensity(zone)
            if value is not None:
                return value
        return None


def user_supplied(g_per_kwh: float, zone: str | None) -> Intensity:
    return Intensity(g_per_kwh, "swarm file (user-supplied)", None, "unknown", "unknown", zone, None)


def default_provider() -> CarbonProvider:
    """Embedded data, with Electricity Maps in front when a key is in the environment."""
    embedded = EmbeddedProvider()
    if os.environ.get("ELECTRICITYMAPS_API_TOKEN"):
        return ChainProvider([ElectricityMapsProvider(), embedded])
    return embedded
