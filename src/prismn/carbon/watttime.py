"""WattTime v3 through its official client (PyPI `watttime`): marginal CO2 (co2_moer), lbs/MWh -> g/kWh.

The client is used as published; this wrapper only (1) points it at `base_url` (the client reads
WATTTIME_API_URL once at import, so we set the instance's `url_base`), (2) mounts an adapter on its
requests session that enforces our timeout and turns off its built-in retries (3 retries with 1 s
exponential sleeps on 5xx and a fixed 60 s timeout would block a request; our Backoff skips instead),
and (3) maps its exceptions to CarbonUnavailable. Zones are WattTime regions (e.g. CAISO_NORTH);
`region_for(lat, lon)` asks /v3/region-from-loc. Credentials: WATTTIME_USERNAME (or the client's own
WATTTIME_USER) and WATTTIME_PASSWORD.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from prismn.carbon.base import BaseProvider
from prismn.carbon.http import Backoff, TTLCache, classify, shape_error
from prismn.carbon.point import (
    LBS_PER_MWH_TO_G_PER_KWH,
    CarbonUnavailable,
    Intensity,
    as_utc,
    overlaps,
    parse_time,
    utcnow,
)
from prismn.errors import PrismnError

LICENCE = "WattTime data licence (proprietary)"
SIGNAL_TYPE = "co2_moer"
KEY_HINT = "WATTTIME_USERNAME and WATTTIME_PASSWORD"


def _make_client(base_url: str, username: str | None, password: str | None, timeout_s: float) -> Any:
    try:
        import requests
        from watttime import WattTimeForecast, WattTimeHistorical
    except ImportError:
        raise PrismnError("WattTime needs its client: pip install 'watttime==1.4.0'") from None

    class Adapter(requests.adapters.HTTPAdapter):
        def send(self, request, **kw):  # type: ignore[no-untyped-def]
            kw["timeout"] = timeout_s
            return super().send(request, **kw)

    class Client(WattTimeForecast, WattTimeHistorical):
        pass

    c = Client(username=username, password=password)
    c.url_base = base_url
    adapter = Adapter(max_retries=0)
    c.session.mount("http://", adapter)
    c.session.mount("https://", adapter)
    return c


class WattTimeProvider(BaseProvider):
    name = "watttime"
    signal = "marginal"
    BASE_URL = "https://api.watttime.org"

    def __init__(self, username: str | None = None, password: str | None = None, base_url: str | None = None,
                 timeout_s: float = 5.0, ttl_s: float = 300.0, backoff: Backoff | None = None):
        env_user = os.environ.get("WATTTIME_USERNAME") or os.environ.get("WATTTIME_USER")
        if not (username or env_user) or not (password or os.environ.get("WATTTIME_PASSWORD")):
            raise PrismnError(f"WattTime needs an account: set {KEY_HINT} in the environment")
        # The client reads WATTTIME_USER itself; pass a name only when it would not find one there.
        user_arg = username or (env_user if not os.environ.get("WATTTIME_USER") else None)
        self.base_url = (base_url or os.environ.get("WATTTIME_API_URL") or self.BASE_URL).rstrip("/")
        self.timeout_s = timeout_s
        self.client = _make_client(self.base_url, user_arg, password, timeout_s)
        self.backoff = backoff or Backoff("WattTime")
        self.cache = TTLCache(ttl_s)

    def _call(self, key: tuple, fn: Any, *args: Any, **kw: Any) -> Any:
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        self.backoff.check()
        try:
            body = fn(*args, **kw)
        except CarbonUnavailable:
            raise
        except Exception as e:  # the client raises bare Exception/RuntimeError around requests errors
            raise self._failure(e) from None
        self.backoff.ok()
        self.cache.put(key, body)
        return body

    def _failure(self, e: BaseException) -> CarbonUnavailable:
        import requests

        err: BaseException | None = e
        while err is not None and not isinstance(err, requests.RequestException):
            err = err.__cause__
        if isinstance(err, requests.exceptions.JSONDecodeError):
            reason, wait = "answered malformed JSON", None
        elif isinstance(err, requests.Timeout):
            reason, wait = f"no answer within {self.timeout_s:g} s", None
        elif err is not None and getattr(err, "response", None) is not None:
            reason, wait, back_off = classify(err.response.status_code, err.response.headers, KEY_HINT)
            if not back_off:
                return CarbonUnavailable(f"WattTime {reason}")
        elif err is not None:
            reason, wait = f"unreachable ({type(err).__name__})", None
        elif isinstance(e, KeyError | TypeError | ValueError):
            return shape_error("WattTime", f"missing {e}")
        else:
            reason, wait = str(e).splitlines()[0][:120], None  # e.g. "failed to log in"
        self.backoff.fail(reason, wait)
        return CarbonUnavailable(f"WattTime {reason}")

    def region_for(self, lat: float, lon: float) -> str:
        body = self._call(("region", round(lat, 3), round(lon, 3)), self.client.region_from_loc, lat, lon,
                          signal_type=SIGNAL_TYPE)
        region = body.get("region") if isinstance(body, dict) else None
        if not region:
            raise shape_error("WattTime", "region-from-loc without a region")
        return str(region)

    def _points(self, zone: str, body: Any, what: str, estimated: bool) -> list[Intensity]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise shape_error("WattTime", f"{what} without a data list")
        meta = body.get("meta") or {}
        units = meta.get("units", "lbs_co2_per_mwh")
        if units != "lbs_co2_per_mwh":
            raise shape_error("WattTime", f"units {units!r}, expected lbs_co2_per_mwh")
        step = int(meta.get("data_point_period_seconds") or 300)
        now = utcnow()
        out = []
        for row in body["data"]:
            try:
                t, v = parse_time(str(row["point_time"])), float(row["value"])
            except (KeyError, TypeError, ValueError):
                raise shape_error("WattTime", f"{what} point without point_time/value") from None
            out.append(Intensity(
                v * LBS_PER_MWH_TO_G_PER_KWH, f"WattTime {SIGNAL_TYPE} {what}", t.year, "marginal", "direct",
                zone, LICENCE, time=t, duration_s=step, estimated=estimated, fetched_at=now, provider=self.name,
            ))
        return out

    def latest(self, zone: str) -> Intensity:
        # horizon 0 is the "nowcast" made with the forecast: WattTime's current MOER (a model estimate)
        body = self._call(("fc", zone, 0), self.client.get_forecast_json, zone, signal_type=SIGNAL_TYPE,
                          horizon_hours=0)
        pts = self._points(zone, body, "nowcast", estimated=True)
        if not pts:
            raise CarbonUnavailable(f"WattTime has no current value for {zone}")
        return pts[0]

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        start, end = as_utc(start), as_utc(end)
        horizon = max(1, min(72, int((end - utcnow()).total_seconds() // 3600) + 1))
        body = self._call(("fc", zone, horizon), self.client.get_forecast_json, zone, signal_type=SIGNAL_TYPE,
                          horizon_hours=horizon)
        return [p for p in self._points(zone, body, "forecast", True) if overlaps(p, start, end)]

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        start, end = as_utc(start), as_utc(end)
        key = ("hist", zone, start.isoformat(), end.isoformat())
        bodies = self._call(key, self.client.get_historical_jsons, start, end - timedelta(seconds=1), zone,
                            signal_type=SIGNAL_TYPE)
        return [p for b in bodies for p in self._points(zone, b, "history", False) if overlaps(p, start, end)]
