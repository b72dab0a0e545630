"""Recovery from a peer failing mid-answer: the pause a streaming user sees, by stage position.

A coordinator and six local SmolLM2-135M peers (each holds about a third of the model, so plans have a
first, a middle and a last stage) with wide-area delay EMULATED from their cities. For each position,
a greedy 32-token completion streams through the `openai` client and the stage at that position is
SIGKILLed after 6 chunks; the killed peer is restarted (same id) before the next run. Reported: the
longest gap between chunks (what the user sees) beside an undisturbed run's, the time to detect the
failure and the time to re-plan, load and replay, from the receipt; and the time a fresh deployment
takes to load (the "stage load time" the target allows for). Results: docs/bench/recovery.json.

    python benchmarks/recovery.py [--runs 3]

Then the same with warm spares (`spares: 3`: a free peer pre-loads each stage's layers): losing a
stage's peer swaps in its spare, no planner call and no weights to read; one kill per position.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console

from prismn.demo import MODEL, Demo, _slug

PEERS = [("Oslo", 0.3), ("Paris", 0.3), ("Madrid", 0.3), ("Warsaw", 0.3), ("Vienna", 0.3), ("Prague", 0.3)]
OUT = Path(__file__).resolve().parent.parent / "docs" / "bench" / "recovery.json"
PROMPT = "Write a short story about a lighthouse keeper."


def stream(demo: Demo, model: str, on_chunk=None) -> tuple[str, list[float], dict | None]:
    from openai import OpenAI

    client = OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    text, times, receipt = "", [], None
    for i, ch in enumerate(client.chat.completions.create(model=model, max_tokens=32, temperature=0, stream=True,
                                                            messages=[{"role": "user", "content": PROMPT}])):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
            times.append(time.perf_counter())
        if ch.usage is not None:
            receipt = ch.usage.model_extra["carbon"]
        if on_chunk is not None:
            on_chunk(i)
    return text, times, receipt


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="kills per stage position")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    console = Console()
    demo = Demo(console)
    t_start = time.time()
    try:
        from prismn.runtime.prepare import prepare_model

        prepare_model(MODEL)
        demo.start_coordinator(wan=True)
        demo.start_peers(PEERS)
        t0 = time.perf_counter()
        r = demo.api("POST", "/v1/deployments", json={"model": MODEL, "name": "smollm2", "objective": "latency"})
        load_s = time.perf_counter() - t0
        dep = r.json()
        if dep.get("state") != "ready":
            raise SystemExit(f"deployment failed: {dep.get('error') or dep}")
        stages = [s["peer"] for s in dep["plan"]["stages"]]
        console.print(f"route {' > '.join(stages)}; a fresh deployment loaded in {load_s:.1f} s")
        ref, times, _ = stream(demo, "smollm2")
        undisturbed_gap = max_gap(times)
        if len(times) < 16:
            raise SystemExit(f"the undisturbed answer has only {len(times)} chunks: too short to cut into")
        by_proc = {_slug(city): (city, vram) for city, vram in PEERS}
        rows = []
        for position in ("first", "middle", "last"):
            for run in range(args.runs):
                live = [d for d in demo.api("GET", "/v1/deployments").json()["data"] if d["state"] == "ready"][-1]
                st = [s["peer"] for s in live["plan"]["stages"]]
                victim = {"first": st[0], "middle": st[len(st) // 2], "last": st[-1]}[position]
                proc = demo.peer_procs[victim]

                def kill(i: int, proc=proc) -> None:
                    if i == 6:
                        proc.kill()

                text, times, receipt = stream(demo, "smollm2", kill)
                if proc.poll() is None:
                    raise SystemExit(f"{victim} was not killed: the answer ended before the 6th chunk")
                rec = (receipt or {}).get("recoveries") or [{}]
                rows.append({"position": position, "run": run, "victim": victim, "identical": text == ref,
                             "max_gap_s": max_gap(times), "detected_after_s": rec[0].get("detected_after_s"),
                             "replan_load_replay_s": rec[0].get("pause_s"), "new_route": rec[0].get("new_route")})
                console.print(f"{position} #{run}: killed {victim}; longest pause {rows[-1]['max_gap_s']:.2f} s; "
                              f"identical text: {rows[-1]['identical']}")
                demo.restart_peer(*by_proc[victim])
        # with warm spares: one per stage, each pre-loaded with that stage's layers on a free peer
        demo.api("DELETE", f"/v1/deployments/{dep['id']}")
        dep2 = demo.api("POST", "/v1/deployments", json={"model": MODEL, "name": "smollm2", "objective": "latency",
                                                         "spares": 3}).json()
        spares = (dep2.get("plan") or {}).get("spares", [])
        console.print(f"with warm spares: {[(sp['peer'], sp['layers']) for sp in spares]}")
        spare_rows = []
        for position in ("first", "middle", "last"):
            live = [d for d in demo.api("GET", "/v1/deployments").json()["data"] if d["state"] == "ready"][-1]
            st = live["plan"]["stages"]
            victim = {"first": st[0], "middle": st[len(st) // 2], "last": st[-1]}[position]["peer"]
            if not any(sp["for_peer"] == victim or sp["layers"] == next(s["layers"] for s in st if s["peer"] == victim)
                       for sp in live["plan"].get("spares", [])):
                console.print(f"{position}: no spare covers {victim}; skipped")
                continue
            proc = demo.peer_procs[victim]

            def kill(i: int, proc=proc) -> None:
                if i == 6:
                    proc.kill()

            text, times, receipt = stream(demo, "smollm2", kill)
            rec = (receipt or {}).get("recoveries") or [{}]
            spare_rows.append({"position": position, "victim": victim, "identical": text == ref,
                               "max_gap_s": max_gap(times), "detected_after_s": rec[0].get("detected_after_s"),
                               "replan_load_replay_s": rec[0].get("pause_s"), "new_route": rec[0].get("new_route")})
            console.print(f"{position} with a spare: killed {victim}; longest pause {spare_rows[-1]['max_gap_s']:.2f} s;"
                          f" identical text: {spare_rows[-1]['identical']}")
        summary = {}
        for position in ("first", "middle", "last"):
            gaps = [r["max_gap_s"] for r in rows if r["position"] == position]
            summary[position] = {"pause_p50_s": statistics.median(gaps), "pause_max_s": max(gaps),
                                 "identical": sum(r["identical"] for r in rows if r["position"] == position),
                                 "runs": len(gaps)}
        result = {"benchmark": "recovery", "model": MODEL, "peers": PEERS, "network": "emulated WAN (RTT/2 per link)",
                  "route": stages, "fresh_deployment_load_s": load_s, "undisturbed_max_gap_s": undisturbed_gap,
                  "targets": {"without_spare": "pause <= 2 s + the measured stage load time",
                              "with_spare": "pause <= 2 s"},
                  "summary": summary, "runs": rows, "with_spare": spare_rows, "spares": spares,
                  "took_s": round(time.time() - t_start, 1)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        for position, s in summary.items():
            console.print(f"{position:>6}: pause p50 {s['pause_p50_s']:.2f} s, max {s['pause_max_s']:.2f} s, "
                          f"identical {s['identical']}/{s['runs']} (target <= 2 s + load {load_s:.1f} s)")
        for r in spare_rows:
            console.print(f"{r['position']:>6} with a warm spare: pause {r['max_gap_s']:.2f} s, identical "
                          f"{r['identical']} (target <= 2 s)")
        console.print(f"wrote {args.out}")
    finally:
        demo.close()


if __name__ == "__main__":
    main()
