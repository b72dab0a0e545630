"""Fixtures for service tests: a tiny chat model with a real tokenizer, PostgreSQL, and process helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from svc import free_port

pytest.importorskip("torch")
pytest.importorskip("fastapi")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["What is the capital of France? Paris is the capital of France.",
          "Oslo, Stockholm, Madrid and Warsaw are capitals in Europe.",
          "The quick brown fox jumps over the lazy dog. 0123456789"] * 20


def make_chat_checkpoint(path: Path, layers: int = 6, hidden: int = 64) -> Path:
    """A random Llama with a byte-level BPE tokenizer and a ChatML template, saved like a hub folder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=None)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory) -> Path:
    return make_chat_checkpoint(tmp_path_factory.mktemp("chat-llama"))


# ---- PostgreSQL: a throwaway cluster started by the test set-up ---------------------------------
def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL cluster on a free port; required in CI, skipped elsewhere when not installed."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)")
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    # its own folder, not pytest's numbered temp dirs: those are pruned when other pytest sessions
    # start, which would pull the data directory from under a running cluster
    base = Path(tempfile.mkdtemp(prefix="prismn-test-pg-"))
    data = base / "data"
    port = free_port()
    as_root = os.geteuid() == 0
    def run(cmd: list[str]) -> None:
        if as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if as_root:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o755)
        for parent in base.parents:  # postgres must be able to reach its data dir
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    run([str(bindir / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
         "-l", str(base / "log"), "-w", "start"])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(base, ignore_errors=True)
