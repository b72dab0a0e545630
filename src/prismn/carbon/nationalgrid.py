"""Great Britain's carbon intensity API (National Grid ESO, api.carbonintensity.org.uk): no key, half-hourly.

Zones: "GB" = national (forecast and, once metered, actual), "GB-NG-<1..17>" = a DNO region (forecast only;
1 North Scotland ... 13 London, 14 South East England, 15 England, 16 Scotland, 17 Wales).
Shapes (api.carbonintensity.org.uk docs):
  /intensity, /intensity/{from}/{to}, /intensity/{from}/fw48h:
      {"data": [{"from": "2018-01-20T12:00Z", "to": "...", "intensity": {"forecast": 266, "actual": 263,
                 "index": "moderate"}}]}
  /regional/regionid/{id}:                 {"data": [{"regionid": 13, "shortname": ..., "data": [entry...]}]}
  /regional/intensity/{from}/{to|fw48h}/regionid/{id}: {"data": {"regionid": 13, ..., "data": [entry...]}}
Values are average intensity over GB generation plus imports, from direct (combustion) emission factors.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from typing import Any

import httpx

from prismn.carbon.base import BaseProvider
from prismn.carbon.http import HttpJson, TTLCache, shape_error
from prismn.carbon.point import CarbonUnavailable, Intensity, as_utc, overlaps, parse_time, utcnow

LICENCE = "CC-BY-4.0 (National Grid ESO Carbon Intensity API)"
_REGION = re.compile(r"^GB-NG-(\d{1,2})$")


def _fmt(t: datetime) -> str:
    return as_utc(t).strftime("%Y-%m-%dT%H:%MZ")


class NationalGridProvider(BaseProvider):
    name = "nationalgrid"
    signal = "average"
    BASE_URL = "https://api.carbonintensity.org.uk"

    def __init__(self, client: httpx.Client | None = None, ttl_s: float = 1800.0, base_url: str | None = None,
                 timeout_s: float = 5.0, http: HttpJson | None = None):
        self.base_url = (base_url or os.environ.get("CARBONINTENSITY_API_URL") or self.BASE_URL).rstrip("/")
        self.http = http or HttpJson("National Grid carbon intensity", "nothing (no key needed)", client, timeout_s)
        self.cache = TTLCache(ttl_s)

    @staticmethod
    def region_of(zone: str) -> int | None:
        """None for national GB; the region id for GB-NG-<id>; CarbonUnavailable for anything else."""
        if zone == "GB":
            return None
        m = _REGION.match(zone)
        if m and 1 <= int(m.group(1)) <= 17:
            return int(m.group(1))
        raise CarbonUnavailable(f"National Grid covers only GB and GB-NG-1..17, not {zone!r}")

    def _get(self, path: str) -> Any:
        hit = self.cache.get(path)
        if hit is not None:
            return hit
        body = self.http.get(f"{self.base_url}{path}", None, {"Accept": "application/json"})
        self.cache.put(path, body)
        return body

    def _entries(self, body: Any, region: int | None) -> list[dict]:
        data = body.get("data") if isinstance(body, dict) else None
        if region is not None:  # a list of one region (latest) or the region object (ranges)
            if isinstance(data, list) and data:
                data = data[0]
            data = data.get("data") if isinstance(data, dict) else None
        if not isinstance(data, list):
            raise shape_error("National Grid", "no data list")
        return data

    def _point(self, zone: str, e: Any, what: str, fetched: datetime) -> Intensity:
        try:
            t0, t1 = parse_time(e["from"]), parse_time(e["to"])
            i = e["intensity"]
            actual = i.get("actual")
            g = float(actual if actual is not None else i["forecast"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise shape_error("National Grid", f"{what} entry without from/to/intensity") from None
        return Intensity(
            g, f"National Grid ESO {what}", t0.year, "average", "direct", zone, LICENCE, time=t0,
            duration_s=int((t1 - t0).total_seconds()), estimated=actual is None, fetched_at=fetched,
            provider=self.name,
        )

    def latest(self, zone: str) -> Intensity:
        region = self.region_of(zone)
        path = "/intensity" if region is None else f"/regional/regionid/{region}"
        entries = self._entries(self._get(path), region)
        if not entries:
            raise CarbonUnavailable(f"National Grid has no current value for {zone}")
        return self._point(zone, entries[0], "live", utcnow())

    def _range(self, zone: str, start: datetime, end: datetime, what: str) -> list[Intensity]:
        region = self.region_of(zone)
        start, end = as_utc(start), as_utc(end)
        span = "fw48h" if what == "forecast" else _fmt(end)
        path = f"/intensity/{_fmt(start)}/{span}" if region is None else \
            f"/regional/intensity/{_fmt(start)}/{span}/regionid/{region}"
        now = utcnow()
        pts = [self._point(zone, e, what, now) for e in self._entries(self._get(path), region)]
        return [p for p in pts if overlaps(p, start, end)]

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        if as_utc(end) - as_utc(start) > timedelta(hours=48):
            raise CarbonUnavailable("National Grid forecasts 48 h ahead at most: ask for a shorter window")
        return self._range(zone, start, end, "forecast")

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        return self._range(zone, start, end, "history")
