"""Replay recorded hourly intensity from files in Electricity Maps' export format (CSV; Parquet when
pyarrow is installed): `Datetime (UTC), Zone Id, Carbon Intensity gCO₂eq/kWh (direct|LCA),
Data Source, Data Estimated, ...`, one row per hour.

`latest` answers the hour containing the provider's clock (`at`; default the last recorded hour);
`history` and `forecast` answer the recorded hours of the window. A replayed "forecast" is the recorded
future: a perfect forecast, labelled as such in its source.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from prismn.carbon.base import BaseProvider
from prismn.carbon.point import CarbonUnavailable, Intensity, as_utc, parse_time, utcnow
from prismn.errors import PrismnError

TIME_COL = "Datetime (UTC)"
ZONE_COL = "Zone Id"
VALUE_COL = {"direct": "Carbon Intensity gCO₂eq/kWh (direct)", "lifecycle": "Carbon Intensity gCO₂eq/kWh (LCA)"}
ESTIMATED_COL = "Data Estimated"
LICENCE = "Electricity Maps data (ODbL-1.0 at best; see the file's own terms)"


@dataclass
class Series:
    """One zone's hours, sorted: times as epoch seconds (int64), values g/kWh, estimated flags."""

    times: np.ndarray
    values: np.ndarray
    estimated: np.ndarray
    files: list[str]

    def index_at(self, t: datetime) -> int | None:
        s = int(as_utc(t).timestamp())
        i = int(np.searchsorted(self.times, s, side="right")) - 1
        if i < 0 or s >= self.times[i] + 3600:
            return None
        return i


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise PrismnError(f"{path} is Parquet: pip install pyarrow, or give the CSV export") from None
        return pq.read_table(path).to_pylist()
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _files(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in (".csv", ".parquet"))
        elif p.is_file():
            out.append(p)
        else:
            raise PrismnError(f"replay file {p} does not exist: give an Electricity Maps hourly export (CSV)")
    if not out:
        raise PrismnError(f"no .csv or .parquet files in {', '.join(map(str, paths))}: give hourly exports")
    return out


def load_series(paths: list[str | Path], basis: str = "lifecycle") -> dict[str, Series]:
    """zone -> Series from every file (several years of one zone are merged; duplicates keep the first)."""
    if basis not in VALUE_COL:
        raise PrismnError(f"basis {basis!r} is unknown: use lifecycle or direct")
    acc: dict[str, dict[int, tuple[float, bool]]] = {}
    names: dict[str, list[str]] = {}
    for path in _files(paths):
        rows = _rows(path)
        if not rows or not {TIME_COL, ZONE_COL, VALUE_COL[basis]} <= set(rows[0]):
            raise PrismnError(
                f"{path} is not an Electricity Maps hourly export: it needs columns {TIME_COL!r}, "
                f"{ZONE_COL!r} and {VALUE_COL[basis]!r}"
            )
        for n, r in enumerate(rows, start=2):
            raw = r[VALUE_COL[basis]]
            if raw in ("", None):
                continue  # a missing hour stays missing: never invented
            try:
                t = int(parse_time(str(r[TIME_COL])).timestamp())
                v = float(raw)
            except ValueError:
                raise PrismnError(f"{path} line {n}: cannot read time/value {r[TIME_COL]!r}/{raw!r}") from None
            est = str(r.get(ESTIMATED_COL, "")).strip().lower() == "true"
            acc.setdefault(r[ZONE_COL], {}).setdefault(t, (v, est))
        for z in {r[ZONE_COL] for r in rows}:
            names.setdefault(z, []).append(path.name)
    out = {}
    for zone, d in acc.items():
        ts = np.array(sorted(d), dtype=np.int64)
        out[zone] = Series(ts, np.array([d[t][0] for t in ts]), np.array([d[t][1] for t in ts]), names[zone])
    return out


class ReplayProvider(BaseProvider):
    name = "replay"
    signal = "average"

    def __init__(self, paths: list[str | Path], at: datetime | None = None, basis: str = "lifecycle",
                 series: dict[str, Series] | None = None):
        self.basis = basis
        self.series = series if series is not None else load_series(paths, basis)
        self.at = as_utc(at) if at is not None else None

    def zones(self) -> list[str]:
        return sorted(self.series)

    def _series(self, zone: str) -> Series:
        s = self.series.get(zone)
        if s is None:
            raise CarbonUnavailable(f"replay files hold no zone {zone!r} (they hold {', '.join(self.zones())})")
        return s

    def _point(self, zone: str, s: Series, i: int, what: str) -> Intensity:
        t = datetime.fromtimestamp(int(s.times[i]), UTC)
        return Intensity(
            float(s.values[i]), f"Electricity Maps hourly export, {what} ({', '.join(s.files)})", t.year,
            "average", self.basis, zone, LICENCE, time=t, duration_s=3600, estimated=bool(s.estimated[i]),
            fetched_at=utcnow(), provider=self.name,
        )

    def latest(self, zone: str) -> Intensity:
        s = self._series(zone)
        if self.at is None:
            return self._point(zone, s, len(s.times) - 1, "replayed (last recorded hour)")
        i = s.index_at(self.at)
        if i is None:
            raise CarbonUnavailable(f"replay has no recorded hour for {zone} at {self.at:%Y-%m-%d %H:%M} UTC")
        return self._point(zone, s, i, "replayed")

    def _window(self, zone: str, start: datetime, end: datetime, what: str) -> list[Intensity]:
        s = self._series(zone)
        lo = int(as_utc(start).timestamp()) - 3599  # the hour containing start counts
        hi = int(as_utc(end).timestamp())
        i0, i1 = np.searchsorted(s.times, lo), np.searchsorted(s.times, hi)
        return [self._point(zone, s, i, what) for i in range(int(i0), int(i1))]

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        return self._window(zone, start, end, "recorded")

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        return self._window(zone, start, end, "recorded future used as a perfect forecast")

    def span(self, zone: str) -> tuple[datetime, datetime]:
        s = self._series(zone)
        return (datetime.fromtimestamp(int(s.times[0]), UTC),
                datetime.fromtimestamp(int(s.times[-1]), UTC) + timedelta(hours=1))
