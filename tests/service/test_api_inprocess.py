"""The coordinator's HTTP boundary in-process: roles, peer keys, validation, one clear message, nothing lost."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from fastapi.testclient import TestClient

from prismn.coordinator.app import create_app
from prismn.coordinator.settings import Settings
from prismn.identity import Identity
from prismn.peer.agent import signed_headers

TOKEN = "tok-123"
ADMIN_KEY = "admin-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PEER = {"id": "oslo-1", "lat": 59.91, "lon": 10.75, "free_vram_gb": 1.5, "gpu": "RTX 3060", "zone": "NO-NO1",
        "data_addr": "127.0.0.1:9"}
KEY = Identity.generate()


def make(db: str, **kw) -> TestClient:
    return TestClient(create_app(Settings(db_url=db, join_token=TOKEN, admin_key=ADMIN_KEY, **kw)))


def signed(c: TestClient, path: str, body: dict, ident: Identity = KEY, auth: dict = AUTH, raw: bytes | None = None):
    """POST as a peer: join token plus the peer key's signature of the request."""
    raw = json.dumps(body).encode() if raw is None else raw
    return c.post(path, content=raw, headers={**auth, **signed_headers(ident, "POST", path, raw)})


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'c.db'}"


def msg(r) -> str:
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"]["message"]
    return body["error"]["message"]


def test_join_heartbeat_and_listing(db):
    with make(db) as c:
        r = signed(c, "/v1/peers/join", PEER)
        assert r.status_code == 200 and r.json()["peer_id"] == "oslo-1"
        assert r.json()["coordinator_key"] == c.app.state.prismn.identity.public
        assert signed(c, "/v1/peers/oslo-1/heartbeat", {"free_vram_gb": 1.2}).status_code == 200
        peers = c.get("/v1/peers", headers=ADMIN).json()["data"]
        assert peers[0]["free_vram_gb"] == 1.2 and peers[0]["status"] == "online"
        assert peers[0]["public_key"] == KEY.public


@pytest.mark.parametrize("change,needle", [
    ({"lat": 142}, "lat"), ({"free_vram_gb": -1}, "free_vram_gb"), ({"gpu": "RTX 9999"}, "unknown GPU"),
    ({"id": "bad id!"}, "id"), ({"zone": "XX-NOPE"}, "zone"), ({"data_addr": "not an address"}, "data_addr"),
    ({"free_vram_gb": 1e308}, "free_vram_gb"), ({"rtt_ms": {"paris-1": -3}}, "RTT"),
    ({"rtt_ms": {"bad key!": 3}}, "rtt_ms"),
])
def test_bad_joins_are_400_with_the_field_named(db, change, needle):
    with make(db) as c:
        r = signed(c, "/v1/peers/join", {**PEER, **change})
        assert r.status_code == 400 and needle in msg(r)
        assert c.get("/v1/peers", headers=ADMIN).json()["data"] == []


def test_nan_and_infinite_numbers_are_refused(db):
    with make(db) as c:
        for raw in (b'{"id":"a","lat":1,"lon":1,"free_vram_gb":NaN,"data_addr":"127.0.0.1:9"}',
                    b'{"id":"a","lat":1,"lon":1,"free_vram_gb":1,"data_addr":"127.0.0.1:9","rtt_ms":{"b":Infinity}}'):
            r = signed(c, "/v1/peers/join", {}, raw=raw)
            assert r.status_code == 400, r.text
        assert c.get("/v1/peers", headers=ADMIN).json()["data"] == []


def test_wrong_token_unsigned_and_unknown_peer(db):
    with make(db) as c:
        assert signed(c, "/v1/peers/join", PEER, auth={"Authorization": "Bearer x"}).status_code == 401
        assert signed(c, "/v1/peers/join", PEER, auth={}).status_code == 401
        r = c.post("/v1/peers/join", json=PEER, headers=AUTH)  # the token alone is not enough: unsigned
        assert r.status_code == 401 and "signed" in msg(r)
        r = signed(c, "/v1/peers/ghost/heartbeat", {})
        assert r.status_code == 404 and "join first" in msg(r)
        assert c.get("/v1/deployments", headers={"Authorization": "Bearer x"}).status_code == 401


