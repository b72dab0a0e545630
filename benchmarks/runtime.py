"""Runtime benchmark: per-hop wire overhead, split vs unsplit throughput, emulated swarm vs the evaluator.

    python benchmarks/runtime.py [--out docs/bench/runtime.json] [--threads 1] [--tokens 48] [--quick]

Writes one JSON document with three parts:

1. ``hop_overhead``: serialise + send + receive + deserialise of one activation tensor between two
   processes over loopback (one way, timed on the shared monotonic clock), for hidden sizes 576,
   4096 and 8192 at decode (1 token) and at a 2,048-token prefill, over TCP and over Iroh (QUIC,
   relays off) side by side in the same run. Targets: TCP decode median <= 1 ms; Iroh decode median
   <= 1.5 ms and prefill transfer >= 100 MB/s (``--transports tcp`` skips Iroh).
2. ``throughput``: SmolLM2-135M decode tokens/s unsplit (in process, and one stage-server process)
   vs split into 2, 3 and 4 local stage processes, same run. Target: split >= 0.8x unsplit.
3. ``emulated``: a 3-peer swarm (Oslo, Paris, Sao Paulo; RTTs from the swarm's own distance estimate),
   a plan over it, the stage processes' self-measured layer times put into the swarm, and the
   measured decode latency per token under emulated wide-area delay vs ``prismn.placement.evaluate_plan``'s
   prediction for the same plan. Target: within +-10 %. All numbers there are EMULATED delays.

Needs the runtime extra and a prepared model (`prismn model prepare smollm2-135m`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECEIVER = r"""
import asyncio, sys, time
from prismn.transport import make_transport
from prismn.wire import Limits, check_tensor, to_tensor

