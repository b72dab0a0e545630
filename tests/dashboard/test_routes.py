"""The dashboard's routes in-process (fast): the page and its vendored assets, nothing fetched from
elsewhere, the live snapshot, plan previews and their one-line errors."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from prismn.coordinator.app import create_app  # noqa: E402
from prismn.coordinator.settings import Settings  # noqa: E402
from prismn.dashboard import ROOT  # noqa: E402
from prismn.identity import Identity  # noqa: E402
from prismn.peer.agent import signed_headers  # noqa: E402

TOKEN = "tok-dash"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PEERS = [("oslo-1", 59.91, 10.75, "NO-NO1", "RTX 4090"), ("warsaw-1", 52.23, 21.0, "PL", "RTX 4090"),
         ("paris-1", 48.85, 2.35, "FR", "RTX 3090"), ("madrid-1", 40.4, -3.7, "ES", "A100 80GB")]
MODEL = "meta-llama/Llama-3.1-8B"


@pytest.fixture
def client(tmp_path):
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'c.db'}", join_token=TOKEN, lat=50.11, lon=8.68)
    with TestClient(create_app(settings)) as c:
        for pid, lat, lon, zone, gpu in PEERS:
            body = {"id": pid, "lat": lat, "lon": lon, "zone": zone, "gpu": gpu, "free_vram_gb": 24,
                    "data_addr": "127.0.0.1:9"}
            raw = json.dumps(body).encode()
            headers = {**AUTH, **signed_headers(Identity.generate(), "POST", "/v1/peers/join", raw)}
            assert c.post("/v1/peers/join", content=raw, headers=headers).status_code == 200
        yield c


def one_line(r) -> str:
    msg = r.json()["error"]["message"]
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_the_page_and_every_asset_it_names_are_served_from_the_coordinator(client):
    html = client.get("/").text
    assets = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', html)
    assert len(assets) >= 4
    for a in assets:
        assert client.get(a).status_code == 200, a
    assert client.get("/dashboard/vendor/world-atlas/countries-110m.json").json()["type"] == "Topology"
    # offline by construction: our own files name no other origin
    for f in (ROOT / "static").iterdir():
        assert not re.search(r"https?://", f.read_text()), f
    r = client.get("/dashboard/static/..%2F..%2Fcoordinator%2Fapp.py")
    assert r.status_code == 404 and "the page is at /" in one_line(r)


def test_the_snapshot_shows_peers_with_intensity_but_not_their_addresses(client):
    snap = client.get("/dashboard/api/snapshot").json()
    assert [p["id"] for p in snap["peers"]] == [p[0] for p in PEERS]
    oslo = snap["peers"][0]
    assert "data_addr" not in oslo and oslo["status"] == "online"
    assert oslo["intensity"]["zone"] == "NO-NO1" and oslo["intensity"]["source"]
    assert {r["to"] for r in oslo["rtt"]} == {"client", "warsaw-1", "paris-1", "madrid-1"}
    assert snap["coordinator"] == {"lat": 50.11, "lon": 8.68, "emulate_wan": False}
    assert snap["deployments"] == [] and snap["numbers"] == []


def test_a_preview_has_the_plan_the_baselines_and_the_front_and_follows_the_weight(client):
    fast = client.post("/dashboard/api/plan", json={"model": MODEL, "weight": 0}).json()
    clean = client.post("/dashboard/api/plan", json={"model": MODEL, "weight": 1}).json()
    for out in (fast, clean):
        assert out["chosen"]["feasible"] and out["front"] and out["peers"] == 4
        assert {b["strategy"] for b in out["baselines"]} == {"tandemn", "prismn-hackathon", "petals"}
    assert fast["chosen"]["metrics"]["latency_ms_per_token"] <= clean["chosen"]["metrics"]["latency_ms_per_token"]
    assert clean["chosen"]["metrics"]["gco2e_per_token"] <= fast["chosen"]["metrics"]["gco2e_per_token"]
    assert fast["chosen"]["stages"] != clean["chosen"]["stages"]
    # each front point carries the deployment request that asks for that same point
    p = clean["front"][0]
    assert p["deploy"]["objective"] == "carbon" and p["deploy"]["max_latency_ms"] >= p["metrics"]["latency_ms_per_token"]


@pytest.mark.parametrize("body,needle", [
    ({"model": "/etc/passwd"}, "unknown model"),
    ({"model": MODEL, "strategy": "nope"}, "unknown strategy"),
    ({"model": MODEL, "weight": 2}, "weight"),
])
def test_bad_previews_are_one_line_400s(client, body, needle):
    r = client.post("/dashboard/api/plan", json=body)
    assert r.status_code == 400 and needle in one_line(r)
