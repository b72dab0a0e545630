"""Trust on the open internet, with real processes: strangers on a stage port, forged, expired and replayed
assignments, activations from a peer that is not the signed upstream, redirects, peers posing as other
peers, join tokens trying to administer, an API bound beyond loopback, and secrets in argv and logs.
Every refusal is a clear 401/403 or a closed frame, and afterwards the deployment answers exactly as
before."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from svc import ADMIN, TOKEN, Cluster, free_port, spawn, stop, wait_for

from prismn.identity import Identity
from prismn.peer.agent import signed_headers
from prismn.protocol import Assignment, Neighbour, SignedAssignment
from prismn.transport import TcpTransport

pytestmark = pytest.mark.slow
CITIES = ["Oslo", "Paris", "Madrid"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, chat_ckpt):
    tmp = tmp_path_factory.mktemp("trust")
    with Cluster(tmp, f"sqlite:///{tmp / 'coordinator.db'}", chat_ckpt, coordinator_args=[]).running(CITIES) as c:
        r = c.api("POST", "/v1/deployments", json={"model": str(c.ckpt), "name": "tiny-t", "objective": "latency"})
        assert r.status_code == 201, r.text
        c.dep = r.json()
        c.reference = chat(c)
        yield c


def chat(c: Cluster) -> str:
    r = httpx.post(c.url + "/v1/chat/completions", timeout=120, json={
        "model": "tiny-t", "messages": [{"role": "user", "content": "Oslo is"}], "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def peers(c: Cluster) -> dict[str, dict]:
    return {p["id"]: p for p in c.api("GET", "/v1/peers").json()["data"]}


def stages(c: Cluster) -> list[dict]:
    return c.dep["plan"]["stages"]


def key_of(c: Cluster, peer_id: str) -> Identity:
    return Identity.load_or_create(c.tmp / "keys" / f"{peer_id}.key")


def coordinator_key(c: Cluster) -> Identity:
    return Identity.load_or_create(c.tmp / "secrets" / "coordinator.key")


async def exchange(address: str, frames: list[dict], me: Identity | None = None, expect: str | None = None,
                   ) -> list[dict | None]:
    """Connect (with the handshake when ``me`` is given), send ``frames``, collect what comes back until
    the stage closes the connection or goes quiet."""
    from prismn.handshake import authenticate

    conn = await TcpTransport().connect(address)
    try:
        if me is not None:
            await authenticate(conn, me, expect)
        for f in frames:
            await conn.send(f)
        out: list[dict | None] = []
        while True:
            try:
                f = await asyncio.wait_for(conn.recv(), 3.0)
            except TimeoutError:
                return out
            out.append(None if f is None else f.header)
            if f is None:
                return out
    finally:
        await conn.close()


def refused(answers: list[dict | None]) -> bool:
    """One error frame that says "refused", then the connection closed."""
    return (len(answers) == 2 and answers[0]["kind"] == "error" and "refused" in answers[0]["message"]
            and answers[1] is None)


def sign(c: Cluster, signer: Identity, **changes) -> dict:
    """A load frame with an assignment for the first stage's peer (changed by ``changes``), signed by ``signer``."""
    st, ps = stages(c)[0], peers(c)
    nxt = stages(c)[1]["peer"]
    a = dict(deployment=c.dep["id"], model=str(c.ckpt), checkpoint=str(c.ckpt), layers=tuple(st["layers"]),
             embedding=True, head=False, peer=st["peer"], peer_key=ps[st["peer"]]["public_key"],
             client=coordinator_key(c).public, upstream=None,
             downstream=Neighbour(peer=nxt, key=ps[nxt]["public_key"], address=ps[nxt]["data_addr"]),
             issued_at=time.time(), expires_at=time.time() + 60, nonce="ab" * 16)
    a.update(changes)
    assignment = Assignment(**a)
    sig = signer.sign_json(assignment.model_dump(mode="json"))
    return {"kind": "load", "assignment": SignedAssignment(assignment=assignment, signature=sig).model_dump(mode="json")}


def test_a_stranger_on_a_stage_port_can_do_nothing(cluster):
    addr = peers(cluster)[stages(cluster)[1]["peer"]]["data_addr"]
    before = peers(cluster)[stages(cluster)[1]["peer"]]["stage"]["stage"]
    for frame in ({"kind": "open", "session": "s1", "max_context": 64, "next": "127.0.0.1:1"},
                  {"kind": "load", "checkpoint": str(cluster.ckpt), "layers": [0, 1]},
                  {"kind": "bench"}, {"kind": "info"}, {"kind": "unload"},
                  {"kind": "step", "items": [{"session": "s1", "step": 0, "pos": 0, "n": 1}], "dtype": "float32",
                   "shape": [1, 64]}):
        assert refused(asyncio.run(exchange(addr, [frame]))), frame["kind"]
    # with a key of its own the stranger passes the handshake, and is still nobody to this stage
    stranger = Identity.generate()
    for frame in ({"kind": "open", "session": "s2", "max_context": 64}, {"kind": "bench"}, {"kind": "info"}):
        assert refused(asyncio.run(exchange(addr, [frame], stranger))), frame["kind"]
    # ping stays open to all: peers measure RTTs with it
    assert asyncio.run(exchange(addr, [{"kind": "ping", "t": 1}]))[0]["kind"] == "pong"
    assert peers(cluster)[stages(cluster)[1]["peer"]]["stage"]["stage"] == before
    assert chat(cluster) == cluster.reference


