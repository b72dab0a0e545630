"""Loading a stage costs about the stage's own bytes of memory, not the model's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

PROBE = r"""
import json, sys, gc
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import torch, transformers, transformers.models.llama.modeling_llama
from prismn.runtime.checkpoint import Checkpoint
from prismn.runtime.stage import Stage
ck = Checkpoint(sys.argv[1]); a, b = int(sys.argv[2]), int(sys.argv[3])
Stage(ck, 0, 1, embedding=True)  # warm every code path once (lazy imports, allocator pools)
gc.collect()
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (Linux >= 4.0)
st = Stage(ck, a, b)
print(json.dumps({"base": base, "peak": status("VmHWM:"), "rss": status("VmRSS:"),
                  "stage_bytes": ck.stage_bytes(a, b, st.first, st.last), "total": ck.total_bytes()}))
"""


def _big_checkpoint(d):
    """~600 MB Llama-shaped checkpoint (8 layers of ~67 MB) written without a random init."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=8000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    sd = {k: torch.full(v.shape, 0.01, dtype=torch.float32) for k, v in m.state_dict().items()}
    save_file(sd, str(d / "model.safetensors"))
    cfg.save_pretrained(d)


@pytest.mark.slow
def test_stage_load_peak_memory_is_stage_sized(tmp_path):
    _big_checkpoint(tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), "3", "4"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    growth = r["peak"] - r["base"]
    stage, total = r["stage_bytes"], r["total"]
    assert total > 8 * stage  # the model is much bigger than one layer
    # peak while loading one layer: the layer's bytes plus a little, never the model's
    assert growth <= 1.3 * stage + 32 * 2**20, (growth / 2**20, stage / 2**20)
    assert growth < total / 4
