"""Model spec: what a model costs, read from a Hugging Face config.json.

Byte and FLOP counts are exact parameter counts of the transformers implementation for the Llama
family (Llama, Mistral, Qwen2, SmolLM2) and GPT-2. "GB" in Prismn is GiB (1024**3 bytes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismn.data import load
from prismn.errors import ModelSpecError

GIB = 1024**3

# Bytes per weight. int8/int4 weights keep activations and KV cache in fp16.
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}
LLAMA_FAMILY = {"llama", "mistral", "qwen2", "smollm2", "qwen3"}


def normalise_dtype(dtype: str) -> str:
    d = DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if d not in DTYPE_BYTES:
        raise ModelSpecError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    return d


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "llama" (Llama, Mistral, Qwen2, SmolLM2) or "gpt2"
    model_type: str
    n_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    max_positions: int
    dtype: str = "bf16"
    qkv_bias: bool = False  # Qwen2

    # ---- parameter counts -------------------------------------------------------------
    @property
    def layer_params(self) -> int:
        h, a, k, d, i = self.hidden, self.heads, self.kv_heads, self.head_dim, self.intermediate
        if self.family == "gpt2":
            # c_attn (h x 3h + 3h), c_proj (h x h + h), c_fc (h x i + i), mlp c_proj (i x h + h), 2 LayerNorms
            return h * 3 * h + 3 * h + h * h + h + h * i + i + i * h + h + 4 * h
        attn = h * (a * d) + 2 * h * (k * d) + (a * d) * h
        if self.qkv_bias:
            attn += a * d + 2 * k * d
        return attn + 3 * h * i + 2 * h

    @property
    def embed_params(self) -> int:
        pos = self.max_positions * self.hidden if self.family == "gpt2" else 0
        return self.vocab * self.hidden + pos

    @property
    def head_params(self) -> int:
        """LM head weights (a separate copy is needed wherever the head lives apart from the embedding)."""
        return self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return 2 * self.hidden if self.family == "gpt2" else self.hidden

    # ---- bytes ---------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.dtype]

    @property
    def act_bytes(self) -> float:
        """Bytes per activation / KV element: the weight dtype, or fp16 for quantised weights."""
        return DTYPE_BYTES[self.dtype] if self.dtype in ("fp32", "bf16", "fp16") else 2.0

    @property
    def layer_bytes(self) -> float:
        return self.layer_params * self.weight_bytes

    @property
    def embed_bytes(self) -> float:
        return self.embed_params * self.weight_bytes

    @property
    def head_bytes(self) -> float:
        return (self.head_params + self.norm_params) * self.weight_bytes

    @property
    def total_weight_bytes(self) -> float:
        head = self.norm_params if self.tied else self.head_params + self.norm_params
        return self.n_layers * self.layer_bytes + self.embed_bytes + head * self.weight_bytes

    def kv_bytes_per_token_per_layer(self) -> float:
        """K and V for one token in one layer (GQA aware)."""
        return 2 * self.kv_heads * self.head_dim * self.act_bytes

    @property
    def activation_bytes_per_token(self) -> float:
        """The hidden state that crosses each hop between stages, per token."""
        return self.hidden * self.act_bytes

    # ---- FLOPs -------------------------------------------------------------------------
    def layer_flops_per_token(self, context: int = 0) -> float:
        """2 FLOPs per weight plus attention over `context` cached tokens (QK^T and AV)."""
        return 2.0 * self.layer_params + 4.0 * self.heads * self.head_dim * context

    @property
    def head_flops_per_token(self) -> float:
        return 2.0 * self.head_params

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "layers": self.n_layers,
            "hidden": self.hidden,
            "dtype": self.dtype,
            "layer_gb": self.layer_bytes / GIB,
            "embedding_gb": self.embed_bytes / GIB,
            "head_gb": self.head_bytes / GIB,
            "total_gb": self.total_weight_bytes / GIB,
            "kv_bytes_per_token_per_layer": self.kv_bytes_per_token_per_layer(),
            "activation_bytes_per_token": self.activation_bytes_per_token,
        }


def spec_from_config(config: dict[str, Any], name: str, dtype: str | None = None) -> ModelSpec:
    """Build a ModelSpec from the fields of a Hugging Face config.json."""
    model_type = str(config.get("model_type", "")).lower()
    try:
        if model_type == "gpt2":
            h = int(config["n_embd"])
            heads = int(config["n_head"])
            return ModelSpec(
                name=name, family="gpt2", model_type="gpt2", n_layers=int(config["n_layer"]), hidden=h,
                intermediate=int(config.get("n_inner") or 4 * h), heads=heads, kv_heads=heads,
                head_dim=h // heads, vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", True)),
                max_positions=int(config.get("n_positions", 1024)),
                dtype=normalise_dtype(dtype or "fp32"),
            )
        if model_type in LLAMA_FAMILY:
            h = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return ModelSpec(
                name=name, family="llama", model_type=model_type, n_layers=int(config["num_hidden_layers"]),
                hidden=h, intermediate=int(config["intermediate_size"]), heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or h // heads), vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", False)),
                max_positions=int(config.get("max_position_embeddings", 4096)),
                dtype=normalise_dtype(dtype or _config_dtype(config)),
                qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
            )
    except KeyError as e:
        raise ModelSpecError(f"config for {name!r} lacks field {e.args[0]!r}: pass a complete config.json") from None
    raise ModelSpecError(
        f"model type {model_type or '(none)'!r} of {name!r} is not supported: "
        f"use a Llama-family (llama, mistral, qwen2) or GPT-2 model"
    )


def _config_dtype(config: dict[str, Any]) -> str:
    d = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return DTYPE_ALIASES.get(d, "bf16")


def catalog() -> dict[str, dict[str, Any]]:
    return load("models.json")["models"]


def resolve_catalog_id(ref: str) -> str | None:
    data = load("models.json")
    by_lower = {k.lower(): k for k in data["models"]}
    key = ref.strip().lower()
    if key in by_lower:
        return by_lower[key]
    alias = {k.lower(): v for k, v in data.get("aliases", {}).items()}.get(key)
    return alias


def load_model_spec(ref: str, dtype: str | None = None) -> ModelSpec:
    """Resolve a model: a path to config.json, a checkpoint folder, a catalog id/alias, or a hub id.

    A hub id outside the catalog is fetched from the Hugging Face Hub only when online
    (HF_HUB_OFFLINE unset); offline it is a clear error.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise ModelSpecError(f"{ref} has no config.json: point --model at a Hugging Face checkpoint folder")
    if path.suffix == ".json" or path.exists():
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelSpecError(f"{ref} does not exist: pass a path to a config.json") from None
        except json.JSONDecodeError as e:
            raise ModelSpecError(f"{ref} is not valid JSON ({e.msg} at line {e.lineno}): fix the file") from None
        return spec_from_config(config, str(config.get("_name_or_path") or path.parent.name), dtype)
    cid = resolve_catalog_id(ref)
    if cid is not None:
        return spec_from_config(catalog()[cid], cid, dtype)
    return spec_from_config(_fetch_hub_config(ref), ref, dtype)


def _fetch_hub_config(repo_id: str) -> dict[str, Any]:
    hint = f"model {repo_id!r} is not in the embedded catalog (see `prismn models`)"
    if "/" not in repo_id:
        raise ModelSpecError(f"{hint}: pass a catalog id, a hub id like org/name, or a path to config.json")
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("PRISMN_OFFLINE"):
        raise ModelSpecError(f"{hint} and Prismn is offline: pass a path to its config.json")
    import httpx

    try:
        r = httpx.get(f"https://huggingface.co/{repo_id}/resolve/main/config.json", timeout=10, follow_redirects=True)
    except httpx.HTTPError:
        raise ModelSpecError(f"{hint} and the Hub could not be reached: pass a path to its config.json") from None
    if r.status_code != 200:
        raise ModelSpecError(f"{hint} and the Hub answered {r.status_code}: check the id or pass a config.json")
    return r.json()