def test_forged_expired_and_replayed_assignments_are_refused(cluster):
    first = stages(cluster)[0]["peer"]
    addr = peers(cluster)[first]["data_addr"]
    me = coordinator_key(cluster)  # even on the coordinator's own authenticated connection
    stranger = Identity.generate()
    other = stages(cluster)[1]["peer"]
    cases = {
        "signed by another key": sign(cluster, stranger),
        "expired": sign(cluster, me, issued_at=time.time() - 120, expires_at=time.time() - 60),
        "for another peer (replayed)": sign(cluster, me, peer=other, peer_key=peers(cluster)[other]["public_key"]),
    }
    tampered = sign(cluster, me)
    tampered["assignment"]["assignment"]["layers"] = [0, 1]  # the signature covered other layers
    cases["tampered after signing"] = tampered
    for what, frame in cases.items():
        got = asyncio.run(exchange(addr, [frame], me))
        assert refused(got), (what, got)
    assert chat(cluster) == cluster.reference


def test_activations_only_from_the_signed_upstream_and_forwarding_only_downstream(cluster):
    st = stages(cluster)
    ps = peers(cluster)
    last = st[-1]["peer"]
    not_upstream = next(p for p in ps if p not in {s["peer"] for s in st}) if len(ps) > len(st) else st[-1]["peer"]
    # a real peer of the swarm, but not the last stage's signed upstream, sends it hidden states
    step = {"kind": "step", "items": [{"session": "x", "step": 0, "pos": 0, "n": 1}], "dtype": "float32",
            "shape": [1, 64]}
    got = asyncio.run(exchange(ps[last]["data_addr"], [step], key_of(cluster, not_upstream)))
    assert refused(got), got
    # the coordinator itself cannot make the first stage forward anywhere but its signed downstream
    first = st[0]["peer"]
    got = asyncio.run(exchange(ps[first]["data_addr"], [{"kind": "open", "session": "redir", "max_context": 64,
                                                         "next": "127.0.0.1:9"}], coordinator_key(cluster)))
    assert got and got[0]["kind"] == "error" and "signed downstream" in got[0]["message"], got
    assert chat(cluster) == cluster.reference


def test_a_peer_cannot_pose_as_another_and_a_join_token_cannot_administer(cluster):
    victim = stages(cluster)[0]["peer"]
    thief = Identity.generate()
    for path, body in ((f"/v1/peers/{victim}/heartbeat", {}),
                       ("/v1/peers/join", {"id": victim, "lat": 1, "lon": 1, "free_vram_gb": 8,
                                           "data_addr": "127.0.0.1:9"})):
        raw = json.dumps(body).encode()
        r = httpx.post(cluster.url + path, content=raw,
                       headers={"Authorization": f"Bearer {TOKEN}", **signed_headers(thief, "POST", path, raw)})
        assert r.status_code == 403 and "another key" in r.json()["error"]["message"], r.text
    assert peers(cluster)[victim]["data_addr"] != "127.0.0.1:9"
    join = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(cluster.url + "/v1/deployments", json={"model": str(cluster.ckpt)}, headers=join)
    assert r.status_code == 403
    r = httpx.delete(cluster.url + f"/v1/deployments/{cluster.dep['id']}", headers=join)
    assert r.status_code == 403
    assert cluster.api("GET", f"/v1/deployments/{cluster.dep['id']}").json()["state"] == "ready"
    assert chat(cluster) == cluster.reference


def test_the_api_beyond_loopback_needs_a_key(cluster, tmp_path):
    port = free_port()
    p = spawn(["coordinator", "--host", "0.0.0.0", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'c.db'}"],
              tmp_path / "open.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/healthz", timeout=1).status_code == 200, 60, "coordinator up")
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        admin = (tmp_path / "admin.key").read_text().strip()
        key = httpx.post(url + "/v1/admin/api-keys", json={}, headers={"Authorization": f"Bearer {admin}"}).json()
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key['secret']}"}).status_code == 200
        stop(p)
        log = (tmp_path / "open.log").read_text()
        assert "admin key: in " in log and admin not in log and key["secret"] not in log
    finally:
        stop(p)


def test_no_secret_in_any_argv_or_log(cluster):
    secrets = {TOKEN, ADMIN}
    for f in (cluster.tmp / "secrets").iterdir():
        if f.name.endswith((".key", ".token")):
            secrets.add(f.read_text().strip())
    for f in (cluster.tmp / "keys").iterdir():
        secrets.add(f.read_text().strip())
    for proc in [cluster.coord, *cluster.peers.values()]:
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert not any(s in argv for s in secrets), argv
    logs = "".join(f.read_text() for f in cluster.tmp.glob("*.log"))
    assert logs and not any(s in logs for s in secrets)
