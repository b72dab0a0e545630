"""National Grid ESO carbon intensity API against a local server answering in the documented shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prismn.carbon import CarbonUnavailable, ChainProvider, EmbeddedProvider, NationalGridProvider

from .conftest import FAILURES
from .fakeapi import Reply

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def z(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


def entry(i: int, actual: float | None, forecast: float, regional: bool = False) -> dict:
    t = T0 + timedelta(minutes=30 * i)
    e = {"from": z(t), "to": z(t + timedelta(minutes=30)), "intensity": {"forecast": forecast, "index": "low"}}
    if not regional:
        e["intensity"]["actual"] = actual
    else:
        e["generationmix"] = [{"fuel": "wind", "perc": 40.1}]
    return e


def ng_ok(req) -> Reply:
    if req.path == "/intensity":
        return Reply(200, {"data": [entry(0, 180, 190)]})
    if req.path.startswith("/regional/regionid/13"):
        return Reply(200, {"data": [{"regionid": 13, "dnoregion": "UKPN London", "shortname": "London",
                                     "data": [entry(0, None, 150, regional=True)]}]})
    if req.path.startswith("/regional/intensity/"):
        return Reply(200, {"data": {"regionid": 13, "shortname": "London",
                                    "data": [entry(i, None, 150 + i, regional=True) for i in range(6)]}})
    if req.path.startswith("/intensity/"):
        return Reply(200, {"data": [entry(i, 100 + i if i < 2 else None, 200 + i) for i in range(6)]})
    return Reply(400, {"error": {"code": "400 Bad Request"}})


def make(fake_api, responder, clock=None):
    api = fake_api(responder)
    p = NationalGridProvider(base_url=api.url, timeout_s=0.2)
    if clock is not None:
        p.http.backoff.clock = clock
        p.cache.clock = clock
    return api, p


def test_national_and_regional_shapes(fake_api):
    api, p = make(fake_api, ng_ok)
    v = p.latest("GB")
    assert (v.g_per_kwh, v.estimated, v.duration_s, v.signal, v.basis) == (180, False, 1800, "average", "direct")
    r = p.latest("GB-NG-13")
    assert (r.g_per_kwh, r.estimated, r.zone) == (150, True, "GB-NG-13")  # regional values are forecasts
    hist = p.history("GB", T0, T0 + timedelta(hours=3))
    assert [h.g_per_kwh for h in hist] == [100, 101, 202, 203, 204, 205]
    assert [h.estimated for h in hist] == [False, False, True, True, True, True]
    fc = p.forecast("GB-NG-13", T0, T0 + timedelta(hours=2))
    assert [f.g_per_kwh for f in fc] == [150, 151, 152, 153]
    assert any(r.path.endswith("/fw48h/regionid/13") for r in api.requests)


def test_unknown_zone_is_refused_without_a_request(fake_api):
    api, p = make(fake_api, ng_ok)
    with pytest.raises(CarbonUnavailable, match="GB-NG-1..17"):
        p.latest("DE")
    assert api.hits() == 0


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failure_falls_back_and_backs_off(fake_api, clock, failure):
    api, p = make(fake_api, lambda req: FAILURES[failure], clock)
    chain = ChainProvider([p, EmbeddedProvider()])
    v = chain.latest("GB")
    assert v.provider == "embedded" and v.fallback_from[0].startswith("nationalgrid:")
    chain.latest("GB")
    assert api.hits() == 1