def test_a_peer_cannot_heartbeat_or_rejoin_as_another(db):
    with make(db) as c:
        assert signed(c, "/v1/peers/join", PEER).status_code == 200
        thief = Identity.generate()
        r = signed(c, "/v1/peers/oslo-1/heartbeat", {}, ident=thief)
        assert r.status_code == 403 and "belongs to another key" in msg(r)
        r = signed(c, "/v1/peers/join", {**PEER, "data_addr": "10.0.0.66:1"}, ident=thief)
        assert r.status_code == 403
        peer = c.get("/v1/peers", headers=ADMIN).json()["data"][0]
        assert peer["data_addr"] == "127.0.0.1:9" and peer["public_key"] == KEY.public and peer["joins"] == 1


def test_signed_requests_cannot_be_replayed_or_altered(db):
    with make(db) as c:
        raw = json.dumps(PEER).encode()
        headers = {**AUTH, **signed_headers(KEY, "POST", "/v1/peers/join", raw)}
        assert c.post("/v1/peers/join", content=raw, headers=headers).status_code == 200
        r = c.post("/v1/peers/join", content=raw, headers=headers)  # the same request again
        assert r.status_code == 401 and "replayed" in msg(r)
        other = json.dumps({**PEER, "free_vram_gb": 99}).encode()
        headers = {**AUTH, **signed_headers(KEY, "POST", "/v1/peers/join", raw)}
        r = c.post("/v1/peers/join", content=other, headers=headers)  # a body the signature does not cover
        assert r.status_code == 401 and "signature" in msg(r)


def test_roles_join_tokens_cannot_administer(db):
    with make(db) as c:
        for method, path in (("POST", "/v1/deployments"), ("DELETE", "/v1/deployments/dep-1"),
                             ("GET", "/v1/peers"), ("DELETE", "/v1/peers/oslo-1"), ("GET", "/v1/receipts"),
                             ("POST", "/v1/admin/join-tokens"), ("GET", "/v1/admin/api-keys")):
            r = c.request(method, path, headers=AUTH, json={"model": "m"} if method == "POST" else None)
            assert r.status_code == 403 and "admin key" in msg(r), (method, path)
            assert c.request(method, path).status_code == 401


def test_join_tokens_expire_and_are_revoked(db):
    with make(db) as c:
        r = c.post("/v1/admin/join-tokens", json={"label": "lab", "ttl_s": 1}, headers=ADMIN)
        assert r.status_code == 201
        short, short_id = r.json()["secret"], r.json()["id"]
        r = c.post("/v1/admin/join-tokens", json={"label": "revoked"}, headers=ADMIN)
        revoked, revoked_id = r.json()["secret"], r.json()["id"]
        assert signed(c, "/v1/peers/join", PEER, auth={"Authorization": f"Bearer {short}"}).status_code == 200
        assert c.delete(f"/v1/admin/credentials/{revoked_id}", headers=ADMIN).json()["revoked"]
        r = signed(c, "/v1/peers/join", {**PEER, "id": "b"}, ident=Identity.generate(),
                   auth={"Authorization": f"Bearer {revoked}"})
        assert r.status_code == 401 and "revoked" in msg(r)
        time.sleep(1.1)
        r = signed(c, "/v1/peers/join", {**PEER, "id": "c"}, ident=Identity.generate(),
                   auth={"Authorization": f"Bearer {short}"})
        assert r.status_code == 401
        listed = c.get("/v1/admin/join-tokens", headers=ADMIN).json()["data"]
        assert {t["id"] for t in listed} >= {short_id, revoked_id}
        assert all("secret" not in t and "hash" not in t for t in listed)
        stored = [r.hash for r in c.app.state.prismn.credentials.list()]
        assert short not in stored and TOKEN not in stored and ADMIN_KEY not in stored  # hashes only