async def main():
    async def handler(conn):
        while (f := await conn.recv()) is not None:
            h = f.header
            dt, shape = check_tensor(h, f.payload, dtypes=("float32", "bfloat16", "float16"), ndim=3)
            t = to_tensor(f.payload, dt, shape)
            t1 = time.perf_counter()
            await conn.send({"kind": "ack", "t": t1, "n": int(t.shape[1]), "cpu": time.process_time()})
    tr = make_transport(sys.argv[1], relay=False, limits=Limits(max_payload=1 << 31))
    lst = await tr.listen("127.0.0.1", 0, handler)
    print(tr.endpoint_info().ticket if sys.argv[1] == "iroh" else lst.address, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


# ---------------------------------------------------------------------------------- 1. per-hop overhead
def bench_hop_overhead(quick: bool, transports: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {kind: bench_hop_one(quick, kind) for kind in transports}
    if "tcp" in out and "iroh" in out:
        out["side_by_side"] = [
            {"hidden": t["hidden"], "tokens": t["tokens"], "bytes": t["bytes"],
             "tcp_median_ms": t["median_ms"], "iroh_median_ms": i["median_ms"],
             "tcp_p90_ms": t["p90_ms"], "iroh_p90_ms": i["p90_ms"],
             "tcp_mb_per_s": t["mb_per_s"], "iroh_mb_per_s": i["mb_per_s"],
             "tcp_cpu_bound_mb_per_s": t["cpu_bound_mb_per_s"], "iroh_cpu_bound_mb_per_s": i["cpu_bound_mb_per_s"]}
            for t, i in zip(out["tcp"]["results"], out["iroh"]["results"], strict=True)
        ]
    return out


def bench_hop_one(quick: bool, kind: str) -> dict[str, Any]:
    import torch

    from prismn.transport import make_transport
    from prismn.wire import Limits, tensor_payload

    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, kind], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()

        async def run() -> list[dict[str, Any]]:
            tr = make_transport(kind, relay=False, limits=Limits(max_payload=1 << 31))
            conn = await tr.connect(addr)
            rows = []
            for hidden in (576, 4096, 8192):
                for tokens in (1, 2048):
                    x = torch.randn(1, tokens, hidden)
                    reps = (300 if not quick else 50) if tokens == 1 else (8 if not quick else 3)
                    samples, cpu_send, cpu_recv = [], [], []
                    last_ack_cpu = None
                    for i in range(reps + 3):
                        c0 = time.process_time()
                        t0 = time.perf_counter()
                        dt, shape, body = tensor_payload(x)
                        await conn.send({"kind": "step", "session": "b", "step": i, "pos": 0, "dtype": dt,
                                         "shape": shape}, body)
                        ack = await conn.recv()
                        assert ack is not None
                        if i >= 3:
                            samples.append(float(ack.header["t"]) - t0)
                            cpu_send.append(time.process_time() - c0)
                            if last_ack_cpu is not None:
                                cpu_recv.append(float(ack.header["cpu"]) - last_ack_cpu)
                        last_ack_cpu = float(ack.header["cpu"])
                    nbytes = tokens * hidden * 4
                    rows.append({
                        "hidden": hidden, "tokens": tokens, "dtype": "float32", "bytes": nbytes, "reps": reps,
                        "median_ms": statistics.median(samples) * 1e3,
                        "p90_ms": sorted(samples)[int(0.9 * (len(samples) - 1))] * 1e3,
                        "min_ms": min(samples) * 1e3,
                        "mb_per_s": nbytes / statistics.median(samples) / 1e6,
                        # CPU seconds (all threads) each process spent per frame: what the machine's
                        # other load cannot inflate; bytes / the busier side = the CPU-bound ceiling
                        "sender_cpu_ms": statistics.median(cpu_send) * 1e3,
                        "receiver_cpu_ms": statistics.median(cpu_recv) * 1e3 if cpu_recv else None,
                        "cpu_bound_mb_per_s": (nbytes / max(statistics.median(cpu_send), statistics.median(cpu_recv))
                                               / 1e6) if cpu_recv and tokens > 1 else None,
                    })
            path = conn.path_info() if hasattr(conn, "path_info") else None
            await conn.close()
            await tr.close()
            return rows, path

        rows, path = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(10)
    worst_decode = max(r["median_ms"] for r in rows if r["tokens"] == 1)
    decode_p90_worst = max(r["p90_ms"] for r in rows if r["tokens"] == 1)
    big = [r for r in rows if r["tokens"] > 1 and r["bytes"] >= 1 << 24]
    prefill_mb_s = min(r["mb_per_s"] for r in big)
    cpu_bound = [r["cpu_bound_mb_per_s"] for r in big if r["cpu_bound_mb_per_s"]]
    from prismn.wire import encode_header

    typical = {"kind": "step", "session": "0" * 32, "step": 17, "pos": 40, "dtype": "float32", "shape": [1, 1, 576],
               "trace": [["oslo-1", 0.012345], ["paris-1", 0.023456]]}
    token = {"kind": "token", "session": "0" * 32, "step": 17, "token": 12345, "pos": 41,
             "trace": [["oslo-1", 0.012345], ["paris-1", 0.023456], ["saopaulo-1", 0.034567]]}
    target_ms = 1.0 if kind == "tcp" else 1.5
    res: dict[str, Any] = {
        "transport": kind,
        "frame_header_bytes": {"activation_step_typical": len(encode_header(typical, 2304)),
                               "token_typical": len(encode_header(token, 0))},
        "what": "one-way serialise + send + receive + deserialise of one activation frame, two processes, "
                + ("loopback TCP" if kind == "tcp" else "loopback Iroh (QUIC, relays disabled, patched byte path)")
                + ", timed on the shared monotonic clock",
        "results": rows,
        "decode_median_ms_worst": worst_decode,
        "decode_p90_ms_worst": decode_p90_worst,
        "prefill_mb_per_s_worst": prefill_mb_s,
        "prefill_cpu_bound_mb_per_s_worst": min(cpu_bound) if cpu_bound else None,
        "target_ms": target_ms,
        "meets_target": worst_decode <= target_ms,
    }
    if kind == "iroh":
        from prismn.iroh_transport import iroh_version

        res.update({"iroh_version": iroh_version(), "path": path, "target_mb_per_s": 100.0,
                    "meets_transfer_target": prefill_mb_s >= 100.0})
    return res


# ---------------------------------------------------------------------------------- 2. throughput
def even_split(n_layers: int, k: int) -> list[tuple[int, int]]:
    sizes = [n_layers // k + (1 if i < n_layers % k else 0) for i in range(k)]
    out, a = [], 0
    for s in sizes:
        out.append((a, a + s))
        a += s
    return out


def decode_rate(pipe: Any, prompt: list[int], tokens: int) -> dict[str, Any]:
    list(pipe.generate(prompt, max_new_tokens=6))  # warm up
    list(pipe.generate(prompt, max_new_tokens=tokens))
    st = pipe.stats
    step = statistics.fmean(st.step_s)
    comp = statistics.fmean(st.compute_s) if st.compute_s else float("nan")
    return {"ms_per_token": step * 1e3, "tokens_per_s": 1 / step, "compute_ms_per_token": comp * 1e3,
            "ttft_ms": st.ttft_s * 1e3, "new_tokens": st.new_tokens}


def bench_throughput(ckpt_dir: Path, threads: int, tokens: int, prompt: list[int]) -> dict[str, Any]:
    import torch

    from prismn.runtime.checkpoint import Checkpoint
    from prismn.runtime.client import Hop, Pipeline
    from prismn.runtime.local import start_stages, stop_all
    from prismn.runtime.stage import Stage

    torch.set_num_threads(threads)
    ck = Checkpoint(ckpt_dir)
    L = ck.num_layers
    # in-process, no wire: our stage over all layers (the same code path a stage runs). Measured again
    # right before every split config, so a busy machine shifts both sides of each ratio alike.
    st = Stage(ck, 0, L)

    def in_process() -> float:
        steps = []
        for rep in range(2):
            cache, pos = st.new_cache(), 0
            x = torch.tensor([prompt])
            for i in range(tokens if rep else 6):
                t0 = time.perf_counter()
                out = st.forward(x, cache, pos)
                tok = int(out[0, -1].argmax())
                if rep and i:
                    steps.append(time.perf_counter() - t0)
                pos += x.shape[1]
                x = torch.tensor([[tok]])
        return statistics.fmean(steps)

    results = []
    pipeline_overheads = []
    for k in (1, 2, 3, 4):
        split = even_split(L, k)
        stages = start_stages([["--checkpoint", str(ckpt_dir), "--layers", f"{a}:{b}", "--port", "0",
                                "--peer-id", f"p{i}", "--no-bench", "--log-level", "warning"]
                               for i, (a, b) in enumerate(split)], threads=threads)
        try:
            hops = [Hop(f"p{i}", s.address, lay) for i, (s, lay) in enumerate(zip(stages, split, strict=True))]
            with Pipeline(hops) as pipe:
                base = in_process()
                r = decode_rate(pipe, prompt, tokens)
        finally:
            stop_all(stages)
        hops_n = k + 1
        per_hop = (r["ms_per_token"] - r["compute_ms_per_token"]) / hops_n
        pipeline_overheads.append(per_hop)
        results.append({"config": "unsplit, 1 stage process" if k == 1 else f"split into {k} processes",
                        "processes": k, "layers": split, **r, "hops_per_token": hops_n,
                        "overhead_ms_per_hop": per_hop,
                        "unsplit_in_process_ms_per_token": base * 1e3,
                        "ratio_vs_unsplit_in_process": base / (r["ms_per_token"] / 1e3)})
    one_proc = results[0]["ms_per_token"]
    for r in results:
        r["ratio_vs_unsplit_1_process"] = one_proc / r["ms_per_token"]
    worst = min(r["ratio_vs_unsplit_in_process"] for r in results[1:])
    return {
        "model": ck.name, "dtype": "fp32", "device": "cpu", "torch_threads_per_process": threads,
        "prompt_tokens": len(prompt), "decode_tokens": tokens,
        "results": results,
        "pipeline_overhead_ms_per_hop_median": statistics.median(pipeline_overheads),
        "worst_split_ratio_vs_unsplit": worst,
        "target_ratio": 0.8,
        "meets_target": worst >= 0.8,
    }


# ---------------------------------------------------------------------------------- 3. emulated swarm
SWARM_PEERS = [
    {"id": "oslo-1", "lat": 59.91, "lon": 10.75, "zone": "NO-NO1"},
    {"id": "paris-1", "lat": 48.86, "lon": 2.35, "zone": "FR"},
    {"id": "saopaulo-1", "lat": -23.55, "lon": -46.63, "zone": "BR-CS"},
]
COORDINATOR = {"lat": 51.51, "lon": -0.13}  # London


def bench_emulated(ckpt_dir: Path, threads: int, tokens: int, prompt: list[int]) -> dict[str, Any]:
    from prismn.runtime.checkpoint import Checkpoint
    from prismn.runtime.client import Hop, Pipeline
    from prismn.runtime.local import start_stages, stop_all
    from prismn.transport import RttMatrix

    try:
        from prismn.model import load_model_spec
        from prismn.placement import CostOptions, evaluate_plan
        from prismn.placement.plan import Plan
        from prismn.placement.plan import Stage as PlanStage
        from prismn.swarm import CLIENT, parse_swarm
    except ImportError as e:  # the placement engine is not there yet
        return {"skipped": f"prismn.placement is not importable ({e})"}

    ck = Checkpoint(ckpt_dir)
    split = even_split(ck.num_layers, 3)
    ids = [p["id"] for p in SWARM_PEERS]
    stages = start_stages([["--checkpoint", str(ckpt_dir), "--layers", f"{a}:{b}", "--port", "0", "--peer-id", pid,
                            "--no-bench", "--log-level", "warning"]
                           for pid, (a, b) in zip(ids, split, strict=True)], threads=threads)
    try:
        hops = [Hop(pid, s.address, lay) for pid, s, lay in zip(ids, stages, split, strict=True)]
        with Pipeline(hops) as pipe:
            # self-benchmark each stage now, one at a time, so no other process disturbs the timing
            selfbench = []
            for i, c in enumerate(pipe.client.conns):
                pipe._run(c.send({"kind": "bench"}))
                got = pipe._run(pipe.client._collect({"bench"}, {i}, timeout=300))
                selfbench.append(got[i].header["measurement"])
            # and let each stage observe real decode steps (no emulated delay) for its served timing
            decode_rate(pipe, prompt, tokens)
            observed = [info["observed"] for info in pipe._run(pipe.client.refresh_info())]

        def evaluate(measurements: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
            doc = {
                "coordinator": COORDINATOR,
                "peers": [{**p, "free_vram_gb": 4.0, "bandwidth_mbps": 10000.0,
                           "measurements": [{k: m[k] for k in ("model", "dtype", "device", "s_per_layer", "s_head",
                                                               "s_embed")}]}
                          for p, m in zip(SWARM_PEERS, measurements, strict=True)],
            }
            sw = parse_swarm(doc)
            spec = load_model_spec(ck.name, "fp32")
            plan = Plan("manual", ck.name, [PlanStage(pid, a, b, embedding=(i == 0), head=(i == 2))
                                             for i, (pid, (a, b)) in enumerate(zip(ids, split, strict=True))])
            return doc, (evaluate_plan(plan, spec, sw, CostOptions(prompt_tokens=len(prompt))), sw)

        swarm_doc, (ev, swarm) = evaluate(observed)
        _, (ev_self, _) = evaluate(selfbench)
        nodes = [CLIENT, *ids]
        rtt = RttMatrix({a: {b: swarm.rtt_ms(a, b) for b in nodes if b != a} for a in nodes})
        with Pipeline(hops, rtt=rtt) as pipe:
            r = decode_rate(pipe, prompt, tokens)
    finally:
        stop_all(stages)
    measured = r["ms_per_token"]
    predicted = ev.metrics["latency_ms_per_token"]
    err = (measured - predicted) / predicted * 100
    return {
        "label": "EMULATED wide-area delay (real sleeps of RTT/2 per hop on loopback TCP)",
        "swarm": swarm_doc,
        "plan": ev.to_json(),
        "route": ["client", *ids, "client"],
        "rtt_ms": rtt.to_json(),
        "measured": r,
        "measured_ms_per_token": measured,
        "predicted_ms_per_token": predicted,
        "predicted_compute_ms_per_token": ev.metrics["compute_ms_per_token"],
        "predicted_network_ms_per_token": ev.metrics["network_ms_per_token"],
        "error_pct": err,
        "measurements_used": "observed: each stage's median served decode step (the info request's 'observed')",
        "with_startup_selfbench": {
            "predicted_ms_per_token": ev_self.metrics["latency_ms_per_token"],
            "predicted_compute_ms_per_token": ev_self.metrics["compute_ms_per_token"],
            "error_pct": (measured - ev_self.metrics["latency_ms_per_token"])
            / ev_self.metrics["latency_ms_per_token"] * 100,
            "measurements": selfbench,
        },
        "target_pct": 10.0,
        "meets_target": abs(err) <= 10.0,
    }


# ---------------------------------------------------------------------------------- 4. authentication
def bench_auth_overhead(quick: bool) -> dict[str, Any]:
    """Per decode step through a 2-stage pipeline (a tiny random Llama, loopback TCP, one process) with the
    stages in open mode vs signed mode (handshake per connection, role check per frame), interleaved
    rounds in the same run. The handshake is paid once per connection, so per-step cost is the gate."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from prismn.identity import Identity
    from prismn.protocol import Assignment, Neighbour
    from prismn.runtime.checkpoint import resolve_checkpoint
    from prismn.runtime.client import Hop, PipelineClient
    from prismn.runtime.server import StageServer
    from prismn.runtime.stage import Stage

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="prismn-auth-bench-"))
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(tmp)
    ck = resolve_checkpoint(str(tmp))
    tokens, rounds = (64, 3) if quick else (256, 7)

    async def one(signed: bool) -> float:
        coord, ids = Identity.generate(), [Identity.generate(), Identity.generate()]
        servers = []
        for i, (a, b) in enumerate(((0, 1), (1, 2))):
            st = Stage(ck, a, b, embedding=a == 0, head=b == 2, dtype="fp32")
            kw = {"identity": ids[i], "trust": coord.public} if signed else {}
            servers.append(StageServer(st, peer_id=f"s{i}", bench=False, **kw))
        addrs = [await s.start() for s in servers]
        hops = [Hop(f"s{i}", addrs[i], key=ids[i].public) for i in range(2)]
        if signed:
            now = time.time()
            for i, s in enumerate(servers):
                nb = [Neighbour(peer=h.peer_id, key=h.key, address=h.address) for h in hops]
                s.assignment = Assignment(
                    deployment="d", model="m", checkpoint=str(tmp), layers=((0, 1), (1, 2))[i], embedding=i == 0,
                    head=i == 1, peer=f"s{i}", peer_key=ids[i].public, client=coord.public,
                    upstream=nb[0] if i == 1 else None, downstream=nb[1] if i == 0 else None,
                    issued_at=now, expires_at=now + 60, nonce="00" * 16)
        for sv in servers:
            sv.gather_max_s = 0.0  # one session: no batch to wait for
        client = PipelineClient(hops, identity=coord if signed else None)
        try:
            stamps = [time.perf_counter() async for _ in client.agenerate([1, 2, 3], max_new_tokens=tokens)]
            gaps = [b - a for a, b in zip(stamps[8:], stamps[9:], strict=False)]  # after warm-up
            return statistics.median(gaps) * 1e3  # the median step: robust to the machine's other load
        finally:
            await client.aclose()
            for s in servers:
                await s.stop()

    async def gate_cost() -> float:
        """CPU the signed mode adds to each frame (the role check), timed alone: what the loaded machine's
        step-time noise cannot resolve."""
        coord, me, up = Identity.generate(), Identity.generate(), Identity.generate()
        sv = StageServer(None, peer_id="g", identity=me, trust=coord.public)
        sv.assignment = Assignment(deployment="d", model="m", checkpoint="c", layers=(1, 2), embedding=False,
                                   head=True, peer="g", peer_key=me.public, client=coord.public,
                                   upstream=Neighbour(peer="u", key=up.public, address="127.0.0.1:1"),
                                   issued_at=0.0, expires_at=1e12, nonce="00" * 16)

        class Conn:  # stands for an authenticated upstream connection
            remote_key = up.public
            remote = "u"

        from prismn.handshake import StageHandshake

        conn = Conn()
        sv._hs[conn] = StageHandshake(me, conn)  # type: ignore[arg-type]
        n = 200_000
        t0 = time.perf_counter()
        for _ in range(n):
            await sv._gate(conn, "step", {})  # type: ignore[arg-type]
        return (time.perf_counter() - t0) / n * 1e6

    gate_us = asyncio.run(gate_cost())
    samples: dict[str, list[float]] = {"open": [], "signed": []}
    for r in range(rounds):
        for mode in (("open", "signed") if r % 2 == 0 else ("signed", "open")):
            samples[mode].append(asyncio.run(one(mode == "signed")))
    o, s_ = statistics.median(samples["open"]), statistics.median(samples["signed"])
    return {"what": "ms per decode step, 2-stage pipeline (tiny Llama), loopback TCP, one process; "
                    "open-mode stages vs signed-mode stages (handshake per connection, role check per frame), "
                    "rounds interleaved in one run; the difference covers both hops",
            "tokens_per_round": tokens, "rounds": rounds, "open_ms": samples["open"], "signed_ms": samples["signed"],
            "open_median_ms": o, "signed_median_ms": s_, "added_ms_per_step": s_ - o,
            "added_ms_per_hop": (s_ - o) / 2, "gate_cpu_us_per_frame": gate_us,
            "note": "on a loaded machine the rounds' step times vary by several ms, more than the 0.1 ms target; "
                    "gate_cpu_us_per_frame is the signed mode's added work per frame, timed alone",
            "target_ms_per_hop": 0.1, "meets_target": gate_us / 1e3 <= 0.1 and (s_ - o) / 2 <= 0.1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/bench/runtime.json")
    ap.add_argument("--model", default="smollm2-135m", help="prepared model name or checkpoint folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (all configs alike)")
    ap.add_argument("--tokens", type=int, default=48, help="decode tokens per measurement")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["hop", "throughput", "emulated", "auth"])
    ap.add_argument("--transports", nargs="+", default=["tcp", "iroh"], choices=["tcp", "iroh"],
                    help="transports the per-hop part compares (same run)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from prismn.runtime.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(args.model).path
    prompt = [1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2, 198]  # a short chat-like prefix
    out: dict[str, Any] = {
        "benchmark": "prismn runtime",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": "cpu",
                    "load_average_at_start": os.getloadavg()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if "hop" not in args.skip:
        print("1/4 per-hop overhead ...", file=sys.stderr)
        out["hop_overhead"] = bench_hop_overhead(args.quick, args.transports)
    if "throughput" not in args.skip:
        print("2/4 throughput, unsplit vs split ...", file=sys.stderr)
        out["throughput"] = bench_throughput(ckpt, args.threads, args.tokens, prompt)
    if "emulated" not in args.skip:
        print("3/4 emulated swarm vs evaluator ...", file=sys.stderr)
        out["emulated"] = bench_emulated(ckpt, args.threads, args.tokens, prompt)
    if "auth" not in args.skip:
        print("4/4 authentication overhead, open vs signed stages ...", file=sys.stderr)
        out["auth_overhead"] = bench_auth_overhead(args.quick)
    out["machine"]["load_average_at_end"] = os.getloadavg()
    if Path(args.out).exists() and args.skip:  # a partial run keeps the other sections (with their own dates)
        kept = json.loads(Path(args.out).read_text())
        for section in ("hop_overhead", "throughput", "emulated", "auth_overhead"):
            if section not in out and section in kept:
                out[section] = kept[section]
        out["partial_run_skipped"] = args.skip
    out["machine"]["note"] = ("a shared 2-core machine: other work running at the same time (load average above) "
                              "slows the processes unevenly; compare ratios taken in the same run")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    summary = {
        **{f"hop_{k}_{m}": out.get("hop_overhead", {}).get(k, {}).get(m) for k in args.transports
           for m in ("decode_median_ms_worst", "decode_p90_ms_worst", "prefill_mb_per_s_worst",
                     "prefill_cpu_bound_mb_per_s_worst")},
        "pipeline_overhead_ms_per_hop": out.get("throughput", {}).get("pipeline_overhead_ms_per_hop_median"),
        "worst_split_ratio": out.get("throughput", {}).get("worst_split_ratio_vs_unsplit"),
        "emulated_measured_ms": out.get("emulated", {}).get("measured_ms_per_token"),
        "emulated_predicted_ms": out.get("emulated", {}).get("predicted_ms_per_token"),
        "emulated_error_pct": out.get("emulated", {}).get("error_pct"),
        "auth_added_ms_per_hop": out.get("auth_overhead", {}).get("added_ms_per_hop"),
    }
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
