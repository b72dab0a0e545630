"""The coordinator's HTTP boundary in-process: auth, validation, one clear message, nothing lost."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from prismn.coordinator.app import create_app
from prismn.coordinator.settings import Settings

TOKEN = "tok-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PEER = {"id": "oslo-1", "lat": 59.91, "lon": 10.75, "free_vram_gb": 1.5, "gpu": "RTX 3060", "zone": "NO-NO1",
        "data_addr": "127.0.0.1:9"}


def make(db: str, **kw) -> TestClient:
    return TestClient(create_app(Settings(db_url=db, join_token=TOKEN, **kw)))


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'c.db'}"


def msg(r) -> str:
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"]["message"]
    return body["error"]["message"]


def test_join_heartbeat_and_listing(db):
    with make(db) as c:
        r = c.post("/v1/peers/join", json=PEER, headers=AUTH)
        assert r.status_code == 200 and r.json()["peer_id"] == "oslo-1"
        assert c.post("/v1/peers/oslo-1/heartbeat", json={"free_vram_gb": 1.2}, headers=AUTH).status_code == 200
        peers = c.get("/v1/peers", headers=AUTH).json()["data"]
        assert peers[0]["free_vram_gb"] == 1.2 and peers[0]["status"] == "online"


@pytest.mark.parametrize("change,needle", [
    ({"lat": 142}, "lat"), ({"free_vram_gb": -1}, "free_vram_gb"), ({"gpu": "RTX 9999"}, "unknown GPU"),
    ({"id": "bad id!"}, "id"), ({"zone": "XX-NOPE"}, "zone"),
])
def test_bad_joins_are_400_with_the_field_named(db, change, needle):
    with make(db) as c:
        r = c.post("/v1/peers/join", json={**PEER, **change}, headers=AUTH)
        assert r.status_code == 400 and needle in msg(r)
        assert c.get("/v1/peers", headers=AUTH).json()["data"] == []


def test_wrong_token_and_unknown_peer(db):
    with make(db) as c:
        assert c.post("/v1/peers/join", json=PEER, headers={"Authorization": "Bearer x"}).status_code == 401
        assert c.post("/v1/peers/join", json=PEER).status_code == 401
        r = c.post("/v1/peers/ghost/heartbeat", json={}, headers=AUTH)
        assert r.status_code == 404 and "join first" in msg(r)
        assert c.get("/v1/deployments", headers={"Authorization": "Bearer x"}).status_code == 401


def test_openai_errors_without_deployments(db):
    with make(db, api_key="sk-test") as c:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert c.post("/v1/chat/completions", json=body).status_code == 401
        key = {"Authorization": "Bearer sk-test"}
        assert c.get("/v1/models", headers=key).json() == {"object": "list", "data": []}
        r = c.post("/v1/chat/completions", json=body, headers=key)
        assert r.status_code == 404 and "not deployed" in msg(r)
        r = c.post("/v1/chat/completions", content=b"{nope", headers={**key, "content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in msg(r)
        r = c.post("/v1/chat/completions", json={**body, "temperature": 5}, headers=key)
        assert r.status_code == 400 and "temperature" in msg(r)


def test_deploy_with_no_peers_is_refused_clearly(db):
    with make(db) as c:
        r = c.post("/v1/deployments", json={"model": "smollm2-135m", "strategy": "nope"}, headers=AUTH)
        assert r.status_code == 400 and "unknown strategy" in msg(r)
        r = c.post("/v1/deployments", json={"model": "smollm2-135m", "objective": "fastest"}, headers=AUTH)
        assert r.status_code == 400 and "objective" in msg(r)
        assert c.get("/v1/deployments", headers=AUTH).json()["data"] == []


def test_store_survives_a_restart_and_leases_expire_to_offline(db):
    with make(db, lease_s=1.0, sweep_s=0.2) as c:
        assert c.post("/v1/peers/join", json=PEER, headers=AUTH).status_code == 200
        deadline = time.monotonic() + 10
        while c.get("/v1/peers", headers=AUTH).json()["data"][0]["status"] != "offline":
            assert time.monotonic() < deadline, "lease never expired"
            time.sleep(0.1)
    with make(db) as c:  # restarted coordinator: the peer is back from the store, offline, not deleted
        peers = c.get("/v1/peers", headers=AUTH).json()["data"]
        assert [(p["id"], p["status"]) for p in peers] == [("oslo-1", "offline")]
        assert c.post("/v1/peers/oslo-1/heartbeat", json={}, headers=AUTH).status_code == 200
        assert c.get("/v1/peers", headers=AUTH).json()["data"][0]["status"] == "online"


def test_join_token_is_kept_across_restarts(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    first = TestClient(create_app(Settings(db_url=db))).app.state.prismn.token
    assert TestClient(create_app(Settings(db_url=db))).app.state.prismn.token == first