def test_admin_removes_peers_and_old_offline_peers_are_pruned(db):
    with make(db, lease_s=0.5, sweep_s=0.1, peer_retention_s=1.0) as c:
        assert signed(c, "/v1/peers/join", PEER).status_code == 200
        assert signed(c, "/v1/peers/join", {**PEER, "id": "b"}, ident=Identity.generate()).status_code == 200
        assert c.delete("/v1/peers/b", headers=ADMIN).json() == {"id": "b", "removed": True}
        assert c.delete("/v1/peers/b", headers=ADMIN).status_code == 404
        deadline = time.monotonic() + 10
        while c.get("/v1/peers", headers=ADMIN).json()["data"]:
            assert time.monotonic() < deadline, "an offline peer past the retention period was never removed"
            time.sleep(0.1)


def test_heartbeats_are_rate_limited(db):
    with make(db, min_heartbeat_interval_s=5.0) as c:
        assert signed(c, "/v1/peers/join", PEER).status_code == 200
        assert signed(c, "/v1/peers/oslo-1/heartbeat", {}).status_code == 200
        r = signed(c, "/v1/peers/oslo-1/heartbeat", {})
        assert r.status_code == 429 and "too often" in msg(r)
        # another key posing as the peer within the interval: refused for who it is (403), not for how often
        r = signed(c, "/v1/peers/oslo-1/heartbeat", {}, ident=Identity.generate())
        assert r.status_code == 403 and "another key" in msg(r)


def test_openai_api_keys(db):
    with make(db) as c:  # loopback, no API key made: open
        assert c.get("/v1/models").status_code == 200
        key = c.post("/v1/admin/api-keys", json={"label": "app"}, headers=ADMIN).json()["secret"]
        assert c.get("/v1/models").status_code == 401  # once keys exist they are required
        assert c.get("/v1/models", headers=AUTH).status_code == 401  # a join token is not an API key
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with make(db + "-beyond", require_api_key=True) as c:  # bound beyond loopback: required from the start
        assert c.get("/v1/models").status_code == 401


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
        r = c.post("/v1/deployments", json={"model": "smollm2-135m", "strategy": "nope"}, headers=ADMIN)
        assert r.status_code == 400 and "unknown strategy" in msg(r)
        r = c.post("/v1/deployments", json={"model": "smollm2-135m", "objective": "fastest"}, headers=ADMIN)
        assert r.status_code == 400 and "objective" in msg(r)
        assert c.get("/v1/deployments", headers=ADMIN).json()["data"] == []
        r = c.delete("/v1/deployments/dep-nope", headers=ADMIN)
        assert r.status_code == 404 and "no deployment" in msg(r)


def test_store_survives_a_restart_and_leases_expire_to_offline(db):
    with make(db, lease_s=1.0, sweep_s=0.2) as c:
        assert signed(c, "/v1/peers/join", PEER).status_code == 200
        deadline = time.monotonic() + 10
        while c.get("/v1/peers", headers=ADMIN).json()["data"][0]["status"] != "offline":
            assert time.monotonic() < deadline, "lease never expired"
            time.sleep(0.1)
    with make(db) as c:  # restarted coordinator: the peer is back from the store, offline, not deleted
        peers = c.get("/v1/peers", headers=ADMIN).json()["data"]
        assert [(p["id"], p["status"]) for p in peers] == [("oslo-1", "offline")]
        assert signed(c, "/v1/peers/oslo-1/heartbeat", {}).status_code == 200
        assert c.get("/v1/peers", headers=ADMIN).json()["data"][0]["status"] == "online"


def test_first_start_writes_owner_only_secret_files_and_keeps_them(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    with TestClient(create_app(Settings(db_url=db))) as c:
        st = c.app.state.prismn
        files = st.secret_files
        admin, join = files["admin"].read_text().strip(), files["join"].read_text().strip()
        for f in (files["admin"], files["join"], tmp_path / "coordinator.key", tmp_path / "c.db"):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
        assert c.get("/v1/peers", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        key = st.identity.public
    with TestClient(create_app(Settings(db_url=db))) as c:  # a restart keeps the key and the credentials
        assert c.app.state.prismn.identity.public == key
        assert c.get("/v1/peers", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        r = signed(c, "/v1/peers/join", PEER, auth={"Authorization": f"Bearer {join}"})
        assert r.status_code == 200
