"""WattTime through its official client, pointed at a local server answering in the documented shapes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("watttime", reason="WattTime's client is an optional dependency: pip install watttime")

from prismn.carbon import (  # noqa: E402
    LBS_PER_MWH_TO_G_PER_KWH,
    ChainProvider,
    EmbeddedProvider,
    WattTimeProvider,
    make_provider,
)
from prismn.carbon.point import CarbonConfigError  # noqa: E402
from prismn.errors import PrismnError  # noqa: E402

from .conftest import FAILURES  # noqa: E402
from .fakeapi import Reply  # noqa: E402

T0 = datetime.now(UTC).replace(second=0, microsecond=0)
META = {"region": "CAISO_NORTH", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh",
        "model": {"date": "2024-01-01"}, "data_point_period_seconds": 300}


def pts(n: int, base: float, start: datetime = T0) -> list[dict]:
    return [{"point_time": (start + timedelta(minutes=5 * i)).isoformat(), "value": base + i} for i in range(n)]


def wt_ok(req) -> Reply:
    if req.path == "/login":
        if req.headers.get("authorization") != "Basic " + base64.b64encode(b"alice:secret").decode():
            return Reply(403, {"error": "bad credentials"})
        return Reply(200, {"token": "jwt-token"})
    if req.headers.get("authorization") != "Bearer jwt-token":
        return Reply(401, {"error": "no token"})
    if req.path == "/v3/forecast":
        n = 1 if req.query["horizon_hours"] == "0" else 12 * int(req.query["horizon_hours"])
        return Reply(200, {"data": pts(n, 1000.0), "meta": {**META, "generated_at": T0.isoformat()}})
    if req.path == "/v3/historical":
        return Reply(200, {"data": pts(12, 800.0, T0 - timedelta(hours=1)), "meta": META})
    if req.path == "/v3/region-from-loc":
        return Reply(200, {"region": "CAISO_NORTH", "region_full_name": "California ISO Northern",
                           "signal_type": "co2_moer"})
    return Reply(404, {"error": "no such endpoint"})


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("WATTTIME_USER", "alice")
    monkeypatch.setenv("WATTTIME_PASSWORD", "secret")


def make(fake_api, responder, clock=None):
    api = fake_api(responder)
    p = WattTimeProvider(base_url=api.url, timeout_s=0.2)
    if clock is not None:
        p.backoff.clock = clock
        p.cache.clock = clock
    return api, p


def test_latest_forecast_history_region_converted_to_g_per_kwh(fake_api, creds):
    api, p = make(fake_api, wt_ok)
    v = p.latest("CAISO_NORTH")
    assert v.g_per_kwh == pytest.approx(1000.0 * LBS_PER_MWH_TO_G_PER_KWH)
    assert (v.signal, v.basis, v.duration_s, v.provider) == ("marginal", "direct", 300, "watttime")
    fc = p.forecast("CAISO_NORTH", T0, T0 + timedelta(hours=1))
    assert len(fc) == 12 and fc[-1].g_per_kwh == pytest.approx(1011 * 0.45359237)
    hist = p.history("CAISO_NORTH", T0 - timedelta(hours=1), T0)
    assert len(hist) == 12 and not hist[0].estimated
    assert p.region_for(38.58, -121.49) == "CAISO_NORTH"
    assert api.hits("/login") == 1  # one JWT serves every call


def test_username_variable_of_the_issue_is_accepted(fake_api, monkeypatch):
    monkeypatch.setenv("WATTTIME_USER", "placeholder")
    monkeypatch.delenv("WATTTIME_USER")  # restored (unset) after the test even though the client sets it
    monkeypatch.setenv("WATTTIME_USERNAME", "alice")
    monkeypatch.setenv("WATTTIME_PASSWORD", "secret")
    api, p = make(fake_api, wt_ok)
    assert p.latest("CAISO_NORTH").g_per_kwh > 0


def test_missing_credentials_is_one_clear_line(monkeypatch):
    for k in ("WATTTIME_USER", "WATTTIME_USERNAME", "WATTTIME_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(PrismnError, match="WATTTIME_USERNAME and WATTTIME_PASSWORD"):
        WattTimeProvider()


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failures_back_off_without_retry_storms(fake_api, creds, clock, failure):
    def responder(req):
        if failure == "401":
            return Reply(401, {"error": "bad credentials"}) if req.path == "/login" else wt_ok(req)
        return wt_ok(req) if req.path == "/login" else FAILURES[failure]

    api, p = make(fake_api, responder, clock)
    chain = ChainProvider([p, WattTimeProvider(base_url=api.url + "/nowhere", timeout_s=0.2)])
    with pytest.raises(PrismnError) as e:
        chain.latest("CAISO_NORTH")
    msg = str(e.value)
    expected = {"401": "401", "429": "429", "500": "500", "malformed": "malformed", "slow": "no answer"}[failure]
    assert expected in msg
    before = api.hits()
    assert before <= 3  # first provider: login + one try (no built-in retries); second: its login
    with pytest.raises(PrismnError):
        chain.latest("CAISO_NORTH")
    assert api.hits() == before  # both backing off: nothing sent


def test_marginal_and_average_never_mix(creds):
    with pytest.raises(CarbonConfigError, match="mixes marginal and average"):
        ChainProvider([WattTimeProvider(base_url="http://127.0.0.1:9"), EmbeddedProvider()])
    with pytest.raises(CarbonConfigError, match="mixes marginal and average"):
        make_provider("watttime,embedded")
