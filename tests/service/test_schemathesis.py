"""Property-based: every operation of the coordinator's OpenAPI schema, fed schema-shaped and
schema-violating requests as the admin, as a peer holding a join token (requests signed with its key),
and anonymously, answers without a 5xx (bounded examples)."""

from __future__ import annotations

import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from prismn.coordinator.app import create_app  # noqa: E402
from prismn.coordinator.settings import Settings  # noqa: E402
from prismn.identity import Identity  # noqa: E402
from prismn.peer.agent import signed_headers  # noqa: E402

TOKEN, ADMIN = "fuzz-token", "fuzz-admin"
PEER_KEY = Identity.generate()
APP = create_app(Settings(db_url=f"sqlite:///{tempfile.mkdtemp(prefix='prismn-fuzz-')}/c.db", join_token=TOKEN,
                          admin_key=ADMIN, min_heartbeat_interval_s=0.0))


class SignsPeerRequests:
    """Test-only ASGI wrapper: signs POST /v1/peers/... bodies with a peer key, as `prismn peer` does, so the
    fuzzer reaches the join and heartbeat handlers and not only their signature check."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/peers/"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        extra = {k.lower(): v for k, v in signed_headers(PEER_KEY, "POST", scope["path"], body).items()
                 if k.lower().startswith("x-prismn-")}
        headers = [(k, v) for k, v in scope["headers"] if k.decode().lower() not in extra]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


SIGNED = SignsPeerRequests(APP)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("role", ["admin", "peer", "anonymous"])
def test_no_request_gets_a_5xx(case, role):
    headers = {"Authorization": f"Bearer {ADMIN if role == 'admin' else TOKEN}"} if role != "anonymous" else {}
    r = case.call(headers=headers, app=SIGNED) if role == "peer" else case.call(headers=headers)
    assert r.status_code < 500, f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:300]}"


@pytest.mark.slow
def test_the_peer_role_reaches_the_handlers():
    """The fuzzer's peer requests pass the signature check: a valid join through the wrapper succeeds."""
    body = {"id": "fuzz-peer", "lat": 1.0, "lon": 2.0, "free_vram_gb": 1.0, "data_addr": "127.0.0.1:9"}
    op = schema["/v1/peers/join"]["POST"]
    r = op.Case(body=body).call(headers={"Authorization": f"Bearer {TOKEN}"}, app=SIGNED)
    assert r.status_code == 200, r.text
