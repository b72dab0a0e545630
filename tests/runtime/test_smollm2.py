"""The real SmolLM2-135M split across 3 processes answers like the unsplit model (and via the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

QUESTION = "What is the capital of France?"
SPLIT = [(0, 10), (10, 20), (20, 30)]
PEERS = ["oslo-1", "paris-1", "saopaulo-1"]


@pytest.fixture(scope="module")
def smol_stages(smollm2_dir):
    from prismn.runtime.local import start_stages, stop_all

    stages = start_stages([["--checkpoint", str(smollm2_dir), "--layers", f"{a}:{b}", "--port", "0",
                            "--peer-id", p, "--no-bench", "--log-level", "warning"]
                           for (a, b), p in zip(SPLIT, PEERS, strict=True)], threads=1)
    try:
        yield stages
    finally:
        stop_all(stages)


@pytest.mark.slow
def test_smollm2_three_processes_match_unsplit(smollm2_dir, smol_stages):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prismn.runtime.client import Hop, Pipeline

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    full = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                   tokenize=True, return_dict=True)
    ids = list(chat["input_ids"])
    with torch.no_grad():
        ref = full.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    hops = [Hop(p, s.address, layers) for p, s, layers in zip(PEERS, smol_stages, SPLIT, strict=True)]
    with Pipeline(hops, tokenizer=tok) as pipe:
        assert len({i["pid"] for i in pipe.infos}) == 3
        evs = list(pipe.generate(ids, max_new_tokens=24, stop=[tok.eos_token_id]))
    tokens = [e.token for e in evs]
    assert tokens == ref
    text = tok.decode(tokens, skip_special_tokens=True)
    assert "Paris" in text


@pytest.mark.slow
def test_generate_cli_with_plan(smollm2_dir, smol_stages, tmp_path):
    plan = {
        "strategy": "manual", "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "feasible": True,
        "stages": [{"peer": p, "layers": list(layers), "embedding": i == 0, "head": i == 2, "vram_used_gb": 0.2}
                   for i, (p, layers) in enumerate(zip(PEERS, SPLIT, strict=True))],
        "metrics": {},
    }
    pf = tmp_path / "plan.json"
    pf.write_text(json.dumps(plan))
    args = [sys.executable, "-m", "prismn.runtime", "generate", QUESTION, "--plan", str(pf),
            "--tokenizer", str(smollm2_dir), "--max-new-tokens", "16", "--json"]
    for p, s in zip(PEERS, smol_stages, strict=True):
        args += ["--peer", f"{p}={s.address}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Paris" in res["text"]
    assert res["route"] == ["client", *PEERS, "client"] and res["stats"]["emulated"] is False
    # a plan naming a peer without an address: one line, no traceback
    base = args[: args.index("--peer")]
    bad = subprocess.run(base + ["--peer", f"oslo-1={smol_stages[0].address}"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "add --peer paris-1=HOST:PORT" in bad.stderr
