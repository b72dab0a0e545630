"""Process helpers for the service tests (imported by name; conftest only holds fixtures)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "test-token-123"  # the join token (given to processes through the environment, never argv)
ADMIN = "test-admin-key-456"
SECRETS = {"PRISMN_JOIN_TOKEN": TOKEN, "PRISMN_ADMIN_KEY": ADMIN}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "prismn", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def stop(p: subprocess.Popen, sig: str = "term") -> None:
    if p.poll() is None:
        p.terminate() if sig == "term" else p.kill()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_for(cond, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except (httpx.HTTPError, OSError, KeyError, ValueError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Cluster:
    """A coordinator and peers as real processes (each peer fits about half the model)."""

    def __init__(self, tmp, db_url: str, ckpt, coordinator_args: list[str] | None = None, vram_factor: float = 1.0,
                 transport: str = "tcp"):
        from prismn.model import GIB, load_model_spec
        from prismn.placement.costmodel import CostModel

        self.tmp, self.db_url, self.ckpt = tmp, db_url, ckpt
        self.extra = list(coordinator_args if coordinator_args is not None else ["--emulate-wan"])
        # Iroh: peers dialled by key through the coordinator's address book; no relay (no internet here)
        self.transport = transport
        if transport == "iroh":
            self.extra.append("--no-relay")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.coord = None
        self.peers: dict[str, object] = {}
        spec = load_model_spec(str(ckpt), "fp32")
        # each peer fits about half the model: a plan needs two of them, and a spare remains
        half = CostModel(spec).stage_bytes(spec.n_layers // 2, True, True)
        self.vram = round(half / GIB / 0.9 * 1.05 * vram_factor, 6)
        self.restarts = 0

    def start_coordinator(self) -> None:
        self.restarts += 1
        self.coord = spawn(["coordinator", "--port", str(self.port), "--db", self.db_url, "--secrets-dir",
                            str(self.tmp / "secrets"), "--lease-s", "2.5", "--heartbeat-s", "0.4", "--city",
                            "Frankfurt", *self.extra], self.tmp / f"coordinator-{self.restarts}.log", SECRETS)
        wait_for(lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200, 90, "coordinator up")

    def start_peer(self, city: str) -> None:
        pid = city.lower() + "-1"
        self.peers[pid] = spawn(["peer", "--coordinator", self.url, "--city", city, "--vram", str(self.vram),
                                 "--gpu", "CPU", "--id", pid, "--key-file", str(self.tmp / "keys" / f"{pid}.key"),
                                 *(["--transport", "iroh", "--no-relay"] if self.transport == "iroh" else [])],
                                self.tmp / f"peer-{pid}.log", {"PRISMN_JOIN_TOKEN": TOKEN})

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=180, **kw)

    def peer_status(self) -> dict[str, str]:
        return {p["id"]: p["status"] for p in self.api("GET", "/v1/peers").json()["data"]}

    def close(self) -> None:
        for p in [*self.peers.values(), self.coord]:
            if p is not None:
                stop(p)

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.tmp.glob("*.log")))

    @contextlib.contextmanager
    def running(self, cities: list[str]):
        """The coordinator and one peer per city, all online; the logs printed if anything fails."""
        try:
            self.start_coordinator()
            for city in cities:
                self.start_peer(city)
            wait_for(lambda: list(self.peer_status().values()).count("online") == len(cities), 120,
                     f"{len(cities)} peers online")
            yield self
        except BaseException:
            print(self.logs())
            raise
        finally:
            self.close()


def stream_completion(c: Cluster, model: str, prompt: str, max_tokens: int, on_chunk=None) -> tuple[str, dict]:
    """A greedy streamed completion through the `openai` client: (text, the receipt); ``on_chunk(i)``
    runs after each chunk (to kill, stop or change something mid-answer)."""
    from openai import OpenAI

    client = OpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0, timeout=180)
    text, usage = "", None
    for i, ch in enumerate(client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                     temperature=0, stream=True)):
        if ch.choices:
            text += ch.choices[0].text or ""
        if ch.usage is not None:
            usage = ch.usage.model_extra["carbon"]
        if on_chunk is not None:
            on_chunk(i)
    return text, usage
