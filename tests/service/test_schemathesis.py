"""Property-based: every operation of the coordinator's OpenAPI schema, fed schema-shaped and
schema-violating requests, with and without the join token, answers without a 5xx (bounded examples)."""

from __future__ import annotations

import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from prismn.coordinator.app import create_app  # noqa: E402
from prismn.coordinator.settings import Settings  # noqa: E402

TOKEN = "fuzz-token"
APP = create_app(Settings(db_url=f"sqlite:///{tempfile.mkdtemp(prefix='prismn-fuzz-')}/c.db", join_token=TOKEN))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("auth", [True, False], ids=["join-token", "anonymous"])
def test_no_request_gets_a_5xx(case, auth):
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    r = case.call(headers=headers)
    assert r.status_code < 500, f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:300]}"
