"""Intensities an operator (or a script, or a test) writes to a JSON file; read again whenever it changes.

    {"signal": "average", "basis": "lifecycle", "source": "site meter",          (all three optional)
     "zones": {"DE": 380,                                          a value for now (and every hour after)
               "FR": [{"time": "2026-05-01T12:00Z", "g_per_kwh": 52},          hourly points: the one
                      {"time": "2026-05-01T13:00Z", "g_per_kwh": 48, "duration_s": 3600}]}}   holding now
                                                                               answers latest, later
A zone the file does not name is not answered (a chain falls back: `file,embedded`).  ones the forecast
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prismn.carbon.base import BaseProvider
from prismn.carbon.point import (
    SIGNALS,
    CarbonConfigError,
    CarbonUnavailable,
    Intensity,
    as_utc,
    parse_time,
    utcnow,
)


@dataclass(frozen=True)
class _Point:
    time: datetime | None  # None: a constant "from now on" value
    duration_s: int
    g: float


class FileProvider(BaseProvider):
    name = "file"

    def __init__(self, path: str | Path, clock: Any = None):
        self.path = Path(path)
        self.clock = clock or utcnow
        self._stamp: tuple[int, int, int] | None = None
        self._zones: dict[str, list[_Point]] = {}
        self.signal, self.basis, self.source = "average", "lifecycle", f"operator file {self.path}"
        self._read()  # a broken file is refused at start, not at the first request

    def _read(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            raise CarbonConfigError(f"carbon file {self.path} does not exist: write a JSON object "
                                    '{"zones": {"DE": 380}} there or drop the file provider') from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a replaced file is re-read
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            zones = data["zones"] if isinstance(data, dict) and "zones" in data else data
            if not isinstance(zones, dict):
                raise ValueError("'zones' must map zone names to g/kWh")
            parsed = {str(z): self._points(v) for z, v in zones.items()}
            signal = str(data.get("signal", "average")) if isinstance(data, dict) else "average"
            if signal not in SIGNALS:
                raise ValueError(f"signal must be one of {', '.join(SIGNALS)}")
        except (ValueError, KeyError, TypeError) as e:
            if self._stamp is None:
                raise CarbonConfigError(f"carbon file {self.path} is not valid ({e}): fix it, e.g. "
                                        '{"zones": {"DE": 380}}') from None
            raise CarbonUnavailable(f"carbon file {self.path} is not valid ({e})") from None
        self._zones, self._stamp = parsed, stamp
        self.signal = signal
        self.basis = str(data.get("basis", "lifecycle")) if isinstance(data, dict) else "lifecycle"
        self.source = str(data.get("source", f"operator file {self.path}")) if isinstance(data, dict) \
            else f"operator file {self.path}"

    @staticmethod
    def _points(v: Any) -> list[_Point]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not 0 <= v < 5000:
                raise ValueError(f"{v} g/kWh is out of range (0..5000)")
            return [_Point(None, 3600, float(v))]
        if not isinstance(v, list):
            raise ValueError("a zone's value must be g/kWh or a list of {time, g_per_kwh}")
        out = []
        for p in v:
            g = float(p["g_per_kwh"])
            if not 0 <= g < 5000:
                raise ValueError(f"{g} g/kWh is out of range (0..5000)")
            out.append(_Point(parse_time(str(p["time"])), int(p.get("duration_s", 3600)), g))
        return sorted(out, key=lambda p: p.time)  # type: ignore[arg-type,return-value]

    def _intensity(self, zone: str, p: _Point, at: datetime, estimated: bool) -> Intensity:
        t = p.time or at.replace(minute=0, second=0, microsecond=0)
        return Intensity(p.g, self.source, t.year, self.signal, self.basis, zone, None, time=t,
                         duration_s=p.duration_s, estimated=estimated, fetched_at=utcnow(), provider=self.name)

    def _zone(self, zone: str) -> list[_Point]:
        self._read()
        pts = self._zones.get(zone)
        if not pts:
            raise CarbonUnavailable(f"carbon file {self.path} has no zone {zone!r}")
        return pts

    def latest(self, zone: str) -> Intensity:
        pts, now = self._zone(zone), as_utc(self.clock())
        if pts[0].time is None:
            return self._intensity(zone, pts[0], now, False)
        past = [p for p in pts if p.time <= now]  # type: ignore[operator]
        if not past or now >= past[-1].time + timedelta(seconds=past[-1].duration_s):  # type: ignore[operator]
            raise CarbonUnavailable(f"carbon file {self.path} has no value for {zone} at {now:%Y-%m-%d %H:%M} UTC")
        return self._intensity(zone, past[-1], now, False)

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        pts, start, end = self._zone(zone), as_utc(start), as_utc(end)
        if pts[0].time is None:  # a constant: the operator's value holds for every hour asked
            out, t = [], start.replace(minute=0, second=0, microsecond=0)
            while t < end:
                out.append(self._intensity(zone, _Point(t, 3600, pts[0].g), t, True))
                t += timedelta(hours=1)
            return out
        return [self._intensity(zone, p, start, True) for p in pts
                if p.time < end and p.time + timedelta(seconds=p.duration_s) > start]  # type: ignore[operator]

    history = forecast
