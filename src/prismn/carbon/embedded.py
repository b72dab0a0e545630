"""Yearly averages shipped with Prismn (Electricity Maps zones, Ember countries, world); never online."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from prismn.carbon.base import BaseProvider
from prismn.carbon.point import CarbonUnavailable, Intensity, as_utc
from prismn.data import load


def hours(start: datetime, end: datetime) -> list[datetime]:
    """Whole UTC hours h with start <= h < end (start floored to its hour)."""
    t = as_utc(start).replace(minute=0, second=0, microsecond=0)
    end = as_utc(end)
    out = []
    while t < end:
        out.append(t)
        t += timedelta(hours=1)
    return out


class EmbeddedProvider(BaseProvider):
    """A zone's latest yearly average. Its 'forecast' and 'history' repeat that average hour by hour,
    flagged estimated: it is what a static plan believes, not a measurement of those hours."""

    name = "embedded"
    signal = "average"

    def zone_intensity(self, zone: str) -> Intensity | None:
        data = load("grid_zones.json")
        row = data["zones"].get(zone)
        if row is None:
            return None
        meta = data["meta"]
        year = row.get("year")
        start = datetime(year, 1, 1, tzinfo=UTC) if year else None
        span = int((datetime(year + 1, 1, 1, tzinfo=UTC) - start).total_seconds()) if year else None
        return Intensity(
            float(row["g_per_kwh"]), meta["source"], year, meta["signal"], meta["basis"], zone, meta["licence"],
            time=start, duration_s=span, estimated=False, fetched_at=None, provider=self.name,
        )

    def latest(self, zone: str) -> Intensity:
        v = self.zone_intensity(zone)
        if v is None:
            raise CarbonUnavailable(f"embedded data has no zone {zone!r}: use an Electricity Maps zone key")
        return v

    def _hourly(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        base = self.latest(zone)
        return [replace(base, time=h, duration_s=3600, estimated=True) for h in hours(start, end)]

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        return self._hourly(zone, start, end)

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        return self._hourly(zone, start, end)

    def country_intensity(self, iso2: str) -> Intensity | None:
        data = load("grid_countries.json")
        row = data["countries"].get(iso2.upper())
        if row is None:
            return None
        meta = data["meta"]
        return Intensity(
            float(row["g_per_kwh"]), meta["source"], row.get("year"), meta["signal"], meta["basis"],
            iso2.upper(), meta["licence"], provider=self.name,
        )

    def world_intensity(self) -> Intensity:
        data = load("grid_countries.json")
        w, meta = data["world"], data["meta"]
        return Intensity(
            float(w["g_per_kwh"]), w.get("source", meta["source"]), w.get("year"), meta["signal"],
            meta["basis"], "WORLD", meta["licence"], provider=self.name,
        )

    def known_zone(self, zone: str) -> bool:
        return zone in load("grid_zones.json")["zones"]

    def yearly(self, zone: str, year: int) -> float | None:
        """The zone's average for one year (by_year), for plans that must not peek at other years."""
        row = load("grid_zones.json")["zones"].get(zone)
        if row is None:
            return None
        v = row.get("by_year", {}).get(str(year))
        return float(v) if v is not None else None

