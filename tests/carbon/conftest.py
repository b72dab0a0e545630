from __future__ import annotations

import pytest

from .fakeapi import FakeApi, FakeClock, Reply


@pytest.fixture
def fake_api():
    """fake_api(responder) -> a running FakeApi; every server started is shut down after the test."""
    started: list[FakeApi] = []

    def start(responder) -> FakeApi:
        api = FakeApi(responder)
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()


@pytest.fixture
def clock():
    return FakeClock()


# Failure replies every live client must survive (name -> Reply), shared by the provider tests.
FAILURES = {
    "401": Reply(401, {"message": "Unauthorized"}),
    "429": Reply(429, {"message": "Too many requests"}, {"Retry-After": "120"}),
    "500": Reply(500, {"message": "boom"}),
    "malformed": Reply(200, "{not json"),
    "slow": Reply(200, {}, delay_s=0.6),
}
