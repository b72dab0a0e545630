"""Electricity Maps v3: carbon-intensity/latest, /history (last 24 h), /past-range and /forecast.

Shapes (API reference; OpenAPI models of the official SDK):
  latest / past point: {zone, carbonIntensity, datetime, updatedAt, emissionFactorType, isEstimated,
                        estimationMethod, temporalGranularity}
  history:    {zone, history: [point...], temporalGranularity}
  past-range: {zone, data: [point...], temporalGranularity}
  forecast:   {zone, forecast: [{carbonIntensity, datetime}], updatedAt}
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta
from typing import Any

import httpx

from prismn.carbon.base import BaseProvider
from prismn.carbon.http import HttpJson, TTLCache, shape_error
from prismn.carbon.point import CarbonUnavailable, Intensity, as_utc, overlaps, parse_time, utcnow
from prismn.errors import PrismnError

GRANULARITY_S = {"5_minutes": 300, "15_minutes": 900, "hourly": 3600, "daily": 86400}
LICENCE = "Electricity Maps API terms"


class ElectricityMapsProvider(BaseProvider):
    """Live zone intensity (average signal). Token from ELECTRICITYMAPS_API_TOKEN; base URL overridable
    (ELECTRICITYMAPS_API_URL) so tests and proxies can stand in for the real service."""

    name = "electricitymaps"
    signal = "average"
    BASE_URL = "https://api.electricitymaps.com/v3"

    def __init__(self, token: str | None = None, client: httpx.Client | None = None, ttl_s: float = 3600.0,
                 base_url: str | None = None, timeout_s: float = 5.0, basis: str = "lifecycle",
                 http: HttpJson | None = None):
        self.token = token or os.environ.get("ELECTRICITYMAPS_API_TOKEN")
        if not self.token:
            raise PrismnError("Electricity Maps needs a key: set ELECTRICITYMAPS_API_TOKEN in the environment")
        if basis not in ("lifecycle", "direct"):
            raise PrismnError(f"emission factor basis {basis!r} is unknown: use lifecycle or direct")
        self.base_url = (base_url or os.environ.get("ELECTRICITYMAPS_API_URL") or self.BASE_URL).rstrip("/")
        self.basis = basis
        self.http = http or HttpJson("Electricity Maps", "ELECTRICITYMAPS_API_TOKEN", client, timeout_s)
        self.cache = TTLCache(ttl_s)
        self.client = self.http.client  # kept: older callers passed and read a client

    def _get(self, path: str, params: dict) -> Any:
        key = (path, tuple(sorted(params.items())))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        params = {**params, "disableCallerLookup": "true", "emissionFactorType": self.basis}
        body = self.http.get(f"{self.base_url}/carbon-intensity/{path}", params, {"auth-token": self.token})
        if not isinstance(body, dict):
            raise shape_error("Electricity Maps", f"{path} is not an object")
        self.cache.put(key, body)
        return body

    def _point(self, zone: str, row: Any, what: str, fetched: datetime, granularity: str | None,
               estimated: bool | None = None) -> Intensity:
        try:
            g = float(row["carbonIntensity"])
            t = parse_time(str(row["datetime"]))
        except (KeyError, TypeError, ValueError):
            raise shape_error("Electricity Maps", f"{what} point without carbonIntensity/datetime") from None
        if not math.isfinite(g) or g < 0:
            raise shape_error("Electricity Maps", f"{what} carbonIntensity {g}")
        gran = row.get("temporalGranularity") or granularity or "hourly"
        return Intensity(
            g, f"Electricity Maps {what}", t.year, "average", row.get("emissionFactorType", self.basis),
            row.get("zone", zone), LICENCE, time=t, duration_s=GRANULARITY_S.get(gran, 3600),
            estimated=bool(row.get("isEstimated", False)) if estimated is None else estimated,
            fetched_at=fetched, provider=self.name,
        )

    def latest(self, zone: str) -> Intensity:
        body = self._get("latest", {"zone": zone})
        return self._point(zone, body, "live", utcnow(), body.get("temporalGranularity"))

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        start, end = as_utc(start), as_utc(end)
        now = utcnow()
        if start >= now - timedelta(hours=24):
            body = self._get("history", {"zone": zone})
            rows, what = body.get("history"), "history"
        else:  # older than a day: past-range (a paid endpoint; 10 days per call at hourly resolution)
            body = self._get("past-range", {"zone": zone, "start": start.isoformat(), "end": end.isoformat()})
            rows, what = body.get("data"), "past-range"
        if not isinstance(rows, list):
            raise shape_error("Electricity Maps", f"{what} without a list")
        pts = [self._point(zone, r, what, now, body.get("temporalGranularity")) for r in rows]
        return [p for p in pts if overlaps(p, start, end)]

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        start, end = as_utc(start), as_utc(end)
        now = utcnow()
        horizon = max(1, min(72, math.ceil((end - now).total_seconds() / 3600)))
        body = self._get("forecast", {"zone": zone, "horizonHours": horizon})
        rows = body.get("forecast")
        if not isinstance(rows, list):
            raise shape_error("Electricity Maps", "forecast without a list")
        pts = [self._point(zone, r, "forecast", now, "hourly", estimated=True) for r in rows]
        out = [p for p in pts if overlaps(p, start, end)]
        if not out:
            raise CarbonUnavailable(f"Electricity Maps forecast for {zone} does not cover {start:%H:%M}-{end:%H:%M}")
        return out
