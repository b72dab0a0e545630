"""One grid carbon intensity value with its provenance: the unit every provider returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from prismn.errors import PrismnError

LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 1 lb = 453.59237 g; 1 MWh = 1000 kWh
SIGNALS = ("average", "marginal")


class CarbonUnavailable(PrismnError):
    """A provider could not answer (outage, unknown zone, no key, backing off); a chain falls back."""


class CarbonConfigError(PrismnError):
    """A provider or chain is set up in a way that cannot give honest numbers (e.g. mixed signals)."""


@dataclass(frozen=True)
class Intensity:
    """g/kWh for a zone over [time, time + duration_s), with where it came from.

    The first seven fields are the historical ones (positional order kept for callers). `fallback_from`
    lists the providers a chain tried first and why each failed, so a receipt can say so.
    """

    g_per_kwh: float
    source: str
    year: int | None
    signal: str  # "average", "marginal" or "unknown" (user-supplied)
    basis: str  # "lifecycle", "direct" or "unknown"
    zone: str | None = None
    licence: str | None = None
    time: datetime | None = None  # UTC start of the interval the value covers
    duration_s: int | None = None
    estimated: bool = False
    fetched_at: datetime | None = None
    provider: str | None = None  # registry name of the provider that answered
    fallback_from: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("time", "fetched_at"):
            if d[k] is not None:
                d[k] = d[k].isoformat()
        d["fallback_from"] = list(self.fallback_from)
        return d


IntensityPoint = Intensity  # the name the research notes use


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """Naive datetimes are taken as UTC (what every API here speaks)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """ISO 8601 as the APIs write it ('2024-05-01T12:00Z', '...000Z', '+00:00', '2023-01-01 00:00:00')."""
    s = text.strip().replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    return as_utc(datetime.fromisoformat(s))


def overlaps(p: Intensity, start: datetime, end: datetime) -> bool:
    """Does the point's interval meet [start, end)? (A point of unknown span counts as an instant.)"""
    if p.time is None:
        return False
    return p.time < end and p.time + timedelta(seconds=p.duration_s or 0) > start or start <= p.time < end


def user_supplied(g_per_kwh: float, zone: str | None) -> Intensity:
    return Intensity(g_per_kwh, "swarm file (user-supplied)", None, "unknown", "unknown", zone, None)
