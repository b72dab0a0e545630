"""Electricity Maps v3 against a local server answering in the documented shapes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from prismn.carbon import ChainProvider, ElectricityMapsProvider, EmbeddedProvider
from prismn.errors import PrismnError

from .conftest import FAILURES
from .fakeapi import Reply

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def em_ok(req) -> Reply:
    zone = req.query.get("zone")
    point = {"zone": zone, "carbonIntensity": 123, "datetime": iso(NOW), "updatedAt": iso(NOW),
             "emissionFactorType": req.query.get("emissionFactorType"), "isEstimated": True,
             "estimationMethod": "TIME_SLICER_AVERAGE", "temporalGranularity": "hourly"}
    if req.path.endswith("/latest"):
        return Reply(200, point)
    if req.path.endswith("/history"):
        hist = [{**point, "carbonIntensity": 100 + h, "isEstimated": False,
                 "datetime": iso(NOW - timedelta(hours=23 - h))} for h in range(24)]
        return Reply(200, {"zone": zone, "history": hist, "temporalGranularity": "hourly"})
    if req.path.endswith("/forecast"):
        fc = [{"carbonIntensity": 200 + h, "datetime": iso(NOW + timedelta(hours=h))}
              for h in range(int(req.query["horizonHours"]) + 1)]
        return Reply(200, {"zone": zone, "forecast": fc, "updatedAt": iso(NOW)})
    return Reply(404, {"message": "no such endpoint"})


def make(fake_api, responder, clock=None, timeout_s=0.3):
    api = fake_api(responder)
    p = ElectricityMapsProvider(token="test-token", base_url=api.url + "/v3", timeout_s=timeout_s)
    if clock is not None:
        p.http.backoff.clock = clock
        p.cache.clock = clock
    return api, p


def test_latest_history_forecast_in_documented_shapes(fake_api):
    api, p = make(fake_api, em_ok)
    v = p.latest("DE")
    assert (v.g_per_kwh, v.zone, v.signal, v.basis, v.estimated) == (123.0, "DE", "average", "lifecycle", True)
    assert v.time == NOW and v.duration_s == 3600 and v.provider == "electricitymaps" and v.fetched_at
    req = api.requests[0]
    assert req.headers["auth-token"] == "test-token" and req.query["disableCallerLookup"] == "true"
    hist = p.history("DE", NOW - timedelta(hours=5), NOW + timedelta(hours=1))
    assert [h.g_per_kwh for h in hist] == [118, 119, 120, 121, 122, 123]
    fc = p.forecast("DE", NOW, NOW + timedelta(hours=6))
    assert fc[0].g_per_kwh == 200 and all(f.estimated for f in fc) and len(fc) == 6
    assert "forecast" in fc[0].source


def test_cache_answers_within_ttl_and_refetches_after(fake_api, clock):
    api, p = make(fake_api, em_ok, clock)
    p.latest("DE")
    p.latest("DE")
    assert api.hits("/v3/carbon-intensity/latest") == 1
    clock.t += 3601
    p.latest("DE")
    assert api.hits("/v3/carbon-intensity/latest") == 2


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failure_falls_back_to_embedded_and_says_so(fake_api, clock, failure):
    api, p = make(fake_api, lambda req: FAILURES[failure], clock, timeout_s=0.2)
    chain = ChainProvider([p, EmbeddedProvider()])
    t0 = time.monotonic()
    v = chain.latest("DE")
    assert time.monotonic() - t0 < 0.5  # the slow server is abandoned at the timeout, not awaited
    assert v.provider == "embedded" and v.g_per_kwh == EmbeddedProvider().latest("DE").g_per_kwh
    assert len(v.fallback_from) == 1 and v.fallback_from[0].startswith("electricitymaps:")
    expected = {"401": "401", "429": "429", "500": "500", "malformed": "malformed", "slow": "no answer"}[failure]
    assert expected in v.fallback_from[0]
    if failure == "401":
        assert "ELECTRICITYMAPS_API_TOKEN" in v.fallback_from[0]
    # backoff: the next ask does not touch the server, it falls back at once
    before = api.hits()
    assert chain.latest("DE").provider == "embedded"
    assert api.hits() == before


def test_retry_after_is_honoured_then_the_source_is_retried(fake_api, clock):
    replies = iter([FAILURES["429"]])
    api, p = make(fake_api, lambda req: next(replies, None) or em_ok(req), clock)
    chain = ChainProvider([p, EmbeddedProvider()])
    assert chain.latest("DE").provider == "embedded"
    clock.t += 119
    assert chain.latest("DE").provider == "embedded" and api.hits() == 1  # still inside Retry-After
    clock.t += 2
    v = chain.latest("DE")
    assert v.provider == "electricitymaps" and v.fallback_from == () and api.hits() == 2


def test_5xx_backoff_doubles(fake_api, clock):
    api, p = make(fake_api, lambda req: FAILURES["500"], clock)
    chain = ChainProvider([p, EmbeddedProvider()])
    chain.latest("DE")
    clock.t += 31
    chain.latest("DE")
    assert api.hits() == 2  # first wait was 30 s
    clock.t += 31
    chain.latest("DE")
    assert api.hits() == 2  # second wait is 60 s
    clock.t += 30
    chain.latest("DE")
    assert api.hits() == 3


def test_missing_token_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN", raising=False)
    with pytest.raises(PrismnError, match="ELECTRICITYMAPS_API_TOKEN"):
        ElectricityMapsProvider()


def test_403_on_a_paid_endpoint_does_not_block_the_free_ones(fake_api, clock):
    def responder(req):
        return Reply(403, {"message": "not in your plan"}) if req.path.endswith("/forecast") else em_ok(req)

    api, p = make(fake_api, responder, clock)
    chain = ChainProvider([p, EmbeddedProvider()])
    fc = chain.forecast("DE", NOW, NOW + timedelta(hours=2))
    assert fc[0].provider == "embedded" and "403" in fc[0].fallback_from[0]
    assert chain.latest("DE").provider == "electricitymaps"


def test_past_range_for_history_older_than_a_day(fake_api):
    def responder(req):
        if req.path.endswith("/past-range"):
            t = datetime.fromisoformat(req.query["start"])
            return Reply(200, {"zone": "DE", "temporalGranularity": "hourly", "data": [
                {"zone": "DE", "carbonIntensity": 300 + h, "datetime": iso(t + timedelta(hours=h)),
                 "isEstimated": False, "emissionFactorType": "lifecycle"} for h in range(3)]})
        return em_ok(req)

    api, p = make(fake_api, responder)
    start = NOW - timedelta(days=5)
    hist = p.history("DE", start, start + timedelta(hours=3))
    assert [h.g_per_kwh for h in hist] == [300, 301, 302] and hist[0].source == "Electricity Maps past-range"
