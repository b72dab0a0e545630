"""The provider interface every carbon source implements."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from prismn.carbon.point import CarbonUnavailable, Intensity


class CarbonProvider(Protocol):
    name: str
    signal: str  # "average" or "marginal": a chain never mixes them

    def zone_intensity(self, zone: str) -> Intensity | None: ...

    def latest(self, zone: str) -> Intensity: ...

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]: ...

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]: ...


class BaseProvider:
    """Defaults: `zone_intensity` is `latest` or None; a missing capability is a CarbonUnavailable."""

    name = "base"
    signal = "average"

    def zone_intensity(self, zone: str) -> Intensity | None:
        try:
            return self.latest(zone)
        except CarbonUnavailable:
            return None

    def latest(self, zone: str) -> Intensity:
        raise CarbonUnavailable(f"{self.name} has no latest value")

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        raise CarbonUnavailable(f"{self.name} has no forecast")

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        raise CarbonUnavailable(f"{self.name} has no history")
